//! The real watcher on real files: rename-style and truncate-style saves, a new file,
//! a deletion, a broken save with its position; and a headless run that takes an edit
//! (frozen.epochs 3 -> 5) and survives a broken save.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util;

use tlcap::watch::FileEvent;

const VALID: &str = "data: { dir: data }\nmodel: { backbone: small_cnn }\nfrozen: { epochs: 3 }\n";

/// The next event for `path`, and how long it took; panics after 5 s.
fn next_for(
    rx: &mut flume::Receiver<FileEvent>,
    path: &Path,
    since: Instant,
) -> (FileEvent, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    loop {
        let ev = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.recv_async()).await })
            .unwrap_or_else(|_| panic!("no event for {}", path.display()))
            .unwrap();
        let p = match &ev {
            FileEvent::Changed(p, _) | FileEvent::Removed(p) => p.clone(),
            _ => continue,
        };
        if p == path {
            return (ev, since.elapsed());
        }
    }
}

/// Lets trailing events of the last save arrive, then drops them.
fn settle(rx: &mut flume::Receiver<FileEvent>) {
    std::thread::sleep(Duration::from_millis(400));
    while rx.try_recv().is_ok() {}
}

/// A folder with a valid `exp.yaml`, watched (the watcher settled): the folder, the
/// file, the events, the watcher.
fn watched() -> (
    tempfile::TempDir,
    PathBuf,
    flume::Receiver<FileEvent>,
    tlcap::watch::Watcher,
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let file = root.join("exp.yaml");
    std::fs::write(&file, VALID).unwrap();
    let (tx, rx) = flume::unbounded();
    let w = tlcap::watch::watch(&root, tx).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    (dir, file, rx, w)
}

fn epochs_of(ev: &FileEvent) -> u32 {
    match ev {
        FileEvent::Changed(_, Ok(e)) => e.frozen.epochs,
        other => panic!("expected a valid load, got {other:?}"),
    }
}

#[test]
fn saves_of_every_style_are_seen() {
    let (dir, file, mut rx, _w) = watched();
    let root = dir.path().canonicalize().unwrap();

    // vim / VS Code / JetBrains: write a temp file, rename it over.
    let t = Instant::now();
    std::fs::write(
        root.join(".exp.yaml.tmp"),
        VALID.replace("epochs: 3", "epochs: 4"),
    )
    .unwrap();
    std::fs::rename(root.join(".exp.yaml.tmp"), &file).unwrap();
    let (ev, rename_latency) = next_for(&mut rx, &file, t);
    assert_eq!(epochs_of(&ev), 4);

    // nano, sed -i, shell `>`: truncate, then write in several pieces.
    settle(&mut rx);
    let t = Instant::now();
    let mut f = std::fs::File::create(&file).unwrap();
    let text = VALID.replace("epochs: 3", "epochs: 5");
    let (a, b) = text.split_at(text.len() / 2);
    f.write_all(a.as_bytes()).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    f.write_all(b.as_bytes()).unwrap();
    drop(f);
    let (mut ev, truncate_latency) = next_for(&mut rx, &file, t);
    // A reader may catch the half-written file first; the final state arrives after.
    while !matches!(&ev, FileEvent::Changed(_, Ok(e)) if e.frozen.epochs == 5) {
        ev = next_for(&mut rx, &file, t).0;
    }

    // A broken save: the error carries file, line and column.
    settle(&mut rx);
    std::fs::write(
        &file,
        "data: { dir: data }\nmodel: { backbone: small_cnn }\nfrozen: { epochs: -1 }\n",
    )
    .unwrap();
    let t = Instant::now();
    // `fs::write` truncates first: a reader may catch the empty file ("missing field
    // `data`") before the final content, whose error is the one with a position.
    let positioned = |ev: &FileEvent| {
        matches!(ev, FileEvent::Changed(_, Err(errors))
            if errors.iter().any(|e| e.contains("exp.yaml:3:")))
    };
    let (mut ev, _) = next_for(&mut rx, &file, t);
    while !positioned(&ev) {
        assert!(
            matches!(ev, FileEvent::Changed(_, Err(_))),
            "a broken save read as valid: {ev:?}"
        );
        ev = next_for(&mut rx, &file, t).0;
    }

    // A new file appears; a deleted one is reported.
    settle(&mut rx);
    let new = root.join("second.yml");
    let t = Instant::now();
    std::fs::write(&new, VALID).unwrap();
    let (ev, _) = next_for(&mut rx, &new, t);
    assert_eq!(epochs_of(&ev), 3);
    settle(&mut rx);
    let t = Instant::now();
    std::fs::remove_file(&new).unwrap();
    let (ev, _) = next_for(&mut rx, &new, t);
    assert!(matches!(ev, FileEvent::Removed(_)));
    eprintln!(
        "save -> event: rename-style {} ms, truncate-style {} ms (benches/watch.rs measures more)",
        rename_latency.as_millis(),
        truncate_latency.as_millis()
    );
}

fn save_by_rename(file: &Path, text: &str) {
    let tmp = file.with_extension("yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[test]
fn a_headless_run_takes_edits_and_survives_a_broken_save() {
    let dir = tempfile::tempdir().unwrap();
    util::make_images(&dir.path().join("data"), &["a", "b"], 300, 32);
    let file: PathBuf = dir.path().join("live.yaml");
    let body = |epochs: &str| {
        format!(
            "data: {{ dir: data, image_size: 32, batch_size: 2 }}\nmodel: {{ backbone: small_cnn }}\n\
             frozen: {{ epochs: {epochs} }}\nfinetune: {{ epochs: 0 }}\ndevice: cpu\n"
        )
    };
    std::fs::write(&file, body("3")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(["run", "--json", "--runs"])
        .arg(dir.path().join("runs"))
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let err_lines = stderr.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            err_lines.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l.unwrap()).unwrap())
        .filter(|v| v["event"] == "epoch");
    let first = lines.next().unwrap();
    assert_eq!(first["epoch"], 1);
    // A broken save first: reported with its position, the run goes on.
    save_by_rename(&file, &body("[3"));
    let start = Instant::now();
    while !stderr.lock().unwrap().contains("live.yaml:3:") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Then the fix, with more epochs.
    save_by_rename(&file, &body("5"));
    let rest: Vec<serde_json::Value> = lines.collect();
    assert!(child.wait().unwrap().success());
    let frozen = 1 + rest.iter().filter(|l| l["phase"] == "frozen").count();
    let err = stderr.lock().unwrap().clone();
    assert_eq!(frozen, 5, "{err}");
    assert!(err.contains("last good settings stay in force"), "{err}");
    assert!(err.contains("frozen.epochs 3 -> 5"), "{err}");
}

/// A `.yaml` in the folder that is a symlink to a file elsewhere: saving the target
/// (in place or by renaming over it) reloads the link's entry.
#[test]
fn a_symlinked_experiment_follows_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let (shared, watched) = (root.join("shared"), root.join("experiments"));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&watched).unwrap();
    let target = shared.join("base.yaml");
    let link = watched.join("link.yaml");
    std::fs::write(&target, VALID).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (tx, mut rx) = flume::unbounded();
    let _w = tlcap::watch::watch(&watched, tx).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let t = Instant::now();
    std::fs::write(&target, VALID.replace("epochs: 3", "epochs: 6")).unwrap();
    let (mut ev, _) = next_for(&mut rx, &link, t);
    while !matches!(&ev, FileEvent::Changed(_, Ok(e)) if e.frozen.epochs == 6) {
        ev = next_for(&mut rx, &link, t).0;
    }
    assert_eq!(epochs_of(&ev), 6);
}

/// Reading an experiment file is not a change: one save is reported a bounded number
/// of times, then the watcher is quiet (reading the file on each event used to
/// produce access events that read it again, forever, flooding the dashboard with a
/// broken file's errors).
#[test]
fn a_save_is_reported_then_the_watcher_is_quiet() {
    let (_dir, file, mut rx, _w) = watched();
    save_by_rename(&file, "data: { dir: data }\nmodel: { backbone: nope }\n");
    let t = Instant::now();
    let _ = next_for(&mut rx, &file, t);
    // Reading it by hand (as an editor or `check` would) is no change either.
    let _ = std::fs::read_to_string(&file).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut later = 0;
    while let Ok(ev) = rx.try_recv() {
        if matches!(&ev, FileEvent::Changed(p, _) if p == &file) {
            later += 1;
        }
    }
    assert!(
        later <= 1,
        "{later} more change events in 1.5 s after one save"
    );
}
