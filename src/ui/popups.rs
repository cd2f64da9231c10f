//! Pop-ups: the model pane, help, and the quit confirmation.

use ratatui::layout::{Alignment, Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table};
use ratatui::Frame;

use crate::app::{App, KEYS};
use crate::model::LayerInfo;

/// The model pane: `layers` from the end (where the trainable ones are) scrolled up by
/// `scroll` rows; `before_run` marks the layers fine-tuning will train.
pub(super) fn draw_model(
    frame: &mut Frame,
    layers: &[LayerInfo],
    scroll: usize,
    before_run: bool,
    area: Rect,
) {
    let trainable: usize = layers
        .iter()
        .filter(|l| l.trainable)
        .map(|l| l.params)
        .sum();
    let count = layers.iter().filter(|l| l.trainable).count();
    let visible = area.height.saturating_sub(3) as usize;
    // Scrolled past the top (Home, PgUp): the first rows.
    let scroll = scroll.min(layers.len().saturating_sub(visible));
    let end = layers.len().saturating_sub(scroll);
    let start = end.saturating_sub(visible);
    let rows: Vec<Row> = layers[start..end]
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
    .block(
        Block::bordered()
            .title(if before_run {
                format!(
                    " model (not started): {} layers, fine-tuning trains {count} ({trainable} params) ",
                    layers.len()
                )
            } else {
                format!(
                    " model: {} layers, {count} trainable ({trainable} params) ",
                    layers.len()
                )
            })
            .title_bottom(
                Line::from(format!(
                    " rows {}-{end} of {} · ↑/↓ PgUp/PgDn Home/End ",
                    (start + 1).min(end),
                    layers.len()
                ))
                .right_aligned(),
            ),
    );
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

/// The key list: every key of [`KEYS`], descriptions wrapped to the pop-up, scrolled
/// by `app.overlay_scroll` keys when the terminal is too short for all of them.
pub(super) fn draw_help(frame: &mut Frame, app: &App, area: Rect) {
    let width = 64.min(area.width);
    let keys_width = KEYS
        .iter()
        .map(|k| k.keys.chars().count())
        .max()
        .unwrap_or(4);
    let text_width = (width as usize).saturating_sub(keys_width + 4).max(10);
    // Every key's lines, then the window from the selected key (the last page full).
    let mut lines: Vec<Line> = Vec::new();
    let mut first_line_of = Vec::new();
    for k in KEYS {
        first_line_of.push(lines.len());
        let what = if app.attached.is_some() && crate::app::NOT_ATTACHED.contains(&k.keys) {
            format!("{} (not here: runs start elsewhere when attached)", k.what)
        } else {
            k.what.to_string()
        };
        let wrapped = textwrap::wrap(&what, text_width);
        for (i, part) in wrapped.into_iter().enumerate() {
            let keys = if i == 0 { k.keys } else { "" };
            lines.push(Line::from(vec![
                Span::styled(format!("{keys:>keys_width$}  "), Style::new().bold()),
                Span::raw(part.into_owned()),
            ]));
        }
    }
    let total = lines.len();
    let rect = popup(area, width, total as u16 + 2);
    let visible = rect.height.saturating_sub(2) as usize;
    let from = first_line_of
        .get(app.overlay_scroll)
        .copied()
        .unwrap_or(0)
        .min(lines.len().saturating_sub(visible));
    let lines = lines.split_off(from);
    let title = if total <= visible {
        " keys (any key closes) ".to_string()
    } else {
        let shown_to = (from + visible).min(total);
        format!(
            " keys: lines {}-{shown_to} of {total} (↑/↓ scroll, other keys close) ",
            from + 1
        )
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title).borders(Borders::ALL)),
        rect,
    );
}

/// Every message, wrapped, newest at the bottom; `app.overlay_scroll` messages back.
pub(super) fn draw_log(frame: &mut Frame, app: &App, area: Rect) {
    let rect = popup(
        area,
        area.width.saturating_sub(4),
        area.height.saturating_sub(2),
    );
    let width = rect.width.saturating_sub(2) as usize;
    let visible = rect.height.saturating_sub(2) as usize;
    // Every message's lines; the window ends after the message scrolled to, and is
    // full at the oldest end too.
    let mut lines: Vec<Line> = Vec::new();
    let mut start_of = Vec::new();
    for m in &app.messages {
        start_of.push(lines.len());
        lines.extend(super::message_lines(m, width));
    }
    let end = app.messages.len().saturating_sub(app.overlay_scroll);
    let bottom = start_of.get(end).copied().unwrap_or(lines.len());
    let top = bottom.saturating_sub(visible);
    let bottom = (top + visible).min(lines.len());
    let lines: Vec<Line> = lines.drain(top..bottom).collect();
    let title = format!(
        " {} messages (↑/↓ PgUp/PgDn scroll, l or Esc closes) ",
        app.messages.len()
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
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
