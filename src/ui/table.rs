//! The epoch table of a run.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Cell, Row, Table};
use ratatui::Frame;

use crate::app::{App, RunView};
use crate::train::Phase;

pub(super) fn draw_table(frame: &mut Frame, app: &App, run: &RunView, area: Rect) {
    let best = run.best();
    let visible = area.height.saturating_sub(3) as usize;
    let end = run
        .epochs
        .len()
        .saturating_sub(app.table_scroll.min(run.epochs.len()));
    let start = end.saturating_sub(visible);
    let rows: Vec<Row> = run.epochs[start..end]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // Marks that read without colour: * best, ! stalled.
            let mark = match (Some(start + i) == best, m.stalled) {
                (true, _) => "*",
                (false, true) => "!",
                _ => " ",
            };
            let row = Row::new(vec![
                Cell::from(format!("{}{}", m.epoch, mark)),
                Cell::from(match (m.phase, m.mixed) {
                    (_, Some(_)) => "mixed",
                    (Phase::Frozen, None) => "frozen",
                    (Phase::Finetune, None) => "tune",
                }),
                Cell::from(format!("{:.4}", m.loss)),
                Cell::from(format!("{:.3}", m.accuracy)),
                Cell::from(format!("{:.4}", m.val_loss)),
                Cell::from(format!("{:.3}", m.val_accuracy)),
                Cell::from(format!("{:.0e}", m.lr)),
                Cell::from(format!("{:.0}", m.seconds)),
            ]);
            if Some(start + i) == best {
                row.style(Style::new().fg(Color::Green))
            } else if m.stalled {
                row.style(Style::new().fg(Color::Magenta))
            } else {
                row
            }
        })
        .collect();
    let header = Row::new(["ep", "phase", "loss", "acc", "v_loss", "v_acc", "lr", "s"])
        .style(Style::new().bold());
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(4),
        ],
    )
    .header(header)
    .column_spacing(1)
    .block(Block::bordered().title(format!(
        " epochs (* best {}{}) ",
        crate::text::word(&run.best_rule.monitor),
        if run.epochs.iter().any(|m| m.stalled) {
            ", ! stalled"
        } else {
            ""
        }
    )));
    frame.render_widget(table, area);
}
