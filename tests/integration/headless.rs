//! Headless runs as workers: the tagged `--json` event stream (every kind), signals
//! (a clean stop with the conventional exit status; a second signal exits at once),
//! and a closed stdout, for `run` and for a command that only prints.

use crate::util;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn tlcap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
}

/// An experiment file on generated images that trains for a long time (until stopped),
/// stalls at epoch 2 and then unfreezes by itself.
fn long_experiment(dir: &Path) -> PathBuf {
    util::make_images(&dir.join("data"), &["left", "right"], 32, 32);
    let file = dir.join("worker.yaml");
    std::fs::write(&file, body("1.0e-3")).unwrap();
    file
}

fn body(finetune_lr: &str) -> String {
    format!(
        "data: {{ dir: data, image_size: 32, batch_size: 8 }}\n\
         model: {{ backbone: small_cnn }}\n\
         frozen: {{ epochs: 3, lr: 1.0e-3 }}\n\
         finetune: {{ epochs: 200, lr: {finetune_lr}, unfreeze_last: 2 }}\n\
         stall: {{ patience: 1, min_delta: 0.9, on_stall: unfreeze }}\n\
         device: cpu\nseed: 3\n"
    )
}

/// `tlcap-tui run --json` on `file`, run folders under `dir/runs`, stderr dropped.
fn run_json(dir: &Path, file: &Path) -> Child {
    tlcap()
        .args(["run", "--json", "--runs"])
        .arg(dir.join("runs"))
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The JSON events a child prints, collected as they arrive.
fn collect(child: &mut Child) -> Arc<Mutex<Vec<Value>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            sink.lock().unwrap().push(v);
        }
    });
    events
}

fn wait_for(events: &Arc<Mutex<Vec<Value>>>, what: &str, test: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    while !events.lock().unwrap().iter().any(&test) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {what} in {:#?}",
            events.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn save_by_rename(file: &Path, text: &str) {
    let tmp = file.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn run_dir(events: &[Value]) -> PathBuf {
    let started = events.iter().find(|e| e["event"] == "started").unwrap();
    PathBuf::from(started["run_dir"].as_str().unwrap())
}

/// Every event kind the README documents appears, with its fields; SIGTERM stops the
/// run at a batch boundary with exit status 143 and everything on disk.
#[test]
fn the_event_stream_has_every_kind_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let file = long_experiment(dir.path());
    let mut child = run_json(dir.path(), &file);
    let events = collect(&mut child);
    // The stall at epoch 2 unfreezes by itself: a fine-tune epoch follows.
    wait_for(&events, "a fine-tune epoch", |e| {
        e["event"] == "epoch" && e["phase"] == "finetune"
    });
    // A broken save, then a good one with a new fine-tune rate.
    save_by_rename(&file, "data: { dir: data\n");
    wait_for(&events, "config_error", |e| e["event"] == "config_error");
    save_by_rename(&file, &body("5.0e-4"));
    wait_for(&events, "config_applied", |e| {
        e["event"] == "config_applied"
    });
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let start = Instant::now();
    wait_for(&events, "finished", |e| e["event"] == "finished");
    assert!(start.elapsed() < Duration::from_secs(5));

    let events = events.lock().unwrap().clone();
    let kinds: BTreeSet<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for kind in [
        "started",
        "phase",
        "epoch",
        "stall",
        "config_applied",
        "config_error",
        "control",
        "finished",
    ] {
        assert!(kinds.contains(kind), "{kind} missing: {kinds:?}");
    }
    let first = |kind: &str| events.iter().find(|e| e["event"] == kind).unwrap().clone();
    let started = first("started");
    assert_eq!(started["classes"], serde_json::json!(["left", "right"]));
    assert_eq!(
        started["train"].as_u64().unwrap() + started["val"].as_u64().unwrap(),
        64
    );
    assert_eq!(started["device"], "cpu");
    assert!(started["precision"].is_string());
    let epoch = first("epoch");
    for key in [
        "epoch",
        "phase",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
        "images_per_sec",
        "compute",
        "input_wait_seconds",
        "stalled",
        "confusion",
    ] {
        assert!(epoch.get(key).is_some(), "epoch lacks {key}: {epoch}");
    }
    let stall = first("stall");
    assert_eq!(stall["action"], "unfreezing");
    assert!(stall["suggestion"]
        .as_str()
        .unwrap()
        .contains("unfreezing the last 2 layers"));
    let phases: Vec<&Value> = events.iter().filter(|e| e["event"] == "phase").collect();
    assert_eq!(phases[0]["phase"], "frozen");
    assert_eq!(phases[1]["phase"], "finetune");
    let applied = first("config_applied");
    assert_eq!(applied["changes"][0]["path"], "finetune.lr");
    assert_eq!(applied["changes"][0]["live"], true);
    let error = first("config_error");
    assert!(error["errors"][0]
        .as_str()
        .unwrap()
        .contains("worker.yaml:"));
    let control = first("control");
    assert_eq!(
        (control["command"].as_str(), control["source"].as_str()),
        (Some("stop"), Some("SIGTERM"))
    );
    let finished = first("finished");
    assert_eq!(finished["status"], "stopped");
    assert_eq!(finished["stopped_by"], "SIGTERM");
    assert!(finished["best_epoch"].as_u64().unwrap() >= 1);
    for kind in ["best", "last", "stopped"] {
        let path = finished["checkpoints"][kind].as_str().unwrap();
        assert!(Path::new(path).is_file(), "{kind}: {path}");
    }
    // On disk: the summary says who stopped it; every metrics line is whole.
    let run = run_dir(&events);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["reason"], "stopped");
    assert_eq!(summary["stopped_by"], "SIGTERM");
    let epochs = tlcap::train::run_dir::read_metrics(&run).unwrap();
    let printed = events.iter().filter(|e| e["event"] == "epoch").count();
    assert_eq!(epochs.len(), printed);
}

/// `run --json | head -2`: the reader leaves, the run stops as for a signal, exit 0.
#[test]
fn a_closed_stdout_stops_the_run_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let file = long_experiment(dir.path());
    let mut child = tlcap()
        .args(["run", "--json", "--runs"])
        .arg(dir.path().join("runs"))
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(started["event"], "started");
    let _phase = lines.next().unwrap().unwrap();
    drop(lines); // the reader is gone
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let run = PathBuf::from(started["run_dir"].as_str().unwrap());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stopped_by"], "stdout closed");
    assert!(run.join("stopped.safetensors").is_file());
}

/// A closed pipe is noticed between batches, not when the next line is written: the
/// reader leaves during the first epoch (before its line), and the run stops inside
/// that epoch, with no epoch row written after the reader left.
#[test]
fn a_closed_pipe_is_noticed_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    util::make_images(&dir.path().join("data"), &["left", "right"], 150, 64);
    let file = dir.path().join("slow.yaml");
    // Epochs of 60 batches of a ResNet-18 at 64 px: seconds, not milliseconds.
    std::fs::write(
        &file,
        "data: { dir: data, image_size: 64, batch_size: 4 }\n\
         model: { backbone: resnet18, weights: none }\n\
         frozen: { epochs: 50 }\nfinetune: { epochs: 0 }\ndevice: cpu\nseed: 1\n",
    )
    .unwrap();
    let mut child = tlcap()
        .args(["run", "--json", "--runs"])
        .arg(dir.path().join("runs"))
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _phase = lines.next().unwrap().unwrap();
    drop(lines); // the reader is gone before the first epoch ends
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let run = PathBuf::from(started["run_dir"].as_str().unwrap());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stopped_by"], "stdout closed", "{stderr}");
    assert_eq!(
        summary["epochs"], 0,
        "an epoch ran on after the reader left: {stderr}"
    );
    assert!(run.join("stopped.safetensors").is_file());
}

/// A command that only prints, to a pipe closed before it writes: no panic, status 0.
#[test]
fn printing_to_a_closed_pipe_is_not_a_failure() {
    for args in [&["schema"][..], &["layers", "resnet50"][..]] {
        let mut child = tlcap()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Two signals in a row: the second exits at once (130 for SIGINT); every file that
/// is there is whole.
#[test]
fn a_second_signal_exits_at_once_with_files_intact() {
    let dir = tempfile::tempdir().unwrap();
    let file = long_experiment(dir.path());
    let mut child = run_json(dir.path(), &file);
    let events = collect(&mut child);
    wait_for(&events, "an epoch", |e| e["event"] == "epoch");
    signal(&child, libc::SIGINT);
    // The same stop delivered twice at once is one stop; a second one later exits.
    signal(&child, libc::SIGINT);
    std::thread::sleep(tlcap::headless::SAME_STOP + Duration::from_millis(100));
    if child.try_wait().unwrap().is_none() {
        signal(&child, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let run = run_dir(&events.lock().unwrap());
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(text.ends_with('\n'));
    assert!(!tlcap::train::run_dir::read_metrics(&run)
        .unwrap()
        .is_empty());
    let (_, info) = tlcap::train::run_dir::read_checkpoint(&run.join("last.safetensors")).unwrap();
    assert!(info.epoch >= 1);
}

fn status(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap()
}

fn control(run: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("control.jsonl"))
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// A run steered through its folder alone: pause, a malformed line, a settings
/// change, resume and stop by appending to `control.jsonl`; `status.json` follows.
/// Prints how long a control line takes to act (target: at most 1 s).
#[test]
fn a_run_is_steered_through_its_control_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = long_experiment(dir.path());
    let mut child = run_json(dir.path(), &file);
    let events = collect(&mut child);
    wait_for(&events, "an epoch", |e| e["event"] == "epoch");
    let run = run_dir(&events.lock().unwrap());
    let s = status(&run);
    assert_eq!(s["pid"], child.id());
    assert_eq!(s["state"], "running");
    assert!(s["host"].as_str().is_some_and(|h| !h.is_empty()));

    let sent = Instant::now();
    control(&run, r#"{"command": "pause"}"#);
    wait_for(&events, "the pause", |e| {
        e["event"] == "control" && e["command"] == "pause"
    });
    let latency = sent.elapsed();
    let start = Instant::now();
    while status(&run)["state"] != "paused" {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", status(&run));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Paused, the heartbeat goes on.
    let before = status(&run)["updated_at"].clone();
    std::thread::sleep(tlcap::train::status::HEARTBEAT + Duration::from_millis(600));
    assert_ne!(status(&run)["updated_at"], before);
    control(&run, r#"{"command": "jump"}"#);
    wait_for(&events, "a note on the bad line", |e| {
        e["event"] == "note"
            && e["text"]
                .as_str()
                .unwrap()
                .contains("unknown command `jump`")
    });
    control(
        &run,
        r#"{"command": "set", "settings": {"finetune": {"lr": 2.0e-4}}}"#,
    );
    control(&run, r#"{"command": "resume"}"#);
    wait_for(&events, "the edit applied", |e| {
        e["event"] == "config_applied" && e["changes"][0]["path"] == "finetune.lr"
    });
    control(&run, r#"{"command": "stop"}"#);
    let status_code = child.wait().unwrap();
    assert_eq!(status_code.code(), Some(0));
    wait_for(&events, "finished", |e| e["event"] == "finished");
    let events = events.lock().unwrap().clone();
    let finished = events.iter().find(|e| e["event"] == "finished").unwrap();
    assert_eq!(finished["stopped_by"], "control.jsonl");
    assert_eq!(status(&run)["state"], "finished");
    let log = std::fs::read_to_string(run.join("events.log")).unwrap();
    assert!(log.contains("control.jsonl line 1"), "{log}");
    assert!(log.contains("unknown command `jump`"), "{log}");
    eprintln!(
        "control line -> trainer acting: {} ms (target <= 1000 ms)",
        latency.as_millis()
    );
    assert!(latency < Duration::from_secs(3), "{latency:?}");
}

/// `data.class_weight: balanced` on imbalanced data: the run says the weights it uses
/// (images / (classes x images of the class), counted on the training side), trains,
/// and every epoch records the balanced accuracy (the mean of the per-class recalls it
/// also records), which the stall detector can watch; `check` names a class weight for
/// a class that is not in the data, at its line and column.
#[test]
fn class_weights_are_announced_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    util::make_images(&data, &["left", "right"], 16, 32);
    // 16 left, 4 right: 12 + 3 train after a 0.25 split per class.
    for i in 4..16 {
        let _ = std::fs::remove_file(data.join("right").join(format!("{i}.png")));
    }
    assert_eq!(std::fs::read_dir(data.join("right")).unwrap().count(), 4);
    let file = dir.path().join("weighted.yaml");
    std::fs::write(
        &file,
        "data: { dir: data, image_size: 32, batch_size: 8, validation_split: 0.25,\n\
         \x20 class_weight: balanced }\n\
         model: { backbone: small_cnn }\n\
         frozen: { epochs: 2, lr: 1.0e-3 }\nfinetune: { epochs: 0 }\n\
         stall: { monitor: val_balanced_accuracy }\ndevice: cpu\nseed: 3\n",
    )
    .unwrap();
    let out = tlcap()
        .args(["run", "--runs"])
        .arg(dir.path().join("runs"))
        .arg(&file)
        .output()
        .unwrap();
    util::stdout_of_success(&out);
    // 15 training images: 15 / (2 x 12) and 15 / (2 x 3). Notes go to stderr.
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("class weights in the training loss: left 0.625, right 2.500"),
        "{text}"
    );
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("runs").join("weighted"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let metrics = tlcap::train::run_dir::read_metrics(&runs[0]).unwrap();
    assert_eq!(metrics.len(), 2);
    for m in &metrics {
        let recalls = &m.val_class_recall;
        assert_eq!(recalls.len(), 2);
        let mean = (recalls[0] + recalls[1]) / 2.0;
        assert_eq!(m.val_balanced_accuracy, Some(mean));
        assert_eq!(m.confusion.recalls(), *recalls);
    }
    // A weight for a class the data does not have: `check` says which, and where.
    std::fs::write(
        &file,
        "data: { dir: data, image_size: 32,\n  class_weight: { left: 1.0, rihgt: 4.0 } }\n\
         model: { backbone: small_cnn }\n",
    )
    .unwrap();
    let out = tlcap().arg("check").arg(&file).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("weighted.yaml:2:17: data.class_weight names `rihgt`"),
        "{said}"
    );
}
