//! The dashboard's state and the pure `update(state, event) -> actions` that drives
//! it. No terminal, no threads, no clock: every key and every trainer event is
//! testable by calling [`update`].
//!
//! One concern per file: `run_view` (a run as the events reported it), `entry`
//! (an experiment file in the list), `keys` (the key table and what each key does),
//! `trainer` (trainer events), `files` (file edits), `queue` (the shootout queue).

mod attach;
mod entry;
mod errors;
mod files;
mod keys;
mod queue;
mod run_view;
mod trainer;

use std::path::PathBuf;

use crossterm::event::KeyEvent;

pub use entry::{Entry, FileState};
pub use errors::ErrorsView;
pub use keys::{footer_for, footer_text, KeyHelp, KEYS, NOT_ATTACHED};
pub use run_view::{RunStatus, RunView, BATCH_HISTORY};

pub use attach::{status_of, LOST_AFTER_SECONDS};
use files::on_file;
use keys::on_key;
use queue::next_in_queue;
use trainer::on_trainer;

use crate::config::Experiment;
use crate::train::{Command, Event};

/// Pop-ups over the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// Nothing.
    None,
    /// The key list.
    Help,
    /// "A run is going: quit anyway?"
    ConfirmQuit,
    /// Every message, wrapped, scrollable.
    Log,
}

/// A line in the messages pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Warning or error rather than information.
    pub warning: bool,
    /// The text.
    pub text: String,
    /// How many times in a row it was said (1 the first time).
    pub repeats: u32,
}

/// The whole dashboard state.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// The experiment files, in list order.
    pub entries: Vec<Entry>,
    /// The selected entry.
    pub selected: usize,
    /// Pop-up in front.
    pub overlay: Overlay,
    /// Model pane instead of the metrics table.
    pub show_model: bool,
    /// Model pane rows scrolled up from its end (0: the last layers, where the
    /// trainable ones are).
    pub model_scroll: usize,
    /// Charts smoothed (debiased EMA).
    pub smoothing: bool,
    /// Rows scrolled up from the newest in the metrics table.
    pub table_scroll: usize,
    /// Messages, oldest first.
    pub messages: Vec<Message>,
    /// Lines scrolled up in the help pop-up or the message log (whichever is open).
    pub overlay_scroll: usize,
    /// Set when the loop should end.
    pub quit: bool,
    /// The id the next new entry gets.
    pub next_id: u64,
    /// Shootout: entries waiting to run, in order.
    pub queue: std::collections::VecDeque<u64>,
    /// Shootout: the entries of the shootout in progress (exported when all are done).
    pub shootout: Vec<u64>,
    /// Compare view instead of the selected run.
    pub show_compare: bool,
    /// Attached to this runs folder: entries are run folders of other processes.
    pub attached: Option<PathBuf>,
    /// Draw without colour (`NO_COLOR` set): every cue also has a mark or a word.
    pub no_color: bool,
    /// The error-analysis view of the selected run, when open (`v`).
    pub errors: Option<ErrorsView>,
}

/// What the dashboard loop must do after an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a trainer for entry `id` with these settings.
    Start(u64, Box<Experiment>),
    /// Send a command to entry `id`'s trainer.
    Send(u64, Command),
    /// Open this file in `$EDITOR` (suspending the terminal).
    Edit(PathBuf),
    /// The shootout is over: compare these run folders and export the results.
    ExportShootout(Vec<PathBuf>),
    /// Attached: append this command to the run folder's control file.
    Control(PathBuf, Command),
    /// Attached: edit a copy of this run folder's settings in `$EDITOR`; a valid
    /// result goes to the run as a `set` line of its control file.
    EditRun(PathBuf),
    /// Read this run folder's best-epoch predictions (for the error-analysis view).
    LoadPredictions(PathBuf),
    /// Decode this image for the error-analysis view's preview.
    LoadPreview(PathBuf),
    /// Build the layers these settings make (no weights), for the model pane of the
    /// experiment file at this path before it runs.
    DescribeModel(PathBuf, Box<Experiment>),
    /// Keep this file as the selection for the next launch on the same folder.
    RememberSelection(PathBuf),
    /// Look at the data folder of the experiment file at this path: does it fix the
    /// split with `train/` and `val/` folders?
    DescribeData(PathBuf, PathBuf),
}

/// Everything that can happen to the dashboard.
// A trainer event carries an epoch row inline; a few hundred bytes per event at most
// ~100 events a second is not worth a box per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// A key press.
    Key(KeyEvent),
    /// An event from entry `id`'s trainer.
    Trainer(u64, Event),
    /// A file was (re)loaded: its new state (from the watcher).
    FileLoaded(PathBuf, FileState),
    /// A file disappeared.
    FileRemoved(PathBuf),
    /// A line for the messages pane (from the loop, e.g. where results were written).
    Info(String),
    /// Attached: a run folder's state as its files say now.
    RunFolder(PathBuf, Box<crate::results::FolderSnapshot>),
    /// Attached: a command could not be appended to this run folder's control file.
    ControlFailed(PathBuf, String),
    /// A run folder's best-epoch predictions, read (or why not).
    Predictions(
        PathBuf,
        Result<Box<crate::train::predictions::ValPredictions>, String>,
    ),
    /// An image decoded for the preview (or why not).
    Preview(PathBuf, Result<Box<image::DynamicImage>, String>),
    /// On launch: the most recent finished or interrupted run of each experiment
    /// file (file, run folder, its state), shown until the file's next start.
    PastRuns(Vec<(PathBuf, PathBuf, Box<crate::results::FolderSnapshot>)>),
    /// The dashboard ends (a signal, the user quit, a scripted run is over): nothing
    /// queued may start, every active run stops.
    Quit,
    /// Select the entry of this file (the selection kept from the last launch).
    Select(PathBuf),
    /// The layers an experiment file's settings build (or why not), for its model
    /// pane before it runs.
    ModelPreview(PathBuf, Result<Vec<crate::model::LayerInfo>, String>),
    /// The validation folder of an experiment file's data folder (the file, the data
    /// folder looked at, the answer), when its `train/` and `val/` folders fix the
    /// split (see [`Action::DescribeData`]).
    DataLayout(PathBuf, PathBuf, Option<String>),
}

impl App {
    /// A dashboard over these files and their load results.
    pub fn new(files: Vec<(PathBuf, FileState)>) -> App {
        let entries: Vec<Entry> = files
            .into_iter()
            .enumerate()
            .map(|(i, (path, file))| Entry::new(i as u64, path, file))
            .collect();
        App {
            next_id: entries.len() as u64,
            queue: std::collections::VecDeque::new(),
            shootout: Vec::new(),
            show_compare: false,
            attached: None,
            no_color: false,
            errors: None,
            entries,
            selected: 0,
            overlay: Overlay::None,
            show_model: false,
            model_scroll: 0,
            smoothing: false,
            table_scroll: 0,
            messages: Vec::new(),
            overlay_scroll: 0,
            quit: false,
        }
    }

    /// What the loop does once at launch: look at each valid file's data folder.
    pub fn startup_actions(&self) -> Vec<Action> {
        self.entries
            .iter()
            .filter_map(|e| files::describe_data(&e.path, e.settings()?))
            .collect()
    }

    /// The selected entry.
    pub fn current(&self) -> Option<&Entry> {
        self.entries.get(self.selected)
    }

    /// Posts a message. A message already in the pane is not posted again: it moves
    /// to the end with its count (`(x3)`), so the pane holds each distinct thing once.
    fn say(&mut self, warning: bool, text: impl Into<String>) {
        let text = text.into();
        let repeats = match self
            .messages
            .iter()
            .rposition(|m| m.text == text && m.warning == warning)
        {
            Some(i) => self.messages.remove(i).repeats + 1,
            None => 1,
        };
        self.messages.push(Message {
            warning,
            text,
            repeats,
        });
        let excess = self.messages.len().saturating_sub(200);
        self.messages.drain(..excess);
    }

    /// Whether any trainer of this dashboard is alive (attached runs belong to other
    /// processes: quitting leaves them running).
    pub fn any_active(&self) -> bool {
        self.attached.is_none()
            && self
                .entries
                .iter()
                .any(|e| e.run.as_ref().is_some_and(RunView::is_active))
    }

    /// A dashboard attached to a runs folder: no entries until its runs are read.
    pub fn attached(runs_root: PathBuf) -> App {
        let mut app = App::new(Vec::new());
        app.attached = Some(runs_root);
        app
    }
}

/// Applies one event to the state; returns what the loop must do.
pub fn update(app: &mut App, event: AppEvent) -> Vec<Action> {
    match event {
        AppEvent::Key(key) if app.attached.is_some() => {
            let actions = attached_key(app, key);
            attach::to_control(app, actions)
        }
        AppEvent::Key(key) => on_key(app, key),
        AppEvent::RunFolder(path, snap) => {
            attach::on_folder(app, path, *snap);
            Vec::new()
        }
        AppEvent::ControlFailed(path, why) => {
            attach::on_control_failed(app, &path, why);
            Vec::new()
        }
        AppEvent::PastRuns(runs) => {
            past_runs(app, runs);
            Vec::new()
        }
        AppEvent::Trainer(id, event) => {
            // Only a finished epoch can change the best (and the view's predictions).
            let epoch_end = matches!(event, Event::EpochEnd(_)) && app.errors.is_some();
            let best_before = app
                .entries
                .iter()
                .find(|e| e.id == id && epoch_end)
                .and_then(|e| e.run.as_ref())
                .and_then(RunView::best);
            on_trainer(app, id, event);
            let mut actions = if epoch_end {
                errors::after_epoch(app, id, best_before)
            } else {
                Vec::new()
            };
            actions.extend(next_in_queue(app));
            actions
        }
        AppEvent::Predictions(dir, predictions) => errors::on_predictions(app, dir, predictions),
        AppEvent::Preview(path, image) => {
            errors::on_preview(app, path, image);
            Vec::new()
        }
        AppEvent::Info(text) => {
            app.say(false, text);
            Vec::new()
        }
        AppEvent::FileLoaded(path, file) => on_file(app, path, file),
        AppEvent::Select(path) => {
            if let Some(i) = app.entries.iter().position(|e| e.path == path) {
                app.selected = i;
            }
            Vec::new()
        }
        AppEvent::ModelPreview(path, layers) => {
            if let Some(e) = app.entries.iter_mut().find(|e| e.path == path) {
                e.model_preview = Some(layers);
            }
            Vec::new()
        }
        AppEvent::DataLayout(path, dir, folder) => {
            // An answer about a folder the file no longer names (a quick second edit)
            // is old news.
            let entry = app.entries.iter_mut().find(|e| e.path == path);
            if let Some(e) = entry.filter(|e| {
                e.settings()
                    .is_some_and(|s| s.data.labels.is_none() && s.data.dir == dir)
            }) {
                e.fixed_validation = folder;
            }
            Vec::new()
        }
        AppEvent::Quit => {
            app.quit = true;
            stop_all(app)
        }
        AppEvent::FileRemoved(path) => {
            if let Some(i) = app.entries.iter().position(|e| e.path == path) {
                if app.entries[i].run.as_ref().is_some_and(RunView::is_active) {
                    app.entries[i].deleted = true;
                    app.say(true, format!("{} deleted; its run goes on", path.display()));
                } else {
                    app.entries.remove(i);
                    if i < app.selected {
                        app.selected -= 1;
                    }
                    app.selected = app.selected.min(app.entries.len().saturating_sub(1));
                }
            }
            Vec::new()
        }
    }
}

/// Past runs shown in their experiments' entries, with one message saying so.
fn past_runs(app: &mut App, runs: Vec<(PathBuf, PathBuf, Box<crate::results::FolderSnapshot>)>) {
    let mut shown = 0;
    for (file, dir, snap) in runs {
        let Some(entry) = app.entries.iter_mut().find(|e| e.path == file) else {
            continue;
        };
        if entry.run.is_some() {
            continue;
        }
        let mut run = match &snap.config {
            Some(exp) => RunView::new(exp),
            None => RunView::bare(),
        };
        attach::fill(&mut run, &dir, &snap);
        run.status = match status_of(&snap) {
            RunStatus::Done(reason) => RunStatus::Done(reason),
            RunStatus::Failed(e) => RunStatus::Failed(e),
            // No process of this dashboard runs it: it was killed, or its machine went
            // (`tlcap-tui resume` continues it).
            _ => RunStatus::Lost {
                seconds: snap.age_seconds.unwrap_or(0.0) as u64,
            },
        };
        run.images_per_sec = 0.0;
        entry.run = Some(run);
        shown += 1;
    }
    if shown > 0 {
        app.say(
            false,
            format!(
                "showing the last run of {shown} experiment(s) from the runs folder; s starts a new one"
            ),
        );
    }
}

/// Keys in an attached dashboard: the usual ones, but runs start elsewhere and files
/// are not edited here.
fn attached_key(app: &mut App, key: KeyEvent) -> Vec<Action> {
    use crossterm::event::KeyCode;
    match key.code {
        KeyCode::Char('s') | KeyCode::Char('a') | KeyCode::Char(' ') => {
            app.say(
                false,
                "attached: runs start elsewhere (tlcap-tui run, worker); p, u, r, x and e steer them",
            );
            Vec::new()
        }
        KeyCode::Char('e') => match app.current() {
            Some(e) if e.run.as_ref().is_some_and(RunView::is_active) => {
                vec![Action::EditRun(e.path.clone())]
            }
            Some(_) => {
                app.say(false, "this run is not running: nothing to edit");
                Vec::new()
            }
            None => Vec::new(),
        },
        KeyCode::Enter => {
            let status = app
                .current()
                .and_then(|e| e.run.as_ref())
                .map(|r| r.status.clone());
            match (app.current().map(|e| e.id), status) {
                (Some(id), Some(RunStatus::Running)) => vec![Action::Send(id, Command::Pause)],
                (Some(id), Some(RunStatus::Paused)) => vec![Action::Send(id, Command::Resume)],
                _ => Vec::new(),
            }
        }
        _ => on_key(app, key),
    }
}

fn request_quit(app: &mut App) -> Vec<Action> {
    if app.any_active() {
        app.overlay = Overlay::ConfirmQuit;
        Vec::new()
    } else {
        app.quit = true;
        app.queue.clear();
        app.shootout.clear();
        Vec::new()
    }
}

/// Quitting: no queued experiment may start any more; every active run stops.
fn stop_all(app: &mut App) -> Vec<Action> {
    app.queue.clear();
    app.shootout.clear();
    app.entries
        .iter()
        .filter(|e| e.run.as_ref().is_some_and(RunView::is_active))
        .map(|e| Action::Send(e.id, Command::STOP))
        .collect()
}

fn start(app: &mut App) -> Vec<Action> {
    let selected = app.selected;
    let Some(entry) = app.entries.get_mut(selected) else {
        return Vec::new();
    };
    if entry.run.as_ref().is_some_and(RunView::is_active) {
        let name = entry.name();
        app.say(false, format!("{name} is already running"));
        return Vec::new();
    }
    let Some(exp) = entry.settings().cloned() else {
        let name = entry.name();
        app.say(true, format!("{name}: fix the file first (see its errors)"));
        return Vec::new();
    };
    entry.pending_restart.clear();
    entry.run = Some(RunView::new(&exp));
    let id = entry.id;
    // Started by hand: the shootout queue must not run it a second time.
    app.queue.retain(|q| *q != id);
    app.table_scroll = 0;
    vec![Action::Start(id, Box::new(exp))]
}
