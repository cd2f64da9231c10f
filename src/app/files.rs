//! Experiment files (re)loaded or broken while the dashboard runs: the last good
//! settings stay, live edits go to the running trainer, restart-only ones wait.

use std::path::PathBuf;

use super::{Action, App, Entry, FileState, RunView};
use crate::config::{Experiment, LiveEdit};
use crate::train::stall::BestRule;
use crate::train::Command;

/// The look at a file's data folder its idle pane needs (whether `train/` and `val/`
/// fix the split); none for label files, whose split column decides.
pub(super) fn describe_data(path: &std::path::Path, exp: &Experiment) -> Option<Action> {
    exp.data
        .labels
        .is_none()
        .then(|| Action::DescribeData(path.to_path_buf(), exp.data.dir.clone()))
}

pub(super) fn on_file(app: &mut App, path: PathBuf, file: FileState) -> Vec<Action> {
    let Some(i) = app.entries.iter().position(|e| e.path == path) else {
        let selected_path = app.current().map(|e| e.path.clone());
        app.entries
            .push(Entry::new(app.next_id, path.clone(), file));
        app.next_id += 1;
        app.entries.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(p) = selected_path {
            app.selected = app.entries.iter().position(|e| e.path == p).unwrap_or(0);
        }
        app.say(false, format!("new experiment file {}", path.display()));
        let entry = app.entries.iter().find(|e| e.path == path);
        return entry
            .and_then(|e| describe_data(&path, e.settings()?))
            .into_iter()
            .collect();
    };
    let old = app.entries[i].settings().cloned();
    let active = app.entries[i].run.as_ref().is_some_and(RunView::is_active);
    let name = app.entries[i].name();
    app.entries[i].deleted = false;
    match file {
        FileState::Invalid { errors, .. } => {
            // The same broken file read again (a second save, `s`): nothing new to say.
            let same = matches!(&app.entries[i].file,
                FileState::Invalid { errors: shown, .. } if *shown == errors);
            if !same {
                for e in &errors {
                    app.say(true, e.clone());
                }
                if old.is_some() {
                    app.say(
                        true,
                        format!("{name}: the last good settings stay in force"),
                    );
                }
            }
            app.entries[i].file = FileState::Invalid {
                errors,
                last_good: old.map(Box::new),
            };
            Vec::new()
        }
        FileState::Valid(new) => {
            let was_invalid = matches!(app.entries[i].file, FileState::Invalid { .. });
            app.entries[i].file = FileState::Valid(new.clone());
            // The model it would build may differ now, and its data folder (a label
            // file's split column decides instead).
            app.entries[i].model_preview = None;
            if new.data.labels.is_some() || old.as_ref().is_some_and(|o| o.data.dir != new.data.dir)
            {
                app.entries[i].fixed_validation = None;
            }
            if was_invalid {
                app.say(false, format!("{name}: the file is valid again"));
            }
            let mut actions: Vec<Action> = describe_data(&path, &new).into_iter().collect();
            let Some(old) = old.filter(|_| active) else {
                return actions;
            };
            restart_only_edits(app, i, &new);
            let edit = LiveEdit::new(&old, &new);
            let live: Vec<String> = edit.live().map(|c| c.to_string()).collect();
            if live.is_empty() {
                return actions;
            }
            let Some(run) = app.entries[i].run.as_mut() else {
                return actions;
            };
            run.best_rule = BestRule::of(&new);
            // Said at once; the trainer says from which epoch it applies (it is the
            // one that applies it), then confirms at that epoch's start.
            app.say(
                false,
                format!("{name}: seen: {}; sent to the run", live.join(", ")),
            );
            actions.push(Action::Send(app.entries[i].id, Command::Apply(new)));
            actions
        }
    }
}

/// Restart-only edits, counted from the settings the run started with (so undoing
/// one leaves nothing pending); said when what waits for a restart changes.
fn restart_only_edits(app: &mut App, i: usize, new: &Experiment) {
    let entry = &app.entries[i];
    let name = entry.name();
    let Some(started) = entry.run.as_ref().and_then(|r| r.started_with.as_deref()) else {
        return;
    };
    let restart: Vec<String> = LiveEdit::new(started, new)
        .restart_only()
        .map(|c| c.to_string())
        .collect();
    if restart == entry.pending_restart {
        return;
    }
    if restart.is_empty() {
        app.say(
            false,
            format!("{name}: nothing waits for a restart any more"),
        );
    } else {
        app.say(
            true,
            format!(
                "{name}: {} {} on the next start (x, then s)",
                restart.join(", "),
                if restart.len() == 1 {
                    "applies"
                } else {
                    "apply"
                }
            ),
        );
    }
    app.entries[i].pending_restart = restart;
}
