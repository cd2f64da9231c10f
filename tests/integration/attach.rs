//! `tlcap-tui attach`: the dashboard over run folders written by another process —
//! the real poller on a real run, its keys steering through the control file, a
//! killed run shown as lost, and the attached screen drawn at 80x24.

use crate::util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use tlcap::app::{update, Action, App, AppEvent, RunStatus};
use tlcap::train::Command as TrainerCommand;

fn key(c: char) -> AppEvent {
    AppEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| tlcap::ui::draw(f, app)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// Drains the poller's events into the app for up to `limit`, until `done` holds.
fn pump(
    app: &mut App,
    rx: &mut flume::Receiver<AppEvent>,
    limit: Duration,
    done: impl Fn(&App) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        while let Ok(ev) = rx.try_recv() {
            update(app, ev);
        }
        if done(app) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn run_of(app: &App) -> Option<&tlcap::app::RunView> {
    app.entries.first().and_then(|e| e.run.as_ref())
}

#[test]
fn attach_follows_a_run_of_another_process_and_steers_it() {
    let dir = tempfile::tempdir().unwrap();
    util::make_images(&dir.path().join("data"), &["left", "right"], 40, 32);
    let file = dir.path().join("remote.yaml");
    std::fs::write(
        &file,
        "data: { dir: data, image_size: 32, batch_size: 4 }\nmodel: { backbone: small_cnn }\n\
         frozen: { epochs: 200 }\nfinetune: { epochs: 0 }\ndevice: cpu\n",
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(["run", "--runs"])
        .arg(&runs)
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut app = App::attached(runs.clone());
    let (tx, mut rx) = flume::unbounded();
    let _poller = tlcap::dashboard::Poller::start(runs.clone(), tx);
    assert!(
        pump(&mut app, &mut rx, Duration::from_secs(60), |a| {
            run_of(a).is_some_and(|r| r.epochs.len() >= 2)
        }),
        "the run's epochs never showed"
    );
    let run_dir: PathBuf = app.entries[0].path.clone();
    assert!(app.entries[0].name().starts_with("remote/"));
    assert_eq!(run_of(&app).unwrap().status, RunStatus::Running);

    // How far the view lags behind the run: an epoch on disk -> in the view.
    let mut lags = Vec::new();
    for _ in 0..3 {
        let on_disk = tlcap::train::run_dir::read_metrics(&run_dir).unwrap().len();
        let start = Instant::now();
        let target = on_disk + 1;
        while tlcap::train::run_dir::read_metrics(&run_dir).unwrap().len() < target {
            assert!(start.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(5));
        }
        let written = Instant::now();
        assert!(pump(&mut app, &mut rx, Duration::from_secs(5), |a| {
            run_of(a).is_some_and(|r| r.epochs.len() >= target)
        }));
        lags.push(written.elapsed());
    }
    let worst = lags.iter().max().unwrap();
    eprintln!(
        "attach delay behind an epoch (polling every {} ms): {:?} (target <= 2 s)",
        tlcap::dashboard::ATTACH_POLL.as_millis(),
        lags
    );
    assert!(*worst < Duration::from_secs(2), "{lags:?}");

    // e: the run's settings are edited in a copy; a valid edit goes as a `set` line,
    // a broken one sends nothing.
    assert_eq!(
        update(&mut app, key('e')),
        vec![Action::EditRun(run_dir.clone())]
    );
    let copy = dir.path().join("edited.yaml");
    let mut settings: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(run_dir.join("config.yaml")).unwrap())
            .unwrap();
    settings["frozen"]["lr"] = serde_yaml::Value::from(5.0e-4);
    std::fs::write(&copy, "frozen: [broken\n").unwrap();
    let said = tlcap::dashboard::send_edited_settings(&run_dir, &copy);
    assert!(said.last().unwrap().contains("nothing sent"), "{said:?}");
    std::fs::write(&copy, serde_yaml::to_string(&settings).unwrap()).unwrap();
    let said = tlcap::dashboard::send_edited_settings(&run_dir, &copy);
    assert!(said[0].contains("settings sent"), "{said:?}");
    let start = Instant::now();
    while !std::fs::read_to_string(run_dir.join("config-history.jsonl"))
        .unwrap_or_default()
        .contains("frozen.lr")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the edit never applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // p: the pause goes to the run's control file; the heartbeat says paused.
    let actions = update(&mut app, key('p'));
    assert_eq!(
        actions,
        vec![Action::Control(run_dir.clone(), TrainerCommand::Pause)]
    );
    tlcap::train::control::append(&run_dir, &TrainerCommand::Pause).unwrap();
    assert!(pump(&mut app, &mut rx, Duration::from_secs(10), |a| {
        run_of(a).is_some_and(|r| r.status == RunStatus::Paused)
    }));
    assert!(render(&app, 80, 24).contains("paused"));
    // s does not start anything here.
    assert!(update(&mut app, key('s')).is_empty());
    // x while paused: a stop.
    assert_eq!(
        update(&mut app, key('x')),
        vec![Action::Control(run_dir.clone(), TrainerCommand::STOP)]
    );

    // Killed without a word: after its heartbeat goes stale, it shows as lost.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        pump(
            &mut app,
            &mut rx,
            Duration::from_secs(tlcap::app::LOST_AFTER_SECONDS as u64 + 10),
            |a| run_of(a).is_some_and(|r| matches!(r.status, RunStatus::Lost { .. }))
        ),
        "never shown as lost"
    );
    let screen = render(&app, 80, 24);
    assert!(screen.contains("lost"), "{screen}");
    assert!(screen.contains("last seen"), "{screen}");
    // Quitting an attached dashboard never stops anyone's runs.
    assert!(!app.any_active());
}

/// A finished run reads as done; a folder that never wrote a heartbeat as lost.
#[test]
fn folder_states_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let none = tlcap::results::snapshot(Path::new(dir.path()), None);
    assert_eq!(tlcap::app::status_of(&none), RunStatus::Lost { seconds: 0 });
}

/// One epoch line as a run writes it.
fn epoch_line(epoch: u32) -> String {
    serde_json::json!({
        "epoch": epoch, "phase": "frozen", "loss": 0.5, "accuracy": 0.7,
        "val_loss": 0.5, "val_accuracy": 0.6 + epoch as f64 / 100.0,
        "val_precision": null, "val_recall": null, "val_f1": null, "val_auc": null,
        "confusion": {"n": 2, "counts": [1, 0, 0, 1]}, "lr": 1e-3,
        "seconds": 1.0, "images_per_sec": 100.0, "val_images_per_sec": 100.0,
        "stalled": false,
    })
    .to_string()
        + "\n"
}

/// A run folder as a live run leaves it: settings, three epochs, a fresh heartbeat.
fn live_run(runs: &Path, name: &str) -> PathBuf {
    let run = runs.join(name).join("20261201-000000");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("config.yaml"),
        format!("name: {name}\ndata: {{ dir: data }}\nmodel: {{ backbone: small_cnn }}\n"),
    )
    .unwrap();
    let epochs: String = (1..=3).map(epoch_line).collect();
    std::fs::write(run.join("metrics.jsonl"), epochs).unwrap();
    let status = serde_json::json!({
        "experiment": name, "pid": 1, "host": "h", "state": "running", "phase": "frozen",
        "epoch": 4, "epochs": 10, "batch": [1, 5], "images_per_sec": 1.0,
        "updated_at": chrono::Utc::now().to_rfc3339(),
    });
    tlcap::fsutil::write_atomic(&run.join("status.json"), status.to_string().as_bytes()).unwrap();
    run
}

/// Bad run folders under an attached dashboard: a heartbeat that does not parse, a
/// metrics file damaged mid-file and torn at its end, a control file that cannot be
/// written, and then the whole runs folder gone. Each is said once and shown on its
/// own run; the healthy run beside them reads as before; nothing panics.
#[test]
fn bad_run_folders_are_shown_per_run_and_hurt_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let good = live_run(&runs, "good");
    let heartbeat = live_run(&runs, "heartbeat");
    std::fs::write(heartbeat.join("status.json"), "{\"experiment\": \"heartb").unwrap();
    let metrics = live_run(&runs, "metrics");
    let damaged = format!(
        "{}{{\"epoch\": 2, \"pha\n{}{}",
        epoch_line(1),
        epoch_line(3),
        &epoch_line(4)[..20]
    );
    std::fs::write(metrics.join("metrics.jsonl"), damaged).unwrap();
    // A control file that cannot be opened for writing (a folder in its place; root
    // ignores file modes, so a read-only file would not do).
    std::fs::create_dir(good.join("control.jsonl")).unwrap();

    let mut app = App::attached(runs.clone());
    let (tx, rx) = flume::unbounded();
    let mut view = tlcap::dashboard::RunsView::default();
    let mut pass = |app: &mut App| {
        assert!(view.pass(&runs, &tx));
        for ev in rx.try_iter() {
            update(app, ev);
        }
    };
    pass(&mut app);
    pass(&mut app);
    let find = |app: &App, name: &str| {
        app.entries
            .iter()
            .position(|e| e.name().starts_with(name))
            .unwrap()
    };
    let run = |app: &App, name: &str| app.entries[find(app, name)].run.clone().unwrap();
    // The healthy run: as it is.
    assert_eq!(run(&app, "good/").status, RunStatus::Running);
    assert_eq!(run(&app, "good/").epochs.len(), 3);
    assert!(run(&app, "good/").file_problems.is_empty());
    // The damaged metrics: the good epochs shown, the bad line named, the torn end
    // (a write in progress) no problem.
    let m = run(&app, "metrics/");
    let shown: Vec<u32> = m.epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(shown, vec![1, 3]);
    assert_eq!(m.file_problems.len(), 1, "{:?}", m.file_problems);
    assert!(m.file_problems[0].starts_with("metrics.jsonl line 2:"));
    assert_eq!(m.status, RunStatus::Running);
    // The unreadable heartbeat: its epochs shown, the problem named.
    let h = run(&app, "heartbeat/");
    assert_eq!(h.epochs.len(), 3);
    assert!(h.file_problems[0].starts_with("status.json unreadable"));
    // Each problem said once, though the folders were read twice.
    let said: Vec<&str> = app
        .messages
        .iter()
        .filter(|m| m.warning)
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(app.messages.iter().all(|m| m.repeats == 1));
    // On screen, on the run it concerns.
    app.selected = find(&app, "heartbeat/");
    let screen = render(&app, 80, 24);
    if std::env::var_os("TLCAP_SHOW").is_some() {
        eprintln!("{screen}");
    }
    assert!(screen.contains("status.json unreadable"), "{screen}");
    app.selected = find(&app, "good/");
    assert!(!render(&app, 80, 24).contains("unreadable"));

    // p on the run whose control file cannot be written: said, nothing pending.
    let actions = update(&mut app, key('p'));
    let [Action::Control(path, command)] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(run(&app, "good/").pending, Some("pausing…"));
    let err = tlcap::train::control::append(path, command).unwrap_err();
    update(
        &mut app,
        AppEvent::ControlFailed(path.clone(), err.to_string()),
    );
    assert_eq!(run(&app, "good/").pending, None);
    assert!(app
        .messages
        .last()
        .unwrap()
        .text
        .contains("cannot write its control file"));

    // The runs folder disappears: every run said once as gone (no heartbeat), the
    // screen still draws.
    std::fs::remove_dir_all(&runs).unwrap();
    pass(&mut app);
    for name in ["good/", "heartbeat/", "metrics/"] {
        assert!(
            matches!(run(&app, name).status, RunStatus::Lost { .. }),
            "{name}: {:?}",
            run(&app, name).status
        );
    }
    pass(&mut app);
    render(&app, 80, 24);
    render(&app, 60, 16);
}

/// The compare view over more runs than fit: the best ones, best first, and how many
/// more there are; at 80x24 as at 120x40; a run scored by `evaluate` shows its test
/// accuracy in a column of its own.
#[test]
fn compare_over_many_runs_shows_the_best_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    for i in 0..60 {
        let run = live_run(&runs, &format!("sweep{i:02}"));
        // Run i's best val_accuracy: 0.5 + i/200, so sweep59 is the best.
        let line = epoch_line(1).replace("0.61", &format!("{}", 0.5 + i as f64 / 200.0));
        std::fs::write(run.join("metrics.jsonl"), line).unwrap();
        if i == 59 {
            // Scored on its test set by `evaluate`: the table gets a test column.
            std::fs::write(run.join("test.json"), r#"{"accuracy": 0.9125}"#).unwrap();
        }
    }
    let mut app = App::attached(runs.clone());
    let (tx, rx) = flume::unbounded();
    assert!(tlcap::dashboard::RunsView::default().pass(&runs, &tx));
    for ev in rx.try_iter() {
        update(&mut app, ev);
    }
    assert_eq!(app.entries.len(), 60);
    update(&mut app, key('c'));
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = render(&app, w, h);
        assert!(screen.contains("more runs (best first)"), "{screen}");
        let best = screen.find("sweep59").expect("the best run is shown");
        let next = screen.find("sweep58").expect("the second best too");
        assert!(best < next, "best first:\n{screen}");
        assert!(
            !screen.contains("sweep00 "),
            "the worst is left out:\n{screen}"
        );
        if w >= 100 {
            assert!(
                screen.contains("test") && screen.contains("0.912"),
                "{screen}"
            );
        }
    }
}
