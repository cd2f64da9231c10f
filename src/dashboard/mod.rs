//! The dashboard: terminal set-up and restore on every exit path (quit, Ctrl-C,
//! SIGTERM, SIGHUP, panic), around a loop split by job:
//! - [`event_loop`]: the tokio loop, events in, `app::update`, redraws;
//! - [`effects`]: carrying out the actions `update` returns (trainers, control lines);
//! - [`jobs`]: background work behind tracked handles;
//! - [`editor`]: handing the terminal to `$EDITOR` and taking it back;
//! - [`attach_poll`]: reading the run folders of an attached dashboard.

use std::path::{Path, PathBuf};
use std::thread::ThreadId;

mod attach_poll;
mod editor;
mod effects;
mod event_loop;
pub mod jobs;
pub mod selection;

pub use attach_poll::{Poller, RunsView, ATTACH_POLL, LOST_REFRESH};
pub use editor::{send_edited_settings, CloneBackend};
pub use event_loop::{event_loop, LoopOptions};

use crate::app::{update, App, AppEvent, FileState};
use crate::config;

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
    if let Some(selected) = selection::read(&runs_root, target) {
        update(&mut app, AppEvent::Select(selected));
    }
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
    let restore_and_report = std::panic::take_hook();
    std::panic::set_hook(ui_thread_only(
        std::thread::current().id(),
        restore_and_report,
    ));
    let options = LoopOptions {
        keys: true,
        ..Default::default()
    };
    let result = runtime.block_on(event_loop(&mut terminal, app, target, runs_root, options));
    ratatui::restore();
    result
}

/// The process's panic hook while the dashboard runs: a panic on the UI thread (the
/// one that draws) restores the terminal and reports, through `restore_and_report`.
/// A panic on any other thread leaves the terminal to the dashboard, which keeps
/// drawing: a trainer's panic is caught and shown as its error, the input thread's
/// becomes the trainer's error, and a background job's is said as a message.
pub fn ui_thread_only(
    ui: ThreadId,
    restore_and_report: Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>,
) -> Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send> {
    Box::new(move |info| {
        if std::thread::current().id() == ui {
            restore_and_report(info);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Only a panic on the UI thread restores the terminal: not one on a trainer,
    /// input, job, attach or watcher thread.
    #[test]
    fn only_the_ui_threads_panic_restores_the_terminal() {
        let restored = Arc::new(AtomicUsize::new(0));
        let count = restored.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(super::ui_thread_only(
            std::thread::current().id(),
            Box::new(move |_| {
                count.fetch_add(1, Ordering::SeqCst);
            }),
        ));
        let mut joined = Vec::new();
        for name in [
            "trainer quickstart",
            "tlcap input",
            "tlcap job decoding a preview",
            "tlcap attach",
            "notify-rs debouncer loop",
        ] {
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(|| panic!("boom"))
                .unwrap();
            joined.push(t.join().is_err());
        }
        let others = restored.load(Ordering::SeqCst);
        let ui = std::panic::catch_unwind(|| panic!("on the UI thread")).is_err();
        std::panic::set_hook(previous);
        assert_eq!(joined, vec![true; 5]);
        assert_eq!(others, 0, "a non-UI thread's panic restored the terminal");
        assert!(ui);
        assert_eq!(restored.load(Ordering::SeqCst), 1);
    }
}
