//! The run folder, `runs/<experiment>/<timestamp>/`: everything a run produced, on
//! disk as it happens, so that nothing is lost when the process dies.
//!
//! - `config.yaml`: the settings in force (rewritten atomically when an edit is
//!   applied); `config-history.jsonl`: one line per applied edit;
//! - `split.json`: the classes and which files are in training and validation;
//! - `metrics.jsonl`: one [`EpochMetrics`] per line, fsynced before the next epoch;
//! - `events.log`: a timestamped line per event;
//! - `best-predictions.json`: every validation image's prediction at the best epoch;
//! - `last.safetensors`, `best.safetensors`: the head and every backbone layer
//!   trained so far, written atomically, with the epoch and phase in their metadata;
//! - `run.json`: how the run was started ([`RunInfo`]);
//! - `summary.json`: written when the run ends ([`Summary`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::events::{EndReason, EpochMetrics, Phase, Phases};
use crate::config::{Change, Experiment};
use crate::fsutil::write_atomic;

/// Which files went where, saved so `predict` and tests can check the validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Class names in label order.
    pub classes: Vec<String>,
    /// `(file, class index)` of the training images.
    pub train: Vec<(PathBuf, usize)>,
    /// `(file, class index)` of the validation images.
    pub val: Vec<(PathBuf, usize)>,
    /// Multi-label: each training image's label indices, in `train` order (then the
    /// index in `train` is the image's rarest label, which the split stratified by,
    /// or `classes.len()` for an image without any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train_labels: Vec<Vec<usize>>,
    /// Multi-label: each validation image's label indices, in `val` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_labels: Vec<Vec<usize>>,
}

/// What a checkpoint's metadata records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The last finished epoch (1-based).
    pub epoch: u32,
    /// Its phase.
    pub phase: Phase,
    /// Backbone layers unfrozen in that phase (0 in the frozen phase).
    pub unfrozen: usize,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The number format the frozen part ran in (`bf16` or `fp32`); None in older files.
    #[serde(default)]
    pub precision: Option<crate::config::Precision>,
    /// Multi-label: `classes` are labels, one sigmoid each.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multilabel: bool,
    /// Multi-label: each label's threshold at that epoch (tuned ones with
    /// `multilabel.tune_thresholds`), in label order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<f64>,
}

/// `summary.json`: how a run ended, written once when it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The experiment's name.
    pub experiment: String,
    /// The backbone's name.
    pub backbone: String,
    /// Why the run ended.
    pub reason: EndReason,
    /// Epochs finished in total.
    pub epochs: u32,
    /// The phase it ended in.
    pub phase: Phase,
    /// The best epoch by the stall monitor (the epoch in `best.safetensors`).
    pub best: Option<EpochMetrics>,
    /// Parameters of backbone and head.
    pub parameters: usize,
    /// Of those, trainable at the end.
    pub trainable_parameters: usize,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// What stopped the run, when something said: `SIGTERM`, `stdout closed`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
}

/// `run.json`: how a run was started, so that `resume` continues it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Which phases the run goes through.
    pub phases: Phases,
    /// Whether the end writes `model.safetensors`.
    #[serde(default)]
    pub export_model: bool,
}

/// What [`RunDir::restart`] removes: everything a run writes except its history.
const RESTART_REMOVES: [&str; 10] = [
    "metrics.jsonl",
    "status.json",
    "summary.json",
    "split.json",
    "run.json",
    "config-history.jsonl",
    "stopped.safetensors",
    "last.safetensors",
    "best.safetensors",
    "best-predictions.json",
];

/// An open run folder.
pub struct RunDir {
    /// The folder.
    pub path: PathBuf,
    metrics: File,
    events: File,
}

impl RunDir {
    /// Creates `root/<name>/<UTC timestamp>/` (with `-2`, `-3`... if taken) and writes
    /// the config as used.
    pub fn create(root: &Path, exp: &Experiment) -> anyhow::Result<RunDir> {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
        let path = crate::fsutil::create_unique_dir(&root.join(folder_name(&exp.name)), &stamp)?;
        write_atomic(
            &path.join("config.yaml"),
            serde_yaml::to_string(exp)?.as_bytes(),
        )?;
        RunDir::open(&path)
    }

    /// Starts anew in an existing run folder whose earlier attempt ended before its
    /// first epoch finished (killed, or stopped by a signal while in epoch 1): what
    /// that attempt wrote besides its history (`events.log`, `control.jsonl`) is
    /// removed, the config is written as used now, and `events.log` says so.
    pub fn restart(path: &Path, exp: &Experiment) -> anyhow::Result<RunDir> {
        for name in RESTART_REMOVES {
            match std::fs::remove_file(path.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e)
                        .with_context(|| format!("cannot remove {}", path.join(name).display()))
                }
                _ => {}
            }
        }
        write_atomic(
            &path.join("config.yaml"),
            serde_yaml::to_string(exp)?.as_bytes(),
        )?;
        let mut run = RunDir::open(path)?;
        run.log("started again in this folder: the earlier attempt ended before its first epoch");
        Ok(run)
    }

    /// Opens an existing run folder to append to it (resume).
    pub fn open(path: &Path) -> anyhow::Result<RunDir> {
        let append = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.join(name))
                .with_context(|| format!("cannot open {}", path.join(name).display()))
        };
        Ok(RunDir {
            path: path.to_path_buf(),
            metrics: append("metrics.jsonl")?,
            events: append("events.log")?,
        })
    }

    /// Appends one epoch to `metrics.jsonl` and fsyncs it.
    pub fn append_metrics(&mut self, m: &EpochMetrics) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(m)?;
        line.push('\n');
        self.metrics.write_all(line.as_bytes())?;
        self.metrics.sync_data()?;
        Ok(())
    }

    /// Appends a timestamped line to `events.log` (best effort: a log line is never
    /// worth failing a run for).
    pub fn log(&mut self, text: &str) {
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let _ = writeln!(self.events, "{stamp} {text}");
    }

    /// Writes the split.
    pub fn write_split(&self, split: &Split) -> anyhow::Result<()> {
        write_atomic(
            &self.path.join("split.json"),
            serde_json::to_string(split)?.as_bytes(),
        )
    }

    /// Records an applied edit: `config.yaml` becomes the new settings and the change
    /// list is appended to `config-history.jsonl`.
    pub fn record_config(
        &mut self,
        epoch: u32,
        exp: &Experiment,
        changes: &[Change],
    ) -> anyhow::Result<()> {
        write_atomic(
            &self.path.join("config.yaml"),
            serde_yaml::to_string(exp)?.as_bytes(),
        )?;
        let line = serde_json::json!({
            "from_epoch": epoch,
            "changes": changes.iter().map(|c| serde_json::json!({
                "path": c.path, "old": c.old, "new": c.new,
            })).collect::<Vec<_>>(),
        });
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("config-history.jsonl"))?;
        writeln!(f, "{line}")?;
        f.sync_data()?;
        Ok(())
    }

    /// Writes `<name>.safetensors` atomically.
    pub fn write_checkpoint(
        &self,
        name: &str,
        tensors: &[(String, Tensor)],
        info: &CheckpointInfo,
    ) -> anyhow::Result<PathBuf> {
        let path = self.path.join(format!("{name}.safetensors"));
        let meta = HashMap::from([("tlcap".to_owned(), serde_json::to_string(info)?)]);
        crate::weights::write_safetensors(&path, tensors, Some(meta))?;
        Ok(path)
    }

    /// Writes `summary.json`.
    pub fn write_summary(&self, summary: &Summary) -> anyhow::Result<()> {
        write_atomic(
            &self.path.join("summary.json"),
            serde_json::to_string_pretty(summary)?.as_bytes(),
        )
    }

    /// Writes `run.json`.
    pub fn write_info(&self, info: &RunInfo) -> anyhow::Result<()> {
        write_atomic(
            &self.path.join("run.json"),
            serde_json::to_string(info)?.as_bytes(),
        )
    }
}

/// The folder an experiment's runs go in, under the runs root: its name, kept usable
/// as one folder name.
pub fn folder_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("run{s}")
    } else {
        s
    }
}

/// What a watcher can read of a run's `metrics.jsonl`: every good line, and one
/// problem per bad one (`line N: why`), so one damaged line hides no other epoch. A torn
/// last line (being written, or the process died while writing it) is no problem.
pub fn read_metrics_lenient(run: &Path) -> (Vec<EpochMetrics>, Vec<String>) {
    let text = match std::fs::read(run.join("metrics.jsonl")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), Vec::new()),
        Err(e) => return (Vec::new(), vec![format!("metrics.jsonl unreadable: {e}")]),
    };
    let lines: Vec<&str> = text.lines().collect();
    let (mut good, mut problems) = (Vec::new(), Vec::new());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(m) => good.push(m),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => problems.push(format!("metrics.jsonl line {}: {e}; skipped", i + 1)),
        }
    }
    (good, problems)
}

/// Every complete line of a run's `metrics.jsonl`. A torn last line (the process
/// died while writing it) is ignored; a bad line elsewhere is an error.
pub fn read_metrics(run: &Path) -> anyhow::Result<Vec<EpochMetrics>> {
    let path = run.join("metrics.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(m) => out.push(m),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => bail!("{} line {}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Reads a checkpoint: its tensors and its [`CheckpointInfo`].
pub fn read_checkpoint(path: &Path) -> anyhow::Result<(Vec<(String, Tensor)>, CheckpointInfo)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a checkpoint: {e:?}", path.display()))?;
    let info = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("tlcap"))
        .ok_or_else(|| {
            anyhow::anyhow!("{}: not a tlcap checkpoint (no metadata)", path.display())
        })?;
    let info: CheckpointInfo = serde_json::from_str(info)?;
    let file = crate::weights::read_bytes(&bytes)?;
    Ok((file.tensors, info))
}

/// The experiment a run used (its `config.yaml`).
pub fn read_config(run: &Path) -> anyhow::Result<Experiment> {
    let path = run.join("config.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a valid experiment", path.display()))
}

/// A run's `summary.json` (present once the run has ended).
pub fn read_summary(run: &Path) -> anyhow::Result<Summary> {
    let path = run.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a run summary", path.display()))
}

/// A run's `run.json`; None for a folder without one (older runs).
pub fn read_info(run: &Path) -> anyhow::Result<Option<RunInfo>> {
    let path = run.join("run.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("{} is not a run description", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
