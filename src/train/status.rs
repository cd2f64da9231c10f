//! `status.json`: a small heartbeat a run writes atomically every few seconds and at
//! every change of state, so that a dashboard attached from anywhere knows what the
//! run is doing, and when a run stopped beating (the process died, the node went away).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::events::Phase;

/// The file's name in a run folder.
pub const FILE: &str = "status.json";
/// The longest gap between two writes while the run is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// What a run is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Training.
    Running,
    /// Paused by a command.
    Paused,
    /// Ended (see `summary.json`).
    Finished,
    /// Ended with an error.
    Failed,
}

/// The heartbeat's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The experiment's name.
    pub experiment: String,
    /// The process writing the run.
    pub pid: u32,
    /// The machine it runs on.
    pub host: String,
    /// What it is doing.
    pub state: RunState,
    /// The current phase.
    pub phase: Phase,
    /// The epoch in progress (1-based; the last finished one once finished).
    pub epoch: u32,
    /// Epochs planned in all.
    pub epochs: u32,
    /// Batches done in this epoch, and in all.
    pub batch: (usize, usize),
    /// Training images per second in this epoch.
    pub images_per_sec: f64,
    /// When this was written (UTC, RFC 3339).
    pub updated_at: String,
}

impl Status {
    /// Seconds since `updated_at`, or None if it does not parse.
    pub fn age_seconds(&self) -> Option<f64> {
        let t = chrono::DateTime::parse_from_rfc3339(&self.updated_at).ok()?;
        let age = chrono::Utc::now().signed_duration_since(t.with_timezone(&chrono::Utc));
        Some(age.num_milliseconds() as f64 / 1000.0)
    }
}

/// This machine's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The heartbeat of one run. The trainer updates what it says (at most every
/// [`HEARTBEAT`] from the batch loop, at once on a change of state); a thread of its
/// own rewrites it every [`HEARTBEAT`] while the run is running or paused, so a long
/// validation pass or a slow batch never looks like a dead process. Dropping it stops
/// the thread.
pub struct Heartbeat {
    path: PathBuf,
    shared: Arc<Mutex<Option<Status>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    last: Option<Instant>,
}

impl Heartbeat {
    /// The heartbeat of the run in `run_dir`.
    pub fn new(run_dir: &Path) -> Heartbeat {
        let path = run_dir.join(FILE);
        let shared: Arc<Mutex<Option<Status>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (path, shared, stop) = (path.clone(), shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tlcap heartbeat".into())
                .spawn(move || {
                    let mut since = Instant::now();
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                        if since.elapsed() < HEARTBEAT {
                            continue;
                        }
                        since = Instant::now();
                        let current = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        if let Some(s) = current
                            .filter(|s| matches!(s.state, RunState::Running | RunState::Paused))
                        {
                            store(&path, s);
                        }
                    }
                })
                .ok()
        };
        Heartbeat {
            path,
            shared,
            stop,
            thread,
            last: None,
        }
    }

    /// Whether the trainer's news is due (the heartbeat interval passed since its
    /// last update).
    pub fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= HEARTBEAT)
    }

    /// Writes `status` now, atomically, and keeps it for the beats that follow (best
    /// effort: a heartbeat is never worth failing a run for).
    pub fn write(&mut self, status: Status) {
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
        store(&self.path, status);
        self.last = Some(Instant::now());
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `status` with the time now.
fn store(path: &Path, mut status: Status) {
    status.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if let Ok(text) = serde_json::to_string_pretty(&status) {
        let _ = crate::fsutil::write_atomic(path, text.as_bytes());
    }
}

/// Reads a run's heartbeat; None when there is none (yet) or it does not parse.
pub fn read(run_dir: &Path) -> Option<Status> {
    read_checked(run_dir).ok().flatten()
}

/// Reads a run's heartbeat: None when there is none (yet), an error saying why when
/// it is there but cannot be read.
pub fn read_checked(run_dir: &Path) -> Result<Option<Status>, String> {
    let bytes = match std::fs::read(run_dir.join(FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{FILE} unreadable: {e}")),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{FILE} unreadable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_round_trip_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut hb = Heartbeat::new(dir.path());
        assert!(hb.due());
        hb.write(Status {
            experiment: "x".into(),
            pid: 7,
            host: host_name(),
            state: RunState::Paused,
            phase: Phase::Finetune,
            epoch: 3,
            epochs: 8,
            batch: (5, 33),
            images_per_sec: 120.0,
            updated_at: String::new(),
        });
        assert!(!hb.due());
        let s = read(dir.path()).unwrap();
        assert_eq!(
            (s.pid, s.state, s.epoch, s.batch),
            (7, RunState::Paused, 3, (5, 33))
        );
        let age = s.age_seconds().unwrap();
        assert!((0.0..5.0).contains(&age), "{age}");
        assert!(read(&dir.path().join("nothing")).is_none());
        // Paused, with no news from the trainer, it still beats.
        let before = read(dir.path()).unwrap().updated_at;
        std::thread::sleep(HEARTBEAT + Duration::from_millis(300));
        assert_ne!(read(dir.path()).unwrap().updated_at, before);
        // Finished, it stops.
        let mut done = read(dir.path()).unwrap();
        done.state = RunState::Finished;
        hb.write(done);
        let last = read(dir.path()).unwrap().updated_at;
        std::thread::sleep(HEARTBEAT + Duration::from_millis(300));
        assert_eq!(read(dir.path()).unwrap().updated_at, last);
    }
}
