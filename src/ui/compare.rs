//! The compare view: every run in one table and one chart.

use std::path::PathBuf;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols;
use ratatui::widgets::{Block, Dataset, GraphType, Row, Table};
use ratatui::Frame;

use crate::app::{App, RunView};
use crate::results::ResultRow;
use crate::shootout::seeds;

const SERIES: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Green,
    Color::Magenta,
    Color::LightRed,
    Color::LightBlue,
];

/// Each series' line marker and its sample, so lines are told apart without colour
/// (the table's first column names each one's marker).
const MARKERS: [(symbols::Marker, &str); 4] = [
    (symbols::Marker::Braille, "⣿"),
    (symbols::Marker::Dot, "•"),
    (symbols::Marker::Block, "█"),
    (symbols::Marker::Bar, "▄"),
];

/// The shootout comparison: one table, one chart of val_accuracy per experiment. Runs
/// of one experiment over seeds (`name-seedN`, as `shootout --seeds` names them) get a
/// line more: the mean and standard deviation of each best over those seeds.
pub(super) fn draw_compare(frame: &mut Frame, app: &App, area: Rect) {
    let runs: Vec<(String, &RunView)> = app
        .entries
        .iter()
        .filter_map(|e| Some((e.name(), e.run.as_ref()?)))
        .filter(|(_, r)| !r.epochs.is_empty())
        .collect();
    // The same figures `tlcap-tui shootout` exports.
    let results: Vec<Option<ResultRow>> = runs
        .iter()
        .map(|(name, r)| crate::results::row(name, "", &r.epochs, params(r), PathBuf::new()))
        .collect();
    let names: Vec<String> = runs.iter().map(|(n, _)| n.clone()).collect();
    let groups = seeds::seed_groups(&names);
    let [table_area, chart_area] = Layout::vertical([
        Constraint::Length((runs.len() + 2 * groups.len()) as u16 + 3),
        Constraint::Min(6),
    ])
    .areas(area);
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut rows: Vec<Row> = runs
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, ((name, _), result))| {
            let cells = match result {
                Some(c) => vec![
                    format!("{} {name}", MARKERS[i % MARKERS.len()].1),
                    format!("{:.3} @{}", c.best_val_accuracy, c.best_epoch),
                    fmt(c.frozen_best),
                    fmt(c.finetune_best),
                    format!("{:.1}", c.seconds_per_epoch),
                    format!(
                        "{:.2}M/{:.2}M",
                        c.trainable_params as f64 / 1e6,
                        c.total_params as f64 / 1e6
                    ),
                ],
                None => vec![
                    format!("{} {name}", MARKERS[i % MARKERS.len()].1),
                    "-".into(),
                ],
            };
            Row::new(cells).style(Style::new().fg(SERIES[i % SERIES.len()]))
        })
        .collect();
    rows.extend(
        groups
            .iter()
            .map(|(base, members)| seed_row(base, members, &results)),
    );
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(12),
        ],
    )
    .header(
        Row::new(["experiment", "best", "frozen", "tuned", "s/ep", "backbone"])
            .style(Style::new().bold()),
    )
    .block(
        Block::bordered()
            .title(" compare (c: back) — best val_acc @epoch, params trainable/total "),
    );
    frame.render_widget(table, table_area);
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|(_, r)| {
            r.epochs
                .iter()
                .map(|m| (m.epoch as f64, m.val_accuracy))
                .collect()
        })
        .collect();
    let values = series
        .iter()
        .flatten()
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((1.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        ((lo - 0.02).max(0.0), (hi + 0.02).min(1.0))
    };
    let x_max = series.iter().map(Vec::len).max().unwrap_or(1).max(2) as f64;
    let datasets: Vec<Dataset> = series
        .iter()
        .zip(&runs)
        .enumerate()
        .map(|(i, (points, (name, _)))| {
            Dataset::default()
                .name(name.clone())
                .marker(MARKERS[i % MARKERS.len()].0)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(SERIES[i % SERIES.len()]))
                .data(points)
        })
        .collect();
    let chart =
        super::charts::epoch_chart(datasets, " val_accuracy per epoch ", (1.0, x_max), (lo, hi));
    frame.render_widget(chart, chart_area);
}

/// Trainable and total parameters of a run's layers.
fn params(r: &RunView) -> (usize, usize) {
    let total = r.layers.iter().map(|l| l.params).sum();
    let trainable = r
        .layers
        .iter()
        .filter(|l| l.trainable)
        .map(|l| l.params)
        .sum();
    (trainable, total)
}

/// Two lines for an experiment run over seeds: the mean of each best (`Σ name`),
/// then its sample standard deviation (`N seeds ± sd`).
fn seed_row<'a>(base: &str, members: &[usize], results: &[Option<ResultRow>]) -> Row<'a> {
    let mine: Vec<&ResultRow> = members
        .iter()
        .filter_map(|&i| results[i].as_ref())
        .collect();
    let cell = |values: Vec<f64>, digits: usize| match seeds::spread(&values) {
        Some((mean, sd, _, _)) => format!("{mean:.digits$}\n±{sd:.digits$}"),
        None => "-".to_string(),
    };
    Row::new(vec![
        format!("Σ {base}\n{} seeds ± sd", mine.len()),
        cell(mine.iter().map(|r| r.best_val_accuracy).collect(), 3),
        cell(mine.iter().filter_map(|r| r.frozen_best).collect(), 3),
        cell(mine.iter().filter_map(|r| r.finetune_best).collect(), 3),
        cell(mine.iter().map(|r| r.seconds_per_epoch).collect(), 1),
        String::new(),
    ])
    .height(2)
    .style(Style::new().bold())
}
