//! Watching experiment files: `notify` with a debouncer (editors save by renaming a
//! temp file, by truncating and writing, or in several writes), turned into
//! [`FileEvent`]s: a file read again, a file removed, a problem of the watcher itself.
//! Watcher errors and lost events (a full kernel queue) are reported and answered by
//! reading every file again; a `.yaml` that is a symlink is watched through its target
//! too. The dashboard and headless runs each translate these events for themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use crate::config::Loaded;

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq)]
pub enum FileEvent {
    /// An experiment file was saved (or appeared): its settings, or its errors.
    Changed(PathBuf, Loaded),
    /// An experiment file was deleted or renamed away.
    Removed(PathBuf),
    /// The watcher itself had a problem (lost events, an error); every file was read
    /// again.
    Problem(String),
}

/// How long a burst of writes may last before it counts as one save.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A running watcher; dropping it stops watching.
pub type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// What is watched: a folder's experiment files, or one file in it.
struct Scope {
    dir: PathBuf,
    only: Option<PathBuf>,
    /// Symlink targets (canonical) and the experiment files that link to them.
    links: BTreeMap<PathBuf, Vec<PathBuf>>,
}

impl Scope {
    fn new(target: &Path) -> Scope {
        let target = target
            .canonicalize()
            .unwrap_or_else(|_| target.to_path_buf());
        let (dir, only) = if target.is_dir() {
            (target.clone(), None)
        } else {
            let parent = target.parent().unwrap_or(Path::new(".")).to_path_buf();
            (parent, Some(target.clone()))
        };
        let mut scope = Scope {
            dir,
            only,
            links: BTreeMap::new(),
        };
        for file in scope.files() {
            let is_link = file
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink());
            if let (true, Ok(real)) = (is_link, file.canonicalize()) {
                scope.links.entry(real).or_default().push(file);
            }
        }
        scope
    }

    fn wanted(&self, path: &Path) -> bool {
        crate::config::is_experiment_file(path) && self.only.as_deref().is_none_or(|o| o == path)
    }

    /// The experiment files in scope now.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| self.wanted(p))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// The file events for one debounced batch of watcher events.
    fn events(&self, result: DebounceEventResult) -> Vec<FileEvent> {
        let mut out = Vec::new();
        let (paths, rescan): (BTreeSet<PathBuf>, bool) = match result {
            Ok(batch) => {
                let rescan = batch.iter().any(|e| e.need_rescan());
                // Opening or reading a file is no change; reading it here on such an
                // event would produce another, forever.
                let paths = batch
                    .iter()
                    .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
                    .flat_map(|e| e.paths.iter())
                    .flat_map(|p| match self.links.get(p) {
                        Some(links) => links.clone(),
                        None => vec![p.clone()],
                    })
                    .filter(|p| self.wanted(p))
                    .collect();
                if rescan {
                    out.push(FileEvent::Problem(
                        "file watcher: events were lost; every experiment file is read again"
                            .into(),
                    ));
                }
                (paths, rescan)
            }
            Err(errors) => {
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                out.push(FileEvent::Problem(format!(
                    "file watcher: {}; every experiment file is read again",
                    text.join("; ")
                )));
                (BTreeSet::new(), true)
            }
        };
        let paths: BTreeSet<PathBuf> = if rescan {
            paths.into_iter().chain(self.files()).collect()
        } else {
            paths
        };
        for path in paths {
            out.push(if path.is_file() {
                let loaded = crate::config::load(&path);
                FileEvent::Changed(path, loaded)
            } else {
                FileEvent::Removed(path)
            });
        }
        out
    }
}

/// Watches `target` (a folder of experiment files, or one file) and sends an event
/// per changed file: its new state (valid or its errors), or its removal.
pub fn watch(target: &Path, events: flume::Sender<FileEvent>) -> anyhow::Result<Watcher> {
    let scope = Scope::new(target);
    let (dir, targets): (PathBuf, Vec<PathBuf>) =
        (scope.dir.clone(), scope.links.keys().cloned().collect());
    let handler = move |result: DebounceEventResult| {
        for event in scope.events(result) {
            if events.send(event).is_err() {
                return;
            }
        }
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, handler)?;
    // Only the folder's direct children, plus the files symlinks point to.
    debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
    for target in targets {
        debouncer.watch(&target, RecursiveMode::NonRecursive)?;
    }
    Ok(debouncer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{EventKind, Flag, ModifyKind};
    use notify_debouncer_full::DebouncedEvent;

    fn modified(path: &Path) -> DebouncedEvent {
        DebouncedEvent::new(
            notify::Event::new(EventKind::Modify(ModifyKind::Any)).add_path(path.to_path_buf()),
            std::time::Instant::now(),
        )
    }

    fn loaded(events: &[FileEvent]) -> Vec<PathBuf> {
        events
            .iter()
            .filter_map(|e| match e {
                FileEvent::Changed(p, _) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn errors_and_lost_events_are_said_and_every_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for name in ["a.yaml", "b.yml", "notes.txt"] {
            std::fs::write(root.join(name), "data: {}\n").unwrap();
        }
        let scope = Scope::new(&root);
        let events = scope.events(Err(vec![notify::Error::generic("queue overflow")]));
        assert!(
            matches!(&events[0], FileEvent::Problem(t) if t.contains("queue overflow")),
            "{events:?}"
        );
        assert_eq!(loaded(&events), [root.join("a.yaml"), root.join("b.yml")]);

        let mut lost = modified(&root);
        lost.event = lost.event.clone().set_flag(Flag::Rescan);
        let events = scope.events(Ok(vec![lost]));
        assert!(matches!(&events[0], FileEvent::Problem(t) if t.contains("lost")));
        assert_eq!(loaded(&events).len(), 2);

        // An ordinary save: just that file, no message.
        let events = scope.events(Ok(vec![modified(&root.join("a.yaml"))]));
        assert_eq!(loaded(&events), [root.join("a.yaml")]);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn a_change_to_a_symlink_target_reloads_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let elsewhere = root.join("shared");
        let watched = root.join("experiments");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::create_dir_all(&watched).unwrap();
        std::fs::write(elsewhere.join("base.yaml"), "data: {}\n").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("base.yaml"), watched.join("link.yaml")).unwrap();
        let scope = Scope::new(&watched);
        let events = scope.events(Ok(vec![modified(&elsewhere.join("base.yaml"))]));
        assert_eq!(loaded(&events), [watched.join("link.yaml")]);
    }
}
