//! SIGINT, SIGTERM and SIGHUP during a headless run: the first one stops the run at
//! the next batch boundary (stop checkpoint, `summary.json`, every finished epoch on
//! disk); a second one exits at once, with every file still whole (all writes are
//! atomic).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::train::Command;

/// A run ended by a signal: the process exits with 128 + `signal`.
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped by {name}: the stop checkpoint, summary.json and every finished epoch are on disk"
)]
pub struct Interrupted {
    /// The signal's number (2, 15, 1).
    pub signal: i32,
    /// Its name (`SIGINT`, ...).
    pub name: &'static str,
}

/// The name of a handled signal.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// A second signal sooner than this after the first is the same stop delivered twice
/// (`scancel` signals every process of the job and `deploy/slurm`'s script forwards
/// the signal too); later, it exits at once.
pub const SAME_STOP: std::time::Duration = std::time::Duration::from_secs(1);

/// Handles the three signals while it lives; dropping it hands them back.
pub struct SignalGuard {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    caught: Arc<AtomicI32>,
}

impl SignalGuard {
    /// Starts handling: the first signal sends a stop (through `stop`, which also
    /// tells the event stream), a second exits the process at once.
    pub fn new(
        commands: flume::Sender<Command>,
        said: impl Fn(&'static str) + Send + 'static,
    ) -> anyhow::Result<SignalGuard> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let caught = Arc::new(AtomicI32::new(0));
        let seen = caught.clone();
        let thread = std::thread::Builder::new()
            .name("tlcap signals".into())
            .spawn(move || {
                let mut first: Option<std::time::Instant> = None;
                for signal in signals.forever() {
                    // The same stop delivered twice at once (a scheduler signals every
                    // process of a job, and the job script forwards it too): one stop.
                    if first.is_some_and(|t| t.elapsed() < SAME_STOP) {
                        continue;
                    }
                    if seen.swap(signal, Ordering::SeqCst) != 0 {
                        eprintln!(
                            "{}: a second signal, exiting now (every file on disk is whole)",
                            name(signal)
                        );
                        // _exit: no atexit handlers or static destructors, which
                        // would race the trainer's libtorch threads still running.
                        unsafe { libc::_exit(128 + signal) };
                    }
                    eprintln!(
                        "{}: stopping at the next batch boundary (a second signal exits at once)",
                        name(signal)
                    );
                    first = Some(std::time::Instant::now());
                    said(name(signal));
                    let _ = commands.send(Command::Stop {
                        by: Some(name(signal).into()),
                    });
                }
            })?;
        Ok(SignalGuard {
            handle,
            thread: Some(thread),
            caught,
        })
    }

    /// The signal that stopped the run, if one did.
    pub fn caught(&self) -> Option<Interrupted> {
        match self.caught.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(Interrupted {
                signal,
                name: name(signal),
            }),
        }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
