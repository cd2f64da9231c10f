//! The `--json` event stream of headless runs: one JSON object per line, each with an
//! `event` field naming its kind. The kinds and their fields are stable (the README
//! has the table; a test reads every kind).
//!
//! | `event` | fields |
//! |---|---|
//! | `started` | `run_dir`, `experiment`, `classes`, `train`, `val`, `skipped`, `device`, `weights`, `precision` |
//! | `phase` | `phase`, `epoch` (first epoch of the phase), `trainable_layers`, `trainable_params` |
//! | `epoch` | every metric of the epoch (see [`super::epoch_json`]), `compute`, `input_wait_seconds` |
//! | `stall` | `epoch`, `monitor`, `value`, `action`, `suggestion` (in words) |
//! | `config_applied` | `changes`: `[{path, old, new, live}]` |
//! | `config_error` | `errors`: `["file:line:column: message", ...]` (the last good settings stay) |
//! | `control` | `command`, `source` (`SIGTERM`, `control.jsonl`, ...) |
//! | `note` | `text` |
//! | `finished` | `status` (`completed`, `stopped`, `stalled`), `stopped_by`, `best_epoch`, `best_phase`, `monitor`, `best_value`, `best_val_accuracy`, `run_dir`, `checkpoints` |

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::{Change, ChangeKind, Precision};
use crate::train::events::{Deepened, StallAction, Suggestion};
use crate::train::stall::{monitored, BestRule};
use crate::train::{EndReason, EpochMetrics, Phase};

/// What `started` reports, gathered from the first trainer events.
#[derive(Debug, Default)]
pub struct Started {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The experiment's name.
    pub experiment: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Training, validation and skipped images.
    pub images: (usize, usize, usize),
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// Where the weights came from.
    pub weights: String,
    /// The frozen part's number format.
    pub precision: Precision,
}

/// The checkpoints a run wrote, by kind (the latest path of each).
#[derive(Debug, Default)]
pub struct Checkpoints {
    paths: Vec<(String, PathBuf)>,
}

impl Checkpoints {
    /// Records a `Checkpoint` event's path.
    pub fn saw(&mut self, path: PathBuf) {
        let kind = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.paths.retain(|(k, _)| *k != kind);
        self.paths.push((kind, path));
    }
}

/// `started`.
pub fn started(s: &Started) -> Value {
    json!({
        "event": "started",
        "run_dir": s.run_dir,
        "experiment": s.experiment,
        "classes": s.classes,
        "train": s.images.0,
        "val": s.images.1,
        "skipped": s.images.2,
        "device": s.device,
        "weights": s.weights,
        "precision": crate::text::precision(s.precision),
    })
}

/// `phase`.
pub fn phase(
    phase: Phase,
    epoch: u32,
    (trainable_layers, trainable_params): (usize, usize),
    deepened: Option<&Deepened>,
) -> Value {
    let mut v = json!({
        "event": "phase",
        "phase": phase,
        "epoch": epoch,
        "trainable_layers": trainable_layers,
        "trainable_params": trainable_params,
    });
    if let Some(d) = deepened {
        v["deepened"] = json!({
            "group": d.group,
            "groups": d.groups,
            "of": d.of,
            "by": d.by,
        });
    }
    v
}

/// `epoch`: the epoch object with its tag.
pub fn epoch(m: &EpochMetrics) -> Value {
    let mut v = super::epoch_json(m);
    v["event"] = "epoch".into();
    v
}

/// `stall`.
pub fn stall(epoch: u32, s: &Suggestion) -> Value {
    let action = match s.action {
        StallAction::Stopping => "stop",
        StallAction::Unfreeze {
            automatic: true, ..
        } => "unfreezing",
        StallAction::Unfreeze { .. } => "suggest_unfreeze",
        StallAction::UnfreezeMore {
            automatic: true, ..
        } => "unfreezing_more",
        StallAction::UnfreezeMore { .. } => "suggest_unfreeze_more",
        StallAction::LowerLr { .. } => "lowering_lr",
        StallAction::StopOrLowerLr { .. } => "suggest_lower_lr",
    };
    json!({
        "event": "stall",
        "epoch": epoch,
        "monitor": crate::text::monitor(s.monitor),
        "value": s.value,
        "action": action,
        "suggestion": crate::text::suggestion(s),
    })
}

/// `config_applied`.
pub fn config_applied(changes: &[Change]) -> Value {
    let changes: Vec<Value> = changes
        .iter()
        .map(|c| {
            json!({"path": c.path, "old": c.old, "new": c.new, "live": c.kind == ChangeKind::Live})
        })
        .collect();
    json!({"event": "config_applied", "changes": changes})
}

/// `config_error`.
pub fn config_error(errors: &[String]) -> Value {
    json!({"event": "config_error", "errors": errors})
}

/// `control`.
pub fn control(command: &str, source: &str) -> Value {
    json!({"event": "control", "command": command, "source": source})
}

/// `lr_lowered`.
pub fn lr_lowered(from: f64, to: f64, epoch: u32, batch: Option<usize>, by: &str) -> Value {
    json!({"event": "lr_lowered", "from": from, "to": to, "epoch": epoch, "batch": batch, "by": by})
}

/// `note`.
pub fn note(text: &str) -> Value {
    json!({"event": "note", "text": text})
}

/// `finished`.
pub fn finished(
    reason: EndReason,
    stopped_by: Option<&str>,
    best: Option<&EpochMetrics>,
    rule: BestRule,
    run_dir: Option<&Path>,
    checkpoints: &Checkpoints,
) -> Value {
    let files: serde_json::Map<String, Value> = checkpoints
        .paths
        .iter()
        .map(|(k, p)| (k.clone(), json!(p)))
        .collect();
    let mut files = files;
    if let Some(dir) = run_dir {
        for kind in ["best", "last"] {
            let path = dir.join(format!("{kind}.safetensors"));
            if !files.contains_key(kind) && path.is_file() {
                files.insert(kind.into(), json!(path));
            }
        }
    }
    json!({
        "event": "finished",
        "status": reason,
        "stopped_by": stopped_by,
        "best_epoch": best.map(|b| b.epoch),
        "best_phase": best.map(|b| b.phase),
        "monitor": crate::text::monitor(rule.monitor),
        "best_value": best.map(|b| monitored(rule.monitor, b)),
        "best_val_accuracy": best.map(|b| b.val_accuracy),
        "run_dir": run_dir,
        "checkpoints": files,
    })
}
