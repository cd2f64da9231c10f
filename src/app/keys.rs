//! The keys: the one table the help pop-up and the footer are built from, and what
//! each key does to the state.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::queue::queue_shootout;
use super::{request_quit, start, stop_all, Action, App, Overlay, RunStatus, RunView};
use crate::train::{Command, Phase};

/// One key (or key group) of the dashboard: what it does, and its word in the footer
/// (with its place there), if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHelp {
    /// The key as the user types it.
    pub keys: &'static str,
    /// What it does (the help pop-up).
    pub what: &'static str,
    /// Place and word in the footer.
    pub footer: Option<(u8, &'static str)>,
}

const fn key(keys: &'static str, what: &'static str) -> KeyHelp {
    KeyHelp {
        keys,
        what,
        footer: None,
    }
}

const fn shown(keys: &'static str, what: &'static str, place: u8, word: &'static str) -> KeyHelp {
    KeyHelp {
        keys,
        what,
        footer: Some((place, word)),
    }
}

/// Every key, for the help pop-up and the footer. Each one works (see [`update`]).
pub const KEYS: &[KeyHelp] = &[
    shown("s", "start the selected experiment", 0, "start"),
    shown("p", "pause / resume", 1, "pause"),
    shown(
        "u",
        "unfreeze now (fine-tune from the next batch)",
        2,
        "unfreeze",
    ),
    shown("x", "stop (checkpoint saved)", 3, "stop"),
    shown("q", "quit (asks while a run is going)", 8, "quit"),
    shown("?", "this help", 7, "help"),
    key("↑/↓ j/k", "select experiment"),
    key("Tab", "next experiment"),
    key("Enter", "start, or pause/resume the selected one"),
    key("PgUp/PgDn", "scroll the epoch table"),
    shown("m", "model pane: layers, trainable marks", 6, "model"),
    key("t", "smooth the charts (debiased EMA)"),
    key("e", "edit the selected file in $EDITOR"),
    key("Space", "mark / unmark for the shootout"),
    shown(
        "a",
        "shootout: run the marked (or all) one after another",
        4,
        "shootout",
    ),
    shown(
        "c",
        "compare view: every run in one table and chart",
        5,
        "compare",
    ),
    key("Esc", "close a pop-up"),
];

/// The footer line, built from [`KEYS`]: `s start  p pause  ...`.
pub fn footer_text() -> String {
    let mut shown: Vec<(u8, String)> = KEYS
        .iter()
        .filter_map(|k| {
            k.footer
                .map(|(place, word)| (place, format!("{} {word}", k.keys)))
        })
        .collect();
    shown.sort();
    shown
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join("  ")
}

pub(super) fn on_key(app: &mut App, key: KeyEvent) -> Vec<Action> {
    if key.kind == KeyEventKind::Release {
        return Vec::new();
    }
    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
    match app.overlay {
        Overlay::ConfirmQuit => {
            match key.code {
                KeyCode::Char('y') | KeyCode::Char('q') | KeyCode::Enter => {
                    app.quit = true;
                    return stop_all(app);
                }
                _ if ctrl_c => {
                    app.quit = true;
                    return stop_all(app);
                }
                _ => app.overlay = Overlay::None,
            }
            return Vec::new();
        }
        Overlay::Help => {
            if !ctrl_c {
                app.overlay = Overlay::None;
                return Vec::new();
            }
        }
        Overlay::None => {}
    }
    let selected = app.selected;
    let id = app.current().map_or(0, |e| e.id);
    let status = app
        .current()
        .and_then(|e| e.run.as_ref())
        .map(|r| r.status.clone());
    let active = app
        .current()
        .and_then(|e| e.run.as_ref())
        .is_some_and(RunView::is_active);
    match key.code {
        _ if ctrl_c => return request_quit(app),
        KeyCode::Char('q') => return request_quit(app),
        KeyCode::Char('?') => app.overlay = Overlay::Help,
        // Esc closes whatever is in front: a pop-up, the model pane, the compare view.
        KeyCode::Esc => {
            app.overlay = Overlay::None;
            app.show_model = false;
            app.show_compare = false;
        }
        KeyCode::Down | KeyCode::Char('j') | KeyCode::Tab if !app.entries.is_empty() => {
            app.selected = (app.selected + 1) % app.entries.len();
            app.table_scroll = 0;
        }
        KeyCode::Up | KeyCode::Char('k') | KeyCode::BackTab if !app.entries.is_empty() => {
            app.selected = (app.selected + app.entries.len() - 1) % app.entries.len();
            app.table_scroll = 0;
        }
        KeyCode::PageUp => {
            let rows = app
                .current()
                .and_then(|e| e.run.as_ref())
                .map_or(0, |r| r.epochs.len());
            app.table_scroll = app
                .table_scroll
                .saturating_add(5)
                .min(rows.saturating_sub(1));
        }
        KeyCode::PageDown => app.table_scroll = app.table_scroll.saturating_sub(5),
        KeyCode::Char('m') => app.show_model = !app.show_model,
        KeyCode::Char('c') => app.show_compare = !app.show_compare,
        KeyCode::Char(' ') => {
            if let Some(e) = app.entries.get_mut(selected) {
                e.marked = !e.marked;
            }
        }
        KeyCode::Char('a') => return queue_shootout(app),
        KeyCode::Char('t') => app.smoothing = !app.smoothing,
        KeyCode::Char('e') => {
            if let Some(e) = app.current() {
                return vec![Action::Edit(e.path.clone())];
            }
        }
        KeyCode::Char('s') => return start(app),
        KeyCode::Enter if !active => return start(app),
        KeyCode::Char('p') | KeyCode::Enter => match status {
            Some(RunStatus::Running) | Some(RunStatus::Loading { .. }) => {
                return vec![Action::Send(id, Command::Pause)]
            }
            Some(RunStatus::Paused) => return vec![Action::Send(id, Command::Resume)],
            _ => app.say(false, "nothing to pause: start a run with s"),
        },
        KeyCode::Char('u') => {
            let run = app.current().and_then(|e| e.run.as_ref());
            match run {
                Some(r) if r.is_active() && r.phase == Phase::Frozen => {
                    if let Some(r) = app.entries[selected].run.as_mut() {
                        r.stall = None;
                    }
                    return vec![Action::Send(id, Command::Unfreeze)];
                }
                Some(r) if r.is_active() => app.say(false, "already fine-tuning"),
                _ => app.say(false, "nothing to unfreeze: start a run with s"),
            }
        }
        KeyCode::Char('x') => {
            if active {
                return vec![Action::Send(id, Command::Stop)];
            }
            app.say(false, "nothing to stop");
        }
        _ => {}
    }
    Vec::new()
}
