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
///
/// When the runs do not all fit (an attached sweep of hundreds), the table keeps the
/// seed summaries (best mean first, up to half of it) and the best runs, best first,
/// its bottom border says how many more there are; the chart draws only the runs in
/// the table.
pub(super) fn draw_compare(frame: &mut Frame, app: &App, area: Rect) {
    let all: Vec<(String, &RunView)> = app
        .entries
        .iter()
        .filter_map(|e| Some((e.name(), e.run.as_ref()?)))
        .filter(|(_, r)| !r.epochs.is_empty())
        .collect();
    // The same figures `tlcap-tui shootout` exports.
    let all_results: Vec<Option<ResultRow>> = all
        .iter()
        .map(|(name, r)| crate::results::row(name, "", &r.epochs, params(r), PathBuf::new()))
        .collect();
    let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    let all_groups = seeds::seed_groups(&names);
    // Table lines: the area less its borders, header and the chart's least height.
    let capacity = (area.height as usize).saturating_sub(3 + 6);
    let page = fit(&all_results, &all_groups, capacity);
    let runs: Vec<&(String, &RunView)> = page.runs.iter().map(|&i| &all[i]).collect();
    let results: Vec<&Option<ResultRow>> = page.runs.iter().map(|&i| &all_results[i]).collect();
    let groups: Vec<&(String, Vec<usize>)> = page.groups.iter().map(|&g| &all_groups[g]).collect();
    let lines = runs.len() + 2 * groups.len();
    let [table_area, chart_area] =
        Layout::vertical([Constraint::Length(lines as u16 + 3), Constraint::Min(6)]).areas(area);
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    // A `test` column once some run has been scored on its test set (`evaluate`).
    let with_test = runs.iter().any(|(_, r)| r.test_accuracy.is_some());
    // An `auc` column once a multi-label run is in the table (compared by mean AUC).
    let with_auc = results
        .iter()
        .any(|r| r.as_ref().is_some_and(|c| c.best_mean_auc.is_some()));
    let mut rows: Vec<Row> = runs
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, ((name, run), result))| {
            let mut cells = match *result {
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
            if with_test {
                cells.resize(6, String::new());
                cells.push(fmt(run.test_accuracy));
            }
            if with_auc {
                cells.resize(6 + usize::from(with_test), String::new());
                cells.push(fmt(result.as_ref().and_then(|c| c.best_mean_auc)));
            }
            Row::new(cells).style(Style::new().fg(SERIES[i % SERIES.len()]))
        })
        .collect();
    rows.extend(
        groups
            .iter()
            .map(|(base, members)| seed_row(base, members, &all_results)),
    );

    let mut widths = vec![
        Constraint::Min(12),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(12),
    ];
    let mut header = vec!["experiment", "best", "frozen", "tuned", "s/ep", "backbone"];
    if with_test {
        widths.push(Constraint::Length(6));
        header.push("test");
    }
    if with_auc {
        widths.push(Constraint::Length(6));
        header.push("auc");
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold()))
        .block({
            let block = Block::bordered()
                .title(" compare (c: back) — best val_acc @epoch, params trainable/total ");
            let plural = |n: usize, one: &str, many: &str| {
                format!("{n} {}", if n == 1 { one } else { many })
            };
            let mut left_out = Vec::new();
            if page.hidden > 0 {
                left_out.push(plural(page.hidden, "more run", "more runs"));
            }
            if page.hidden_groups > 0 {
                left_out.push(plural(page.hidden_groups, "seed summary", "seed summaries"));
            }
            if left_out.is_empty() {
                block
            } else {
                block.title_bottom(format!(" … {} (best first) ", left_out.join(", ")))
            }
        });
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

/// What the compare table shows: indices of runs and seed groups, and how many runs
/// are left out.
#[derive(Debug, PartialEq)]
struct Page {
    runs: Vec<usize>,
    groups: Vec<usize>,
    /// Runs left out.
    hidden: usize,
    /// Seed summaries left out.
    hidden_groups: usize,
}

/// Picks the rows that fit in `capacity` lines: everything in its order when it all
/// fits; else seed summaries (two lines each, best mean first, at most half the lines)
/// and then the runs best first (the table's bottom border says how many are left out).
fn fit(results: &[Option<ResultRow>], groups: &[(String, Vec<usize>)], capacity: usize) -> Page {
    if results.len() + 2 * groups.len() <= capacity {
        return Page {
            runs: (0..results.len()).collect(),
            groups: (0..groups.len()).collect(),
            hidden: 0,
            hidden_groups: 0,
        };
    }
    let best = |i: usize| {
        results[i]
            .as_ref()
            .map_or(f64::NEG_INFINITY, |r| r.best_val_accuracy)
    };
    let mut by_mean: Vec<usize> = (0..groups.len()).collect();
    let mean = |g: usize| {
        let v: Vec<f64> = groups[g].1.iter().map(|&i| best(i)).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    by_mean.sort_by(|&a, &b| mean(b).total_cmp(&mean(a)));
    let mut shown_groups = groups.len().min(capacity / 2 / 2);
    let mut by_best: Vec<usize> = (0..results.len()).collect();
    by_best.sort_by(|&a, &b| best(b).total_cmp(&best(a)));
    by_best.truncate(capacity - 2 * shown_groups);
    // Every run fits: the lines left go to more seed summaries.
    if by_best.len() == results.len() {
        shown_groups = groups.len().min((capacity - by_best.len()) / 2);
    }
    by_mean.truncate(shown_groups);
    Page {
        hidden: results.len() - by_best.len(),
        hidden_groups: groups.len() - by_mean.len(),
        runs: by_best,
        groups: by_mean,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(best: f64) -> Option<ResultRow> {
        Some(ResultRow {
            experiment: String::new(),
            backbone: String::new(),
            best_val_accuracy: best,
            best_epoch: 1,
            frozen_best: None,
            finetune_best: None,
            seconds_per_epoch: 1.0,
            trainable_params: 0,
            total_params: 0,
            epochs: 1,
            run_dir: PathBuf::new(),
            best_mean_auc: None,
        })
    }

    #[test]
    fn everything_in_its_order_when_it_fits() {
        let results = vec![result(0.5), result(0.9), None];
        let groups = vec![("g".to_string(), vec![0, 1])];
        let page = fit(&results, &groups, 5);
        assert_eq!(
            page,
            Page {
                runs: vec![0, 1, 2],
                groups: vec![0],
                hidden: 0,
                hidden_groups: 0
            }
        );
    }

    #[test]
    fn the_best_runs_and_seed_means_when_it_does_not() {
        // 100 runs in 10 seed groups: the group whose runs are best comes first.
        let results: Vec<_> = (0..100).map(|i| result(i as f64 / 100.0)).collect();
        let groups: Vec<_> = (0..10)
            .map(|g| (format!("g{g}"), (g * 10..g * 10 + 10).collect()))
            .collect();
        let page = fit(&results, &groups, 13);
        // 13 lines: three groups (6 lines, at most half), then 7 runs.
        assert_eq!(page.groups, vec![9, 8, 7]);
        assert_eq!(page.runs, (93..100).rev().collect::<Vec<_>>());
        assert_eq!(page.hidden, 93);
        assert_eq!(page.hidden_groups, 7);
        // The runs fit but not every summary: the spare lines go to summaries, and the
        // ones left out are counted.
        let few: Vec<_> = (0..5).map(|i| result(i as f64 / 10.0)).collect();
        let three: Vec<_> = (0..3).map(|g| (format!("g{g}"), vec![g])).collect();
        let page = fit(&few, &three, 10);
        assert_eq!((page.runs.len(), page.groups.len()), (5, 2));
        assert_eq!((page.hidden, page.hidden_groups), (0, 1));
        // No room at all: nothing but the count.
        let page = fit(&results, &groups, 0);
        assert!(page.runs.is_empty() && page.groups.is_empty());
        assert_eq!(page.hidden, 100);
    }
}
