//! The dashboard without a terminal: every key in every run state through the pure
//! `update`, and the screens drawn on ratatui's TestBackend (snapshots in
//! tests/integration/snapshots/, reviewed with `cargo insta review`).

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use tlcap::app::{update, Action, App, AppEvent, FileState, Overlay, RunStatus};
use tlcap::config::parse_str;
use tlcap::model::{LayerInfo, LayerKind};
use tlcap::train::events::{CacheUse, Compute, FrozenPart, StallAction, Suggestion};
use tlcap::train::metrics::Confusion;
use tlcap::train::{Command, EndReason, EpochMetrics, Event, Phase};

/// `bf16 frozen part, features cached (13 MB)`.
fn cached_features() -> Compute {
    Compute {
        precision: Some(tlcap::config::Precision::Bf16),
        frozen: FrozenPart::Features,
        cache: CacheUse::Training { complete: true },
        cache_bytes: 13_000_000,
        from_batch: None,
    }
}

fn experiment(name: &str) -> tlcap::config::Experiment {
    let text = format!(
        "name: {name}\ndata: {{ dir: /data/elpv, image_size: 96 }}\nmodel: {{ backbone: mobilenet_v2 }}\n\
         frozen: {{ epochs: 4 }}\nfinetune: {{ epochs: 4, unfreeze_last: 14 }}\n\
         stall: {{ patience: 2, min_delta: 0.005 }}\n"
    );
    parse_str(&text, &PathBuf::from(format!("/exp/{name}.yaml"))).unwrap()
}

fn metrics(epoch: u32, phase: Phase, acc: f64) -> EpochMetrics {
    EpochMetrics {
        epoch,
        phase,
        loss: 0.7 - acc / 2.0,
        accuracy: acc,
        val_loss: 0.72 - acc / 2.0,
        val_accuracy: acc - 0.01,
        val_precision: Some(0.8),
        val_recall: Some(0.9),
        val_f1: Some(0.85),
        val_auc: Some(0.88),
        val_balanced_accuracy: None,
        val_class_recall: Vec::new(),
        confusion: Confusion::new(2, &[0, 1], &[0, 1]),
        lr: if phase == Phase::Frozen { 1e-3 } else { 1e-5 },
        seconds: 12.0,
        images_per_sec: 200.0,
        val_images_per_sec: 600.0,
        compute: cached_features(),
        input_wait_seconds: 0.0,
        stalled: false,
        suggestion: None,
        mixed: None,
        lr_lowered: None,
        multilabel: None,
        deepened: 0,
    }
}

/// The trainer's event for a run that completed (no best epoch attached).
fn completed() -> Event {
    Event::Finished {
        reason: EndReason::Completed,
        best: None,
        stopped_by: None,
    }
}

/// The trainer's event for the fine-tune phase beginning at `epoch` (14 layers): the
/// 4 fine-tune epochs now count from there.
fn finetune_from(epoch: u32, trainable_params: usize) -> Event {
    Event::PhaseChanged {
        phase: Phase::Finetune,
        epoch,
        trainable_layers: 14,
        trainable_params,
        layers: layers(),
        epochs: epoch - 1 + 4,
        deepened: None,
    }
}

/// The trainer's first event of a run: the frozen phase, `epochs` planned in all.
fn frozen_phase(epochs: u32) -> Event {
    Event::PhaseChanged {
        phase: Phase::Frozen,
        epoch: 1,
        trainable_layers: 0,
        trainable_params: 0,
        layers: layers(),
        epochs,
        deepened: None,
    }
}

fn layers() -> Vec<LayerInfo> {
    (0..6)
        .map(|i| LayerInfo {
            name: format!("features.{}.{}", 16 + i / 2, i % 2),
            kind: if i % 2 == 0 {
                LayerKind::Conv
            } else {
                LayerKind::BatchNorm
            },
            params: if i % 2 == 0 { 153_600 } else { 640 },
            trainable: i >= 2,
        })
        .collect()
}

/// An app with three files: `quickstart` (selected), `mobilenet`, and an invalid one.
fn app() -> App {
    App::new(vec![
        (
            PathBuf::from("/exp/quickstart.yaml"),
            FileState::Valid(Box::new(experiment("quickstart"))),
        ),
        (
            PathBuf::from("/exp/mobilenet.yaml"),
            FileState::Valid(Box::new(experiment("mobilenet"))),
        ),
        (
            PathBuf::from("/exp/broken.yaml"),
            FileState::Invalid {
                errors: vec!["/exp/broken.yaml:3:12: frozen.lr: must be > 0, found -0.001".into()],
                last_good: None,
            },
        ),
    ])
}

fn key(code: KeyCode) -> AppEvent {
    AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn trainer(app: &mut App, event: Event) {
    let id = app.current().unwrap().id;
    update(app, AppEvent::Trainer(id, event));
}

/// Starts the selected experiment and feeds it `epochs` finished epochs.
fn running(epochs: u32) -> App {
    let mut app = app();
    let actions = update(&mut app, key(KeyCode::Char('s')));
    assert!(matches!(actions[..], [Action::Start(0, _)]));
    trainer(
        &mut app,
        Event::DataReady {
            classes: vec!["defective".into(), "functional".into()],
            train: 2099,
            val: 525,
            skipped: 0,
        },
    );
    trainer(
        &mut app,
        Event::ModelReady {
            device: "cpu".into(),
            weights: "ImageNet (mobilenet_v2)".into(),
            layers: layers(),
            precision: tlcap::config::Precision::Bf16,
        },
    );
    trainer(
        &mut app,
        Event::RunDir("runs/quickstart/20261129-120000".into()),
    );
    // As the trainer says its first phase: 4 frozen + 4 fine-tune epochs planned.
    trainer(&mut app, frozen_phase(8));
    trainer(&mut app, Event::Compute(cached_features()));
    for e in 1..=epochs {
        let m = metrics(e, Phase::Frozen, 0.70 + 0.03 * e as f64);
        trainer(&mut app, Event::EpochEnd(m));
    }
    trainer(
        &mut app,
        Event::Batch {
            epoch: epochs + 1,
            batch: 12,
            of: 33,
            loss: 0.4123,
            batch_loss: 0.4123,
            images_per_sec: 231.0,
        },
    );
    app
}

fn stalled() -> App {
    let mut app = running(3);
    trainer(
        &mut app,
        Event::Stalled {
            epoch: 3,
            suggestion: Suggestion {
                monitor: tlcap::config::Monitor::ValAccuracy,
                value: 0.79,
                min_delta: 0.005,
                patience: 2,
                action: StallAction::Unfreeze {
                    layers: 14,
                    lr: 1e-5,
                    automatic: false,
                },
            },
        },
    );
    app
}

fn paused() -> App {
    let mut app = running(2);
    trainer(&mut app, Event::Paused);
    app
}

fn finished() -> App {
    let mut app = running(2);
    trainer(&mut app, completed());
    app
}

fn finetuning() -> App {
    let mut app = running(3);
    // The planned phase change comes between epochs (epoch 3 just ended).
    app.entries[0].run.as_mut().unwrap().epoch = 3;
    trainer(&mut app, finetune_from(4, 1_206_400));
    for e in 4..=6 {
        trainer(
            &mut app,
            Event::EpochEnd(metrics(e, Phase::Finetune, 0.72 + 0.04 * e as f64)),
        );
    }
    app
}

fn invalid() -> App {
    let mut app = app();
    app.selected = 2;
    app
}

/// What a key does in each state: (state, key) -> the actions expected.
#[test]
fn every_key_in_every_state() {
    type MakeState = fn() -> App;
    let states: Vec<(&str, MakeState)> = vec![
        ("idle", app),
        ("running", || running(2)),
        ("paused", paused),
        ("stalled", stalled),
        ("finished", finished),
        ("invalid", invalid),
    ];
    for (state, make) in &states {
        let id = make().current().unwrap().id;
        let active = matches!(*state, "running" | "paused" | "stalled");
        // s: start unless already running; an invalid file cannot start.
        let mut a = make();
        let actions = update(&mut a, key(KeyCode::Char('s')));
        match *state {
            "idle" | "finished" => assert!(
                matches!(actions[..], [Action::Start(i, _)] if i == id),
                "{state}"
            ),
            _ => assert!(actions.is_empty(), "{state}: s"),
        }
        // p and Enter: pause / resume.
        for k in [KeyCode::Char('p'), KeyCode::Enter] {
            let mut a = make();
            let actions = update(&mut a, key(k));
            let expected = match *state {
                "running" | "stalled" => vec![Action::Send(id, Command::Pause)],
                "paused" => vec![Action::Send(id, Command::Resume)],
                _ if k == KeyCode::Enter && *state != "invalid" => {
                    assert!(
                        matches!(actions[..], [Action::Start(..)]),
                        "{state}: Enter starts"
                    );
                    continue;
                }
                _ => vec![],
            };
            assert_eq!(actions, expected, "{state}: {k:?}");
        }
        // u: unfreeze an active frozen-phase run; a stall banner goes away.
        let mut a = make();
        let actions = update(&mut a, key(KeyCode::Char('u')));
        if active {
            assert_eq!(
                actions,
                vec![Action::Send(id, Command::Unfreeze)],
                "{state}: u"
            );
            assert!(a.current().unwrap().run.as_ref().unwrap().stall.is_none());
        } else {
            assert!(actions.is_empty(), "{state}: u");
            assert!(
                !a.messages.is_empty(),
                "{state}: u explains why nothing happened"
            );
        }
        // x: stop an active run.
        let mut a = make();
        let actions = update(&mut a, key(KeyCode::Char('x')));
        let expected = if active {
            vec![Action::Send(id, Command::STOP)]
        } else {
            vec![]
        };
        assert_eq!(actions, expected, "{state}: x");
        // q: quits at once unless a run is going, then asks; y confirms and stops runs.
        let mut a = make();
        update(&mut a, key(KeyCode::Char('q')));
        if active {
            assert_eq!(
                (a.quit, a.overlay),
                (false, Overlay::ConfirmQuit),
                "{state}: q"
            );
            let mut b = a.clone();
            update(&mut b, key(KeyCode::Char('n')));
            assert_eq!((b.quit, b.overlay), (false, Overlay::None));
            let actions = update(&mut a, key(KeyCode::Char('y')));
            assert!(a.quit);
            assert_eq!(actions, vec![Action::Send(id, Command::STOP)]);
        } else {
            assert!(a.quit, "{state}: q");
        }
        // Ctrl-C behaves like q.
        let mut a = make();
        update(
            &mut a,
            AppEvent::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        );
        assert_eq!(a.quit, !active, "{state}: ctrl-c");
        // ? opens help; any key closes it without acting.
        let mut a = make();
        update(&mut a, key(KeyCode::Char('?')));
        assert_eq!(a.overlay, Overlay::Help);
        assert!(update(&mut a, key(KeyCode::Char('x'))).is_empty());
        assert_eq!(a.overlay, Overlay::None);
        // Esc closes pop-ups.
        let mut a = make();
        update(&mut a, key(KeyCode::Char('?')));
        update(&mut a, key(KeyCode::Esc));
        assert_eq!(a.overlay, Overlay::None);
        // Navigation wraps; Tab and j/Down go down, k/Up go up.
        for (k, step) in [
            (KeyCode::Down, 1),
            (KeyCode::Char('j'), 1),
            (KeyCode::Tab, 1),
            (KeyCode::Up, 2),
            (KeyCode::Char('k'), 2),
        ] {
            let mut a = make();
            let before = a.selected;
            update(&mut a, key(k));
            assert_eq!(a.selected, (before + step) % 3, "{state}: {k:?}");
        }
        // PgUp / PgDn scroll the epoch table.
        let mut a = make();
        let rows = a
            .current()
            .unwrap()
            .run
            .as_ref()
            .map_or(0, |r| r.epochs.len());
        update(&mut a, key(KeyCode::PageUp));
        assert_eq!(
            a.table_scroll,
            5.min(rows.saturating_sub(1)),
            "{state}: PgUp"
        );
        update(&mut a, key(KeyCode::PageDown));
        assert_eq!(a.table_scroll, 0);
        // m, t toggle panes; e asks for the editor on the selected file.
        let mut a = make();
        update(&mut a, key(KeyCode::Char('m')));
        update(&mut a, key(KeyCode::Char('t')));
        assert!(a.show_model && a.smoothing);
        // Esc closes the model pane as it closes the other pop-ups.
        let mut closed = a.clone();
        update(&mut closed, key(KeyCode::Esc));
        assert!(!closed.show_model && closed.smoothing);
        let path = a.current().unwrap().path.clone();
        assert_eq!(
            update(&mut a, key(KeyCode::Char('e'))),
            vec![Action::Edit(path)]
        );
    }
}

#[test]
fn every_key_shown_is_handled_and_listed() {
    let listed: Vec<&str> = tlcap::app::KEYS.iter().map(|k| k.keys).collect();
    for k in [
        "s", "p", "u", "x", "q", "?", "m", "t", "e", "v", "l", "Tab", "Enter", "Esc",
    ] {
        assert!(
            listed.iter().any(|l| l.contains(k)),
            "{k} missing from help"
        );
    }
    // The footer is built from the same table, so it cannot name a key help lacks.
    assert_eq!(
        tlcap::app::footer_text(usize::MAX),
        "s start  p pause  u unfreeze  x stop  r lower lr  a shootout  v errors  c compare  m model  l log  ? help  q quit"
    );
    // Where the line is short, the least needed keys go; help and quit always stay.
    for width in [60, 80] {
        let footer = tlcap::app::footer_text(width);
        assert!(footer.chars().count() <= width, "{footer}");
        for needed in [
            "s start",
            "p pause",
            "u unfreeze",
            "x stop",
            "? help",
            "q quit",
        ] {
            assert!(footer.contains(needed), "{width}: {footer}");
        }
    }
}

#[test]
fn trainer_events_drive_the_run_view() {
    let app = finetuning();
    let run = app.current().unwrap().run.as_ref().unwrap();
    assert_eq!(run.phase, Phase::Finetune);
    assert_eq!(run.phase_marks, vec![(4, Phase::Finetune)]);
    assert_eq!(run.epochs.len(), 6);
    assert_eq!(run.best(), Some(5));
    assert_eq!(
        tlcap::text::compute(run.compute.as_ref().unwrap()),
        "bf16 frozen part, features cached (13 MB)"
    );
    assert!(render(&app, 140, 40).contains("bf16 frozen part, features cached (13 MB)"));
    assert_eq!(app.current().unwrap().state_label(), "running");
    assert_eq!(stalled().current().unwrap().state_label(), "stalled");
    let mut failed = running(1);
    trainer(&mut failed, Event::Error("out of memory".into()));
    assert!(matches!(
        failed.current().unwrap().run.as_ref().unwrap().status,
        RunStatus::Failed(_)
    ));
    assert!(failed
        .messages
        .last()
        .unwrap()
        .text
        .contains("out of memory"));
}

#[test]
fn edits_apply_live_keep_last_good_settings_and_flag_restarts() {
    let mut app = running(2);
    let path = app.current().unwrap().path.clone();
    // A broken save: the error is shown, the settings stay, nothing is sent.
    let broken = FileState::Invalid {
        errors: vec![format!("{}:5:9: bad", path.display())],
        last_good: None,
    };
    assert!(update(&mut app, AppEvent::FileLoaded(path.clone(), broken)).is_empty());
    assert_eq!(app.current().unwrap().state_label(), "running");
    assert!(
        app.current().unwrap().settings().is_some(),
        "last good settings kept"
    );
    assert!(app.messages.iter().any(|m| m.text.contains(":5:9:")));
    // A fixed save with a live change (more epochs) and a restart-only one (seed).
    let mut edited = experiment("quickstart");
    edited.frozen.epochs = 6;
    edited.seed = 7;
    let actions = update(
        &mut app,
        AppEvent::FileLoaded(path.clone(), FileState::Valid(Box::new(edited))),
    );
    assert!(matches!(&actions[..],
        [Action::DescribeData(p, _), Action::Send(0, Command::Apply(e))]
            if e.frozen.epochs == 6 && p == &path));
    let entry = app.current().unwrap();
    assert_eq!(entry.pending_restart, vec!["seed 42 -> 7".to_string()]);
    // ... and the run header says so, next to the run it concerns.
    assert!(render(&app, 100, 30).contains("on next start: seed 42 -> 7"));
    // A new file appears in the list.
    update(
        &mut app,
        AppEvent::FileLoaded(
            "/exp/new.yaml".into(),
            FileState::Valid(Box::new(experiment("new"))),
        ),
    );
    assert!(app.entries.iter().any(|e| e.name() == "new"));
    assert_eq!(
        app.current().unwrap().path,
        path,
        "selection stays on its file"
    );
    // Deleting a running experiment's file keeps the run.
    update(&mut app, AppEvent::FileRemoved(path.clone()));
    assert!(app.current().unwrap().deleted);
}

#[test]
fn the_idle_pane_says_when_train_and_val_folders_fix_the_split() {
    let mut app = app();
    // At launch the loop looks at every valid file's data folder (not a label file's).
    let startup = app.startup_actions();
    assert_eq!(startup.len(), 2, "{startup:?}");
    assert!(startup
        .iter()
        .all(|a| matches!(a, Action::DescribeData(_, dir) if dir.ends_with("elpv"))));
    assert!(render(&app, 100, 30).contains("batch 32, validation 20%"));
    // The effect answers from the real folder: train/ and val/ there.
    let data = tempfile::tempdir().unwrap();
    for side in ["train", "val"] {
        std::fs::create_dir_all(data.path().join(side).join("a")).unwrap();
    }
    let folder = tlcap::data::fixed_validation_folder(data.path());
    assert_eq!(folder.as_deref(), Some("val"));
    let path = app.current().unwrap().path.clone();
    let dir = app.current().unwrap().settings().unwrap().data.dir.clone();
    // An answer about another folder (the file was edited meanwhile) changes nothing.
    update(
        &mut app,
        AppEvent::DataLayout(path.clone(), "/elsewhere".into(), folder.clone()),
    );
    assert!(render(&app, 100, 30).contains("validation 20%"));
    update(
        &mut app,
        AppEvent::DataLayout(path.clone(), dir.clone(), folder.clone()),
    );
    let screen = render(&app, 100, 30);
    assert!(
        screen.contains("batch 32, validation: its val/ folder"),
        "{screen}"
    );
    assert!(!screen.contains("validation 20%"));
    // A saved file is looked at again; a plain folder of classes draws the split.
    let actions = update(
        &mut app,
        AppEvent::FileLoaded(
            path.clone(),
            FileState::Valid(Box::new(experiment("quickstart"))),
        ),
    );
    assert!(matches!(&actions[..], [Action::DescribeData(p, _)] if p == &path));
    std::fs::create_dir_all(data.path().join("extra")).unwrap();
    assert_eq!(tlcap::data::fixed_validation_folder(data.path()), None);
    update(
        &mut app,
        AppEvent::DataLayout(path.clone(), dir.clone(), None),
    );
    assert!(render(&app, 100, 30).contains("validation 20%"));
    // Switching the file to a label file forgets the folder's answer at once.
    update(&mut app, AppEvent::DataLayout(path.clone(), dir, folder));
    let mut labelled = experiment("quickstart");
    labelled.data.labels = Some("/data/labels.csv".into());
    let actions = update(
        &mut app,
        AppEvent::FileLoaded(path, FileState::Valid(Box::new(labelled))),
    );
    assert!(actions.is_empty(), "{actions:?}");
    let screen = render(&app, 100, 30);
    assert!(
        screen.contains("validation 20%") && !screen.contains("val/ folder"),
        "{screen}"
    );
}

fn render(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| tlcap::ui::draw(f, app)).unwrap();
    terminal.backend().to_string()
}

#[test]
fn screens() {
    insta::assert_snapshot!("idle_list_100x30", render(&app(), 100, 30));
    insta::assert_snapshot!("running_100x30", render(&running(3), 100, 30));
    insta::assert_snapshot!("running_80x24", render(&running(3), 80, 24));
    insta::assert_snapshot!("stall_banner_100x30", render(&stalled(), 100, 30));
    insta::assert_snapshot!(
        "finetune_phase_marker_140x40",
        render(&finetuning(), 140, 40)
    );
    insta::assert_snapshot!("invalid_config_80x24", render(&invalid(), 80, 24));
    let mut help = running(3);
    update(&mut help, key(KeyCode::Char('?')));
    insta::assert_snapshot!("help_80x24", render(&help, 80, 24));
    let mut model = finetuning();
    update(&mut model, key(KeyCode::Char('m')));
    insta::assert_snapshot!("model_pane_100x30", render(&model, 100, 30));
    let mut quit = running(3);
    update(&mut quit, key(KeyCode::Char('q')));
    insta::assert_snapshot!("confirm_quit_80x24", render(&quit, 80, 24));
    insta::assert_snapshot!("too_small_40x10", render(&running(3), 40, 10));
    // The smallest terminal drawn: the last epochs still show while running, and an
    // idle experiment says how to start it first.
    insta::assert_snapshot!("running_60x16", render(&running(6), 60, 16));
    insta::assert_snapshot!("idle_60x16", render(&app(), 60, 16));
    insta::assert_snapshot!("stall_banner_80x24", render(&stalled(), 80, 24));
    // The model pane scrolls by itself, the selection stays.
    let mut scrolled = finetuning();
    update(&mut scrolled, key(KeyCode::Char('m')));
    update(&mut scrolled, key(KeyCode::Up));
    update(&mut scrolled, key(KeyCode::Up));
    assert_eq!(scrolled.selected, 0);
    insta::assert_snapshot!("model_pane_scrolled_80x24", render(&scrolled, 80, 24));
    update(&mut scrolled, key(KeyCode::Home));
    insta::assert_snapshot!("model_pane_top_60x16", render(&scrolled, 60, 16));
    // A stopped run: the list and the header say the same word.
    let mut stopped = running(2);
    trainer(
        &mut stopped,
        Event::Finished {
            reason: EndReason::Stopped,
            best: None,
            stopped_by: None,
        },
    );
    let screen = render(&stopped, 80, 24);
    assert!(!screen.contains("done"), "{screen}");
    insta::assert_snapshot!("stopped_80x24", screen);
}

#[test]
fn every_size_renders_without_panicking() {
    let states = [app(), running(3), stalled(), finetuning(), invalid()];
    for w in (1..=200).step_by(13) {
        for h in (1..=60).step_by(7) {
            for s in &states {
                render(s, w, h);
            }
        }
    }
}

#[test]
fn shootout_queue_runs_one_after_another_and_exports() {
    let mut app = app();
    // Nothing marked: every valid file (quickstart, mobilenet), not the broken one.
    let actions = update(&mut app, key(KeyCode::Char('a')));
    assert!(matches!(actions[..], [Action::Start(0, _)]), "{actions:?}");
    assert_eq!(app.queue.iter().copied().collect::<Vec<_>>(), vec![1]);
    assert!(app.show_compare);
    let finish = |app: &mut App, id: u64, dir: &str| {
        update(app, AppEvent::Trainer(id, Event::RunDir(dir.into())));
        update(
            app,
            AppEvent::Trainer(id, Event::EpochEnd(metrics(1, Phase::Frozen, 0.8))),
        );
        update(app, AppEvent::Trainer(id, completed()))
    };
    let actions = finish(&mut app, 0, "runs/quickstart/1");
    assert!(matches!(actions[..], [Action::Start(1, _)]), "{actions:?}");
    let actions = finish(&mut app, 1, "runs/mobilenet/1");
    assert_eq!(
        actions,
        vec![Action::ExportShootout(vec![
            "runs/quickstart/1".into(),
            "runs/mobilenet/1".into()
        ])]
    );
    insta::assert_snapshot!("compare_view_100x30", render(&app, 100, 30));

    // Marked ones only; the mark shows in the list.
    let mut app = tlcap_app_with_mark();
    let actions = update(&mut app, key(KeyCode::Char('a')));
    assert!(matches!(actions[..], [Action::Start(1, _)]), "{actions:?}");
    assert!(app.queue.is_empty());
    // While a run is going, `a` queues without starting.
    let mut app = running(1);
    update(&mut app, key(KeyCode::Down));
    let actions = update(&mut app, key(KeyCode::Char('a')));
    assert!(actions.is_empty());
    assert_eq!(app.queue.iter().copied().collect::<Vec<_>>(), vec![1]);
}

/// Runs of one experiment over seeds (`name-seedN`, as `shootout --seeds` names them)
/// get a summary in the compare view: the mean and standard deviation of each best.
#[test]
fn compare_view_summarises_runs_over_seeds() {
    let mut app = App::new(
        [1, 2, 3]
            .iter()
            .map(|s| {
                let name = format!("recipe-seed{s}");
                (
                    PathBuf::from(format!("/exp/{name}.yaml")),
                    FileState::Valid(Box::new(experiment(&name))),
                )
            })
            .collect(),
    );
    update(&mut app, key(KeyCode::Char('a')));
    // Frozen bests 0.79 / 0.80 / 0.84 (val_accuracy is acc - 0.01), fine-tuned 0.80 /
    // 0.82 / 0.84 (the best of each run).
    for (id, (frozen, tuned)) in [(0.80, 0.81), (0.81, 0.83), (0.85, 0.85)]
        .iter()
        .enumerate()
    {
        let id = id as u64;
        update(
            &mut app,
            AppEvent::Trainer(id, Event::RunDir(format!("runs/{id}").into())),
        );
        update(&mut app, AppEvent::Trainer(id, frozen_phase(8)));
        update(
            &mut app,
            AppEvent::Trainer(id, Event::EpochEnd(metrics(1, Phase::Frozen, *frozen))),
        );
        update(&mut app, AppEvent::Trainer(id, finetune_from(2, 1000)));
        update(
            &mut app,
            AppEvent::Trainer(id, Event::EpochEnd(metrics(2, Phase::Finetune, *tuned))),
        );
        update(&mut app, AppEvent::Trainer(id, completed()));
    }
    assert!(app.show_compare);
    let screen = render(&app, 80, 24);
    assert!(
        screen.contains("Σ recipe ") && screen.contains("3 seeds ± sd"),
        "{screen}"
    );
    // Frozen bests: mean 0.810, sd 0.026; fine-tuned and overall: mean 0.820, sd 0.020.
    for figure in ["0.810", "±0.026", "0.820", "±0.020"] {
        assert!(screen.contains(figure), "{figure} missing:\n{screen}");
    }
    insta::assert_snapshot!("compare_seeds_80x24", screen);
}

fn tlcap_app_with_mark() -> App {
    let mut app = app();
    update(&mut app, key(KeyCode::Down));
    update(&mut app, key(KeyCode::Char(' ')));
    assert!(app.entries[1].marked);
    app
}

#[test]
fn review_edge_cases() {
    // Quitting during a shootout starts nothing more.
    let mut app = self::app();
    update(&mut app, key(KeyCode::Char('a')));
    update(&mut app, key(KeyCode::Char('q')));
    let actions = update(&mut app, key(KeyCode::Char('y')));
    assert_eq!(actions, vec![Action::Send(0, Command::STOP)]);
    assert!(app.queue.is_empty() && app.shootout.is_empty());
    let after = update(
        &mut app,
        AppEvent::Trainer(
            0,
            Event::Finished {
                reason: EndReason::Stopped,
                best: None,
                stopped_by: None,
            },
        ),
    );
    assert!(after.is_empty(), "{after:?}");
    // Starting a queued entry by hand takes it out of the queue.
    let mut app = self::app();
    update(&mut app, key(KeyCode::Char('a')));
    update(&mut app, key(KeyCode::Down));
    assert!(matches!(
        update(&mut app, key(KeyCode::Char('s')))[..],
        [Action::Start(1, _)]
    ));
    assert!(app.queue.is_empty());
    // Removing a file above the selection keeps the selection on its file.
    let mut app = self::app();
    update(&mut app, key(KeyCode::Down));
    update(
        &mut app,
        AppEvent::FileRemoved("/exp/quickstart.yaml".into()),
    );
    assert_eq!(app.current().unwrap().name(), "mobilenet");
    // PgUp stops at the first row; a NaN epoch is never the best.
    let mut app = running(2);
    for _ in 0..5 {
        update(&mut app, key(KeyCode::PageUp));
    }
    assert_eq!(app.table_scroll, 1);
    trainer(
        &mut app,
        Event::EpochEnd(metrics(3, Phase::Frozen, f64::NAN)),
    );
    assert_eq!(app.current().unwrap().run.as_ref().unwrap().best(), Some(1));
    // An early unfreeze recounts the epochs: 3 done + 4 fine-tune.
    trainer(&mut app, finetune_from(4, 1));
    assert_eq!(app.current().unwrap().run.as_ref().unwrap().total_epochs, 7);
}

/// The end of a run is said with its result and its folder.
#[test]
fn the_end_of_a_run_says_its_result() {
    let mut app = running(2);
    trainer(
        &mut app,
        Event::Finished {
            reason: EndReason::Completed,
            best: Some(metrics(2, Phase::Finetune, 0.8267)),
            stopped_by: None,
        },
    );
    let last = &app.messages.last().unwrap().text;
    assert!(
        last.contains("quickstart: completed: best epoch 2 (finetune) val_acc 0.8")
            && last.ends_with(" · runs/quickstart/20261129-120000"),
        "{last}"
    );
    // No stall banner asks for a key that can no longer act.
    let mut stalled_then_done = stalled();
    trainer(&mut stalled_then_done, completed());
    assert!(!render(&stalled_then_done, 100, 30).contains("press u"));
    // The gauge says it too, after the message has scrolled away.
    let screen = render(&app, 80, 24);
    assert!(
        screen.contains("completed: best epoch 2 (frozen) val_accuracy 0.7500"),
        "{screen}"
    );
}

/// A message said twice in a row is posted once, with its count.
#[test]
fn repeated_messages_are_counted_not_repeated() {
    let mut app = app();
    update(
        &mut app,
        AppEvent::Info("file watcher: events were lost".into()),
    );
    update(
        &mut app,
        AppEvent::Info("file watcher: events were lost".into()),
    );
    update(&mut app, AppEvent::Info("something else".into()));
    let texts: Vec<(&str, u32)> = app
        .messages
        .iter()
        .map(|m| (m.text.as_str(), m.repeats))
        .collect();
    assert_eq!(
        texts,
        [("file watcher: events were lost", 2), ("something else", 1)]
    );
    assert!(render(&app, 100, 30).contains("file watcher: events were lost (x2)"));
}

/// On a narrow terminal the compute text is cut, never drawn over the run's name.
#[test]
fn the_compute_text_never_covers_the_run_name() {
    // The chart legends fit too, with the phase marker named.
    let screen = render(&finetuning(), 80, 24);
    assert!(screen.contains("acc ⣿train •val |phase"), "{screen}");
    let app = running(3);
    for width in [60, 70, 80] {
        let screen = render(&app, width, 24);
        let top = screen.lines().next().unwrap();
        assert!(top.contains(" quickstart "), "{width}: {top}");
    }
}

/// A stall and the automatic unfreeze after it reach the user while a broken save is
/// on screen, however often the broken file is read again.
#[test]
fn trainer_news_is_seen_while_a_broken_save_is_on_screen() {
    let mut app = running(3);
    let path = app.current().unwrap().path.clone();
    let broken = || FileState::Invalid {
        errors: vec![format!("{}:5:9: frozen.lr: must be > 0", path.display())],
        last_good: None,
    };
    update(&mut app, AppEvent::FileLoaded(path.clone(), broken()));
    // The stall fires as epoch 3 ends; the unfreeze comes before epoch 4.
    app.entries[0].run.as_mut().unwrap().epoch = 3;
    let suggestion = Suggestion {
        monitor: tlcap::config::Monitor::ValAccuracy,
        value: 0.79,
        min_delta: 0.005,
        patience: 2,
        action: StallAction::Unfreeze {
            layers: 14,
            lr: 1e-5,
            automatic: true,
        },
    };
    trainer(
        &mut app,
        Event::Stalled {
            epoch: 3,
            suggestion,
        },
    );
    trainer(&mut app, finetune_from(4, 1));
    // The watcher reads the broken file again (a second save, an editor's touch).
    for _ in 0..10 {
        update(&mut app, AppEvent::FileLoaded(path.clone(), broken()));
    }
    let errors = app
        .messages
        .iter()
        .filter(|m| m.text.contains(":5:9:"))
        .count();
    assert_eq!(errors, 1, "{:?}", app.messages);
    let screen = render(&app, 80, 24);
    assert!(screen.contains("stalled"), "{screen}");
    assert!(screen.contains("fine-tuning 14 layers"), "{screen}");
}

/// A message said again later is moved to the end with its count, not posted twice.
#[test]
fn each_distinct_message_is_posted_once() {
    let mut app = app();
    for text in ["a", "b", "a"] {
        update(&mut app, AppEvent::Info(text.into()));
    }
    let texts: Vec<(&str, u32)> = app
        .messages
        .iter()
        .map(|m| (m.text.as_str(), m.repeats))
        .collect();
    assert_eq!(texts, [("b", 1), ("a", 2)]);
}

/// A live edit is acknowledged at once; a restart-only edit shows on the header until
/// it is undone, and undoing it says nothing is pending instead of a new "pending".
#[test]
fn edits_are_acknowledged_and_undoing_a_restart_edit_clears_it() {
    let mut app = running(3);
    let path = app.current().unwrap().path.clone();
    let mut lr = experiment("quickstart");
    lr.frozen.lr = 5e-4;
    let actions = update(
        &mut app,
        AppEvent::FileLoaded(path.clone(), FileState::Valid(Box::new(lr.clone()))),
    );
    assert!(matches!(
        &actions[..],
        [Action::DescribeData(..), Action::Send(..)]
    ));
    let last = &app.messages.last().unwrap().text;
    assert_eq!(
        last, "quickstart: seen: frozen.lr 1e-3 -> 5e-4; sent to the run",
        "{last}"
    );
    // The epoch it applies from is the trainer's word, and the confirmation names it.
    trainer(&mut app, Event::EditQueued { epoch: 5 });
    let last = &app.messages.last().unwrap().text;
    assert_eq!(
        last,
        "quickstart: the trainer took the edit; it applies from epoch 5"
    );
    let mut seeded = lr.clone();
    seeded.seed = 7;
    update(
        &mut app,
        AppEvent::FileLoaded(path.clone(), FileState::Valid(Box::new(seeded.clone()))),
    );
    // Read again unchanged: still pending, still on the header.
    update(
        &mut app,
        AppEvent::FileLoaded(path.clone(), FileState::Valid(Box::new(seeded))),
    );
    assert_eq!(app.current().unwrap().pending_restart, ["seed 42 -> 7"]);
    assert!(render(&app, 80, 24).contains("on next start: seed 42 -> 7"));
    let before = app.messages.len();
    update(
        &mut app,
        AppEvent::FileLoaded(path.clone(), FileState::Valid(Box::new(lr))),
    );
    assert!(app.current().unwrap().pending_restart.is_empty());
    let new: Vec<&str> = app.messages[before.min(app.messages.len())..]
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(
        new,
        ["quickstart: nothing waits for a restart any more"],
        "{:?}",
        app.messages
    );
    assert!(!render(&app, 80, 24).contains("on next start"));
}

/// Help wraps and scrolls instead of cutting: at 80x24 and 60x16 every key and the
/// end of every description can be read by scrolling with ↓.
#[test]
fn help_fits_every_terminal_by_wrapping_and_scrolling() {
    for (w, h) in [(60, 16), (80, 24)] {
        let mut app = running(3);
        update(&mut app, key(KeyCode::Char('?')));
        let mut seen = String::new();
        for _ in 0..tlcap::app::KEYS.len() {
            seen.push_str(&render(&app, w, h));
            update(&mut app, key(KeyCode::Down));
            assert_eq!(app.overlay, Overlay::Help, "↓ scrolls, it does not close");
        }
        for k in tlcap::app::KEYS {
            let last_word = k.what.split_whitespace().last().unwrap();
            assert!(seen.contains(last_word), "{w}x{h}: `{}` cut", k.what);
        }
        update(&mut app, key(KeyCode::Char('x')));
        assert_eq!(app.overlay, Overlay::None, "another key closes help");
    }
}

/// The messages pane wraps long lines and grows with the terminal; `l` opens every
/// message, scrollable.
#[test]
fn messages_wrap_grow_and_scroll_in_the_log() {
    let mut app = running(3);
    let long = format!("{} ENDOFLONGLINE", "a long message ".repeat(12));
    for i in 0..30 {
        update(&mut app, AppEvent::Info(format!("message number {i}")));
    }
    update(&mut app, AppEvent::Info(long));
    let screen = render(&app, 100, 30);
    assert!(
        screen.contains("ENDOFLONGLINE"),
        "wrapped, not cut:\n{screen}"
    );
    let shown = |s: &str| {
        (0..30)
            .filter(|i| s.contains(&format!("message number {i} ")))
            .count()
    };
    let tall = render(&app, 100, 50);
    assert!(
        shown(&tall) > shown(&screen),
        "a taller terminal shows more messages"
    );
    update(&mut app, key(KeyCode::Char('l')));
    assert_eq!(app.overlay, Overlay::Log);
    let log = render(&app, 80, 24);
    assert!(
        log.contains("ENDOFLONGLINE") && log.contains("message number 29"),
        "{log}"
    );
    for _ in 0..30 {
        update(&mut app, key(KeyCode::Up));
    }
    let log = render(&app, 80, 24);
    assert!(log.contains("message number 0 "), "{log}");
    insta::assert_snapshot!("message_log_80x24", log);
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.overlay, Overlay::None);
}

/// The README's key table lists every key the help pop-up lists.
#[test]
fn the_readme_lists_every_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    for k in tlcap::app::KEYS {
        for part in k.keys.split([' ', '/']).filter(|p| !p.is_empty()) {
            assert!(
                table.iter().any(|row| row
                    .split('|')
                    .nth(1)
                    .is_some_and(|c| c.contains(&format!("`{part}`")))),
                "README key table lacks `{part}` ({})",
                k.what
            );
        }
    }
}

/// The ETA shows from the first epoch, and a new phase is not timed at the old
/// phase's pace (cached frozen epochs take milliseconds).
#[test]
fn the_eta_follows_the_pace_of_the_current_phase() {
    let mut app = running(0);
    let run = |app: &App| app.current().unwrap().run.clone().unwrap();
    let eta = run(&app).eta_seconds().expect("an ETA in the first epoch");
    // 2099 images at 231 img/s: ~9 s an epoch, 8 epochs.
    assert!((60.0..80.0).contains(&eta), "{eta}");
    assert!(
        render(&app, 80, 24).contains("ETA 1:"),
        "{}",
        render(&app, 80, 24)
    );
    for e in 1..=4 {
        let mut m = metrics(e, Phase::Frozen, 0.7);
        m.seconds = 0.05;
        trainer(&mut app, Event::EpochEnd(m));
    }
    trainer(&mut app, finetune_from(5, 1));
    assert_eq!(
        run(&app).eta_seconds(),
        None,
        "no pace yet: no ETA, not 0:00"
    );
    assert!(!render(&app, 100, 30).contains("ETA 0:00"));
    trainer(
        &mut app,
        Event::Batch {
            epoch: 5,
            batch: 5,
            of: 33,
            loss: 0.3,
            batch_loss: 0.3,
            images_per_sec: 20.0,
        },
    );
    // ~106 s an epoch at 20 img/s: most of epoch 5 and three more.
    let eta = run(&app).eta_seconds().unwrap();
    assert!((380.0..450.0).contains(&eta), "{eta}");
    // Validation says so on the gauge.
    trainer(
        &mut app,
        Event::Validating {
            epoch: 5,
            done: 120,
            total: 525,
        },
    );
    assert!(render(&app, 80, 24).contains("validating 120/525"));
}

/// Once the cache is complete, epochs take a fraction of the one that filled it: the
/// ETA follows the pace of the cached epochs, not the filling one.
#[test]
fn the_eta_follows_the_pace_of_cached_epochs() {
    let mut app = running(0);
    let run = |app: &App| app.current().unwrap().run.clone().unwrap();
    let filling = Compute {
        cache: CacheUse::Training { complete: false },
        ..cached_features()
    };
    trainer(&mut app, Event::Compute(filling.clone()));
    let mut first = metrics(1, Phase::Frozen, 0.7);
    first.seconds = 60.0;
    first.compute = filling;
    trainer(&mut app, Event::EpochEnd(first));
    trainer(&mut app, Event::Compute(cached_features()));
    trainer(
        &mut app,
        Event::Batch {
            epoch: 2,
            batch: 12,
            of: 33,
            loss: 0.4,
            batch_loss: 0.4,
            images_per_sec: 5000.0,
        },
    );
    // 2099 images at 5000 img/s plus ~1 s of validation: ~1.3 s an epoch, 7 left.
    let eta = run(&app).eta_seconds().unwrap();
    assert!(eta < 15.0, "paced by the filling epoch: {eta}");
    // A finished cached epoch paces the rest from then on.
    let mut second = metrics(2, Phase::Frozen, 0.7);
    second.seconds = 2.0;
    trainer(&mut app, Event::EpochEnd(second));
    let eta = run(&app).eta_seconds().unwrap();
    assert!((11.0..13.0).contains(&eta), "6 epochs of 2 s: {eta}");
}

/// An unfreeze part-way through an epoch: the epoch is labelled mixed, and the new
/// total is explained.
#[test]
fn an_early_unfreeze_labels_the_mixed_epoch_and_explains_the_total() {
    let mut app = running(0);
    assert_eq!(app.current().unwrap().run.as_ref().unwrap().total_epochs, 8);
    trainer(&mut app, finetune_from(1, 1));
    let last = &app.messages.last().unwrap().text;
    assert_eq!(
        last,
        "quickstart: fine-tuning 14 layers from epoch 1, batch 13 (epoch 1 is mixed: \
         batches 1-12 ran frozen); the frozen epochs left are skipped: 4 epochs in all"
    );
    let mut m = metrics(1, Phase::Finetune, 0.7);
    m.mixed = Some(tlcap::train::events::MixedEpoch {
        finetune_from_batch: 13,
        batches: 33,
        frozen_lr: 1e-3,
    });
    trainer(&mut app, Event::EpochEnd(m));
    let screen = render(&app, 100, 30);
    assert!(screen.contains("1*    mixed"), "{screen}");
}

/// A stall suggestion nobody acted on stays up after its phase ended as planned,
/// until Esc.
#[test]
fn an_unanswered_stall_banner_stays_until_dismissed() {
    let mut app = stalled();
    app.entries[0].run.as_mut().unwrap().epoch = 4;
    trainer(&mut app, Event::EpochEnd(metrics(4, Phase::Frozen, 0.7)));
    trainer(&mut app, finetune_from(5, 1));
    let screen = render(&app, 100, 30);
    assert!(screen.contains("ended as planned"), "{screen}");
    update(&mut app, key(KeyCode::Esc));
    assert!(!render(&app, 100, 30).contains("ended as planned"));
}

/// On launch each experiment shows its most recent run from the runs folder: the
/// finished one with its epochs (table, charts, compare view), a killed one as lost.
#[test]
fn launch_shows_each_experiments_last_run() {
    use tlcap::train::run_dir::{RunDir, Summary};
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let quickstart = experiment("quickstart");
    // An older run, then the newest one, finished.
    for (stamp, acc) in [("20261101-100000", 0.6), ("20261129-120000", 0.8)] {
        let mut run = RunDir::create(&runs, &quickstart).unwrap();
        let named = runs.join("quickstart").join(stamp);
        std::fs::rename(&run.path, &named).unwrap();
        run = RunDir::open(&named).unwrap();
        for e in 1..=3 {
            run.append_metrics(&metrics(e, Phase::Frozen, acc + 0.01 * e as f64))
                .unwrap();
        }
        run.write_summary(&Summary {
            experiment: "quickstart".into(),
            backbone: "mobilenet_v2".into(),
            reason: EndReason::Completed,
            epochs: 3,
            phase: Phase::Frozen,
            best: Some(metrics(3, Phase::Frozen, acc + 0.03)),
            parameters: 1,
            trainable_parameters: 1,
            device: "cpu".into(),
            stopped_by: None,
        })
        .unwrap();
    }
    // mobilenet's run was killed after one epoch: no summary, no fresh heartbeat.
    let mut killed = RunDir::create(&runs, &experiment("mobilenet")).unwrap();
    killed
        .append_metrics(&metrics(1, Phase::Frozen, 0.7))
        .unwrap();
    let mut app = app();
    let past = tlcap::dashboard::past_runs(&app, &runs);
    update(&mut app, AppEvent::PastRuns(past));
    let quick = app.entries[0].run.as_ref().expect("quickstart's last run");
    assert_eq!(quick.status, RunStatus::Done(EndReason::Completed));
    assert_eq!(quick.epochs.len(), 3);
    assert!(
        (quick.epochs[2].accuracy - 0.83).abs() < 1e-9,
        "the newest run"
    );
    let mobile = app.entries[1].run.as_ref().expect("mobilenet's last run");
    assert!(
        matches!(mobile.status, RunStatus::Lost { .. }),
        "{:?}",
        mobile.status
    );
    assert!(
        !app.any_active(),
        "past runs are not running: q quits at once"
    );
    assert!(app.entries[2].run.is_none());
    let screen = render(&app, 100, 30);
    assert!(screen.contains("done") && screen.contains("3*"), "{screen}");
    assert!(app
        .messages
        .last()
        .unwrap()
        .text
        .contains("last run of 2 experiment"));
    update(&mut app, key(KeyCode::Char('c')));
    assert!(render(&app, 100, 30).contains("mobilenet"));
}

/// With NO_COLOR nothing is coloured, and every colour cue has a mark or a word:
/// `!` stalled rows and warnings, `*` the best row, the chart legend in its title,
/// the compare view's line markers.
#[test]
fn no_color_draws_without_colour_and_keeps_every_cue() {
    let mut app = stalled();
    trainer(
        &mut app,
        Event::EpochEnd({
            let mut m = metrics(4, Phase::Frozen, 0.5);
            m.stalled = true;
            m
        }),
    );
    update(&mut app, AppEvent::Info("plain".into()));
    app.no_color = true;
    let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    terminal.draw(|f| tlcap::ui::draw(f, &app)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    assert!(
        buffer
            .content
            .iter()
            .all(|c| c.fg == ratatui::style::Color::Reset && c.bg == ratatui::style::Color::Reset),
        "a coloured cell under NO_COLOR"
    );
    let screen = terminal.backend().to_string();
    for cue in ["3*", "4!", "! stalled", "⣿ train • val", "stalled:"] {
        assert!(screen.contains(cue), "{cue} missing:\n{screen}");
    }
    update(&mut app, key(KeyCode::Char('c')));
    let compare = render(&app, 100, 30);
    assert!(compare.contains("⣿ quickstart"), "{compare}");
}

/// The error-analysis view: `v` reads the best epoch's predictions, shows the matrix
/// with row percentages and per-class scores, lists the images worst first, and asks
/// for the selected one's picture; ↑/↓ pick another, ←/→ another epoch's matrix.
#[test]
fn error_analysis_view_shows_matrix_worst_images_and_a_picture() {
    use tlcap::train::predictions::ValPredictions;
    let mut app = running(3);
    let dir = PathBuf::from("runs/quickstart/20261129-120000");
    let actions = update(&mut app, key(KeyCode::Char('v')));
    assert_eq!(actions, vec![Action::LoadPredictions(dir.clone())]);
    let classes = vec!["defective".to_string(), "functional".to_string()];
    let files = vec![
        (PathBuf::from("/data/elpv/defective/cell0001.png"), 0),
        (PathBuf::from("/data/elpv/functional/cell0002.png"), 1),
        (PathBuf::from("/data/elpv/defective/cell0003.png"), 0),
    ];
    // cell0001: right; cell0002: wrong, confident; cell0003: wrong, barely.
    let probs = [0.9, 0.1, 0.95, 0.05, 0.45, 0.55];
    let predictions = ValPredictions::new((3, Phase::Frozen), &classes, files, &probs);
    let actions = update(
        &mut app,
        AppEvent::Predictions(dir.clone(), Ok(Box::new(predictions))),
    );
    let worst = PathBuf::from("/data/elpv/functional/cell0002.png");
    assert_eq!(actions, vec![Action::LoadPreview(worst.clone())]);
    let picture = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(48, 48, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 5) as u8, 128])
    }));
    update(&mut app, AppEvent::Preview(worst, Ok(Box::new(picture))));
    let small = render(&app, 80, 24);
    for needle in [
        "true \\ pred",
        "epoch 3 (best)",
        "2 of 3 wrong",
        "›✗ functional → defective 0.95 cell0002.png",
        "▄",
    ] {
        assert!(small.contains(needle), "{needle}:\n{small}");
    }
    insta::assert_snapshot!("error_analysis_80x24", small);
    insta::assert_snapshot!("error_analysis_120x40", render(&app, 120, 40));
    // ↓ picks the next image and asks for its picture.
    let actions = update(&mut app, key(KeyCode::Down));
    assert_eq!(
        actions,
        vec![Action::LoadPreview(
            "/data/elpv/defective/cell0003.png".into()
        )]
    );
    // ← shows the last epoch's matrix (here the best too), again: the first one.
    update(&mut app, key(KeyCode::Left));
    update(&mut app, key(KeyCode::Left));
    assert!(render(&app, 80, 24).contains("epoch 2 (←/→)"));
    // A run without per-image predictions says so; v closes the view.
    update(
        &mut app,
        AppEvent::Predictions(dir.clone(), Err("cannot read best-predictions.json".into())),
    );
    assert!(render(&app, 100, 30).contains("no per-image predictions"));
    update(&mut app, key(KeyCode::Char('v')));
    assert!(app.errors.is_none());
    assert!(render(&app, 100, 30).contains("epochs (* best"));
}

/// Multi-label runs: the epoch table adds the mean AUC; the error view shows one row
/// per label (AUC, AP, threshold, P/R/F1, missed and false counts) and the images by
/// their worst label; `f` orders them by one label after another, then by the worst
/// again. Fits 80x24.
#[test]
fn multilabel_error_view_orders_images_by_label() {
    use tlcap::train::metrics::multilabel_scores;
    use tlcap::train::predictions::ValPredictions;
    let mut app = running(2);
    let labels = vec!["crack".to_string(), "dust".to_string()];
    // Three images: a has crack (right), b has both (crack missed), c none (dust said).
    let truth = [1, 0, 1, 1, 0, 0];
    let probs = [0.9, 0.2, 0.3, 0.8, 0.1, 0.7];
    let mut m = metrics(3, Phase::Frozen, 0.8);
    m.multilabel = Some(multilabel_scores(&truth, &probs, &[0.5, 0.5]));
    m.val_auc = m.multilabel.as_ref().unwrap().mean_auc;
    trainer(&mut app, Event::EpochEnd(m));
    let table = render(&app, 80, 24);
    assert!(
        table.contains("v_auc") && table.contains("1.000"),
        "{table}"
    );
    let dir = PathBuf::from("runs/quickstart/20261129-120000");
    update(&mut app, key(KeyCode::Char('v')));
    let files = vec![
        (PathBuf::from("/d/a.png"), vec![0]),
        (PathBuf::from("/d/b.png"), vec![0, 1]),
        (PathBuf::from("/d/c.png"), vec![]),
    ];
    let predictions =
        ValPredictions::new_multilabel((3, Phase::Frozen), &labels, files, &probs, vec![0.5, 0.5]);
    let actions = update(
        &mut app,
        AppEvent::Predictions(dir.clone(), Ok(Box::new(predictions))),
    );
    assert_eq!(actions, vec![Action::LoadPreview("/d/b.png".into())]);
    let small = render(&app, 80, 24);
    for needle in [
        "AUC 1.000 mAP 1.000",
        "label",
        " crack        2     1.00 1.00 0.50 0.67 1     0",
        "2/3 with a wrong label",
        "›✗ b.png missed crack 0.30 · crack+dust",
        " ✗ c.png false dust 0.70 · - → dust",
    ] {
        assert!(small.contains(needle), "{needle}:\n{small}");
    }
    // f: by crack (b's miss first), then by dust (c's false positive first), then back.
    update(
        &mut app,
        AppEvent::Preview("/d/b.png".into(), Err("a test without pictures".into())),
    );
    let actions = update(&mut app, key(KeyCode::Char('f')));
    assert_eq!(actions, Vec::<Action>::new(), "b is shown already");
    let by_crack = render(&app, 120, 40);
    assert!(by_crack.contains("1/3 wrong on crack"), "{by_crack}");
    assert!(by_crack.contains("mean AUC 1.000"), "{by_crack}");
    let actions = update(&mut app, key(KeyCode::Char('f')));
    assert_eq!(actions, vec![Action::LoadPreview("/d/c.png".into())]);
    let by_dust = render(&app, 100, 30);
    assert!(
        by_dust.contains("›✗ c.png false dust 0.70 · - → dust"),
        "{by_dust}"
    );
    assert!(
        by_dust.contains("›dust"),
        "the label in focus is marked:\n{by_dust}"
    );
    update(&mut app, key(KeyCode::Char('f')));
    assert_eq!(app.errors.as_ref().unwrap().label, None);
}

/// A fine-tune stall suggests lowering the rate and names the key; `r` sends it; the
/// trainer's answer is said and clears the suggestion.
#[test]
fn r_lowers_the_learning_rate_when_fine_tuning_stalls() {
    let mut app = finetuning();
    trainer(
        &mut app,
        Event::Stalled {
            epoch: 6,
            suggestion: Suggestion {
                monitor: tlcap::config::Monitor::ValAccuracy,
                value: 0.95,
                min_delta: 0.005,
                patience: 2,
                action: StallAction::StopOrLowerLr { to: 1e-6 },
            },
        },
    );
    let screen = render(&app, 80, 24);
    assert!(screen.contains("press r to lower the rate"), "{screen}");
    assert!(
        screen.contains("r lower lr"),
        "the footer names it:\n{screen}"
    );
    assert_eq!(
        update(&mut app, key(KeyCode::Char('r'))),
        vec![Action::Send(0, Command::LowerLr)]
    );
    trainer(
        &mut app,
        Event::LrLowered {
            from: 1e-5,
            to: 1e-6,
            epoch: 7,
            batch: Some(13),
            by: "r".into(),
        },
    );
    assert_eq!(
        app.messages.last().unwrap().text,
        "quickstart: learning rate 1e-5 -> 1e-6 from batch 13 of epoch 7 (r)"
    );
    assert!(!render(&app, 80, 24).contains("press r"));
}

/// The loss chart shows every recent batch's loss, so a long epoch is not one dot;
/// the history is capped.
#[test]
fn the_loss_chart_shows_recent_batches() {
    let mut app = running(0);
    for b in 1..=33 {
        trainer(
            &mut app,
            Event::Batch {
                epoch: 1,
                batch: b,
                of: 33,
                loss: 0.6,
                batch_loss: 0.9 - 0.01 * b as f64,
                images_per_sec: 200.0,
            },
        );
    }
    let run = app.current().unwrap().run.as_ref().unwrap();
    assert_eq!(run.batch_losses.len(), 34, "the one running() sent, and 33");
    assert_eq!(run.batch_losses.back(), Some(&(1.0, 0.9 - 0.33)));
    let screen = render(&app, 100, 30);
    assert!(screen.contains("loss: ⣿ train • val ▄ batch"), "{screen}");
    assert!(screen.matches('▄').count() > 5, "{screen}");
    for b in 0..3000 {
        trainer(
            &mut app,
            Event::Batch {
                epoch: 2 + b / 33,
                batch: 1 + b as usize % 33,
                of: 33,
                loss: 0.5,
                batch_loss: 0.5,
                images_per_sec: 200.0,
            },
        );
    }
    let run = app.current().unwrap().run.as_ref().unwrap();
    assert_eq!(run.batch_losses.len(), tlcap::app::BATCH_HISTORY);
}

/// A relaunch selects the experiment selected last (the loop keeps it through
/// `RememberSelection`), not the first one of the list.
#[test]
fn the_selection_is_kept_for_the_next_launch() {
    let mut app = app();
    let actions = update(&mut app, key(KeyCode::Down));
    assert_eq!(
        actions,
        vec![Action::RememberSelection(PathBuf::from(
            "/exp/mobilenet.yaml"
        ))]
    );
    // A relaunch: a new app, the kept selection restored.
    let mut again = self::app();
    assert_eq!(again.selected, 0);
    update(
        &mut again,
        AppEvent::Select(PathBuf::from("/exp/mobilenet.yaml")),
    );
    assert_eq!(
        again.current().unwrap().path,
        PathBuf::from("/exp/mobilenet.yaml")
    );
    // A file that is gone leaves the selection alone.
    update(
        &mut again,
        AppEvent::Select(PathBuf::from("/exp/gone.yaml")),
    );
    assert_eq!(again.selected, 1);
    // Kept on disk, per folder, in the runs folder.
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    tlcap::dashboard::selection::write(&runs, dir.path(), &dir.path().join("b.yaml")).unwrap();
    assert_eq!(
        tlcap::dashboard::selection::read(&runs, dir.path()),
        Some(dir.path().join("b.yaml"))
    );
}

/// `m` on an experiment that has not run asks for the layers its file would build and
/// shows them, the ones fine-tuning trains marked; the pane scrolls with the arrows.
#[test]
fn the_model_pane_shows_an_idle_experiments_layers() {
    let mut app = app();
    let actions = update(&mut app, key(KeyCode::Char('m')));
    assert!(
        matches!(&actions[..], [Action::DescribeModel(p, e)]
            if p.as_path() == std::path::Path::new("/exp/quickstart.yaml") && e.finetune.unfreeze_last == 14),
        "{actions:?}"
    );
    let mut built = layers();
    for l in built.iter_mut().skip(2) {
        l.trainable = true;
    }
    update(
        &mut app,
        AppEvent::ModelPreview(PathBuf::from("/exp/quickstart.yaml"), Ok(built)),
    );
    let screen = render(&app, 80, 24);
    assert!(
        screen.contains("model (not started): 6 layers, fine-tuning trains 4"),
        "{screen}"
    );
    // Opening it again asks nothing: the layers are known.
    update(&mut app, key(KeyCode::Esc));
    assert!(update(&mut app, key(KeyCode::Char('m'))).is_empty());
    // Arrows scroll the pane, the selection stays.
    update(&mut app, key(KeyCode::Up));
    assert_eq!((app.selected, app.model_scroll), (0, 1));
    update(&mut app, key(KeyCode::End));
    assert_eq!(app.model_scroll, 0);
    // An invalid file cannot say its model.
    update(&mut app, key(KeyCode::Esc));
    update(&mut app, key(KeyCode::Tab));
    update(&mut app, key(KeyCode::Tab));
    assert!(update(&mut app, key(KeyCode::Char('m'))).is_empty());
    assert!(app
        .messages
        .last()
        .unwrap()
        .text
        .contains("fix the file first"));
}

/// Attached, the footer lists only keys that act there, and `r` on a run that is not
/// running says so without pointing at `s`.
#[test]
fn attached_footers_list_only_keys_that_act() {
    let local = tlcap::app::footer_for(200, false);
    let attached = tlcap::app::footer_for(200, true);
    assert!(
        local.contains("s start") && local.contains("a shootout"),
        "{local}"
    );
    assert!(
        !attached.contains("s start") && !attached.contains("a shootout"),
        "{attached}"
    );
    assert!(
        attached.contains("r lower lr") && attached.contains("p pause"),
        "{attached}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut app = App::attached(dir.path().to_path_buf());
    update(&mut app, key(KeyCode::Char('r')));
    let said = &app.messages.last().unwrap().text;
    assert!(!said.contains("start a run with s"), "{said}");
}

/// The words agree: plurals, `applies`, the stalled mark beside the best mark.
#[test]
fn words_and_marks_agree() {
    let s = Suggestion {
        monitor: tlcap::config::Monitor::ValAccuracy,
        value: 0.8,
        min_delta: 0.005,
        patience: 1,
        action: StallAction::Stopping,
    };
    assert!(tlcap::text::suggestion(&s).contains("for 1 epoch:"));
    let mut app = running(2);
    let path = app.current().unwrap().path.clone();
    let mut seeded = experiment("quickstart");
    seeded.seed = 7;
    update(
        &mut app,
        AppEvent::FileLoaded(path, FileState::Valid(Box::new(seeded))),
    );
    let said: Vec<&str> = app.messages.iter().map(|m| m.text.as_str()).collect();
    assert!(
        said.iter()
            .any(|m| m.contains("seed 42 -> 7 applies on the next start")),
        "{said:?}"
    );
    // A best epoch that is also a stall shows both marks at once.
    let mut m = metrics(3, Phase::Frozen, 0.9);
    m.stalled = true;
    trainer(&mut app, Event::EpochEnd(m));
    let screen = render(&app, 100, 30);
    assert!(screen.contains("3*!"), "{screen}");
}

/// Progressive unfreezing on screen: the stall's banner says to press u for the next
/// block group; the step's phase event answers it, marks the chart, names the group
/// and its depth in the messages and the header, and the epoch table marks the epochs
/// run deeper `ft+N`.
#[test]
fn progressive_unfreezing_shows_the_group_in_banner_header_table_and_messages() {
    let mut app = finetuning();
    // u while fine-tuning asks the trainer for the next block group.
    let id = app.current().unwrap().id;
    let mut asked = app.clone();
    let actions = update(&mut asked, key(KeyCode::Char('u')));
    assert_eq!(actions, vec![Action::Send(id, Command::Unfreeze)]);
    assert!(asked
        .messages
        .last()
        .unwrap()
        .text
        .contains("next block group"));
    app.entries[0].run.as_mut().unwrap().epoch = 6;
    trainer(
        &mut app,
        Event::Stalled {
            epoch: 6,
            suggestion: Suggestion {
                monitor: tlcap::config::Monitor::ValAccuracy,
                value: 0.95,
                min_delta: 0.0,
                patience: 2,
                action: StallAction::UnfreezeMore {
                    group: "layer3".into(),
                    layers: 58,
                    automatic: false,
                },
            },
        },
    );
    let screen = render(&app, 80, 24);
    assert!(
        screen.contains("stalled — press u: unfreeze layer3 too"),
        "{screen}"
    );
    let Event::PhaseChanged {
        trainable_params,
        layers,
        ..
    } = finetune_from(7, 2_000_000)
    else {
        unreachable!()
    };
    trainer(
        &mut app,
        Event::PhaseChanged {
            phase: Phase::Finetune,
            epoch: 7,
            trainable_layers: 58,
            trainable_params,
            layers,
            epochs: 10,
            deepened: Some(tlcap::train::events::Deepened {
                group: "layer3".into(),
                groups: 2,
                of: 5,
                by: "u".into(),
            }),
        },
    );
    let mut deeper = metrics(7, Phase::Finetune, 0.97);
    deeper.deepened = 1;
    trainer(&mut app, Event::EpochEnd(deeper));
    let run = app.entries[0].run.as_ref().unwrap();
    assert!(run.stall.is_none(), "the suggestion is answered");
    assert_eq!(run.phase_marks.last(), Some(&(7, Phase::Finetune)));
    assert!(app.messages.iter().any(|m| m
        .text
        .contains("unfroze layer3 from epoch 7: 58 layers train (2 of 5 block groups; u)")));
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = render(&app, w, h);
        assert!(screen.contains("finetune to layer3"), "{w}x{h}\n{screen}");
        assert!(
            screen
                .lines()
                .any(|l| l.contains("│7* ") && l.contains(" ft+1 ")),
            "{w}x{h}\n{screen}"
        );
    }
}
