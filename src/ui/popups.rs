//! Pop-ups: the model pane, help, and the quit confirmation.

use ratatui::layout::{Alignment, Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table};
use ratatui::Frame;

use crate::app::{RunView, KEYS};

pub(super) fn draw_model(frame: &mut Frame, run: &RunView, area: Rect) {
    let trainable: usize = run
        .layers
        .iter()
        .filter(|l| l.trainable)
        .map(|l| l.params)
        .sum();
    let count = run.layers.iter().filter(|l| l.trainable).count();
    let visible = area.height.saturating_sub(3) as usize;
    // Show the end of the list, where the unfrozen layers are.
    let start = run.layers.len().saturating_sub(visible);
    let rows: Vec<Row> = run.layers[start..]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let row = Row::new(vec![
                format!("{}", start + i),
                l.name.clone(),
                l.kind.name().to_string(),
                l.params.to_string(),
                if l.trainable {
                    "yes".into()
                } else {
                    "-".into()
                },
            ]);
            if l.trainable {
                row.style(Style::new().fg(Color::Green))
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(5),
        ],
    )
    .header(Row::new(["#", "layer", "kind", "params", "train"]).style(Style::new().bold()))
    .block(Block::bordered().title(format!(
        " model: {} layers, {count} trainable ({trainable} params) ",
        run.layers.len()
    )));
    frame.render_widget(table, area);
}

pub(super) fn popup(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

pub(super) fn draw_help(frame: &mut Frame, area: Rect) {
    let rect = popup(area, 58, KEYS.len() as u16 + 4);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|k| {
            Line::from(vec![
                Span::styled(format!("{:>10}  ", k.keys), Style::new().bold()),
                Span::raw(k.what),
            ])
        })
        .collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(" keys (any key closes) ")
                .borders(Borders::ALL),
        ),
        rect,
    );
}

pub(super) fn draw_confirm(frame: &mut Frame, area: Rect) {
    let rect = popup(area, 46, 5);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(vec![
            Line::raw("A run is going. Quit and stop it?"),
            Line::raw("(a checkpoint is saved)   y: quit   n: stay"),
        ])
        .alignment(Alignment::Center)
        .block(Block::bordered().title(" quit? ")),
        rect,
    );
}
