//! One experiment of many, as a scheduler runs it: a Slurm job-array task or a
//! Kubernetes Indexed Job pod picks its experiment file by its index
//! (`SLURM_ARRAY_TASK_ID`, `JOB_COMPLETION_INDEX`, or `--index`), then runs it
//! headless into a shared runs folder. A requeued task (after a time-limit stop or a
//! preemption) resumes the run its earlier attempt left unfinished.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::config::Experiment;
use crate::train::{run_dir, Options};

/// Environment variables that carry a task's index, in the order they are read.
pub const INDEX_VARS: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// The task's index: `--index`, else the first scheduler variable that is set.
pub fn task_index(explicit: Option<usize>) -> anyhow::Result<usize> {
    if let Some(i) = explicit {
        return Ok(i);
    }
    for var in INDEX_VARS {
        if let Ok(v) = std::env::var(var) {
            return v
                .trim()
                .parse()
                .with_context(|| format!("{var}={v} is not a task index"));
        }
    }
    bail!(
        "no task index: pass --index N, or run under Slurm (--array, SLURM_ARRAY_TASK_ID) \
         or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)"
    )
}

/// The experiment files under `paths` (files, or folders of them), sorted by path:
/// task `i` takes the `i`-th.
pub fn experiment_list(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(
                crate::config::experiment_files(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            );
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// The newest run folder of `exp` under `runs` that has no `summary.json`, or whose
/// summary says a signal or a control line stopped it: what a requeued task resumes.
pub fn unfinished_run(runs: &Path, exp: &Experiment) -> Option<PathBuf> {
    let dir = runs.join(run_dir::folder_name(&exp.name));
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.yaml").is_file())
        .collect();
    folders.sort();
    let newest = folders.pop()?;
    let resumable = match run_dir::read_summary(&newest) {
        Err(_) => newest.join("last.safetensors").is_file(),
        Ok(s) => s
            .stopped_by
            .as_deref()
            .is_some_and(|by| by.starts_with("SIG")),
    };
    resumable.then_some(newest)
}

/// Runs task `index` of the experiments under `paths` into `runs`: resumes its
/// unfinished run if an earlier attempt left one, else starts it.
pub fn run(
    paths: &[PathBuf],
    index: Option<usize>,
    runs: PathBuf,
    json: bool,
) -> anyhow::Result<()> {
    let files = experiment_list(paths)?;
    let index = task_index(index)?;
    let Some(file) = files.get(index) else {
        bail!(
            "task index {index}, but there are {} experiment file(s): give the array 0-{}",
            files.len(),
            files.len().saturating_sub(1)
        );
    };
    let file = file.canonicalize().unwrap_or_else(|_| file.clone());
    let exp = crate::config::load_file(&file)?;
    eprintln!("task {index}: {} ({})", exp.name, file.display());
    if let Some(dir) = unfinished_run(&runs, &exp) {
        eprintln!("task {index}: resuming {}", dir.display());
        let exp = run_dir::read_config(&dir)?;
        let options = Options {
            resume: Some(dir),
            ..Default::default()
        };
        return crate::headless::run(exp, options, json, None).map(|_| ());
    }
    let options = Options {
        runs_root: runs,
        ..Default::default()
    };
    crate::headless::run(exp, options, json, Some(&file)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_comes_from_the_flag_or_the_scheduler() {
        assert_eq!(task_index(Some(4)).unwrap(), 4);
        // The variables are read only when no flag is given; the error names them.
        if INDEX_VARS.iter().all(|v| std::env::var(v).is_err()) {
            let err = task_index(None).unwrap_err().to_string();
            assert!(err.contains("SLURM_ARRAY_TASK_ID") && err.contains("JOB_COMPLETION_INDEX"));
        }
    }
}
