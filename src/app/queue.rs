//! The shootout queue: experiments run one after another, then compared.

use std::path::PathBuf;

use super::{Action, App, Entry, RunView};

/// `a`: queues the marked experiments (all valid ones if none is marked) and starts
/// the first when nothing is running.
pub(super) fn queue_shootout(app: &mut App) -> Vec<Action> {
    if !app.queue.is_empty() || !app.shootout.is_empty() {
        app.say(false, "a shootout is already going");
        return Vec::new();
    }
    let any_marked = app.entries.iter().any(|e| e.marked);
    let ids: Vec<u64> = app
        .entries
        .iter()
        .filter(|e| (e.marked || !any_marked) && e.settings().is_some())
        .filter(|e| !e.run.as_ref().is_some_and(RunView::is_active))
        .map(|e| e.id)
        .collect();
    if ids.is_empty() {
        app.say(true, "nothing to queue: no valid experiment");
        return Vec::new();
    }
    let names: Vec<String> = app
        .entries
        .iter()
        .filter(|e| ids.contains(&e.id))
        .map(Entry::name)
        .collect();
    app.say(false, format!("shootout: {}", names.join(", ")));
    app.queue = ids.iter().copied().collect();
    app.shootout = ids;
    app.show_compare = true;
    next_in_queue(app)
}

/// Starts the next queued experiment when nothing runs; exports when all are done.
pub(super) fn next_in_queue(app: &mut App) -> Vec<Action> {
    if app.shootout.is_empty() || app.any_active() {
        return Vec::new();
    }
    while let Some(id) = app.queue.pop_front() {
        let Some(i) = app.entries.iter().position(|e| e.id == id) else {
            continue;
        };
        let Some(exp) = app.entries[i].settings().cloned() else {
            continue;
        };
        let entry = &mut app.entries[i];
        entry.run = Some(RunView::new(&exp));
        entry.pending_restart.clear();
        return vec![Action::Start(id, Box::new(exp))];
    }
    let dirs: Vec<PathBuf> = std::mem::take(&mut app.shootout)
        .iter()
        .filter_map(|id| app.entries.iter().find(|e| e.id == *id))
        .filter_map(|e| e.run.as_ref()?.run_dir.clone())
        .collect();
    vec![Action::ExportShootout(dirs)]
}
