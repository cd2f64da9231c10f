//! `attach` over a thousand run folders: 990 finished, 10 live writers appending an
//! epoch (and rewriting their heartbeat) every second. Prints the poller's CPU per
//! pass and as a share of one core at one pass a second, the delay from an epoch
//! written to the dashboard's state showing it, the time to draw a frame of the
//! thousand-run list, and the process's memory.
//!
//! Targets (issue #29): an epoch on screen <= 2 s after it is written; < 5% of one
//! core in steady state; a key acts <= 1 s.
//!
//! Run: `cargo bench --bench attach` (or `make bench`).

mod common;
use common::thread_cpu_seconds;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use tlcap::app::{update, App, AppEvent};
use tlcap::dashboard::{RunsView, ATTACH_POLL};

const FINISHED: usize = 990;
const LIVE: usize = 10;
const SECONDS: u64 = 12;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn epoch_line(epoch: u32) -> String {
    serde_json::json!({
        "epoch": epoch, "phase": "frozen", "loss": 0.5, "accuracy": 0.7,
        "val_loss": 0.5, "val_accuracy": 0.7 + epoch as f64 * 1e-3,
        "val_precision": null, "val_recall": null, "val_f1": null, "val_auc": null,
        "confusion": {"n": 2, "counts": [1, 0, 0, 1]}, "lr": 1e-3,
        "seconds": 1.0, "images_per_sec": 100.0, "val_images_per_sec": 100.0,
        "stalled": false,
    })
    .to_string()
        + "\n"
}

fn status(exp: &str, state: &str, epoch: u32) -> String {
    serde_json::json!({
        "experiment": exp, "pid": 1, "host": "bench", "state": state, "phase": "frozen",
        "epoch": epoch, "epochs": 1000, "batch": [0, 0], "images_per_sec": 0.0,
        "updated_at": chrono::Utc::now().to_rfc3339(),
    })
    .to_string()
}

fn make_run(root: &Path, i: usize, finished: bool) -> PathBuf {
    let exp = format!("exp{:02}", i % 40);
    let run = root.join(&exp).join(format!("20261201-{i:06}"));
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("config.yaml"),
        format!("name: {exp}\ndata: {{ dir: data }}\nmodel: {{ backbone: small_cnn }}\n"),
    )
    .unwrap();
    let epochs: String = (1..=10).map(epoch_line).collect();
    std::fs::write(run.join("metrics.jsonl"), epochs).unwrap();
    let state = if finished { "finished" } else { "running" };
    tlcap::fsutil::write_atomic(&run.join("status.json"), status(&exp, state, 10).as_bytes())
        .unwrap();
    if finished {
        let summary = serde_json::json!({
            "experiment": exp, "backbone": "small_cnn", "reason": "completed", "epochs": 10,
            "phase": "frozen", "best": null, "parameters": 1, "trainable_parameters": 1,
            "device": "cpu", "stopped_by": null,
        });
        std::fs::write(run.join("summary.json"), summary.to_string()).unwrap();
    }
    run
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("runs");
    let t = Instant::now();
    for i in 0..FINISHED {
        make_run(&root, i, true);
    }
    let live: Vec<PathBuf> = (FINISHED..FINISHED + LIVE)
        .map(|i| make_run(&root, i, false))
        .collect();
    println!(
        "attach bench: {} run folders ({FINISHED} finished, {LIVE} live) made in {:.1} s",
        FINISHED + LIVE,
        t.elapsed().as_secs_f64()
    );
    // Writers: an epoch and a heartbeat every second each; when each epoch was written.
    let written: Arc<Mutex<Vec<(PathBuf, u32, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = live
        .iter()
        .cloned()
        .enumerate()
        .map(|(k, run)| {
            let (written, stop) = (written.clone(), stop.clone());
            std::thread::spawn(move || {
                // Spread over the second, as independent runs would be.
                std::thread::sleep(Duration::from_millis(100 * k as u64));
                let mut epoch = 10;
                while !stop.load(Ordering::SeqCst) {
                    epoch += 1;
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(run.join("metrics.jsonl"))
                        .unwrap();
                    f.write_all(epoch_line(epoch).as_bytes()).unwrap();
                    written
                        .lock()
                        .unwrap()
                        .push((run.clone(), epoch, Instant::now()));
                    let exp = run.parent().unwrap().file_name().unwrap().to_string_lossy();
                    tlcap::fsutil::write_atomic(
                        &run.join("status.json"),
                        status(&exp, "running", epoch + 1).as_bytes(),
                    )
                    .unwrap();
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();

    // The dashboard's side, in this thread: passes once a second (as the poller),
    // each event folded into the state at once.
    let (tx, rx) = flume::unbounded();
    let mut view = RunsView::default();
    let mut app = App::attached(root.clone());
    let mut pass_cpu = Vec::new();
    let mut sent = Vec::new();
    let mut delays = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(SECONDS) {
        let before = thread_cpu_seconds();
        view.pass(&root, &tx);
        pass_cpu.push(thread_cpu_seconds() - before);
        let mut n = 0;
        for ev in rx.try_iter() {
            n += 1;
            update(&mut app, ev);
        }
        sent.push(n);
        // Which written epochs does the state show now?
        let now = Instant::now();
        let mut w = written.lock().unwrap();
        w.retain(|(run, epoch, at)| {
            let shown = app
                .entries
                .iter()
                .find(|e| &e.path == run)
                .and_then(|e| e.run.as_ref())
                .is_some_and(|r| r.epochs.iter().any(|m| m.epoch == *epoch));
            if shown {
                delays.push((now - *at).as_secs_f64());
            }
            !shown
        });
        drop(w);
        std::thread::sleep(ATTACH_POLL);
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    // Steady state: after the first pass, which reads every folder once.
    let first = pass_cpu[0];
    let steady: Vec<f64> = pass_cpu[1..].to_vec();
    let mean = steady.iter().sum::<f64>() / steady.len() as f64;
    let max_delay = delays.iter().cloned().fold(0.0, f64::max);
    println!(
        "first pass (reads all {} folders): {:.0} ms CPU, {} sent",
        FINISHED + LIVE,
        first * 1e3,
        sent[0]
    );
    println!(
        "steady state: {:.1} ms CPU a pass ({:.2}% of one core at one pass/s), {:.1} folders sent a pass",
        mean * 1e3,
        mean / ATTACH_POLL.as_secs_f64() * 100.0,
        sent[1..].iter().sum::<usize>() as f64 / steady.len() as f64
    );
    println!(
        "an epoch written -> in the dashboard's state: max {:.2} s, mean {:.2} s over {} epochs \
         (target <= 2 s; the poll interval is {} ms)",
        max_delay,
        delays.iter().sum::<f64>() / delays.len().max(1) as f64,
        delays.len(),
        ATTACH_POLL.as_millis()
    );
    // A key, then a frame of the thousand-run list.
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let t = Instant::now();
    update(
        &mut app,
        AppEvent::Key(KeyEvent::new(KeyCode::End, KeyModifiers::NONE)),
    );
    update(
        &mut app,
        AppEvent::Key(KeyEvent::new(KeyCode::Up, KeyModifiers::NONE)),
    );
    terminal.draw(|f| tlcap::ui::draw(f, &app)).unwrap();
    let key_and_frame = t.elapsed().as_secs_f64();
    let t = Instant::now();
    update(
        &mut app,
        AppEvent::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE)),
    );
    terminal.draw(|f| tlcap::ui::draw(f, &app)).unwrap();
    let compare = t.elapsed().as_secs_f64();
    println!(
        "a key and the next frame (120x40, {} runs): {:.1} ms; the compare view: {:.1} ms",
        app.entries.len(),
        key_and_frame * 1e3,
        compare * 1e3
    );
    println!("memory: {:.0} MB resident", rss_mb());
}
