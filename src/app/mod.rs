//! The dashboard's state and the pure `update(state, event) -> actions` that drives
//! it. No terminal, no threads, no clock: every key and every trainer event is
//! testable by calling [`update`].

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::config::{ChangeKind, Experiment, LiveEdit};
use crate::model::LayerInfo;
use crate::train::events::{Compute, Suggestion};
use crate::train::{Command, EndReason, EpochMetrics, Event, Phase};

/// What the user sees about one experiment's run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStatus {
    /// Not started.
    Idle,
    /// Decoding images.
    Loading {
        /// Images decoded.
        done: usize,
        /// Images to decode.
        total: usize,
    },
    /// Training.
    Running,
    /// Held by the user.
    Paused,
    /// Ended.
    Done(EndReason),
    /// Failed with this message.
    Failed(String),
}

/// One run as the dashboard follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    /// Status.
    pub status: RunStatus,
    /// Current phase.
    pub phase: Phase,
    /// The epoch in progress (1-based); 0 before the first batch.
    pub epoch: u32,
    /// Epochs planned (frozen + fine-tune) when the run began.
    pub total_epochs: u32,
    /// Batch progress in the current epoch: (done, of).
    pub batch: (usize, usize),
    /// Running training loss of the current epoch.
    pub batch_loss: f64,
    /// Training images/s in the current epoch.
    pub images_per_sec: f64,
    /// Every finished epoch.
    pub epochs: Vec<EpochMetrics>,
    /// First epochs of each phase change after the first phase: (epoch, phase).
    pub phase_marks: Vec<(u32, Phase)>,
    /// The stall suggestion in force (cleared when acted on).
    pub stall: Option<Suggestion>,
    /// The backbone's layers (trainable marks as of the last phase change).
    pub layers: Vec<LayerInfo>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Where the backbone weights came from.
    pub weights: String,
    /// The run folder.
    pub run_dir: Option<PathBuf>,
    /// Training / validation images.
    pub images: (usize, usize),
    /// How the current epoch computes (precision, what is cached).
    pub compute: Option<Compute>,
}

impl RunView {
    fn new(total_epochs: u32) -> RunView {
        RunView {
            status: RunStatus::Loading { done: 0, total: 0 },
            phase: Phase::Frozen,
            epoch: 0,
            total_epochs,
            batch: (0, 0),
            batch_loss: 0.0,
            images_per_sec: 0.0,
            epochs: Vec::new(),
            phase_marks: Vec::new(),
            stall: None,
            layers: Vec::new(),
            device: String::new(),
            weights: String::new(),
            run_dir: None,
            images: (0, 0),
            compute: None,
        }
    }

    /// True while a trainer thread is alive for this run.
    pub fn is_active(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Loading { .. } | RunStatus::Running | RunStatus::Paused
        )
    }

    /// Index into `epochs` of the best row by validation accuracy.
    pub fn best(&self) -> Option<usize> {
        let best = crate::results::best_of(self.epochs.iter())?;
        self.epochs.iter().position(|m| std::ptr::eq(m, best))
    }

    /// Seconds left: the rest of this epoch plus the remaining epochs, at the pace
    /// of the last finished epoch (None before one finished).
    pub fn eta_seconds(&self) -> Option<f64> {
        let last = self.epochs.last()?;
        let left_epochs = self.total_epochs.saturating_sub(self.epoch.max(last.epoch)) as f64;
        let (done, of) = self.batch;
        let this_epoch = if of > 0 && self.epoch > last.epoch {
            last.seconds * (of - done) as f64 / of as f64
        } else {
            0.0
        };
        Some(this_epoch + left_epochs * last.seconds)
    }
}

/// The configuration state of one experiment file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileState {
    /// Parsed and valid.
    Valid(Box<Experiment>),
    /// Invalid: the errors (file:line:column: message), and the last good settings if
    /// the file was ever valid.
    Invalid {
        /// Error lines with positions.
        errors: Vec<String>,
        /// The settings still in force.
        last_good: Option<Box<Experiment>>,
    },
}

impl From<crate::config::Loaded> for FileState {
    fn from(loaded: crate::config::Loaded) -> FileState {
        match loaded {
            Ok(exp) => FileState::Valid(exp),
            Err(errors) => FileState::Invalid {
                errors,
                last_good: None,
            },
        }
    }
}

impl From<crate::watch::FileEvent> for AppEvent {
    fn from(event: crate::watch::FileEvent) -> AppEvent {
        use crate::watch::FileEvent;
        match event {
            FileEvent::Changed(path, loaded) => AppEvent::FileLoaded(path, loaded.into()),
            FileEvent::Removed(path) => AppEvent::FileRemoved(path),
            FileEvent::Problem(text) => AppEvent::Info(text),
        }
    }
}

/// One experiment file in the list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Stable identity (list positions change as files come and go).
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// Its settings or errors.
    pub file: FileState,
    /// Its run, once started.
    pub run: Option<RunView>,
    /// Restart-only edits waiting for the next start, in words.
    pub pending_restart: Vec<String>,
    /// The file was deleted while its run went on.
    pub deleted: bool,
    /// Marked for the shootout.
    pub marked: bool,
}

impl Entry {
    /// A list entry for a file and its load result.
    pub fn new(id: u64, path: PathBuf, file: FileState) -> Entry {
        Entry {
            id,
            path,
            file,
            run: None,
            pending_restart: Vec::new(),
            deleted: false,
            marked: false,
        }
    }

    /// The settings in force: the valid ones, else the last good ones.
    pub fn settings(&self) -> Option<&Experiment> {
        match &self.file {
            FileState::Valid(e) => Some(e),
            FileState::Invalid { last_good, .. } => last_good.as_deref(),
        }
    }

    /// The name shown: the experiment's, else the file stem.
    pub fn name(&self) -> String {
        match self.settings() {
            Some(e) => e.name.clone(),
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// The one-word state for the list.
    pub fn state_label(&self) -> &'static str {
        match (&self.file, &self.run) {
            (_, Some(run)) if run.stall.is_some() && run.is_active() => "stalled",
            (_, Some(run)) => match run.status {
                RunStatus::Idle => "idle",
                RunStatus::Loading { .. } => "loading",
                RunStatus::Running => "running",
                RunStatus::Paused => "paused",
                RunStatus::Done(_) => "done",
                RunStatus::Failed(_) => "failed",
            },
            (FileState::Invalid { .. }, None) => "invalid",
            (FileState::Valid(_), None) => "idle",
        }
    }
}

/// Pop-ups over the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// Nothing.
    None,
    /// The key list.
    Help,
    /// "A run is going: quit anyway?"
    ConfirmQuit,
}

/// A line in the messages pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Warning or error rather than information.
    pub warning: bool,
    /// The text.
    pub text: String,
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
    /// Charts smoothed (debiased EMA).
    pub smoothing: bool,
    /// Rows scrolled up from the newest in the metrics table.
    pub table_scroll: usize,
    /// Messages, oldest first.
    pub messages: Vec<Message>,
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
}

/// What the dashboard loop must do after an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a trainer for entry `id` with these settings.
    Start(u64, Box<Experiment>),
    /// Send a command to entry `id`'s trainer.
    Send(u64, Command),
    /// Send edited settings to entry `id`'s trainer (live changes apply from the
    /// next epoch).
    Apply(u64, Box<Experiment>),
    /// Open this file in `$EDITOR` (suspending the terminal).
    Edit(PathBuf),
    /// The shootout is over: compare these run folders and export the results.
    ExportShootout(Vec<PathBuf>),
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
}

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
            entries,
            selected: 0,
            overlay: Overlay::None,
            show_model: false,
            smoothing: false,
            table_scroll: 0,
            messages: Vec::new(),
            quit: false,
        }
    }

    /// The selected entry.
    pub fn current(&self) -> Option<&Entry> {
        self.entries.get(self.selected)
    }

    fn say(&mut self, warning: bool, text: impl Into<String>) {
        self.messages.push(Message {
            warning,
            text: text.into(),
        });
        let excess = self.messages.len().saturating_sub(200);
        self.messages.drain(..excess);
    }

    /// Whether any trainer is alive.
    pub fn any_active(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.run.as_ref().is_some_and(RunView::is_active))
    }
}

/// Applies one event to the state; returns what the loop must do.
pub fn update(app: &mut App, event: AppEvent) -> Vec<Action> {
    match event {
        AppEvent::Key(key) => on_key(app, key),
        AppEvent::Trainer(id, event) => {
            on_trainer(app, id, event);
            next_in_queue(app)
        }
        AppEvent::Info(text) => {
            app.say(false, text);
            Vec::new()
        }
        AppEvent::FileLoaded(path, file) => on_file(app, path, file),
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

fn on_key(app: &mut App, key: KeyEvent) -> Vec<Action> {
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
        KeyCode::Esc => app.overlay = Overlay::None,
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

/// `a`: queues the marked experiments (all valid ones if none is marked) and starts
/// the first when nothing is running.
fn queue_shootout(app: &mut App) -> Vec<Action> {
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
fn next_in_queue(app: &mut App) -> Vec<Action> {
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
        entry.run = Some(RunView::new(exp.planned_epochs(None)));
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
        .map(|e| Action::Send(e.id, Command::Stop))
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
    entry.run = Some(RunView::new(exp.planned_epochs(None)));
    let id = entry.id;
    // Started by hand: the shootout queue must not run it a second time.
    app.queue.retain(|q| *q != id);
    app.table_scroll = 0;
    vec![Action::Start(id, Box::new(exp))]
}

fn on_trainer(app: &mut App, id: u64, event: Event) {
    let Some(entry) = app.entries.iter_mut().find(|e| e.id == id) else {
        return;
    };
    let name = entry.name();
    let settings = entry.settings().cloned();
    let Some(run) = entry.run.as_mut() else {
        return;
    };
    let mut note: Option<(bool, String)> = None;
    match event {
        Event::Loading { done, total } => run.status = RunStatus::Loading { done, total },
        Event::Compute(c) => run.compute = Some(c),
        Event::Note(text) => note = Some((false, format!("{name}: {text}"))),
        Event::DataReady {
            train,
            val,
            skipped,
            ..
        } => {
            run.images = (train, val);
            if skipped > 0 {
                note = Some((
                    true,
                    format!("{name}: {skipped} unreadable file(s) skipped"),
                ));
            }
        }
        Event::ModelReady {
            device,
            weights,
            layers,
        } => {
            run.device = device;
            run.weights = weights;
            run.layers = layers;
            run.status = RunStatus::Running;
        }
        Event::RunDir(dir) => run.run_dir = Some(dir),
        Event::Batch {
            epoch,
            batch,
            of,
            loss,
            images_per_sec,
        } => {
            if run.status != RunStatus::Paused {
                run.status = RunStatus::Running;
            }
            run.epoch = epoch;
            run.batch = (batch, of);
            run.batch_loss = loss;
            run.images_per_sec = images_per_sec;
        }
        Event::EpochEnd(m) => {
            run.epoch = m.epoch;
            run.epochs.push(m);
        }
        Event::Stalled { suggestion, .. } => {
            note = Some((
                true,
                format!("{name}: stalled: {}", crate::text::suggestion(&suggestion)),
            ));
            run.stall = Some(suggestion);
        }
        Event::PhaseChanged {
            phase,
            epoch,
            layers,
            trainable_layers,
            ..
        } => {
            // A phase that begins mid-run gets a marker on the charts.
            if epoch > 1 {
                run.phase_marks.push((epoch, phase));
            }
            if phase == Phase::Finetune {
                // An early unfreeze: the fine-tune epochs count from here.
                if let Some(exp) = settings {
                    run.total_epochs = exp.planned_epochs(Some(epoch.saturating_sub(1)));
                }
                run.stall = None;
                note = Some((
                    false,
                    format!("{name}: fine-tuning {trainable_layers} layers from epoch {epoch}"),
                ));
            }
            run.phase = phase;
            run.layers = layers;
        }
        Event::Paused => run.status = RunStatus::Paused,
        Event::Resumed => run.status = RunStatus::Running,
        Event::ConfigApplied(changes) => {
            let live: Vec<String> = changes
                .iter()
                .filter(|c| c.kind == ChangeKind::Live)
                .map(|c| c.to_string())
                .collect();
            if !live.is_empty() {
                note = Some((
                    false,
                    format!("{name}: {} from epoch {}", live.join(", "), run.epoch + 1),
                ));
            }
        }
        Event::Checkpoint(_) => {}
        Event::Finished { reason, .. } => {
            run.status = RunStatus::Done(reason);
            note = Some((false, format!("{name}: {reason:?}").to_lowercase()));
        }
        Event::Error(e) => {
            note = Some((true, format!("{name}: {e}")));
            run.status = RunStatus::Failed(e);
        }
    }
    if let Some((warning, text)) = note {
        app.say(warning, text);
    }
}

fn on_file(app: &mut App, path: PathBuf, file: FileState) -> Vec<Action> {
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
        return Vec::new();
    };
    let old = app.entries[i].settings().cloned();
    let active = app.entries[i].run.as_ref().is_some_and(RunView::is_active);
    let name = app.entries[i].name();
    app.entries[i].deleted = false;
    match file {
        FileState::Invalid { errors, .. } => {
            for e in &errors {
                app.say(true, e.clone());
            }
            if old.is_some() {
                app.say(
                    true,
                    format!("{name}: the last good settings stay in force"),
                );
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
            if was_invalid {
                app.say(false, format!("{name}: the file is valid again"));
            }
            let Some(old) = old.filter(|_| active) else {
                return Vec::new();
            };
            let edit = LiveEdit::new(&old, &new);
            let restart: Vec<String> = edit.restart_only().map(|c| c.to_string()).collect();
            if !restart.is_empty() {
                app.say(
                    true,
                    format!(
                        "{name}: {} apply on the next start (x, then s)",
                        restart.join(", ")
                    ),
                );
            }
            app.entries[i].pending_restart = restart;
            if edit.live().next().is_some() {
                if let Some(run) = app.entries[i].run.as_mut() {
                    run.total_epochs = match run.phase {
                        Phase::Frozen => new.planned_epochs(None),
                        Phase::Finetune => new.planned_epochs(Some(
                            run.phase_marks.last().map_or(1, |m| m.0).saturating_sub(1),
                        )),
                    };
                }
                vec![Action::Apply(app.entries[i].id, new)]
            } else {
                Vec::new()
            }
        }
    }
}
