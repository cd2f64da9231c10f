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
        "unfreeze now (fine-tune from the next batch); while fine-tuning, one more block group",
        2,
        "unfreeze",
    ),
    shown("x", "stop (checkpoint saved)", 3, "stop"),
    shown(
        "r",
        "lower the learning rate now: times stall.factor (0.1), not below stall.min_lr; recorded like an edit",
        3,
        "lower lr",
    ),
    shown("q", "quit (asks while a run is going)", 9, "quit"),
    shown("?", "this help (↑/↓ scroll it)", 8, "help"),
    shown(
        "l",
        "message log: every message, ↑/↓ PgUp/PgDn scroll",
        7,
        "log",
    ),
    key("↑/↓ j/k", "select experiment"),
    key("Tab", "next experiment"),
    key("Enter", "start, or pause/resume the selected one"),
    key("PgUp/PgDn", "scroll the epoch table"),
    shown("m", "model pane: layers, trainable marks", 6, "model"),
    shown(
        "v",
        "error analysis: confusion matrix, per-class scores, worst images with a picture (↑/↓ pick, ←/→ epoch; multi-label: per-label scores, f orders by one label after another)",
        5,
        "errors",
    ),
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
    key(
        "Esc",
        "close a pop-up, the model pane, the compare view or the stall banner",
    ),
];

/// Keys that do nothing in a dashboard attached to a runs folder (runs start
/// elsewhere): left out of its footer and marked in its help.
pub const NOT_ATTACHED: &[&str] = &["s", "a", "Space"];

/// Which footer keys stay when the line is short of room, most needed first.
const FOOTER_PRIORITY: &[&str] = &["q", "?", "s", "p", "u", "x", "r", "v", "l", "c", "a", "m"];

/// The footer line, built from [`KEYS`], in at most `width` columns:
/// `s start  p pause  ...  ? help  q quit`. Where not all fit, the least needed go
/// first (`? help` lists them all); `q quit` and `? help` always stay.
pub fn footer_text(width: usize) -> String {
    footer_for(width, false)
}

/// The footer of a dashboard, attached to a runs folder or not: only keys that act.
pub fn footer_for(width: usize, attached: bool) -> String {
    let shown: Vec<(u8, &str, String)> = KEYS
        .iter()
        .filter(|k| !(attached && NOT_ATTACHED.contains(&k.keys)))
        .filter_map(|k| {
            k.footer
                .map(|(place, word)| (place, k.keys, format!("{} {word}", k.keys)))
        })
        .collect();
    let rank = |keys: &str| {
        FOOTER_PRIORITY
            .iter()
            .position(|k| *k == keys)
            .unwrap_or(FOOTER_PRIORITY.len())
    };
    let mut by_need: Vec<&(u8, &str, String)> = shown.iter().collect();
    by_need.sort_by_key(|(place, keys, _)| (rank(keys), *place));
    let mut kept: Vec<&(u8, &str, String)> = Vec::new();
    let mut used = 0;
    for item in by_need {
        let cost = item.2.chars().count() + if kept.is_empty() { 0 } else { 2 };
        if used + cost <= width || kept.len() < 2 {
            used += cost;
            kept.push(item);
        }
    }
    kept.sort_by_key(|(place, ..)| *place);
    kept.into_iter()
        .map(|(.., text)| text.as_str())
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
        Overlay::Help | Overlay::Log if !ctrl_c => {
            scroll_overlay(app, key.code);
            return Vec::new();
        }
        Overlay::Help | Overlay::Log | Overlay::None => {}
    }
    if app.show_model && !ctrl_c && scroll_model(app, key.code) {
        return Vec::new();
    }
    if app.errors.is_some() && !ctrl_c {
        if let Some(actions) = super::errors::on_key(app, key.code) {
            return actions;
        }
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
        KeyCode::Char('?') => {
            app.overlay = Overlay::Help;
            app.overlay_scroll = 0;
        }
        KeyCode::Char('l') => {
            app.overlay = Overlay::Log;
            app.overlay_scroll = 0;
        }
        // Esc closes whatever is in front: a pop-up, the model pane, the compare view,
        // the selected run's stall banner.
        KeyCode::Esc => {
            app.overlay = Overlay::None;
            app.show_model = false;
            app.show_compare = false;
            app.errors = None;
            if let Some(r) = app.entries.get_mut(selected).and_then(|e| e.run.as_mut()) {
                r.stall = None;
                r.stall_outlived = false;
            }
        }
        KeyCode::Down | KeyCode::Char('j') | KeyCode::Tab if !app.entries.is_empty() => {
            app.selected = (app.selected + 1) % app.entries.len();
            return selection_changed(app);
        }
        KeyCode::Up | KeyCode::Char('k') | KeyCode::BackTab if !app.entries.is_empty() => {
            app.selected = (app.selected + app.entries.len() - 1) % app.entries.len();
            return selection_changed(app);
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
        KeyCode::Char('m') => {
            app.show_model = !app.show_model;
            app.model_scroll = 0;
            if app.show_model {
                return describe_model(app);
            }
        }
        KeyCode::Char('v') => return super::errors::toggle(app),
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
                asked(app, "pausing…", "pausing at the next batch…");
                return vec![Action::Send(id, Command::Pause)];
            }
            Some(RunStatus::Paused) => {
                asked(app, "resuming…", "resuming…");
                return vec![Action::Send(id, Command::Resume)];
            }
            _ => app.say(false, nothing_going(app, "pause")),
        },
        KeyCode::Char('u') => {
            let run = app.current().and_then(|e| e.run.as_ref());
            match run {
                Some(r) if r.is_active() && r.phase == Phase::Frozen => {
                    if let Some(r) = app.entries[selected].run.as_mut() {
                        r.stall = None;
                    }
                    say_asked(app, "unfreezing at the next batch…");
                    return vec![Action::Send(id, Command::Unfreeze)];
                }
                // While fine-tuning: the next block group, from the next epoch (the
                // trainer says which, or why there is none).
                Some(r) if r.is_active() => {
                    if let Some(r) = app.entries[selected].run.as_mut() {
                        if r.stall.as_ref().is_some_and(|s| {
                            matches!(
                                s.action,
                                crate::train::events::StallAction::UnfreezeMore { .. }
                            )
                        }) {
                            r.stall = None;
                        }
                    }
                    say_asked(app, "unfreezing the next block group from the next epoch…");
                    return vec![Action::Send(id, Command::Unfreeze)];
                }
                _ => app.say(false, nothing_going(app, "unfreeze")),
            }
        }
        KeyCode::Char('r') => {
            if active {
                say_asked(app, "lowering the learning rate at the next batch…");
                return vec![Action::Send(id, Command::LowerLr)];
            }
            app.say(false, nothing_going(app, "lower"));
        }
        KeyCode::Char('x') => {
            if active {
                asked(
                    app,
                    "stopping…",
                    "stopping at the next batch (a checkpoint is saved)…",
                );
                return vec![Action::Send(id, Command::STOP)];
            }
            app.say(false, nothing_going(app, "stop"));
        }
        _ => {}
    }
    Vec::new()
}

/// A new selection: its table from the end, and kept for the next launch (not when
/// attached: run folders come and go).
fn selection_changed(app: &mut App) -> Vec<Action> {
    app.table_scroll = 0;
    app.model_scroll = 0;
    match app.current() {
        Some(e) if app.attached.is_none() => vec![Action::RememberSelection(e.path.clone())],
        _ => Vec::new(),
    }
}

/// Keys while the model pane is open: arrows, pages, Home and End scroll it (the
/// selection stays); true if the key was one of them.
fn scroll_model(app: &mut App, code: KeyCode) -> bool {
    let rows = app
        .current()
        .map_or(0, |e| match (&e.run, &e.model_preview) {
            (Some(run), _) if !run.layers.is_empty() => run.layers.len(),
            (_, Some(Ok(layers))) => layers.len(),
            _ => 0,
        });
    let last = rows.saturating_sub(1);
    let up: isize = match code {
        KeyCode::Up | KeyCode::Char('k') => 1,
        KeyCode::Down | KeyCode::Char('j') => -1,
        KeyCode::PageUp => 10,
        KeyCode::PageDown => -10,
        KeyCode::Home => rows as isize,
        KeyCode::End => -(rows as isize),
        _ => return false,
    };
    app.model_scroll = app.model_scroll.saturating_add_signed(up).min(last);
    true
}

/// Opening the model pane on an experiment that has not run: its layers are built
/// off the loop (no weights) unless known already.
fn describe_model(app: &mut App) -> Vec<Action> {
    let Some(entry) = app.current() else {
        return Vec::new();
    };
    if entry.run.as_ref().is_some_and(|r| !r.layers.is_empty()) || entry.model_preview.is_some() {
        return Vec::new();
    }
    match entry.settings() {
        Some(exp) => vec![Action::DescribeModel(
            entry.path.clone(),
            Box::new(exp.clone()),
        )],
        None => {
            let name = entry.name();
            app.say(true, format!("{name}: fix the file first (see its errors)"));
            Vec::new()
        }
    }
}

/// A request sent to the selected run: said at once (and logged), and shown in its
/// header as `pending` until the trainer confirms it.
fn asked(app: &mut App, pending: &'static str, text: &str) {
    if let Some(run) = app
        .entries
        .get_mut(app.selected)
        .and_then(|e| e.run.as_mut())
    {
        run.pending = Some(pending);
    }
    say_asked(app, text);
}

/// Says at once what was asked of the selected run.
fn say_asked(app: &mut App, text: &str) {
    let name = app.current().map(|e| e.name()).unwrap_or_default();
    app.say(false, format!("{name}: {text}"));
}

/// Why a key for a run did nothing: no run is going for the selection.
fn nothing_going(app: &App, what: &str) -> String {
    if app.attached.is_some() {
        format!("nothing to {what}: this run is not running")
    } else {
        format!("nothing to {what}: start a run with s")
    }
}

/// Keys while help or the message log is open: arrows and pages scroll (help by key
/// from the top, the log by message from the newest); `l` or Esc closes the log, any
/// other key closes help.
fn scroll_overlay(app: &mut App, code: KeyCode) {
    let log = app.overlay == Overlay::Log;
    let last = if log {
        app.messages.len().saturating_sub(1)
    } else {
        KEYS.len().saturating_sub(1)
    };
    // Help scrolls down the list, the log back in time: both by `step`.
    let step: isize = match code {
        KeyCode::Down | KeyCode::Char('j') => 1,
        KeyCode::Up | KeyCode::Char('k') => -1,
        KeyCode::PageDown => 10,
        KeyCode::PageUp => -10,
        KeyCode::Home => -(last as isize) - 1,
        KeyCode::End => last as isize + 1,
        KeyCode::Esc | KeyCode::Char('l') | KeyCode::Char('q') if log => {
            app.overlay = Overlay::None;
            return;
        }
        _ if log => return,
        _ => {
            app.overlay = Overlay::None;
            return;
        }
    };
    let step = if log { -step } else { step };
    app.overlay_scroll = app.overlay_scroll.saturating_add_signed(step).min(last);
}
