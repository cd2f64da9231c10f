//! Accuracy and loss charts, train against validation, with phase markers.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::symbols;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType};
use ratatui::Frame;

use crate::app::{App, RunView};
use crate::train::EpochMetrics;

/// Debiased exponential moving average (TensorBoard's smoothing), weight 0.6.
pub fn smooth(values: &[f64]) -> Vec<f64> {
    const W: f64 = 0.6;
    let mut last = 0.0;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            last = last * W + (1.0 - W) * v;
            last / (1.0 - W.powi(i as i32 + 1))
        })
        .collect()
}

pub(super) fn draw_chart(
    frame: &mut Frame,
    app: &App,
    run: &RunView,
    title: &str,
    pick: impl Fn(&EpochMetrics) -> (f64, f64),
    batches: Option<Vec<(f64, f64)>>,
    area: Rect,
) {
    // x counts epochs done: an epoch's row sits at its end, a batch inside it.
    let xs: Vec<f64> = run.epochs.iter().map(|m| m.epoch as f64).collect();
    let (mut train, mut val): (Vec<f64>, Vec<f64>) = run.epochs.iter().map(pick).unzip();
    if app.smoothing {
        train = smooth(&train);
        val = smooth(&val);
    }
    let batches = batches.unwrap_or_default();
    let finite = train
        .iter()
        .chain(&val)
        .chain(batches.iter().map(|p| &p.1))
        .copied()
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        let pad = ((hi - lo) * 0.1).max(1e-3);
        (lo - pad, hi + pad)
    };
    let x_max = (run.total_epochs.max(run.epochs.len() as u32)).max(2) as f64;
    let train_pts: Vec<(f64, f64)> = xs.iter().copied().zip(train).collect();
    let val_pts: Vec<(f64, f64)> = xs.iter().copied().zip(val).collect();
    let marks: Vec<Vec<(f64, f64)>> = run
        .phase_marks
        .iter()
        .map(|(e, _)| {
            let x = *e as f64 - 1.0;
            vec![(x, lo), (x, hi)]
        })
        .collect();
    let mut datasets = vec![
        // Every batch's loss (recent history): an epoch of minutes is not one dot.
        Dataset::default()
            .name("batch")
            .marker(symbols::Marker::Bar)
            .graph_type(GraphType::Scatter)
            .style(Style::new().fg(Color::DarkGray))
            .data(&batches),
        Dataset::default()
            .name("train")
            .marker(symbols::Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Cyan))
            .data(&train_pts),
        // Dots, not braille: told apart from the training line without colour.
        Dataset::default()
            .name("val")
            .marker(symbols::Marker::Dot)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Yellow))
            .data(&val_pts),
    ];
    for m in &marks {
        datasets.push(
            Dataset::default()
                .marker(symbols::Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::Magenta))
                .data(m),
        );
    }
    // The legend in the title (the chart's own legend box hides in small panes),
    // in the longest wording that fits.
    let smoothed = if app.smoothing { ", smoothed" } else { "" };
    let marks = !run.phase_marks.is_empty();
    let room = area.width.saturating_sub(2) as usize;
    let short = if app.smoothing { " ~" } else { "" };
    let (batch, batch_short) = if batches.is_empty() {
        ("", "")
    } else {
        (" ▄ batch", " ▄batch")
    };
    let candidates = [
        format!(
            " {title}: ⣿ train • val{batch}{smoothed}{} ",
            if marks { ", | phase change" } else { "" }
        ),
        format!(
            " {title}: ⣿ train • val{batch}{short}{} ",
            if marks { " | phase" } else { "" }
        ),
        format!(
            " {} ⣿train •val{batch_short}{short}{} ",
            title.replace("accuracy", "acc"),
            if marks { " |phase" } else { "" }
        ),
    ];
    let fitting = candidates
        .iter()
        .find(|c| c.chars().count() <= room)
        .unwrap_or(&candidates[2]);
    let chart = epoch_chart(datasets, fitting, (0.0, x_max), (lo, hi));
    frame.render_widget(chart, area);
}

/// A chart over epochs `x_min..=x_max` with the value range `y`, labelled at its ends.
pub(super) fn epoch_chart<'a>(
    datasets: Vec<Dataset<'a>>,
    title: &str,
    (x_min, x_max): (f64, f64),
    (lo, hi): (f64, f64),
) -> Chart<'a> {
    Chart::new(datasets)
        .block(Block::bordered().title(title.to_string()))
        .x_axis(
            Axis::default()
                .bounds([x_min, x_max])
                .labels([format!("{x_min:.0}"), format!("{x_max:.0}")]),
        )
        .y_axis(
            Axis::default()
                .bounds([lo, hi])
                .labels([format!("{lo:.2}"), format!("{hi:.2}")]),
        )
}
