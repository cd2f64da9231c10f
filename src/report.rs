//! `tlcap-tui report RUN_DIR`: a run's results without a dashboard: the epoch table,
//! the best epoch's confusion matrix with row percentages and per-class scores, and the
//! most badly predicted validation images, printed and written to `report.md` in the
//! run folder with charts of the training curves and the confusion matrix
//! (`accuracy.svg`, `loss.svg`, `confusion.svg`). Everything comes from the run
//! folder's files: nothing is recomputed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::train::metrics::Confusion;
use crate::train::predictions::ValPredictions;
use crate::train::stall::BestRule;
use crate::train::EpochMetrics;

/// How many of the worst images the report lists.
const WORST: usize = 12;

/// Why a run's report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The run has no row in `metrics.jsonl` yet.
    #[error("{0}: no finished epoch yet")]
    NoEpochs(PathBuf),
    /// plotters failed to draw a chart (its error, as debug text).
    #[error("cannot draw the chart: {0}")]
    Chart(String),
    /// Reading the run folder's files or writing `report.md` (the readers in
    /// `train::run_dir` and `fsutil` report anyhow errors; their chain is kept).
    #[error(transparent)]
    Files(#[from] anyhow::Error),
    /// Formatting the markdown.
    #[error(transparent)]
    Format(#[from] std::fmt::Error),
}

/// Writes `report.md` and its charts in `run` and prints the report's text.
pub fn run(run: &Path) -> anyhow::Result<()> {
    let written = write(run)?;
    crate::stdout::line(written.markdown.trim_end())?;
    crate::stdout::line(format!(
        "\nwritten: {} (with {})",
        run.join("report.md").display(),
        written.charts.join(", ")
    ))
}

/// What [`write`] wrote.
pub struct Written {
    /// The report's markdown (also in `report.md`).
    pub markdown: String,
    /// The SVG charts beside it (a multi-label run has a label table, no confusion
    /// matrix).
    pub charts: Vec<&'static str>,
}

/// Builds the report of `run`, writes `report.md` and the SVG charts beside it, and
/// returns the markdown with the charts' names.
pub fn write(run: &Path) -> Result<Written, ReportError> {
    let mut charts = vec!["accuracy.svg", "loss.svg", "lr.svg"];
    let exp = crate::train::run_dir::read_config(run)?;
    let epochs = crate::train::run_dir::read_metrics(run)?;
    if epochs.is_empty() {
        return Err(ReportError::NoEpochs(run.to_path_buf()));
    }
    let rule = BestRule::of(&exp);
    let best = rule.best_index(&epochs).map(|i| &epochs[i]);
    let summary = crate::train::run_dir::read_summary(run).ok();
    let predictions = ValPredictions::read(run).ok();
    let classes: Vec<String> = match &predictions {
        Some(p) => p.classes.clone(),
        None => (0..epochs[0].confusion.n)
            .map(|c| format!("class {c}"))
            .collect(),
    };

    let mut md = String::new();
    writeln!(md, "# {} — {}\n", exp.name, run.display())?;
    let ended = summary
        .as_ref()
        .map_or("not finished (no summary.json)".into(), |s| {
            crate::text::end_reason(s.reason).to_string()
        });
    writeln!(
        md,
        "{} on {}, {} epochs, {ended}.",
        exp.model.backbone.name(),
        exp.data.dir.display(),
        epochs.len()
    )?;
    if let Some(b) = best {
        writeln!(
            md,
            "Best epoch by {}: **{}** ({}), val_accuracy **{:.4}**, val_loss {:.4}{}.\n",
            crate::text::word(&rule.monitor),
            b.epoch,
            b.phase.name(),
            b.val_accuracy,
            b.val_loss,
            match &b.multilabel {
                Some(ml) => format!(
                    " (multi-label: right (image, label) decisions), mean AUC {}, mAP {}, \
                     macro F1 {:.4}",
                    ml.mean_auc.map_or("-".into(), |a| format!("**{a:.4}**")),
                    ml.map.map_or("-".into(), |a| format!("{a:.4}")),
                    ml.macro_f1
                ),
                None => b
                    .val_auc
                    .map(|a| format!(", AUC {a:.4}"))
                    .unwrap_or_default(),
            }
        )?;
    }
    if let Some(t) = crate::evaluate::read(run) {
        writeln!(md, "## Test set (`tlcap-tui evaluate`)\n")?;
        writeln!(md, "```\n{}\n```\n", crate::evaluate::words(&t))?;
    }
    writeln!(md, "## Epochs\n")?;
    writeln!(
        md,
        "| epoch | phase | loss | acc | val_loss | val_acc | val_bal_acc | val_auc | lr | s |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    )?;
    for m in &epochs {
        let phase = crate::text::phase_label(m);
        let mark = if Some(m.epoch) == best.map(|b| b.epoch) {
            " *"
        } else {
            ""
        };
        writeln!(
            md,
            "| {}{mark} | {phase} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {:.1} |",
            m.epoch,
            m.loss,
            m.accuracy,
            m.val_loss,
            m.val_accuracy,
            m.balanced_accuracy(),
            m.val_auc.map_or("-".into(), |a| format!("{a:.4}")),
            crate::text::short_float(m.lr),
            m.seconds
        )?;
    }
    writeln!(
        md,
        "\n![accuracy](accuracy.svg) ![loss](loss.svg) ![learning rate](lr.svg)\n"
    )?;
    if let Some((b, ml)) = best.and_then(|b| b.multilabel.as_ref().map(|ml| (b, ml))) {
        writeln!(
            md,
            "## Labels, epoch {} (multi-label: each label at its threshold)\n",
            b.epoch
        )?;
        let labels: Vec<String> = match &predictions {
            Some(p) => p.classes.clone(),
            None => (0..ml.labels.len()).map(|l| format!("label {l}")).collect(),
        };
        writeln!(
            md,
            "```\n{}\n```\n",
            crate::evaluate::label_table(&labels, ml)
        )?;
    } else if let Some(b) = best {
        writeln!(
            md,
            "## Confusion matrix, epoch {} (rows: true class)\n",
            b.epoch
        )?;
        md.push_str(&matrix_table(&b.confusion, &classes));
        if let Some(t) = predictions.as_ref().and_then(|p| p.threshold) {
            writeln!(
                md,
                "\nDecision threshold: probability of `{}` ≥ {t}.",
                classes[1]
            )?;
        }
        writeln!(md, "\n![confusion matrix](confusion.svg)\n")?;
        confusion_chart(&run.join("confusion.svg"), &b.confusion, &classes)?;
        charts.push("confusion.svg");
    }
    match &predictions {
        Some(p) if p.is_multilabel() => {
            let names = |ls: &[usize]| match ls {
                [] => "-".to_string(),
                ls => ls
                    .iter()
                    .map(|&l| classes[l].as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            writeln!(
                md,
                "## Most badly predicted validation images (epoch {}: {} of {} with a wrong \
                 label)\n",
                p.epoch,
                p.wrong(),
                p.images.len()
            )?;
            writeln!(
                md,
                "| labels | predicted | wrong (probability) | image |\n|---|---|---|---|"
            )?;
            for v in p.worst_first().into_iter().take(WORST) {
                let wrong: Vec<String> = v
                    .label_errors()
                    .iter()
                    .map(|&(l, fp)| {
                        format!(
                            "{} {} ({:.3})",
                            if fp { "false" } else { "missed" },
                            classes[l],
                            v.probabilities[l]
                        )
                    })
                    .collect();
                writeln!(
                    md,
                    "| {} | {} | {} | [{}]({}) |",
                    names(v.labels.as_deref().unwrap_or_default()),
                    names(v.predicted_labels.as_deref().unwrap_or_default()),
                    if wrong.is_empty() { "-".to_string() } else { wrong.join(", ") },
                    v.path.file_name().unwrap_or_default().to_string_lossy(),
                    v.path.display()
                )?;
            }
        }
        Some(p) => {
            writeln!(
                md,
                "## Most badly predicted validation images (epoch {}: {} of {} wrong)\n",
                p.epoch,
                p.wrong(),
                p.images.len()
            )?;
            writeln!(md, "| true | predicted | p(predicted) | image |\n|---|---|---|---|")?;
            for v in p.worst_first().into_iter().take(WORST) {
                writeln!(
                    md,
                    "| {} | {} | {:.3} | [{}]({}) |",
                    classes[v.truth],
                    classes[v.predicted],
                    v.probabilities.get(v.predicted).copied().unwrap_or(0.0),
                    v.path.file_name().unwrap_or_default().to_string_lossy(),
                    v.path.display()
                )?;
            }
        }
        None => writeln!(
            md,
            "No per-image predictions in this run folder (runs before `best-predictions.json` was kept)."
        )?,
    }
    curve_chart(&run.join("accuracy.svg"), "accuracy", &epochs, |m| {
        (m.accuracy, m.val_accuracy)
    })?;
    curve_chart(&run.join("loss.svg"), "loss", &epochs, |m| {
        (m.loss, m.val_loss)
    })?;
    lr_chart(&run.join("lr.svg"), &epochs)?;
    crate::fsutil::write_atomic(&run.join("report.md"), md.as_bytes())?;
    Ok(Written {
        markdown: md,
        charts,
    })
}

/// The confusion matrix as a markdown table: counts with row percentages, then
/// precision, recall and F1 per class.
fn matrix_table(c: &Confusion, classes: &[String]) -> String {
    let mut t = String::from("| true \\ predicted |");
    for name in classes {
        t += &format!(" {name} |");
    }
    t += " precision | recall | F1 | images |\n|---|";
    t += &"---|".repeat(classes.len() + 4);
    t.push('\n');
    for (row, s) in c.class_scores().iter().enumerate() {
        t += &format!("| {} |", classes.get(row).map_or("?", String::as_str));
        for p in 0..c.n {
            let (count, pct) = (c.get(row, p), 100.0 * c.row_share(row, p));
            t += &format!(" {count} ({pct:.0}%) |");
        }
        t += &format!(
            " {:.3} | {:.3} | {:.3} | {} |\n",
            s.precision, s.recall, s.f1, s.support
        );
    }
    t
}

/// Train against validation per epoch, as SVG.
fn curve_chart(
    path: &Path,
    title: &str,
    epochs: &[EpochMetrics],
    pick: impl Fn(&EpochMetrics) -> (f64, f64),
) -> Result<(), ReportError> {
    let points: Vec<(f64, (f64, f64))> = epochs.iter().map(|m| (m.epoch as f64, pick(m))).collect();
    let values = points
        .iter()
        .flat_map(|(_, (a, b))| [*a, *b])
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        (lo - 0.02, hi + 0.02)
    };
    let last = epochs.last().map_or(1, |m| m.epoch).max(2) as f64;
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1f64..last, lo..hi)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(title)
        .draw()
        .map_err(chart_error)?;
    for (name, color, which) in [("train", BLUE, 0), ("validation", RED, 1)] {
        let series = points
            .iter()
            .map(|(x, (a, b))| (*x, if which == 0 { *a } else { *b }));
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))
            .map_err(chart_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)?;
    Ok(())
}

/// The learning rate each epoch ended at (the schedule applied, lowerings and phase
/// changes included), on a log scale, as SVG.
fn lr_chart(path: &Path, epochs: &[EpochMetrics]) -> Result<(), ReportError> {
    let points: Vec<(f64, f64)> = epochs
        .iter()
        .filter(|m| m.lr > 0.0 && m.lr.is_finite())
        .map(|m| (m.epoch as f64, m.lr.log10()))
        .collect();
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, v)| {
        (a.min(*v), b.max(*v))
    });
    let (lo, hi) = if lo > hi {
        (-6.0, -2.0)
    } else {
        (lo.floor() - 0.1, hi.ceil() + 0.1)
    };
    let last = epochs.last().map_or(1, |m| m.epoch).max(2) as f64;
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "learning rate (the head's, at each epoch's end)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1f64..last, lo..hi)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("lr")
        .y_label_formatter(&|v| format!("{:.0e}", 10f64.powf(*v)))
        .draw()
        .map_err(chart_error)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(chart_error)?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
        .map_err(chart_error)?;
    root.present().map_err(chart_error)?;
    Ok(())
}

/// The confusion matrix as a heat map with counts and row percentages, as SVG.
fn confusion_chart(path: &Path, c: &Confusion, classes: &[String]) -> Result<(), ReportError> {
    let n = c.n.max(1);
    let side = 120 * n as u32 + 160;
    let root = SVGBackend::new(path, (side, side)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("confusion matrix (rows: true)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(100)
        .build_cartesian_2d(0f64..n as f64, 0f64..n as f64)
        .map_err(chart_error)?;
    // Labels at cell centres: class i's centre is i + 0.5.
    let name = |v: f64| {
        let i = v.floor() as usize;
        if (v - i as f64 - 0.5).abs() < 0.01 {
            classes.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * n + 1)
        .y_labels(2 * n + 1)
        .x_label_formatter(&|v| name(*v))
        .y_label_formatter(&|v| name(n as f64 - *v))
        .x_desc("predicted")
        .draw()
        .map_err(chart_error)?;
    for t in 0..n {
        for p in 0..n {
            let (count, share) = (c.get(t, p), c.row_share(t, p));
            let (x, y) = (p as f64, (n - 1 - t) as f64);
            let shade = RGBColor(
                (255.0 - 200.0 * share) as u8,
                (255.0 - 120.0 * share) as u8,
                255,
            );
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, y), (x + 1.0, y + 1.0)],
                    shade.filled(),
                )))
                .map_err(chart_error)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{count} ({:.0}%)", share * 100.0),
                    (x + 0.3, y + 0.55),
                    ("sans-serif", 18).into_font(),
                )))
                .map_err(chart_error)?;
        }
    }
    root.present().map_err(chart_error)?;
    Ok(())
}

fn chart_error<E: std::fmt::Debug>(e: E) -> ReportError {
    ReportError::Chart(format!("{e:?}"))
}

/// The report's markdown of a run folder, for tests: written as `run` would.
pub fn markdown(run: &Path) -> anyhow::Result<String> {
    write(run)
        .map(|w| w.markdown)
        .with_context(|| format!("report of {}", run.display()))
}
