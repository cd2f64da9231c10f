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
        "done" | "stopped" => Style::new().fg(Color::Cyan),
        "failed" | "invalid" => Style::new().fg(Color::Red),
        _ => Style::new().fg(Color::Gray),
    }
}

/// `mobilenet_v2 96px`, short: what makes a run heavy, beside its name.
fn detail(entry: &crate::app::Entry) -> Option<String> {
    let exp = entry.settings()?;
    let backbone = match exp.model.backbone.name() {
        "mobilenet_v2" => "mnv2",
        "efficientnet_lite0" => "eff-lite0",
        "resnet18" => "r18",
        "resnet50" => "r50",
        "small_cnn" => "cnn",
        other => other,
    };
    let size = exp.data.image_size;
    Some(if size.height == size.width {
        format!("{backbone} {}px", size.height)
    } else {
        format!("{backbone} {}x{}", size.height, size.width)
    })
}

pub(super) fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let width = area.width.saturating_sub(3) as usize;
    // Two lines an entry (the whole name; then backbone, image size and state) while
    // they all fit; one line each (the name cut) when the list is long.
    let rows = area.height.saturating_sub(2) as usize;
    let two_lines = app.entries.len() * 2 <= rows;
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
            let cut = |text: &str, room: usize| -> String {
                if text.chars().count() <= room {
                    text.to_string()
                } else {
                    let kept: String = text.chars().take(room.saturating_sub(1)).collect();
                    format!("{kept}…")
                }
            };
            let detail = detail(e).unwrap_or_default();
            if two_lines {
                // ` mnv2 96px  running`: indented, at least one space before the state.
                let room = width.saturating_sub(label.len() + 2);
                let detail = cut(&detail, room);
                return ListItem::new(vec![
                    Line::raw(cut(&name, width)),
                    Line::from(vec![
                        Span::styled(
                            format!(" {detail:<room$} "),
                            Style::new().fg(Color::DarkGray),
                        ),
                        Span::styled(label, state_style(label)),
                    ]),
                ]);
            }
            let room = width.saturating_sub(label.len() + 1);
            let name = cut(&name, room);
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
