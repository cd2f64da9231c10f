//! Drawing the dashboard: a pure function of [`App`]. Nothing here changes state.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Wrap};
use ratatui::Frame;

mod charts;
mod compare;
mod errors;
mod list;
mod popups;
mod run;
mod table;

pub use charts::smooth;
use compare::draw_compare;
pub use errors::Previews;
use list::draw_list;
use popups::{draw_confirm, draw_help, draw_log};
use run::draw_entry;

use crate::app::{App, Overlay};

/// Smallest terminal the dashboard draws into.
pub const MIN_SIZE: (u16, u16) = (60, 16);

/// Draws the whole dashboard for `app` into `frame`, pictures as half blocks.
pub fn draw(frame: &mut Frame, app: &App) {
    draw_with(frame, app, &mut Previews::halfblocks());
}

/// Draws the whole dashboard, pictures through `previews` (the terminal's graphics).
pub fn draw_with(frame: &mut Frame, app: &App, previews: &mut Previews) {
    let area = frame.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let text = format!(
            "terminal too small: {}x{} (need {}x{})",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    // Two message lines at 80x24; a fifth of a taller terminal.
    let messages_height = if area.height >= 30 {
        (area.height / 5).min(14)
    } else {
        4
    };
    let [main, messages, footer] = Layout::vertical([
        Constraint::Min(8),
        Constraint::Length(messages_height),
        Constraint::Length(1),
    ])
    .areas(area);
    // Room for the longest name where the run pane keeps its 54 columns (the whole
    // epoch table); a quarter of a wide terminal.
    let longest = app
        .entries
        .iter()
        .map(|e| e.name().chars().count() as u16 + 4)
        .max()
        .unwrap_or(0);
    let list_width = longest
        .max(area.width / 4)
        .clamp(22, 34)
        .min(area.width.saturating_sub(54).max(22));
    let [list, right] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(30)]).areas(main);
    draw_list(frame, app, list);
    match app.current() {
        _ if app.show_compare => draw_compare(frame, app, right),
        Some(entry) => draw_entry(frame, app, entry, right, previews),
        None => frame.render_widget(
            Paragraph::new("No experiment files. Add a .yaml file to the folder.")
                .block(Block::bordered().title(" run ")),
            right,
        ),
    }
    draw_messages(frame, app, messages);
    draw_footer(frame, app, footer);
    match app.overlay {
        Overlay::Help => draw_help(frame, app, area),
        Overlay::Log => draw_log(frame, app, area),
        Overlay::ConfirmQuit => draw_confirm(frame, area),
        Overlay::None => {}
    }
    if app.no_color {
        without_colour(frame.buffer_mut());
    }
}

/// `NO_COLOR`: every colour removed; what had a background (gauges, highlights) is
/// shown reversed instead, so it still stands out.
fn without_colour(buffer: &mut ratatui::buffer::Buffer) {
    use ratatui::style::Modifier;
    for cell in buffer.content.iter_mut() {
        if cell.bg != Color::Reset {
            cell.modifier |= Modifier::REVERSED;
        }
        cell.fg = Color::Reset;
        cell.bg = Color::Reset;
    }
}

/// A message as shown: its text and count, wrapped to `width` columns.
pub(super) fn message_lines(m: &crate::app::Message, width: usize) -> Vec<Line<'static>> {
    // Warnings are marked `!`, not only yellow.
    let mark = if m.warning { "! " } else { "" };
    let text = match m.repeats {
        0 | 1 => format!("{mark}{}", m.text),
        n => format!("{mark}{} (x{n})", m.text),
    };
    let style = if m.warning {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    };
    let options = textwrap::Options::new(width.max(8)).subsequent_indent("  ");
    textwrap::wrap(&text, options)
        .into_iter()
        .map(|l| Line::styled(l.into_owned(), style))
        .collect()
}

/// The newest messages that fit in `visible` lines of `width` columns, wrapped, the
/// newest last. An older message with too little room left shows its beginning, cut
/// with `…`, never its middle.
pub(super) fn newest_lines(
    messages: &[crate::app::Message],
    width: usize,
    visible: usize,
) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = Vec::new();
    for m in messages.iter().rev() {
        let room = visible.saturating_sub(lines.len());
        if room == 0 {
            break;
        }
        let mut wrapped = message_lines(m, width);
        if wrapped.len() > room {
            wrapped.truncate(room);
            if let Some(last) = wrapped.last_mut() {
                let style = last.style;
                let text: String = last.to_string();
                let cut: String = text.chars().take(width.saturating_sub(1)).collect();
                *last = Line::styled(format!("{cut}…"), style);
            }
        }
        wrapped.append(&mut lines);
        lines = wrapped;
    }
    lines
}

/// The newest messages, wrapped, as many as fit; `l` shows them all.
fn draw_messages(frame: &mut Frame, app: &App, area: Rect) {
    let visible = area.height.saturating_sub(2) as usize;
    let width = area.width.saturating_sub(2) as usize;
    let mut block = Block::bordered().title(" messages ");
    if app.messages.len() > 1 {
        block = block.title_top(Line::from(" l: all ").right_aligned());
    }
    frame.render_widget(
        Paragraph::new(newest_lines(&app.messages, width, visible)).block(block),
        area,
    );
}

fn draw_footer(frame: &mut Frame, app: &App, area: Rect) {
    let keys = crate::app::footer_for(area.width as usize, app.attached.is_some());
    frame.render_widget(
        Paragraph::new(keys).style(Style::new().fg(Color::DarkGray)),
        area,
    );
}
