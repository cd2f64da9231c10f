//! The dashboard's event loop: one tokio loop merging terminal events, trainer events,
//! file-watcher events and a redraw deadline; terminal set-up and restore on every
//! exit path (quit, Ctrl-C, SIGTERM, SIGHUP, panic).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

use anyhow::Context;
use crossterm::event::{Event as TermEvent, EventStream};
use futures_util::StreamExt;
use ratatui::backend::Backend;
use ratatui::Terminal;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::time::Instant;

use crate::app::{update, Action, App, AppEvent, FileState};
use crate::config;
use crate::train::{self, Command, Options};

/// Shortest gap between two frames (at most ~10 frames/s) for keys, epochs, phases.
const FRAME: Duration = Duration::from_millis(100);
/// Shortest gap when only batch or loading progress changed: the gauge moves 4 times
/// a second, which costs the trainer less CPU (see `benches/dashboard.rs`).
const PROGRESS_FRAME: Duration = Duration::from_millis(250);

/// Whether an event only moves a progress gauge.
fn is_progress(event: &AppEvent) -> bool {
    matches!(
        event,
        AppEvent::Trainer(_, crate::train::Event::Batch { .. })
            | AppEvent::Trainer(_, crate::train::Event::Loading { .. })
    )
}

/// The experiment files under `target` (a folder, or one file) with their states.
pub fn load_files(target: &Path) -> anyhow::Result<Vec<(PathBuf, FileState)>> {
    Ok(config::load_all(target)?
        .into_iter()
        .map(|(path, loaded)| (path, loaded.into()))
        .collect())
}

/// Opens the dashboard on `target` and runs it until the user quits.
pub fn run(target: &Path, runs_root: PathBuf) -> anyhow::Result<()> {
    let mut app = App::new(load_files(target)?);
    let past = past_runs(&app, &runs_root);
    update(&mut app, AppEvent::PastRuns(past));
    open(app, target, runs_root)
}

/// The most recent run folder of each experiment in `app` that no live process is
/// writing (a fresh heartbeat without a summary belongs to a run going elsewhere:
/// `attach` follows those), with its state.
pub fn past_runs(
    app: &App,
    runs_root: &Path,
) -> Vec<(PathBuf, PathBuf, Box<crate::results::FolderSnapshot>)> {
    let mut out = Vec::new();
    for entry in &app.entries {
        let Some(exp) = entry.settings() else {
            continue;
        };
        let Ok(dirs) = std::fs::read_dir(runs_root.join(&exp.name)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = dirs
            .flatten()
            .map(|d| d.path())
            .filter(|d| d.join("config.yaml").is_file())
            .collect();
        dirs.sort();
        for dir in dirs.into_iter().rev() {
            let snap = crate::results::snapshot(&dir, None);
            let live = snap.summary.is_none()
                && snap
                    .age_seconds
                    .is_some_and(|age| age <= crate::app::LOST_AFTER_SECONDS);
            if !live {
                out.push((entry.path.clone(), dir, Box::new(snap)));
                break;
            }
        }
    }
    out
}

/// Opens the dashboard attached to the run folders under `runs_root`, wherever their
/// processes run: their state from the files (polled every second, which works on
/// shared file systems), their steering through their control files.
pub fn attach(runs_root: PathBuf) -> anyhow::Result<()> {
    if !runs_root.is_dir() {
        anyhow::bail!("{} is not a folder of runs", runs_root.display());
    }
    open(
        App::attached(runs_root.clone()),
        &runs_root.clone(),
        runs_root,
    )
}

fn open(mut app: App, target: &Path, runs_root: PathBuf) -> anyhow::Result<()> {
    // https://no-color.org: set and not empty.
    app.no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // ratatui::init enters the alternate screen and raw mode and installs a panic hook
    // that restores the terminal before the panic message is printed.
    let mut terminal = ratatui::init();
    // A trainer thread's panic is caught and reported as an error event: it must not
    // restore the terminal (or print) under the running dashboard.
    let restore_and_report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let trainer = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with(crate::train::THREAD_PREFIX));
        if !trainer {
            restore_and_report(info);
        }
    }));
    let options = LoopOptions {
        keys: true,
        ..Default::default()
    };
    let result = runtime.block_on(event_loop(&mut terminal, app, target, runs_root, options));
    ratatui::restore();
    result
}

/// Trainers alive, by entry id.
type Trainers = HashMap<u64, Sender<Command>>;

/// What the editor is asked to open.
enum Editing {
    /// An experiment file of the list.
    File(PathBuf),
    /// A copy of an attached run's settings.
    Run(PathBuf),
}

/// Carries out what an update asked for.
fn perform(
    actions: Vec<Action>,
    trainers: &mut Trainers,
    events: &UnboundedSender<AppEvent>,
    runs_root: &Path,
) -> Option<Editing> {
    let mut edit = None;
    for action in actions {
        match action {
            Action::Start(id, exp) => {
                let handle = train::spawn(
                    *exp,
                    Options {
                        runs_root: runs_root.to_path_buf(),
                        autostart: true,
                        ..Default::default()
                    },
                );
                trainers.insert(id, handle.commands.clone());
                let tx = events.clone();
                // Bridge the trainer's channel into the loop.
                std::thread::spawn(move || {
                    for event in handle.events.iter() {
                        if tx.send(AppEvent::Trainer(id, event)).is_err() {
                            break;
                        }
                    }
                    handle.join();
                });
            }
            Action::Send(id, command) => {
                if let Some(tx) = trainers.get(&id) {
                    let _ = tx.send(command);
                }
            }
            Action::Apply(id, exp) => {
                if let Some(tx) = trainers.get(&id) {
                    let _ = tx.send(Command::ApplyConfig(exp));
                }
            }
            Action::LoadPredictions(dir) => {
                let tx = events.clone();
                std::thread::spawn(move || {
                    let read = crate::train::predictions::ValPredictions::read(&dir)
                        .map(Box::new)
                        .map_err(|e| format!("{e:#}"));
                    let _ = tx.send(AppEvent::Predictions(dir, read));
                });
            }
            Action::LoadPreview(path) => {
                let tx = events.clone();
                std::thread::spawn(move || {
                    // Small: a preview is a few dozen cells, even as graphics.
                    let image =
                        crate::data::open_image(&path).map(|i| Box::new(i.thumbnail(320, 320)));
                    let _ = tx.send(AppEvent::Preview(path, image));
                });
            }
            Action::Edit(path) => edit = Some(Editing::File(path)),
            Action::EditRun(run) => edit = Some(Editing::Run(run)),
            Action::Control(run, command) => {
                let text = match crate::train::control::append(&run, &command) {
                    Ok(()) => format!("{}: {} sent", run.display(), command.name()),
                    Err(e) => format!("{}: cannot write its control file: {e}", run.display()),
                };
                let _ = events.send(AppEvent::Info(text));
            }
            Action::ExportShootout(dirs) => {
                // Off the UI loop: reading every run folder and writing the results
                // takes disk time the screen should not wait for.
                let (tx, runs_root) = (events.clone(), runs_root.to_path_buf());
                std::thread::spawn(move || {
                    let rows: Vec<_> = dirs
                        .iter()
                        .filter_map(|d| crate::results::summarize(d).ok().flatten())
                        .collect();
                    let text = match crate::shootout::export(&runs_root, &rows) {
                        Ok(dir) => format!("shootout done: results in {}", dir.display()),
                        Err(e) => {
                            format!("shootout done, but the results could not be written: {e:#}")
                        }
                    };
                    let _ = tx.send(AppEvent::Info(text));
                });
            }
        }
    }
    edit
}

/// Runs `$EDITOR` (or `vi`) on `path` with the terminal handed over to it.
/// Hands the terminal to the editor and takes it back. Returns the editor's problem
/// in words, if any; failing to take the terminal back is an error.
fn edit_file<B: CloneBackend>(
    terminal: &mut Terminal<B>,
    path: &Path,
) -> anyhow::Result<Option<String>> {
    ratatui::restore();
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // Through the shell, so `code --wait` or `emacsclient -t` work.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status();
    crossterm::terminal::enable_raw_mode()?;
    crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)?;
    *terminal = Terminal::new(terminal.backend_mut().clone_backend())?;
    terminal.clear()?;
    Ok(match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("the editor `{editor}` exited with {s}")),
        Err(e) => Some(format!("cannot run the editor `{editor}`: {e}")),
    })
}

/// Backends the loop can suspend for an editor.
pub trait CloneBackend: Backend<Error: Send + Sync + 'static> + Sized {
    /// A fresh backend on the same output.
    fn clone_backend(&mut self) -> Self;
}

impl CloneBackend for ratatui::backend::CrosstermBackend<std::io::Stdout> {
    fn clone_backend(&mut self) -> Self {
        ratatui::backend::CrosstermBackend::new(std::io::stdout())
    }
}

impl CloneBackend for ratatui::backend::TestBackend {
    fn clone_backend(&mut self) -> Self {
        let area = self.size().unwrap_or_default();
        ratatui::backend::TestBackend::new(area.width, area.height)
    }
}

/// How the loop runs.
#[derive(Debug, Default)]
pub struct LoopOptions {
    /// Read keys from the terminal (false on a TestBackend).
    pub keys: bool,
    /// Events handled first, as if they had happened (e.g. a key that starts a run).
    pub script: Vec<AppEvent>,
    /// End the loop once every started run has finished (benchmarks, demos).
    pub quit_when_done: bool,
}

/// The loop: draws when something changed (at most every [`FRAME`]), otherwise
/// sleeps until a key, a trainer event, a file change or a signal arrives.
pub async fn event_loop<B: CloneBackend>(
    terminal: &mut Terminal<B>,
    mut app: App,
    watch_root: &Path,
    runs_root: PathBuf,
    options: LoopOptions,
) -> anyhow::Result<()> {
    let keys = options.keys;
    let (tx, mut rx) = unbounded_channel::<AppEvent>();
    let (file_tx, mut file_rx) = unbounded_channel::<crate::watch::FileEvent>();
    // Attached, the entries are run folders (polled); otherwise experiment files
    // (watched).
    let _watcher = match &app.attached {
        None => Some(crate::watch::watch(watch_root, file_tx)?),
        Some(_) => None,
    };
    let _poller = app
        .attached
        .clone()
        .map(|root| Poller::start(root, tx.clone()));
    let mut trainers: Trainers = HashMap::new();
    // Before the key reader starts: the graphics query reads the terminal's answer.
    let mut previews = if keys {
        crate::ui::Previews::from_terminal()
    } else {
        crate::ui::Previews::halfblocks()
    };
    let mut term_events = keys.then(EventStream::new);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // When the next frame is due; None while the screen shows the current state.
    let mut next_draw = Some(Instant::now());
    let mut last_draw = Instant::now();
    // An error that ends the loop; the runs are still stopped (checkpoints saved).
    let mut failure: Option<anyhow::Error> = None;
    for event in options.script {
        let actions = update(&mut app, event);
        perform(actions, &mut trainers, &tx, &runs_root);
    }
    loop {
        if options.quit_when_done && !app.any_active() {
            app.quit = true;
        }
        if next_draw.is_some_and(|t| Instant::now() >= t) {
            if let Err(e) = terminal.draw(|f| crate::ui::draw_with(f, &app, &mut previews)) {
                failure = Some(anyhow::Error::from(e).context("cannot draw"));
                break;
            }
            next_draw = None;
            last_draw = Instant::now();
        }
        if app.quit {
            break;
        }
        let event = tokio::select! {
            Some(Ok(ev)) = async {
                match term_events.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => match ev {
                TermEvent::Key(k) => Some(AppEvent::Key(k)),
                TermEvent::Resize(..) => {
                    next_draw = Some(Instant::now());
                    None
                }
                _ => None,
            },
            Some(ev) = rx.recv() => Some(ev),
            Some(ev) = file_rx.recv() => Some(AppEvent::from(ev)),
            _ = tokio::time::sleep_until(next_draw.unwrap_or_else(Instant::now)), if next_draw.is_some() => None,
            _ = sigterm.recv() => { app.quit = true; None }
            _ = sighup.recv() => { app.quit = true; None }
            _ = sigint.recv() => { app.quit = true; None }
        };
        if let Some(event) = event {
            let gap = if is_progress(&event) {
                PROGRESS_FRAME
            } else {
                FRAME
            };
            let due = last_draw + gap;
            next_draw = Some(next_draw.map_or(due, |t| t.min(due)));
            let actions = update(&mut app, event);
            if let Some(editing) = perform(actions, &mut trainers, &tx, &runs_root) {
                // An attached run's settings are edited in a copy, never in place.
                let (path, run) = match editing {
                    Editing::File(path) => (path, None),
                    Editing::Run(run) => match settings_copy(&run) {
                        Ok(copy) => (copy, Some(run)),
                        Err(e) => {
                            update(&mut app, AppEvent::Info(format!("{e:#}")));
                            continue;
                        }
                    },
                };
                // The editor needs stdin: stop reading it while the editor runs.
                drop(term_events.take());
                let result = edit_file(terminal, &path);
                term_events = keys.then(EventStream::new);
                match result {
                    Err(e) => {
                        failure = Some(e.context("cannot take the terminal back from the editor"));
                        break;
                    }
                    Ok(problem) => {
                        if let Some(text) = problem {
                            update(&mut app, AppEvent::Info(text));
                        }
                        match run {
                            None => {
                                let state = config::load(&path).into();
                                let actions = update(&mut app, AppEvent::FileLoaded(path, state));
                                perform(actions, &mut trainers, &tx, &runs_root);
                            }
                            Some(run) => {
                                for line in send_edited_settings(&run, &path) {
                                    update(&mut app, AppEvent::Info(line));
                                }
                            }
                        }
                    }
                }
                next_draw = Some(Instant::now());
            }
        }
    }
    // Quitting stops every run (each saves a checkpoint) and waits briefly for them.
    for tx in trainers.values() {
        let _ = tx.send(Command::Stop);
    }
    // Nothing queued may start while we wait for the runs to stop.
    app.queue.clear();
    app.shootout.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.any_active() && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev @ AppEvent::Trainer(..))) => {
                update(&mut app, ev);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How often an attached dashboard reads the run folders.
pub const ATTACH_POLL: Duration = Duration::from_secs(1);

/// Reads every run folder under a runs root every [`ATTACH_POLL`] and sends the ones
/// that changed; dropping it stops it.
pub struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `root`, sending to `events`.
    pub fn start(root: PathBuf, events: UnboundedSender<AppEvent>) -> Poller {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: HashMap<PathBuf, crate::results::FolderSnapshot> = HashMap::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                for run in crate::results::run_folders(&root) {
                    let snap = crate::results::snapshot(&run, seen.get(&run));
                    if seen.get(&run) != Some(&snap) {
                        seen.insert(run.clone(), snap.clone());
                        if events
                            .send(AppEvent::RunFolder(run, Box::new(snap)))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                let until = std::time::Instant::now() + ATTACH_POLL;
                while std::time::Instant::now() < until
                    && !flag.load(std::sync::atomic::Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Poller {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A copy of an attached run's `config.yaml` to edit, outside the run folder.
fn settings_copy(run: &Path) -> anyhow::Result<PathBuf> {
    let exp = crate::train::run_dir::read_config(run)?;
    let copy = std::env::temp_dir().join(format!(
        "tlcap-edit-{}-{}.yaml",
        crate::train::run_dir::folder_name(&exp.name),
        std::process::id()
    ));
    std::fs::copy(run.join("config.yaml"), &copy)
        .with_context(|| format!("cannot copy {}", run.join("config.yaml").display()))?;
    Ok(copy)
}

/// Reads the edited copy: valid settings go to the run as a `set` line of its control
/// file; a broken edit sends nothing. Returns what to tell the user.
pub fn send_edited_settings(run: &Path, copy: &Path) -> Vec<String> {
    use crate::train::control::{append, ControlCommand};
    let out = match config::load_file(copy) {
        Err(errors) => {
            let mut lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            lines.push("nothing sent: the run keeps its settings".into());
            lines
        }
        Ok(exp) => match serde_json::to_value(&exp)
            .map_err(anyhow::Error::from)
            .and_then(|v| Ok(append(run, &ControlCommand::Set(v))?))
        {
            Ok(()) => vec![format!(
                "{}: settings sent; live ones apply from its next epoch",
                run.display()
            )],
            Err(e) => vec![format!(
                "{}: cannot send the settings: {e:#}",
                run.display()
            )],
        },
    };
    let _ = std::fs::remove_file(copy);
    out
}
