//! Watching experiment files: `notify` with a debouncer (editors save by renaming a
//! temp file, by truncating and writing, or in several writes), turned into
//! [`AppEvent::FileLoaded`] / [`AppEvent::FileRemoved`] for the dashboard.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc::UnboundedSender;

use crate::app::AppEvent;
use crate::dashboard::load_state;

/// How long a burst of writes may last before it counts as one save.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A running watcher; dropping it stops watching.
pub type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Watches `target` (a folder of experiment files, or one file) and sends an event
/// per changed file: its new state (valid or its errors), or its removal.
pub fn watch(target: &Path, events: UnboundedSender<AppEvent>) -> anyhow::Result<Watcher> {
    let target = target
        .canonicalize()
        .unwrap_or_else(|_| target.to_path_buf());
    // Only the folder's direct children: NonRecursive below.
    let (dir, only) = if target.is_dir() {
        (target.clone(), None)
    } else {
        let parent = target.parent().unwrap_or(Path::new(".")).to_path_buf();
        (parent, Some(target.clone()))
    };
    let handler = move |result: DebounceEventResult| {
        let Ok(batch) = result else { return };
        let paths: BTreeSet<PathBuf> = batch
            .iter()
            .flat_map(|e| e.paths.iter().cloned())
            .filter(|p| crate::config::is_experiment_file(p))
            .filter(|p| only.as_ref().is_none_or(|o| o == p))
            .collect();
        for path in paths {
            let event = if path.is_file() {
                AppEvent::FileLoaded(path.clone(), load_state(&path))
            } else {
                AppEvent::FileRemoved(path)
            };
            if events.send(event).is_err() {
                return;
            }
        }
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, handler)?;
    debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(debouncer)
}
