//! The epoch table of a run.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Cell, Row, Table};
use ratatui::Frame;

use crate::app::{App, RunView};

pub(super) fn draw_table(frame: &mut Frame, app: &App, run: &RunView, area: Rect) {
    let best = run.best();
    // Too narrow for every column (a 60-column terminal): the validation ones stay.
    let compact = area.width < 54;
    // Multi-label: the mean AUC beside the label accuracy (the compact table keeps it
    // over the accuracy).
    let multilabel = run.epochs.iter().any(|m| m.multilabel.is_some());
    let auc_cell = |m: &crate::train::EpochMetrics| {
        m.mean_auc().map_or("-".to_string(), |a| format!("{a:.3}"))
    };
    let visible = area.height.saturating_sub(3) as usize;
    let end = run
        .epochs
        .len()
        .saturating_sub(app.table_scroll.min(run.epochs.len()));
    let start = end.saturating_sub(visible);
    let names = [
        "ep", "phase", "loss", "acc", "v_loss", "v_acc", "lr", "s", "v_auc",
    ];
    let widths = [
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(5),
    ];
    // Validation, which the stall detector watches, over training when narrow.
    let keep: Vec<usize> = match (compact, multilabel) {
        (true, false) => vec![0, 1, 4, 5, 6],
        (true, true) => vec![0, 1, 4, 8, 6],
        (false, false) => (0..8).collect(),
        (false, true) => vec![0, 1, 2, 3, 4, 5, 8, 6, 7],
    };
    let rows: Vec<Row> = run.epochs[start..end]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // Marks that read without colour: * best, ! stalled (both can hold: a best
            // by less than min_delta is still a stall).
            let mut mark = String::new();
            if Some(start + i) == best {
                mark.push('*');
            }
            if m.stalled {
                mark.push('!');
            }
            let mut cells = vec![
                Cell::from(format!("{}{}", m.epoch, mark)),
                Cell::from(crate::text::phase_label(m)),
                Cell::from(format!("{:.4}", m.loss)),
                Cell::from(format!("{:.3}", m.accuracy)),
                Cell::from(format!("{:.4}", m.val_loss)),
                Cell::from(format!("{:.3}", m.val_accuracy)),
                Cell::from(lr_cell(m)),
                Cell::from(format!("{:.0}", m.seconds)),
                Cell::from(auc_cell(m)),
            ];
            cells = keep.iter().map(|&i| cells[i].clone()).collect();
            let row = Row::new(cells);
            if Some(start + i) == best {
                row.style(Style::new().fg(Color::Green))
            } else if m.stalled {
                row.style(Style::new().fg(Color::Magenta))
            } else {
                row
            }
        })
        .collect();

    let header = Row::new(keep.iter().map(|&i| names[i])).style(Style::new().bold());
    let table = Table::new(rows, keep.iter().map(|&i| widths[i]))
        .header(header)
        .column_spacing(1)
        .block(Block::bordered().title({
            let stalled = if run.epochs.iter().any(|m| m.stalled) {
                ", ! stalled"
            } else {
                ""
            };
            let full = format!(
                " epochs (* best {}{stalled}) ",
                crate::text::word(&run.best_rule.monitor)
            );
            // The marks' meaning survives a narrow table; the metric's name goes.
            if full.chars().count() + 2 <= area.width as usize {
                full
            } else {
                format!(" epochs (* best{stalled}) ")
            }
        }));
    frame.render_widget(table, area);
}

/// The learning rate of an epoch; one lowered part-way shows the rate it ended at
/// with `↓` (the epoch JSON and `events.log` say from which batch).
fn lr_cell(m: &crate::train::EpochMetrics) -> String {
    match m.lr_lowered {
        Some(_) => format!("{:.0e}↓", m.lr),
        None => format!("{:.0e}", m.lr),
    }
}
