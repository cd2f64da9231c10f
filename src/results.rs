//! Results of runs, below the dashboard and the reports: the best epoch of a run (one
//! rule, everywhere) and a run folder summarised into one comparable row.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::train::run_dir::read_metrics;
use crate::train::{EpochMetrics, Phase};

/// One experiment's line in the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultRow {
    /// Experiment name.
    pub experiment: String,
    /// Backbone name.
    pub backbone: String,
    /// Best validation accuracy over all epochs.
    pub best_val_accuracy: f64,
    /// Its epoch (1-based).
    pub best_epoch: u32,
    /// Best validation accuracy in the frozen phase.
    pub frozen_best: Option<f64>,
    /// Best validation accuracy in the fine-tune phase.
    pub finetune_best: Option<f64>,
    /// Mean wall seconds per epoch.
    pub seconds_per_epoch: f64,
    /// Parameters trainable at the end (head included).
    pub trainable_params: usize,
    /// All parameters (backbone and head).
    pub total_params: usize,
    /// Epochs run.
    pub epochs: u32,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Multi-label runs: the best mean AUC over the labels of any epoch (what such a
    /// run is compared by; `best_val_accuracy` is its label accuracy).
    pub best_mean_auc: Option<f64>,
}

/// The epoch with the highest val_accuracy (the earliest on a tie; NaN never wins).
pub fn best_of<'a>(rows: impl Iterator<Item = &'a EpochMetrics>) -> Option<&'a EpochMetrics> {
    rows.filter(|m| !m.val_accuracy.is_nan()).fold(
        None,
        |best: Option<&EpochMetrics>, m| match best {
            Some(b) if b.val_accuracy >= m.val_accuracy => Some(b),
            _ => Some(m),
        },
    )
}

/// Builds a result row from epoch rows and the parameter counts.
pub fn row(
    experiment: &str,
    backbone: &str,
    epochs: &[EpochMetrics],
    params: (usize, usize),
    run_dir: PathBuf,
) -> Option<ResultRow> {
    let best = best_of(epochs.iter())?;
    let phase_best =
        |p: Phase| best_of(epochs.iter().filter(|m| m.phase == p)).map(|m| m.val_accuracy);
    Some(ResultRow {
        experiment: experiment.to_string(),
        backbone: backbone.to_string(),
        best_val_accuracy: best.val_accuracy,
        best_epoch: best.epoch,
        frozen_best: phase_best(Phase::Frozen),
        finetune_best: phase_best(Phase::Finetune),
        seconds_per_epoch: epochs.iter().map(|m| m.seconds).sum::<f64>() / epochs.len() as f64,
        trainable_params: params.0,
        total_params: params.1,
        epochs: epochs.len() as u32,
        run_dir,
        best_mean_auc: epochs
            .iter()
            .filter(|m| m.multilabel.is_some())
            .filter_map(EpochMetrics::mean_auc)
            .filter(|a| !a.is_nan())
            .reduce(f64::max),
    })
}

/// Reads a finished run folder (`metrics.jsonl`, `summary.json`) into a row.
pub fn summarize(run_dir: &Path) -> anyhow::Result<Option<ResultRow>> {
    let metrics = read_metrics(run_dir)?;
    let summary = crate::train::run_dir::read_summary(run_dir)?;
    Ok(row(
        &summary.experiment,
        &summary.backbone,
        &metrics,
        (summary.trainable_parameters, summary.parameters),
        run_dir.to_path_buf(),
    ))
}

/// What a run folder says about its run right now: what `attach` shows. Read from
/// files only, so it works for runs of other processes and other machines.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderSnapshot {
    /// The settings in force (`config.yaml`).
    pub config: Option<crate::config::Experiment>,
    /// The heartbeat (`status.json`).
    pub status: Option<crate::train::status::Status>,
    /// Seconds since the heartbeat was written.
    pub age_seconds: Option<f64>,
    /// Every finished epoch (`metrics.jsonl`).
    pub epochs: Vec<EpochMetrics>,
    /// How it ended (`summary.json`), once it has.
    pub summary: Option<crate::train::run_dir::Summary>,
    /// The size of `metrics.jsonl` when it was read.
    pub metrics_bytes: u64,
    /// What could not be read: a heartbeat that does not parse, damaged metrics lines
    /// (skipped). The rest of the folder is read all the same.
    pub problems: Vec<String>,
    /// The held-out test accuracy `tlcap-tui evaluate` wrote (`test.json`), if any.
    pub test_accuracy: Option<f64>,
}

/// The accuracy in a run's `test.json` (written by `evaluate`), if there is one.
pub fn test_accuracy(run_dir: &Path) -> Option<f64> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("test.json")).ok()?).ok()?;
    v["accuracy"].as_f64()
}

/// Reads a run folder's state; `previous` saves re-reading an unchanged
/// `metrics.jsonl` (a run's metrics only grow).
pub fn snapshot(run_dir: &Path, previous: Option<&FolderSnapshot>) -> FolderSnapshot {
    let (status, status_problem) = match crate::train::status::read_checked(run_dir) {
        Ok(s) => (s, None),
        Err(why) => (None, Some(why)),
    };
    let age_seconds = status.as_ref().and_then(|s| s.age_seconds());
    let metrics_len = std::fs::metadata(run_dir.join("metrics.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    let (epochs, mut problems) = match previous.filter(|p| p.metrics_bytes == metrics_len) {
        Some(p) => (
            p.epochs.clone(),
            p.problems
                .iter()
                .filter(|w| w.starts_with("metrics.jsonl"))
                .cloned()
                .collect(),
        ),
        None => crate::train::run_dir::read_metrics_lenient(run_dir),
    };
    problems.extend(status_problem);
    FolderSnapshot {
        config: previous
            .and_then(|p| p.config.clone())
            .or_else(|| crate::train::run_dir::read_config(run_dir).ok()),
        status,
        age_seconds,
        epochs,
        summary: crate::train::run_dir::read_summary(run_dir).ok(),
        metrics_bytes: metrics_len,
        problems,
        test_accuracy: test_accuracy(run_dir),
    }
}

/// Every run folder under a runs root (`<root>/<experiment>/<timestamp>/`), sorted.
pub fn run_folders(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(experiments) = std::fs::read_dir(root) else {
        return out;
    };
    for exp in experiments.flatten() {
        let Ok(runs) = std::fs::read_dir(exp.path()) else {
            continue;
        };
        for run in runs.flatten() {
            if run.path().join("config.yaml").is_file() {
                out.push(run.path());
            }
        }
    }
    out.sort();
    out
}
