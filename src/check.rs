//! `tlcap-tui check`: every problem of each experiment file in one pass (syntax, types,
//! unknown keys, ranges), then what can be checked without training: the data folder
//! and its classes, the weights file, `unfreeze_last` against the backbone's layers.

use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError, Experiment, Weights};

/// What can be checked before training, for valid settings read from `file`: each
/// problem with the position of the setting it concerns. Nothing is executed: a
/// weights file is only parsed.
pub fn preflight(exp: &Experiment, file: &Path) -> Vec<ConfigError> {
    let positions = config::positions_of(file);
    let problem = |key: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        position: positions.get(key).copied(),
        message,
    };
    let mut problems = Vec::new();
    match crate::data::find(exp) {
        // A label file's problems, one each, with their CSV lines.
        Err(crate::data::DataError::Labels(csv, list)) => {
            for p in list {
                problems.push(problem(
                    "data.labels",
                    format!("data.labels: {}: {p}", csv.display()),
                ));
            }
        }
        Err(e) => problems.push(problem("data.dir", format!("data.dir: {e}"))),
        Ok(scan) => {
            let multilabel = scan.multi_hot.is_some();
            for (key, e) in crate::data::task_problems(exp, &scan.classes, multilabel) {
                problems.push(problem(key, e));
            }
        }
    }
    let backbone = exp.model.backbone;
    match &exp.model.weights {
        Weights::File(path) => {
            if let Err(e) = crate::weights::read_file(path) {
                problems.push(problem(
                    "model.weights",
                    format!("model.weights: {}: {e}", path.display()),
                ));
            }
        }
        Weights::Imagenet => {
            if let Err(e) = crate::model::imagenet_weights(backbone) {
                problems.push(problem("model.weights", format!("model.weights: {e}")));
            }
        }
        Weights::None => {}
    }
    // The layer table of an untrained backbone: cheap, and the one the trainer uses.
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let layers = crate::model::Backbone::new(&vs.root(), backbone, false)
        .table()
        .len();
    // Only a number the file gives: the default asks for "up to 20", whatever there is.
    let written = positions.contains_key("finetune.unfreeze_last");
    if written && exp.finetune.unfreeze_last > layers {
        problems.push(problem(
            "finetune.unfreeze_last",
            format!(
                "finetune.unfreeze_last is {}, but {} has {layers} layers (`tlcap-tui layers {}` \
                 lists them)",
                exp.finetune.unfreeze_last,
                backbone.name(),
                backbone.name()
            ),
        ));
    }
    problems
}

/// Prints `ok` or every problem per file (and per folder without experiment files);
/// fails if any is invalid.
pub fn run(paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut files = Vec::new();
    let mut invalid = 0;
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        match config::experiment_files(path) {
            Ok(found) if found.is_empty() => {
                invalid += 1;
                crate::stdout::line(format!(
                    "error   {}: no *.yaml or *.yml files in this folder",
                    path.display()
                ))?;
            }
            Ok(found) => files.extend(found),
            Err(e) => {
                invalid += 1;
                crate::stdout::line(format!(
                    "error   {}: cannot read folder: {e}",
                    path.display()
                ))?;
            }
        }
    }
    for file in &files {
        let problems = match config::load_file(file) {
            Ok(exp) => match preflight(&exp, file) {
                problems if problems.is_empty() => {
                    crate::stdout::line(format!("ok      {} ({})", file.display(), exp.name))?;
                    continue;
                }
                problems => problems,
            },
            Err(errors) => errors.0,
        };
        invalid += 1;
        for e in &problems {
            crate::stdout::line(format!("error   {e}"))?;
        }
    }
    if invalid > 0 {
        anyhow::bail!(
            "{invalid} of {} experiment file(s) or folder(s) invalid",
            files.len().max(invalid)
        );
    }
    Ok(())
}
