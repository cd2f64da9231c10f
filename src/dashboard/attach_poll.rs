//! An attached dashboard's view of a runs folder: every [`ATTACH_POLL`] it looks at
//! each run folder (which works on shared file systems, where no change events come)
//! and sends the ones that changed.
//!
//! Made for a thousand run folders: a folder is read again only when what is on disk
//! moved (the folder's own modification time, which every atomic write and every new
//! file changes, and the size of `metrics.jsonl`, which appends grow); a finished run
//! is one `stat` a pass until its folder changes. An experiment folder is listed again
//! only when its own modification time moved. A run with no summary whose heartbeat
//! stops is sent again as its age crosses the "lost" threshold, then every
//! [`LOST_REFRESH`]; a run folder that disappears is sent once as gone (no heartbeat).
//! A folder changed within the last two seconds is read each pass (a coarse clock
//! could hide a second change in the same tick). Measured by `cargo bench --bench
//! attach` (figures in `docs/attach.md`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::app::{AppEvent, LOST_AFTER_SECONDS};
use crate::results::FolderSnapshot;

/// How often an attached dashboard reads the run folders.
pub const ATTACH_POLL: Duration = Duration::from_secs(1);

/// How often a lost run (no summary, a stale heartbeat) is sent again, so its "last
/// seen" age stays current.
pub const LOST_REFRESH: Duration = Duration::from_secs(10);

/// A stamp this recent may hide a second change in the same tick of a coarse clock
/// (NFS and some file systems keep whole seconds): such a folder is read again.
const FRESH: Duration = Duration::from_secs(2);

/// True when `stamp` is old enough that an unchanged one means nothing changed.
fn settled(stamp: Option<SystemTime>) -> bool {
    stamp
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= FRESH)
}

/// What the poller knows of one run folder.
struct Seen {
    snap: FolderSnapshot,
    /// The folder's modification time and `metrics.jsonl`'s size when read.
    stamp: (Option<SystemTime>, u64),
    /// When it was last sent.
    sent: Instant,
}

/// The run folders under a runs root, listed again only where a folder changed.
#[derive(Default)]
pub struct Folders {
    /// Per experiment folder: its modification time and its run folders.
    experiments: HashMap<PathBuf, (Option<SystemTime>, Vec<PathBuf>)>,
    root_stamp: Option<SystemTime>,
    names: Vec<PathBuf>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Whether a folder must be listed again: its time moved since `listed`, or is too
/// recent to tell (or unknown).
fn moved(stamp: Option<SystemTime>, listed: Option<SystemTime>) -> bool {
    !settled(stamp) || stamp != listed
}

/// The sub-folders of `path` (none when it cannot be read).
fn sub_dirs(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

impl Folders {
    /// Every run folder (`<root>/<experiment>/<run>/` with a `config.yaml`), sorted.
    pub fn list(&mut self, root: &Path) -> Vec<PathBuf> {
        let stamp = modified(root);
        if moved(stamp, self.root_stamp) {
            self.root_stamp = stamp;
            self.names = sub_dirs(root);
        }
        let mut out = Vec::new();
        for exp in &self.names {
            let stamp = modified(exp);
            let entry = self.experiments.entry(exp.clone()).or_default();
            if moved(stamp, entry.0) {
                // A run folder gets its config.yaml just after it is made: until every
                // folder has one, this experiment folder is listed again each pass.
                let (runs, unready): (Vec<PathBuf>, Vec<PathBuf>) = sub_dirs(exp)
                    .into_iter()
                    .partition(|r| r.join("config.yaml").is_file());
                *entry = (if unready.is_empty() { stamp } else { None }, runs);
            }
            out.extend(entry.1.iter().cloned());
        }
        self.experiments.retain(|k, _| self.names.contains(k));
        out.sort();
        out
    }
}

/// What the poller knows of a runs folder between passes.
#[derive(Default)]
pub struct RunsView {
    folders: Folders,
    seen: HashMap<PathBuf, Seen>,
}

impl RunsView {
    /// One pass over the runs under `root`: sends what changed (see the module
    /// documentation). False once the receiver is gone.
    pub fn pass(&mut self, root: &Path, events: &flume::Sender<AppEvent>) -> bool {
        pass(root, &mut self.folders, &mut self.seen, events)
    }
}

/// One pass over the runs: sends what changed. False once the receiver is gone.
fn pass(
    root: &Path,
    folders: &mut Folders,
    seen: &mut HashMap<PathBuf, Seen>,
    events: &flume::Sender<AppEvent>,
) -> bool {
    let runs = folders.list(root);
    for run in &runs {
        let stamp = (
            modified(run),
            std::fs::metadata(run.join("metrics.jsonl"))
                .map(|m| m.len())
                .unwrap_or(0),
        );
        if let Some(s) = seen.get_mut(run) {
            if s.stamp == stamp && settled(stamp.0) {
                // Unchanged on disk. Only a run that never ended can change by itself:
                // its heartbeat ages into "lost".
                if s.snap.summary.is_some() {
                    continue;
                }
                let age = s.snap.status.as_ref().and_then(|st| st.age_seconds());
                let was_lost = s.snap.age_seconds.is_some_and(|a| a > LOST_AFTER_SECONDS);
                let lost = age.is_some_and(|a| a > LOST_AFTER_SECONDS);
                if lost == was_lost && !(lost && s.sent.elapsed() >= LOST_REFRESH) {
                    continue;
                }
                s.snap.age_seconds = age;
                s.sent = Instant::now();
                if events
                    .send(AppEvent::RunFolder(run.clone(), Box::new(s.snap.clone())))
                    .is_err()
                {
                    return false;
                }
                continue;
            }
        }
        let snap = crate::results::snapshot(run, seen.get(run).map(|s| &s.snap));
        let changed = seen.get(run).is_none_or(|s| differs(&s.snap, &snap));
        seen.insert(
            run.clone(),
            Seen {
                snap: snap.clone(),
                stamp,
                sent: Instant::now(),
            },
        );
        if changed
            && events
                .send(AppEvent::RunFolder(run.clone(), Box::new(snap)))
                .is_err()
        {
            return false;
        }
    }
    // Folders that disappeared (deleted, or the whole runs folder gone): said once, as
    // a run whose heartbeat stopped, so they show as lost and nothing else changes.
    let listed: std::collections::HashSet<&PathBuf> = runs.iter().collect();
    let mut gone: Vec<PathBuf> = seen
        .keys()
        .filter(|k| !listed.contains(k))
        .cloned()
        .collect();
    gone.sort();
    for run in gone {
        let Some(s) = seen.remove(&run) else { continue };
        let snap = FolderSnapshot {
            status: None,
            age_seconds: None,
            summary: s.snap.summary.clone(),
            ..s.snap
        };
        if events
            .send(AppEvent::RunFolder(run, Box::new(snap)))
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Whether a folder read again says something new: its files, or its heartbeat's age
/// crossing the "lost" threshold (the age alone moves with every read).
fn differs(old: &FolderSnapshot, new: &FolderSnapshot) -> bool {
    let lost = |s: &FolderSnapshot| s.age_seconds.is_some_and(|a| a > LOST_AFTER_SECONDS);
    if lost(old) != lost(new) {
        return true;
    }
    let mut aged = old.clone();
    aged.age_seconds = new.age_seconds;
    aged != *new
}

/// Reads the run folders under a runs root every [`ATTACH_POLL`] and sends the ones
/// that changed; dropping it stops and joins its thread.
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `root`, sending to `events`.
    pub fn start(root: PathBuf, events: flume::Sender<AppEvent>) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tlcap attach".into())
            .spawn(move || {
                let mut view = RunsView::default();
                while !flag.load(Ordering::SeqCst) {
                    if !view.pass(&root, &events) {
                        return;
                    }
                    let until = Instant::now() + ATTACH_POLL;
                    while Instant::now() < until && !flag.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .expect("cannot start the attach poller thread");
        Poller {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::events::Phase;
    use crate::train::status::{RunState, Status};

    fn heartbeat(run: &Path, updated_at: &str) {
        let status = Status {
            experiment: "e".into(),
            pid: 1,
            host: "h".into(),
            state: RunState::Running,
            phase: Phase::Frozen,
            epoch: 1,
            epochs: 3,
            batch: (0, 0),
            images_per_sec: 0.0,
            updated_at: updated_at.into(),
        };
        // As a run writes it: whole, by a rename (which moves the folder's time).
        let tmp = run.join(".status.tmp");
        std::fs::write(&tmp, serde_json::to_string(&status).unwrap()).unwrap();
        std::fs::rename(tmp, run.join(crate::train::status::FILE)).unwrap();
    }

    /// Sets a folder's modification time `secs` seconds into the past.
    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        std::fs::File::open(path).unwrap().set_modified(t).unwrap();
    }

    fn sent(rx: &flume::Receiver<AppEvent>) -> Vec<PathBuf> {
        rx.try_iter()
            .map(|e| match e {
                AppEvent::RunFolder(p, _) => p,
                _ => panic!("not a run folder event"),
            })
            .collect()
    }

    #[test]
    fn unchanged_folders_are_not_sent_again_changed_and_gone_ones_are() {
        let root = tempfile::tempdir().unwrap();
        let runs: Vec<PathBuf> = (0..3)
            .map(|i| root.path().join("exp").join(format!("run{i}")))
            .collect();
        for run in &runs {
            std::fs::create_dir_all(run).unwrap();
            std::fs::write(run.join("config.yaml"), "name: e\n").unwrap();
            heartbeat(run, &chrono::Utc::now().to_rfc3339());
            age(run, 60);
        }
        age(&root.path().join("exp"), 60);
        let (tx, rx) = flume::unbounded();
        let mut view = RunsView::default();
        assert!(view.pass(root.path(), &tx));
        assert_eq!(sent(&rx), runs, "the first pass sends every run");
        assert!(view.pass(root.path(), &tx));
        assert_eq!(sent(&rx), Vec::<PathBuf>::new(), "nothing changed");

        // An appended epoch is seen through the metrics file's size alone.
        std::fs::write(runs[1].join("metrics.jsonl"), "{}\n").unwrap();
        age(&runs[1], 60);
        assert!(view.pass(root.path(), &tx));
        assert_eq!(sent(&rx), vec![runs[1].clone()]);

        // A folder changed within the last seconds is read each pass, and sent
        // only if what it holds changed.
        heartbeat(&runs[2], "2020-01-01T00:00:00Z");
        assert!(view.pass(root.path(), &tx));
        assert_eq!(sent(&rx), vec![runs[2].clone()]);
        assert!(view.pass(root.path(), &tx));
        assert_eq!(sent(&rx), Vec::<PathBuf>::new());

        // A vanished folder is said once.
        std::fs::remove_dir_all(&runs[0]).unwrap();
        assert!(view.pass(root.path(), &tx));
        assert_eq!(sent(&rx), vec![runs[0].clone()]);
        assert!(view.pass(root.path(), &tx));
        assert_eq!(sent(&rx), Vec::<PathBuf>::new());

        // So is a whole runs folder that vanished; a dropped receiver ends the poller.
        std::fs::remove_dir_all(root.path().join("exp")).unwrap();
        assert!(view.pass(root.path(), &tx));
        assert_eq!(sent(&rx), runs[1..].to_vec());
        drop(rx);
        std::fs::create_dir_all(&runs[1]).unwrap();
        std::fs::write(runs[1].join("config.yaml"), "name: e\n").unwrap();
        assert!(!view.pass(root.path(), &tx));
    }

    #[test]
    fn an_unchanged_run_is_sent_again_when_its_heartbeat_turns_lost() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("exp").join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("config.yaml"), "name: e\n").unwrap();
        // A heartbeat written 9 s ago: not lost yet, lost in about a second.
        let then = chrono::Utc::now() - chrono::Duration::milliseconds(9_000);
        heartbeat(&run, &then.to_rfc3339());
        age(&run, 60);
        age(&root.path().join("exp"), 60);
        let (tx, rx) = flume::unbounded();
        let mut view = RunsView::default();
        view.pass(root.path(), &tx);
        assert_eq!(sent(&rx).len(), 1);
        view.pass(root.path(), &tx);
        assert!(sent(&rx).is_empty());
        std::thread::sleep(Duration::from_millis(1_500));
        view.pass(root.path(), &tx);
        let again: Vec<AppEvent> = rx.try_iter().collect();
        assert_eq!(again.len(), 1, "sent again as it turns lost");
        let AppEvent::RunFolder(_, snap) = &again[0] else {
            panic!()
        };
        assert!(snap.age_seconds.unwrap() > LOST_AFTER_SECONDS);
        view.pass(root.path(), &tx);
        assert!(sent(&rx).is_empty(), "then only every LOST_REFRESH");
    }
}
