//! `tlcap-tui shootout --workers N`: up to N experiments at once, each a separate
//! `tlcap-tui run` process with its share of the cores (`OMP_NUM_THREADS`,
//! `RAYON_NUM_THREADS`), its stderr lines prefixed with its name. A signal to the
//! shootout is passed to every running experiment, which stops cleanly; the results of
//! the finished ones are exported either way.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// One experiment in progress.
struct Job {
    name: String,
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
    started: Instant,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
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
    let mut queue: VecDeque<&PathBuf> = files.iter().collect();
    let mut running: Vec<Job> = Vec::new();
    let mut folders = Vec::new();
    loop {
        while running.len() < workers && caught.load(Ordering::SeqCst) == 0 {
            let Some(file) = queue.pop_front() else { break };
            let job = start(&exe, file, runs, max_epochs, threads)?;
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
                    (true, Some(f)) => folders.push(f),
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

/// Starts one experiment as `tlcap-tui run FILE --json`.
fn start(
    exe: &Path,
    file: &Path,
    runs: &Path,
    max_epochs: Option<u32>,
    threads: usize,
) -> anyhow::Result<Job> {
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--json", "--runs"])
        .arg(runs)
        .arg(file)
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
        child,
        stream,
    })
}
