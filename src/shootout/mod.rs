//! The architecture shootout: several experiments run one after another and compared
//! in one table — best val_accuracy and its epoch, frozen best against fine-tuned
//! best, seconds per epoch, trainable and total parameters — exported as
//! `runs/shootout-<timestamp>/results.csv` and `results.md`.

use std::path::{Path, PathBuf};

pub use crate::results::ResultRow;

mod parallel;
pub mod seeds;

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The comparison as a Markdown table, best first.
pub fn markdown(rows: &[ResultRow]) -> String {
    // Multi-label runs compare by mean AUC: a column once one is in the table.
    let auc = rows.iter().any(|r| r.best_mean_auc.is_some());
    let mut out = String::from(
        "| experiment | backbone | best val_acc | epoch | frozen best | fine-tuned best | s/epoch | trainable / total params |",
    );
    out.push_str(if auc { " best mean AUC |\n" } else { "\n" });
    out.push_str("|---|---|---|---|---|---|---|---|");
    out.push_str(if auc { "---|\n" } else { "\n" });
    for r in sorted(rows) {
        out.push_str(&format!(
            "| {} | {} | {:.4} | {} | {} | {} | {:.1} | {} / {} |",
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
        if auc {
            out.push_str(&format!(" {} |", opt(r.best_mean_auc)));
        }
        out.push('\n');
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

/// `tlcap-tui shootout`: every experiment headless (once per seed of `seeds` when
/// given), then the comparison.
pub fn run_headless(
    paths: &[PathBuf],
    runs: PathBuf,
    max_epochs: Option<u32>,
    workers: usize,
    fresh: bool,
    seeds: &[u64],
) -> anyhow::Result<()> {
    // Every valid file; invalid ones are reported and skipped.
    let mut experiments = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        for (file, loaded) in crate::config::load_all(path)? {
            match loaded {
                Ok(exp) => {
                    experiments.push(*exp);
                    files.push(file);
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("error   {e}");
                    }
                    eprintln!("skipping {}", file.display());
                }
            }
        }
    }
    let started = std::time::Instant::now();
    if workers > 1 {
        if !seeds.is_empty() {
            anyhow::bail!(
                "--seeds runs in one process for now: drop --workers, or start one worker \
                 per seed file"
            );
        }
        return crate::shootout::parallel::run(&files, &runs, max_epochs, workers, fresh, started);
    }
    let base: Vec<String> = experiments.iter().map(|e| e.name.clone()).collect();
    let experiments: Vec<_> = if seeds.is_empty() {
        experiments
    } else {
        experiments
            .into_iter()
            .flat_map(|exp| {
                seeds.iter().map(move |&s| {
                    let mut e = exp.clone();
                    e.seed = s;
                    e.name = seeds::seeded_name(&exp.name, s);
                    e
                })
            })
            .collect()
    };
    let mut rows = Vec::new();
    let mut interrupted = None;
    for (i, exp) in experiments.into_iter().enumerate() {
        eprintln!("== shootout {}: {}", i + 1, exp.name);
        let options = crate::train::Options {
            runs_root: runs.clone(),
            max_epochs,
            ..Default::default()
        };
        // One failed experiment does not end the shootout; a signal or a closed
        // stdout does (the results so far are still exported).
        let name = exp.name.clone();
        match crate::headless::run(exp, options, false, None)
            .and_then(|run| run.map(|r| crate::results::summarize(&r)).transpose())
        {
            Ok(row) => rows.extend(row.flatten()),
            Err(e) if e.is::<crate::headless::Interrupted>() || crate::stdout::reader_gone(&e) => {
                interrupted = Some(e);
                break;
            }
            Err(e) => eprintln!("error: {name}: {e:#}"),
        }
    }
    let out = report(&rows, &runs, started, "")?;
    if !seeds.is_empty() {
        let table = seeds::markdown(&base, &rows, seeds);
        crate::fsutil::write_atomic(&out.join("seeds.md"), table.as_bytes())?;
        crate::stdout::line(format!(
            "\nover seeds {}: mean ± sd (min–max)\n{}",
            seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            table.trim_end()
        ))?;
    }
    match interrupted {
        Some(e) => Err(e.context("the shootout ended early; the results so far are exported")),
        None => Ok(()),
    }
}

/// Exports the comparison and prints it with a closing line (`how` says how it ran).
fn report(
    rows: &[ResultRow],
    runs: &Path,
    started: std::time::Instant,
    how: &str,
) -> anyhow::Result<PathBuf> {
    let out = export(runs, rows)?;
    crate::stdout::line(markdown(rows).trim_end())?;
    crate::stdout::line(format!(
        "{} experiments in {:.0} s{how}; results in {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    ))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::row;
    use crate::train::metrics::Confusion;
    use crate::train::{EpochMetrics, Phase};

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
            val_balanced_accuracy: None,
            val_class_recall: Vec::new(),
            confusion: Confusion::new(2, &[], &[]),
            lr: 1e-3,
            seconds: epoch as f64,
            images_per_sec: 1.0,
            val_images_per_sec: 1.0,
            compute: Default::default(),
            input_wait_seconds: 0.0,
            stalled: false,
            suggestion: None,
            mixed: None,
            lr_lowered: None,
            multilabel: None,
            deepened: 0,
        }
    }

    /// A multi-label run's row carries its best mean AUC, and the table gains the
    /// column (a dash for single-label runs).
    #[test]
    fn multilabel_rows_carry_the_best_mean_auc() {
        use crate::train::metrics::multilabel_scores;
        let mut e1 = m(1, Phase::Frozen, 0.90);
        e1.multilabel = Some(multilabel_scores(
            &[1, 0, 0, 1],
            &[0.9, 0.6, 0.7, 0.4],
            &[0.5],
        ));
        let mut e2 = m(2, Phase::Frozen, 0.80);
        e2.multilabel = Some(multilabel_scores(
            &[1, 0, 0, 1],
            &[0.9, 0.1, 0.2, 0.8],
            &[0.5],
        ));
        let ml = row("ml", "mobilenet_v2", &[e1, e2], (1, 1), "runs/ml".into()).unwrap();
        // Pairs (pos, neg): epoch 1 (.9>.6, .9>.7, .4<.6, .4<.7) 0.5; epoch 2: 1.
        assert_eq!(ml.best_mean_auc, Some(1.0));
        let single = row(
            "s",
            "small_cnn",
            &[m(1, Phase::Frozen, 0.7)],
            (1, 1),
            "runs/s".into(),
        )
        .unwrap();
        assert_eq!(single.best_mean_auc, None);
        let md = markdown(&[ml, single]);
        assert!(
            md.lines().next().unwrap().ends_with("| best mean AUC |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 / 1 | 1.0000 |") && md.contains("| 1 / 1 | - |"),
            "{md}"
        );
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
