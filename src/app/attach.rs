//! Attached to a runs folder (`tlcap-tui attach RUNS_DIR`): the entries are run
//! folders written by other processes, anywhere; their state is read from the files
//! (heartbeat, metrics, summary), and the keys steer them through their control files.

use std::path::PathBuf;

use super::{Action, App, Entry, FileState, RunStatus, RunView};
use crate::results::FolderSnapshot;
use crate::train::status::RunState;
use crate::train::Phase;

/// A heartbeat older than this on a running or paused run: its process is gone.
pub const LOST_AFTER_SECONDS: f64 = 10.0;

/// A run folder's new state: its entry is added, or updated.
pub(super) fn on_folder(app: &mut App, path: PathBuf, snap: FolderSnapshot) {
    let i = match app.entries.iter().position(|e| e.path == path) {
        Some(i) => i,
        None => {
            let file = match &snap.config {
                Some(exp) => FileState::Valid(Box::new(exp.clone())),
                None => FileState::Invalid {
                    errors: vec![format!("{}: no readable config.yaml", path.display())],
                    last_good: None,
                },
            };
            let mut entry = Entry::new(app.next_id, path.clone(), file);
            app.next_id += 1;
            entry.title = Some(title(&path));
            let at = app
                .entries
                .iter()
                .position(|e| e.path > path)
                .unwrap_or(app.entries.len());
            let selected_path = app.current().map(|e| e.path.clone());
            app.entries.insert(at, entry);
            if let Some(p) = selected_path {
                app.selected = app.entries.iter().position(|e| e.path == p).unwrap_or(0);
            }
            at
        }
    };
    let entry = &mut app.entries[i];
    let run = entry.run.get_or_insert_with(|| match &snap.config {
        Some(exp) => RunView::new(exp),
        None => RunView::bare(),
    });
    fill(run, &path, &snap);
    // A file problem is said once when it appears, and shown while it lasts.
    let new_problems: Vec<String> = snap
        .problems
        .iter()
        .filter(|p| !run.file_problems.contains(p))
        .cloned()
        .collect();
    run.file_problems = snap.problems.clone();
    let status = status_of(&snap);
    // The run's files answered a request (paused, resumed, stopped): no longer pending.
    if status != run.status {
        run.pending = None;
    }
    run.status = status;
    let name = entry.name();
    for problem in new_problems {
        app.say(true, format!("{name}: {problem}"));
    }
}

/// A command could not be written to a run's control file: said, and the run no
/// longer shows it as pending.
pub(super) fn on_control_failed(app: &mut App, run_dir: &std::path::Path, why: String) {
    let entry = app.entries.iter_mut().find(|e| e.path == run_dir);
    let name = match entry {
        Some(e) => {
            if let Some(run) = e.run.as_mut() {
                run.pending = None;
            }
            e.name()
        }
        None => run_dir.display().to_string(),
    };
    app.say(
        true,
        format!("{name}: cannot write its control file: {why}"),
    );
}

/// A run view as a run folder's files say: its epochs, phase and progress.
pub(super) fn fill(run: &mut RunView, path: &std::path::Path, snap: &FolderSnapshot) {
    run.run_dir = Some(path.to_path_buf());
    run.epochs = snap.epochs.clone();
    run.test_accuracy = snap.test_accuracy;
    run.phase_marks = phase_marks(&run.epochs);
    if let Some(s) = &snap.status {
        run.phase = s.phase;
        run.epoch = s.epoch;
        run.total_epochs = s.epochs;
        run.batch = s.batch;
        run.images_per_sec = s.images_per_sec;
        // The heartbeat carries no running loss.
        run.batch_loss = f64::NAN;
    } else if let Some(last) = run.epochs.last() {
        run.phase = last.phase;
        run.epoch = last.epoch;
    }
}

/// `experiment/timestamp`, the run folder's last two parts.
fn title(path: &std::path::Path) -> String {
    let parts: Vec<String> = path
        .iter()
        .rev()
        .take(2)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// Where the phase changed, for the charts' markers.
fn phase_marks(epochs: &[crate::train::EpochMetrics]) -> Vec<(u32, Phase)> {
    let mut marks = Vec::new();
    for pair in epochs.windows(2) {
        if pair[0].phase != pair[1].phase {
            marks.push((pair[1].epoch, pair[1].phase));
        }
    }
    marks
}

/// The status a folder's files say: its summary once ended, else its heartbeat (lost
/// when the heartbeat is stale).
pub fn status_of(snap: &FolderSnapshot) -> RunStatus {
    if let Some(summary) = &snap.summary {
        return RunStatus::Done(summary.reason);
    }
    match (&snap.status, snap.age_seconds) {
        (Some(s), _) if s.state == RunState::Failed => {
            RunStatus::Failed("the run failed (see its events.log)".into())
        }
        (Some(s), Some(age))
            if matches!(s.state, RunState::Running | RunState::Paused)
                && age > LOST_AFTER_SECONDS =>
        {
            RunStatus::Lost {
                seconds: age as u64,
            }
        }
        (Some(s), _) if s.state == RunState::Paused => RunStatus::Paused,
        (Some(s), _) if s.state == RunState::Finished => {
            RunStatus::Done(crate::train::EndReason::Completed)
        }
        (Some(_), _) => RunStatus::Running,
        (None, _) => RunStatus::Lost { seconds: 0 },
    }
}

/// In an attached dashboard, commands for a run go to its control file.
pub(super) fn to_control(app: &App, actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Send(id, command) => {
                let entry = app.entries.iter().find(|e| e.id == id)?;
                Some(Action::Control(
                    entry.path.clone(),
                    command.for_control_file()?,
                ))
            }
            Action::Start(..) | Action::Edit(_) => None,
            other => Some(other),
        })
        .collect()
}
