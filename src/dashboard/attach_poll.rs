//! An attached dashboard's view of a runs folder: every run folder read every
//! [`ATTACH_POLL`] (which works on shared file systems), the ones that changed sent to
//! the loop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::app::AppEvent;

/// How often an attached dashboard reads the run folders.
pub const ATTACH_POLL: Duration = Duration::from_secs(1);

/// Reads every run folder under a runs root every [`ATTACH_POLL`] and sends the ones
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
                let mut seen: HashMap<PathBuf, crate::results::FolderSnapshot> = HashMap::new();
                while !flag.load(Ordering::SeqCst) {
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
                    while std::time::Instant::now() < until && !flag.load(Ordering::SeqCst) {
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
