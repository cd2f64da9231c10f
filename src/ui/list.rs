//! The experiment list with each file's state.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState};
use ratatui::Frame;

use crate::app::App;

pub(super) fn state_style(label: &str) -> Style {
    match label {
        "running" | "loading" => Style::new().fg(Color::Green),
        "paused" => Style::new().fg(Color::Yellow),
        "stalled" => Style::new().fg(Color::Magenta),
        "done" => Style::new().fg(Color::Cyan),
        "failed" | "invalid" => Style::new().fg(Color::Red),
        _ => Style::new().fg(Color::Gray),
    }
}

pub(super) fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let width = area.width.saturating_sub(4) as usize;
    let items: Vec<ListItem> = app
        .entries
        .iter()
        .map(|e| {
            let label = e.state_label();
            let label = if app.queue.contains(&e.id) {
                "queued"
            } else {
                label
            };
            let mut name = if e.marked {
                format!("+{}", e.name())
            } else {
                e.name()
            };
            if e.deleted {
                name.push_str(" (deleted)");
            }
            let room = width.saturating_sub(label.len() + 1);
            let name: String = name.chars().take(room).collect();
            ListItem::new(Line::from(vec![
                Span::raw(format!("{name:<room$} ")),
                Span::styled(label, state_style(label)),
            ]))
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(app.selected));
    let list = List::new(items)
        .block(Block::bordered().title(if app.attached.is_some() {
            " runs "
        } else {
            " experiments "
        }))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›");
    frame.render_stateful_widget(list, area, &mut state);
}
