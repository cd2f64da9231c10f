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
