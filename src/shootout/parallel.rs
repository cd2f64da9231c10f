//! `tlcap-tui shootout --workers N`: up to N experiments at once, each a separate
//! `tlcap-tui run` process with its share of the cores (`OMP_NUM_THREADS`,
//! `RAYON_NUM_THREADS`), its stderr lines prefixed with its name. A signal to the
//! shootout is passed to every running experiment, which stops cleanly; the results of
//! the finished ones are exported either way.
//!
//! While it runs, `RUNS/shootout-progress.json` names its experiment files and the ones
//! that finished. The same shootout started again after a signal (or a kill) resumes:
//! finished experiments are kept as they are, the others run as `tlcap-tui worker`
//! does (a run stopped by the signal resumes its folder, one that ended before its
//! first epoch starts again in it). `--fresh`, or other files, start anew. The file
//! is removed when a shootout ends without a signal.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The progress file's name in the runs folder.
pub const PROGRESS: &str = "shootout-progress.json";

/// A shootout in progress: its experiment files and the ones that finished.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    /// Every experiment file of the shootout, as given.
    files: Vec<PathBuf>,
    /// Finished experiments: the file and its run folder.
    done: Vec<(PathBuf, PathBuf)>,
}

impl Progress {
    fn read(runs: &Path) -> Option<Progress> {
        serde_json::from_slice(&std::fs::read(runs.join(PROGRESS)).ok()?).ok()
    }

    fn write(&self, runs: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(runs)?;
        crate::fsutil::write_atomic(&runs.join(PROGRESS), &serde_json::to_vec_pretty(self)?)
    }
}

/// One experiment in progress.
struct Job {
    name: String,
    /// Its experiment file.
    file: PathBuf,
    child: Child,
    /// Reads the child's event stream; ends with its run folder, if it got one.
    stream: JoinHandle<Option<PathBuf>>,
}

/// Runs `files` with up to `workers` processes at once and exports the comparison.
pub(super) fn run(
    files: &[PathBuf],
    runs: &Path,
    max_epochs: Option<u32>,
    workers: usize,
    fresh: bool,
    started: Instant,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let files: Vec<PathBuf> = files
        .iter()
        .map(|f| f.canonicalize().unwrap_or_else(|_| f.clone()))
        .collect();
    let earlier = Progress::read(runs).filter(|p| !fresh && p.files == files);
    let resuming = earlier.is_some();
    let mut progress = earlier.unwrap_or(Progress {
        files: files.clone(),
        done: Vec::new(),
    });
    if resuming {
        eprintln!(
            "shootout: resuming the interrupted shootout of these {} files: {} finished \
             (kept), {} to run (a stopped run resumes its folder; --fresh starts over)",
            files.len(),
            progress.done.len(),
            files.len() - progress.done.len()
        );
    }
    progress.write(runs)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / workers).max(1);
    eprintln!(
        "shootout: {} experiments, {workers} at once, {threads} thread(s) each",
        files.len()
    );
    let pids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let caught = Arc::new(AtomicI32::new(0));
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let handle = signals.handle();
    let forward = {
        let (pids, caught) = (pids.clone(), caught.clone());
        std::thread::spawn(move || {
            for sig in signals.forever() {
                caught.store(sig, Ordering::SeqCst);
                eprintln!("shootout: signal {sig}; stopping every running experiment");
                for &pid in pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    // The child stops at its next batch boundary, files on disk.
                    unsafe { libc::kill(pid as i32, SIGTERM) };
                }
            }
        })
    };
    let mut queue: VecDeque<&PathBuf> = files
        .iter()
        .filter(|f| !progress.done.iter().any(|(d, _)| d == *f))
        .collect();
    let mut running: Vec<Job> = Vec::new();
    let mut folders: Vec<PathBuf> = progress.done.iter().map(|(_, d)| d.clone()).collect();
    loop {
        while running.len() < workers && caught.load(Ordering::SeqCst) == 0 {
            let Some(file) = queue.pop_front() else { break };
            let job = start(&exe, file, runs, max_epochs, threads, resuming)?;
            pids.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(job.child.id());
            running.push(job);
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            if running[i].child.try_wait()?.is_some() {
                let mut job = running.remove(i);
                let status = job.child.wait()?;
                pids.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|&p| p != job.child.id());
                let folder = job.stream.join().ok().flatten();
                match (status.success(), folder) {
                    (true, Some(f)) => {
                        progress.done.push((job.file.clone(), f.clone()));
                        progress.write(runs)?;
                        folders.push(f);
                    }
                    (_, f) => {
                        eprintln!("[{}] ended with {status}", job.name);
                        folders.extend(f);
                    }
                }
            } else {
                i += 1;
            }
        }
    }
    handle.close();
    let _ = forward.join();
    if caught.load(Ordering::SeqCst) == 0 {
        // Ended without a signal: nothing to resume.
        let _ = std::fs::remove_file(runs.join(PROGRESS));
    } else {
        eprintln!(
            "shootout: {} of {} experiments finished; the same command resumes the rest",
            progress.done.len(),
            files.len()
        );
    }
    let rows: Vec<_> = folders
        .iter()
        .filter_map(|d| crate::results::summarize(d).ok().flatten())
        .collect();
    super::report(&rows, runs, started, &format!(" with {workers} workers"))?;
    match caught.load(Ordering::SeqCst) {
        0 => Ok(()),
        sig => Err(crate::headless::Interrupted {
            signal: sig,
            name: crate::headless::signal_name(sig),
        }
        .into()),
    }
}

/// Starts one experiment as `tlcap-tui run FILE --json`, or when resuming as
/// `tlcap-tui worker FILE --index 0 --json` (which resumes a stopped run).
fn start(
    exe: &Path,
    file: &Path,
    runs: &Path,
    max_epochs: Option<u32>,
    threads: usize,
    resuming: bool,
) -> anyhow::Result<Job> {
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new(exe);
    if resuming {
        cmd.arg("worker").arg(file).args(["--index", "0"]);
    } else {
        cmd.arg("run").arg(file);
    }
    cmd.args(["--json", "--runs"])
        .arg(runs)
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(m) = max_epochs {
        cmd.args(["--max-epochs", &m.to_string()]);
    }
    let mut child = cmd.spawn()?;
    eprintln!("[{name}] started (pid {})", child.id());
    let stderr = child.stderr.take().expect("piped");
    let prefix = name.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{prefix}] {}", line.trim_start_matches('\r'));
        }
    });
    let stdout = child.stdout.take().expect("piped");
    let stream = std::thread::spawn(move || {
        let mut folder = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == "started" {
                    folder = v["run_dir"].as_str().map(PathBuf::from);
                }
            }
        }
        folder
    });
    Ok(Job {
        name,
        file: file.to_path_buf(),
        child,
        stream,
    })
}
