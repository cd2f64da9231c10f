//! The dashboard's loop: one tokio loop merging terminal events, trainer events,
//! file-watcher events, job results and a redraw deadline into `app::update`, whose
//! actions [`Effects`] carries out; drawing is `ui::draw` of the state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream};
use futures_util::StreamExt;
use ratatui::Terminal;
use tokio::time::Instant;

use super::attach_poll::Poller;
use super::editor::{edit_file, send_edited_settings, settings_copy, CloneBackend, Editing};
use super::effects::Effects;
use crate::app::{update, App, AppEvent};
use crate::config;

/// Shortest gap between two frames (at most ~10 frames/s) for keys, epochs, phases.
const FRAME: Duration = Duration::from_millis(100);
/// Shortest gap when only batch or loading progress changed: the gauge moves 4 times
/// a second, which costs the trainer less CPU (see `benches/dashboard.rs`).
const PROGRESS_FRAME: Duration = Duration::from_millis(250);
/// How long quitting waits for the runs to save their checkpoints.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Whether an event only moves a progress gauge.
fn is_progress(event: &AppEvent) -> bool {
    matches!(
        event,
        AppEvent::Trainer(_, crate::train::Event::Batch { .. })
            | AppEvent::Trainer(_, crate::train::Event::Loading { .. })
    )
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
/// sleeps until a key, a trainer event, a file change, a job's result or a signal
/// arrives.
pub async fn event_loop<B: CloneBackend>(
    terminal: &mut Terminal<B>,
    mut app: App,
    watch_root: &Path,
    runs_root: PathBuf,
    options: LoopOptions,
) -> anyhow::Result<()> {
    let keys = options.keys;
    let (tx, rx) = flume::unbounded::<AppEvent>();
    let (file_tx, file_rx) = flume::unbounded::<crate::watch::FileEvent>();
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
    let mut effects = Effects::new(tx.clone(), runs_root, watch_root.to_path_buf());
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
    // The terminal is lost while runs go on: they finish without the screen (steered
    // and watched through their run folders: `tlcap-tui attach`).
    let mut detached = false;
    effects.perform(app.startup_actions());
    for event in options.script {
        let actions = update(&mut app, event);
        effects.perform(actions);
    }
    loop {
        if options.quit_when_done && !app.any_active() && !app.quit {
            let actions = update(&mut app, AppEvent::Quit);
            effects.perform(actions);
        }
        if next_draw.is_some_and(|t| Instant::now() >= t) {
            if let Err(e) = terminal.draw(|f| crate::ui::draw_with(f, &app, &mut previews)) {
                failure = Some(anyhow::Error::from(e).context("cannot draw"));
                detached = app.any_active();
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
            Some(ev) = effects.trainer_events.next() => Some(ev),
            Ok(ev) = rx.recv_async() => Some(ev),
            Ok(ev) = file_rx.recv_async() => Some(AppEvent::from(ev)),
            _ = tokio::time::sleep_until(next_draw.unwrap_or_else(Instant::now)), if next_draw.is_some() => None,
            _ = sigterm.recv() => Some(AppEvent::Quit),
            _ = sighup.recv() => Some(AppEvent::Quit),
            _ = sigint.recv() => Some(AppEvent::Quit),
        };
        let Some(event) = event else {
            continue;
        };
        let gap = if is_progress(&event) {
            PROGRESS_FRAME
        } else {
            FRAME
        };
        let due = last_draw + gap;
        next_draw = Some(next_draw.map_or(due, |t| t.min(due)));
        let actions = update(&mut app, event);
        let Some(editing) = effects.perform(actions) else {
            continue;
        };
        // An attached run's settings are edited in a copy, never in place.
        let (path, run) = match editing {
            Editing::File(path) => (path, None),
            Editing::Run(run) => match settings_copy(&run) {
                Ok(copy) => (copy, Some(run)),
                Err(e) => {
                    effects.perform(update(&mut app, AppEvent::Info(format!("{e:#}"))));
                    continue;
                }
            },
        };
        // The editor needs stdin: stop reading it while the editor runs.
        drop(term_events.take());
        let said = edit_file(terminal, &path);
        term_events = keys.then(EventStream::new);
        next_draw = Some(Instant::now());
        for text in said {
            effects.perform(update(&mut app, AppEvent::Info(text)));
        }
        match run {
            None => {
                let state = config::load(&path).into();
                let actions = update(&mut app, AppEvent::FileLoaded(path, state));
                effects.perform(actions);
            }
            Some(run) => {
                for line in send_edited_settings(&run, &path) {
                    effects.perform(update(&mut app, AppEvent::Info(line)));
                }
            }
        }
    }
    if detached {
        if keys {
            ratatui::restore();
        }
        eprintln!(
            "tlcap: the dashboard lost its terminal ({}); the runs go on to their end \
             in this process. Watch and steer them with `tlcap-tui attach {}`; \
             Ctrl-C stops them (checkpoints saved).",
            failure.as_ref().map_or(String::new(), |e| format!("{e:#}")),
            effects.runs_root().display()
        );
        let mut sigint = sigint;
        loop {
            tokio::select! {
                ev = effects.trainer_events.next() => match ev {
                    Some(ev) => { update(&mut app, ev); }
                    None => break,
                },
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
    }
    // Quitting stops every run (each saves a checkpoint) and waits briefly for them;
    // nothing queued may start meanwhile.
    let actions = update(&mut app, AppEvent::Quit);
    effects.perform(actions);
    effects.stop_trainers();
    let deadline = Instant::now() + STOP_WAIT;
    while app.any_active() && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, effects.trainer_events.next()).await {
            Ok(Some(ev)) => {
                update(&mut app, ev);
            }
            _ => break,
        }
    }
    effects.wait(deadline.into_std());
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
