//! Background work of the dashboard (reading a run's predictions, decoding a preview,
//! exporting a shootout) behind tracked handles: each job runs on a named thread, its
//! result comes back as an [`AppEvent`], and the loop reaps finished jobs and waits for
//! the rest before it ends. A job that panics is reported, not lost.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::app::AppEvent;

/// Threads of background jobs are named with this prefix.
pub const THREAD_PREFIX: &str = "tlcap job ";

/// The jobs in flight.
pub struct Jobs {
    running: Vec<(String, JoinHandle<()>)>,
    results: flume::Sender<AppEvent>,
}

impl Jobs {
    /// Jobs whose results go to `results`.
    pub fn new(results: flume::Sender<AppEvent>) -> Jobs {
        Jobs {
            running: Vec::new(),
            results,
        }
    }

    /// Runs `work` on its own thread; what it returns is sent to the loop.
    pub fn spawn(&mut self, name: &str, work: impl FnOnce() -> AppEvent + Send + 'static) {
        let results = self.results.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{THREAD_PREFIX}{name}"))
            .spawn(move || {
                let _ = results.send(work());
            });
        match spawned {
            Ok(handle) => self.running.push((name.to_string(), handle)),
            Err(e) => {
                let _ = self
                    .results
                    .send(AppEvent::Info(format!("cannot start {name}: {e}")));
            }
        }
    }

    /// Jobs still running.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether no job is running.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Joins the jobs that have ended; a panic is said as a message.
    pub fn reap(&mut self) {
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(_, h)| h.is_finished());
        self.running = running;
        for (name, handle) in done {
            if let Err(panic) = handle.join() {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                let _ = self
                    .results
                    .send(AppEvent::Info(format!("{name} failed: {why}")));
            }
        }
    }

    /// Waits up to `deadline` for the jobs in flight, reaping them.
    pub fn wait(&mut self, deadline: Instant) {
        while !self.running.is_empty() && Instant::now() < deadline {
            self.reap();
            if !self.running.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job's result arrives, it is reaped once done, and a panicking job is said.
    #[test]
    fn jobs_are_tracked_and_reaped() {
        let (tx, rx) = flume::unbounded();
        let mut jobs = Jobs::new(tx);
        jobs.spawn("sum", || AppEvent::Info("done".into()));
        jobs.spawn("broken", || panic!("no such file"));
        assert_eq!(jobs.len(), 2);
        jobs.wait(Instant::now() + Duration::from_secs(5));
        assert!(jobs.is_empty());
        let said: Vec<String> = rx
            .try_iter()
            .map(|e| match e {
                AppEvent::Info(t) => t,
                other => format!("{other:?}"),
            })
            .collect();
        assert!(said.contains(&"done".to_string()), "{said:?}");
        assert!(
            said.iter().any(|s| s == "broken failed: no such file"),
            "{said:?}"
        );
    }
}
