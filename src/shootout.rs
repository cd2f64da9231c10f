//! The architecture shootout: several experiments run one after another and compared
//! in one table — best val_accuracy and its epoch, frozen best against fine-tuned
//! best, seconds per epoch, trainable and total parameters — exported as
//! `runs/shootout-<timestamp>/results.csv` and `results.md`.

use std::path::{Path, PathBuf};

use anyhow::Context;
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
    })
}

/// Reads a finished run folder (`metrics.jsonl`, `summary.json`) into a row.
pub fn summarize(run_dir: &Path) -> anyhow::Result<Option<ResultRow>> {
    let metrics = read_metrics(run_dir)?;
    let path = run_dir.join("summary.json");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    )?;
    let count = |k: &str| summary[k].as_u64().unwrap_or(0) as usize;
    Ok(row(
        summary["experiment"].as_str().unwrap_or_default(),
        summary["backbone"].as_str().unwrap_or_default(),
        &metrics,
        (count("trainable_parameters"), count("parameters")),
        run_dir.to_path_buf(),
    ))
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The comparison as a Markdown table, best first.
pub fn markdown(rows: &[ResultRow]) -> String {
    let mut out = String::from(
        "| experiment | backbone | best val_acc | epoch | frozen best | fine-tuned best | s/epoch | trainable / total params |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in sorted(rows) {
        out.push_str(&format!(
            "| {} | {} | {:.4} | {} | {} | {} | {:.1} | {} / {} |\n",
            r.experiment,
            r.backbone,
            r.best_val_accuracy,
            r.best_epoch,
            opt(r.frozen_best),
            opt(r.finetune_best),
            r.seconds_per_epoch,
            r.trainable_params,
            r.total_params
        ));
    }
    out
}

fn sorted(rows: &[ResultRow]) -> Vec<&ResultRow> {
    let mut v: Vec<&ResultRow> = rows.iter().collect();
    v.sort_by(|a, b| b.best_val_accuracy.total_cmp(&a.best_val_accuracy));
    v
}

/// Writes `results.csv` and `results.md` into a new `root/shootout-<timestamp>/`.
pub fn export(root: &Path, rows: &[ResultRow]) -> anyhow::Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    // A new folder each time, even for two exports in the same second.
    let dir = crate::fsutil::create_unique_dir(root, &format!("shootout-{stamp}"))?;
    let mut csv = csv::Writer::from_writer(Vec::new());
    for r in sorted(rows) {
        csv.serialize(r)?;
    }
    crate::fsutil::write_atomic(&dir.join("results.csv"), &csv.into_inner()?)?;
    crate::fsutil::write_atomic(&dir.join("results.md"), markdown(rows).as_bytes())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::metrics::Confusion;

    fn m(epoch: u32, phase: Phase, val: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            phase,
            loss: 0.5,
            accuracy: 0.8,
            val_loss: 0.5,
            val_accuracy: val,
            val_precision: None,
            val_recall: None,
            val_f1: None,
            val_auc: None,
            confusion: Confusion::new(2, &[], &[]),
            lr: 1e-3,
            seconds: epoch as f64,
            images_per_sec: 1.0,
            val_images_per_sec: 1.0,
            compute: String::new(),
            input_wait_seconds: 0.0,
            stalled: false,
            suggestion: None,
        }
    }

    #[test]
    fn rows_compare_phases_and_export() {
        let a = row(
            "a",
            "mobilenet_v2",
            &[
                m(1, Phase::Frozen, 0.80),
                m(2, Phase::Frozen, 0.82),
                m(3, Phase::Finetune, 0.86),
            ],
            (1000, 3000),
            "runs/a".into(),
        )
        .unwrap();
        assert_eq!(
            (a.best_epoch, a.frozen_best, a.finetune_best),
            (3, Some(0.82), Some(0.86))
        );
        assert_eq!(a.seconds_per_epoch, 2.0);
        let b = row(
            "b",
            "small_cnn",
            &[m(1, Phase::Frozen, 0.75)],
            (10, 10),
            "runs/b".into(),
        )
        .unwrap();
        assert_eq!(b.finetune_best, None);
        let md = markdown(&[b.clone(), a.clone()]);
        let lines: Vec<&str> = md.lines().collect();
        assert!(
            lines[2].starts_with("| a | mobilenet_v2 | 0.8600 | 3 | 0.8200 | 0.8600 |"),
            "{md}"
        );
        assert!(
            lines[3].contains("| b | small_cnn | 0.7500 | 1 | 0.7500 | - |"),
            "{md}"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = export(dir.path(), &[a, b]).unwrap();
        let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
        assert!(
            csv.starts_with("experiment,backbone,best_val_accuracy,best_epoch,"),
            "{csv}"
        );
        assert_eq!(csv.lines().count(), 3);
        assert!(row("c", "x", &[], (0, 0), "runs/c".into()).is_none());
    }
}
