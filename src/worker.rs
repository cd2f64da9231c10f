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

/// A heartbeat younger than this (seconds) means a live process writes the folder
/// (the dashboard's "lost" threshold).
const LIVE_HEARTBEAT_SECONDS: f64 = 10.0;

/// What an earlier attempt of a task left in the runs folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// A run that finished at least one epoch and did not end (no `summary.json`: the
    /// process was killed), or was stopped by a signal: resumed from its last epoch.
    Resume(PathBuf),
    /// A run that ended the same way before its first epoch finished (nothing to
    /// resume): started again in the same folder, so no empty folder is left behind.
    Restart(PathBuf),
}

/// What the newest run folder of `exp` under `runs` asks of a new attempt: None when
/// there is none, or it completed, failed or was stopped on purpose (a new run).
pub fn earlier_attempt(runs: &Path, exp: &Experiment) -> Option<Earlier> {
    let dir = runs.join(run_dir::folder_name(&exp.name));
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.yaml").is_file())
        .collect();
    folders.sort();
    let newest = folders.pop()?;
    let unfinished = match run_dir::read_summary(&newest) {
        Err(_) => true,
        Ok(s) => s
            .stopped_by
            .as_deref()
            .is_some_and(|by| by.starts_with("SIG")),
    };
    if !unfinished {
        return None;
    }
    if newest.join("last.safetensors").is_file() {
        return Some(Earlier::Resume(newest));
    }
    // Before its first epoch, with a heartbeat younger than the "lost" threshold on a
    // running or paused run: another process may be writing this folder (two files of
    // one experiment name, started together). Restarting would wipe it; this attempt
    // starts a new run instead. (A resume keeps what is there, and a killed process's
    // requeued task may come back within seconds, so resumes are not held back.)
    let live = crate::train::status::read(&newest).is_some_and(|s| {
        matches!(
            s.state,
            crate::train::status::RunState::Running | crate::train::status::RunState::Paused
        ) && s.age_seconds().is_some_and(|a| a < LIVE_HEARTBEAT_SECONDS)
    });
    (!live).then_some(Earlier::Restart(newest))
}

/// Runs task `index` of the experiments under `paths` into `runs`: resumes its
/// unfinished run if an earlier attempt left one (or starts again in the folder of one
/// that ended before its first epoch), else starts it.
pub fn run(
    paths: &[PathBuf],
    index: Option<usize>,
    runs: PathBuf,
    json: bool,
    max_epochs: Option<u32>,
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
    let options = match earlier_attempt(&runs, &exp) {
        Some(Earlier::Resume(dir)) => {
            eprintln!("task {index}: resuming {}", dir.display());
            let exp = run_dir::read_config(&dir)?;
            let options = Options {
                resume: Some(dir),
                max_epochs,
                ..Default::default()
            };
            return crate::headless::run(exp, options, json, None).map(|_| ());
        }
        Some(Earlier::Restart(dir)) => {
            eprintln!(
                "task {index}: the earlier attempt ended before its first epoch; starting \
                 again in {}",
                dir.display()
            );
            Options {
                fresh_in: Some(dir),
                max_epochs,
                ..Default::default()
            }
        }
        None => Options {
            runs_root: runs,
            max_epochs,
            ..Default::default()
        },
    };
    crate::headless::run(exp, options, json, Some(&file)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_attempt_is_resumed_restarted_or_left() {
        let dir = tempfile::tempdir().unwrap();
        let exp: Experiment = crate::config::parse_str(
            "name: e\ndata: { dir: data }\nmodel: { backbone: small_cnn }\n",
            &dir.path().join("e.yaml"),
        )
        .unwrap();
        let runs = dir.path().join("runs");
        assert_eq!(earlier_attempt(&runs, &exp), None, "no runs folder");
        let run = runs.join("e").join("20260101-000000");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("config.yaml"), "").unwrap();
        // Died before its first epoch: nothing to resume, the folder is reused.
        assert_eq!(
            earlier_attempt(&runs, &exp),
            Some(Earlier::Restart(run.clone()))
        );
        let summary = |stopped_by: Option<&str>| {
            let s = serde_json::json!({
                "experiment": "e", "backbone": "small_cnn", "reason": "stopped",
                "epochs": 0, "phase": "frozen", "best": null, "parameters": 1,
                "trainable_parameters": 1, "device": "cpu", "stopped_by": stopped_by,
            });
            std::fs::write(run.join("summary.json"), s.to_string()).unwrap();
        };
        // Stopped by a signal in its first epoch: the same.
        summary(Some("SIGTERM"));
        assert_eq!(
            earlier_attempt(&runs, &exp),
            Some(Earlier::Restart(run.clone()))
        );
        // With a finished epoch it resumes.
        std::fs::write(run.join("last.safetensors"), "").unwrap();
        assert_eq!(
            earlier_attempt(&runs, &exp),
            Some(Earlier::Resume(run.clone()))
        );
        // Stopped on purpose (a key, a control line): a new run.
        summary(Some("control.jsonl"));
        assert_eq!(earlier_attempt(&runs, &exp), None);
        // No summary, no epoch, but a fresh heartbeat: another process may write it;
        // not wiped.
        std::fs::remove_file(run.join("summary.json")).unwrap();
        std::fs::remove_file(run.join("last.safetensors")).unwrap();
        let status = serde_json::json!({
            "experiment": "e", "pid": 1, "host": "h", "state": "running", "phase": "frozen",
            "epoch": 1, "epochs": 2, "batch": [0, 0], "images_per_sec": 0.0,
            "updated_at": chrono::Utc::now().to_rfc3339(),
        });
        std::fs::write(run.join("status.json"), status.to_string()).unwrap();
        assert_eq!(earlier_attempt(&runs, &exp), None);
    }

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
