//! Drawing the dashboard: a pure function of [`App`]. Nothing here changes state.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Wrap};
use ratatui::Frame;

mod charts;
mod compare;
mod list;
mod popups;
mod run;
mod table;

pub use charts::smooth;
use compare::draw_compare;
use list::draw_list;
use popups::{draw_confirm, draw_help};
use run::draw_entry;

use crate::app::{App, Overlay};

/// Smallest terminal the dashboard draws into.
pub const MIN_SIZE: (u16, u16) = (60, 16);

/// Draws the whole dashboard for `app` into `frame`.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let text = format!(
            "terminal too small: {}x{} (need {}x{})",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let messages_height = if area.height >= 30 { 6 } else { 4 };
    let [main, messages, footer] = Layout::vertical([
        Constraint::Min(8),
        Constraint::Length(messages_height),
        Constraint::Length(1),
    ])
    .areas(area);
    let list_width = (area.width / 4).clamp(20, 34);
    let [list, right] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(30)]).areas(main);
    draw_list(frame, app, list);
    match app.current() {
        _ if app.show_compare => draw_compare(frame, app, right),
        Some(entry) => draw_entry(frame, app, entry, right),
        None => frame.render_widget(
            Paragraph::new("No experiment files. Add a .yaml file to the folder.")
                .block(Block::bordered().title(" run ")),
            right,
        ),
    }
    draw_messages(frame, app, messages);
    draw_footer(frame, footer);
    match app.overlay {
        Overlay::Help => draw_help(frame, area),
        Overlay::ConfirmQuit => draw_confirm(frame, area),
        Overlay::None => {}
    }
}

fn draw_messages(frame: &mut Frame, app: &App, area: Rect) {
    let visible = area.height.saturating_sub(2) as usize;
    let start = app.messages.len().saturating_sub(visible);
    let lines: Vec<Line> = app.messages[start..]
        .iter()
        .map(|m| {
            let text = match m.repeats {
                0 | 1 => m.text.clone(),
                n => format!("{} (x{n})", m.text),
            };
            if m.warning {
                Line::styled(text, Style::new().fg(Color::Yellow))
            } else {
                Line::raw(text)
            }
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" messages ")),
        area,
    );
}

fn draw_footer(frame: &mut Frame, area: Rect) {
    let keys = crate::app::footer_text();
    frame.render_widget(
        Paragraph::new(keys).style(Style::new().fg(Color::DarkGray)),
        area,
    );
}
