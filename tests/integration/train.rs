//! The trainer end to end on generated images: it learns, it is deterministic, every
//! epoch is on disk, a SIGKILLed run resumes, predict agrees with validation, and
//! fine-tuning a real MobileNetV2 changes exactly the unfrozen layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{experiment, make_images, stdout_of_success};
use tch::Tensor;
use tlcap::config::{parse_str, Experiment};
use tlcap::train::run_dir::{read_checkpoint, read_metrics, Split};
use tlcap::train::{self, EndReason, EpochMetrics, Event, Options, Phase, Phases};

/// How an epoch computed, in the dashboard's words.
fn words(m: &EpochMetrics) -> String {
    tlcap::text::compute(&m.compute)
}

const SMALL: &str = "
data: { image_size: 32, batch_size: 16, validation_split: 0.25 }
model: { backbone: small_cnn, dropout: 0.1 }
frozen: { epochs: 8, lr: 3.0e-3 }
finetune: { epochs: 0 }
device: cpu
";

/// Runs to the end; returns every epoch row and how it ended.
pub(crate) fn run_all(
    exp: Experiment,
    options: Options,
) -> (Vec<EpochMetrics>, EndReason, PathBuf) {
    let handle = train::spawn(
        exp,
        Options {
            autostart: true,
            ..options
        },
    );
    let (mut rows, mut end, mut dir) = (Vec::new(), None, None);
    for e in handle.events.iter() {
        match e {
            Event::EpochEnd(m) => rows.push(m),
            Event::RunDir(d) => dir = Some(d),
            Event::Finished { reason, .. } => end = Some(reason),
            Event::Error(e) => panic!("trainer failed: {e}"),
            _ => {}
        }
    }
    handle.join();
    (rows, end.unwrap(), dir.unwrap())
}

/// `data.dir` needs to be nested in the YAML above; merge the two `data:` maps.
pub(crate) fn small(root: &Path, extra: &str) -> Experiment {
    let body = SMALL.replace(
        "data: { image_size: 32,",
        &format!("data: {{ dir: {}, image_size: 32,", root.display()),
    );
    parse_str(&format!("{body}{extra}"), &root.join("exp.yaml")).unwrap()
}

#[test]
fn small_cnn_learns_two_classes_deterministically_and_predict_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 48, 32);
    let runs = dir.path().join("runs");
    let options = Options {
        runs_root: runs.clone(),
        ..Default::default()
    };
    let (rows, end, run) = run_all(small(&data, ""), options.clone());
    assert_eq!(end, EndReason::Completed);
    assert_eq!(rows.len(), 8);
    let best = rows.iter().map(|m| m.val_accuracy).fold(0.0, f64::max);
    assert!(best >= 0.95, "val_accuracy {best}: {rows:#?}");
    let last = rows.last().unwrap();
    assert!(last.val_auc.unwrap() > 0.95 && last.val_f1.is_some());
    assert_eq!(last.confusion.counts.iter().sum::<u64>(), 24);
    assert!(rows
        .iter()
        .all(|m| m.phase == Phase::Frozen && m.lr == 3e-3));

    // Everything is on disk: one metrics line per epoch, checkpoints, summary.
    assert_eq!(read_metrics(&run).unwrap(), rows);
    for f in [
        "config.yaml",
        "split.json",
        "events.log",
        "last.safetensors",
        "best.safetensors",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["reason"], "completed");

    // Same seed, same everything (timings aside).
    let (again, _, _) = run_all(small(&data, ""), options);
    let strip = |m: &EpochMetrics| {
        let mut m = m.clone();
        m.seconds = 0.0;
        m.images_per_sec = 0.0;
        m.val_images_per_sec = 0.0;
        m.input_wait_seconds = 0.0;
        m
    };
    assert_eq!(
        rows.iter().map(strip).collect::<Vec<_>>(),
        again.iter().map(strip).collect::<Vec<_>>()
    );

    predict_agrees_with_the_best_epoch(&run, &rows);
}

/// `predict` with best.safetensors on the validation files gives the best epoch's
/// validation accuracy.
pub(crate) fn predict_agrees_with_the_best_epoch(run: &Path, rows: &[EpochMetrics]) {
    let split: Split =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    let predictor = tlcap::predict::Predictor::load(run).unwrap();
    let files: Vec<PathBuf> = split.val.iter().map(|(p, _)| p.clone()).collect();
    let answers = predictor.predict(&files);
    let right = answers
        .iter()
        .zip(&split.val)
        .filter(|(a, (_, label))| a.as_ref().unwrap().class == *label)
        .count();
    let best_row = rows.iter().fold(&rows[0], |b, m| {
        if m.val_accuracy > b.val_accuracy {
            m
        } else {
            b
        }
    });
    let (_, info) = read_checkpoint(&run.join("best.safetensors")).unwrap();
    assert_eq!(info.epoch, best_row.epoch);
    assert_eq!(right as f64 / files.len() as f64, best_row.val_accuracy);
    // The best epoch's per-image predictions are kept beside it and agree with predict.
    let kept = tlcap::train::predictions::ValPredictions::read(run).unwrap();
    assert_eq!(kept.epoch, best_row.epoch);
    assert_eq!(kept.images.len(), files.len());
    let kept_right = kept.images.iter().filter(|p| p.correct()).count();
    assert_eq!(
        kept_right as f64 / files.len() as f64,
        best_row.val_accuracy
    );
    for (k, a) in kept.images.iter().zip(&answers) {
        let a = a.as_ref().unwrap();
        assert_eq!(k.predicted, a.class, "{}", k.path.display());
    }
}

#[test]
fn small_cnn_learns_three_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right", "top"], 40, 32);
    let options = Options {
        runs_root: dir.path().join("runs"),
        ..Default::default()
    };
    let (rows, _, _) = run_all(small(&data, ""), options);
    let best = rows.iter().map(|m| m.val_accuracy).fold(0.0, f64::max);
    assert!(best >= 0.9, "val_accuracy {best}");
    assert_eq!(rows[0].confusion.n, 3);
    assert!(
        rows[0].val_auc.is_none(),
        "binary scores only for two classes"
    );
}

#[test]
fn stall_unfreezes_by_itself_and_stop_saves_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 16, 32);
    // min_delta 0.5: after the first epoch nothing counts as a gain, so the stall
    // fires after `patience` epochs.
    let mut exp = small(
        &data,
        "stall: { patience: 2, min_delta: 0.5, on_stall: unfreeze }\n",
    );
    exp.frozen.epochs = 6;
    exp.finetune.epochs = 2;
    let (rows, end, _) = run_all(
        exp,
        Options {
            runs_root: dir.path().join("runs"),
            ..Default::default()
        },
    );
    assert_eq!(end, EndReason::Completed);
    let phases: Vec<Phase> = rows.iter().map(|m| m.phase).collect();
    // Epoch 1 sets the baseline, 2 and 3 do not improve: stall at 3, fine-tune from 4.
    assert!(rows[2].stalled, "{rows:#?}");
    assert!(
        tlcap::text::suggestion(rows[2].suggestion.as_ref().unwrap())
            .contains("unfreezing the last")
    );
    assert_eq!(
        phases,
        [
            Phase::Frozen,
            Phase::Frozen,
            Phase::Frozen,
            Phase::Finetune,
            Phase::Finetune
        ]
    );

    // Stop mid-epoch: stopped.safetensors is written, the run ends as stopped.
    let exp = small(&data, "");
    let handle = train::spawn(
        exp,
        Options {
            runs_root: dir.path().join("runs2"),
            ..Default::default()
        },
    );
    handle.commands.send(train::Command::Start).unwrap();
    let mut stopped = None;
    for e in handle.events.iter() {
        match e {
            Event::Batch {
                epoch: 2, batch: 1, ..
            } => handle.commands.send(train::Command::STOP).unwrap(),
            Event::Checkpoint(p) if p.ends_with("stopped.safetensors") => stopped = Some(p),
            Event::Finished { reason, .. } => assert_eq!(reason, EndReason::Stopped),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert!(stopped.unwrap().is_file());
}

/// The `epoch` events a successful `--json` command printed (one object per line).
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout_of_success(out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "epoch")
        .collect()
}

fn tlcap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
}

#[test]
fn sigkill_mid_run_leaves_valid_metrics_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 64, 32);
    let file = dir.path().join("exp.yaml");
    std::fs::write(
        &file,
        format!(
            "data: {{ dir: {}, image_size: 32, batch_size: 8 }}\nmodel: {{ backbone: small_cnn }}\n\
             frozen: {{ epochs: 12, lr: 1.0e-3 }}\nfinetune: {{ epochs: 0 }}\ndevice: cpu\n",
            data.display()
        ),
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let mut child = tlcap()
        .args(["run", "--json", "--runs"])
        .arg(&runs)
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for two finished epochs, then kill without warning.
    let start = Instant::now();
    let run = loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no epochs appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
        let Ok(mut dirs) = std::fs::read_dir(runs.join("exp")) else {
            continue;
        };
        let Some(Ok(d)) = dirs.next() else { continue };
        if read_metrics(&d.path()).map(|m| m.len()).unwrap_or(0) >= 2 {
            break d.path();
        }
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let done = read_metrics(&run).unwrap();
    assert!(done.len() >= 2 && done.len() < 12, "{} epochs", done.len());
    for (i, m) in done.iter().enumerate() {
        assert_eq!(m.epoch as usize, i + 1);
    }
    assert!(text.ends_with('\n'), "every line complete");

    let out = tlcap()
        .args(["resume", "--json"])
        .arg(&run)
        .output()
        .unwrap();
    let printed = json_lines(&out);
    let all = read_metrics(&run).unwrap();
    assert_eq!(all.len(), 12);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(
            m.epoch as usize,
            i + 1,
            "epochs continue without gaps or repeats"
        );
    }
    let first_resumed = printed[0]["epoch"].as_u64().unwrap() as usize;
    assert!(first_resumed >= done.len() && first_resumed <= done.len() + 1);
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
        "stalled",
        "suggestion",
    ] {
        assert!(printed[0].get(key).is_some(), "{key}");
    }
}

#[test]
fn run_command_prints_json_lines_and_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 12, 32);
    let file = dir.path().join("exp.yaml");
    std::fs::write(
        &file,
        format!(
            "data: {{ dir: {}, image_size: 32 }}\nmodel: {{ backbone: small_cnn }}\nfrozen: {{ epochs: 3 }}\ndevice: cpu\n",
            data.display()
        ),
    )
    .unwrap();
    let out = tlcap()
        .args(["run", "--json", "--max-epochs", "2", "--runs"])
        .arg(dir.path().join("runs"))
        .arg(&file)
        .output()
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["epoch"], 2);
    assert_eq!(lines[1]["phase"], "frozen");
    assert!(lines[1]["suggestion"].is_null());
    // ResNet without weights: a clear message, exit 1.
    std::fs::write(
        &file,
        format!(
            "data: {{ dir: {} }}\nmodel: {{ backbone: resnet50 }}\ndevice: cpu\n",
            data.display()
        ),
    )
    .unwrap();
    let out = tlcap().args(["run"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no ImageNet weights for resnet50") && !err.contains("panicked"),
        "{err}"
    );
}

/// Frozen, then fine-tune on the real ImageNet MobileNetV2: the exported model differs
/// from the ImageNet file in exactly the unfrozen layers' weights; every other tensor,
/// and every running statistic (train_bn: false), is bit-identical.
#[test]
fn mobilenet_v2_fine_tune_changes_exactly_the_unfrozen_layers() {
    let imagenet = tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 8, 64);
    let exp = experiment(
        &data,
        "model: { backbone: mobilenet_v2 }\n\
         frozen: { epochs: 1, lr: 1.0e-3 }\n\
         finetune: { epochs: 1, lr: 1.0e-3, unfreeze_last: 6 }\ndevice: cpu\n",
    );
    let mut exp = exp;
    exp.data.image_size = tlcap::config::ImageSize {
        height: 64,
        width: 64,
    };
    exp.data.batch_size = 8;
    let (rows, _, run) = run_all(
        exp,
        Options {
            runs_root: dir.path().join("runs"),
            phases: Phases::Both,
            export_model: true,
            ..Default::default()
        },
    );
    assert_eq!(
        rows.iter().map(|m| m.phase).collect::<Vec<_>>(),
        [Phase::Frozen, Phase::Finetune]
    );
    let base: HashMap<String, Tensor> = tlcap::weights::read_file(&imagenet)
        .unwrap()
        .tensors
        .into_iter()
        .collect();
    let model: HashMap<String, Tensor> = tlcap::weights::read_file(&run.join("model.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .collect();
    // The last 6 layers of MobileNetV2 (tlcap-tui layers mobilenet_v2 --unfreeze-last 6).
    let unfrozen = [
        "features.17.conv.2",
        "features.17.conv.3",
        "features.18.0",
        "features.18.1",
        "features.17.conv.1.0",
        "features.17.conv.1.1",
    ];
    let mut changed = Vec::new();
    for (name, t) in &model {
        if name.starts_with("head.") {
            continue;
        }
        let b = base[name].to_kind(t.kind());
        if !t.equal(&b) {
            changed.push(name.clone());
        }
    }
    changed.sort();
    let mut expected: Vec<String> = unfrozen
        .iter()
        .flat_map(|l| ["weight", "bias"].map(|s| format!("{l}.{s}")))
        .filter(|n| base.contains_key(n))
        .collect();
    expected.sort();
    assert_eq!(changed, expected);
}

/// Pause holds at a batch boundary; Unfreeze while paused switches phase mid-epoch;
/// an edit applies from the next epoch and is recorded in the run folder.
#[test]
fn pause_unfreeze_and_live_edits_take_effect_at_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 24, 32);
    let mut exp = small(&data, "");
    exp.frozen.epochs = 3;
    exp.finetune.epochs = 2;
    let handle = train::spawn(
        exp.clone(),
        Options {
            runs_root: dir.path().join("runs"),
            ..Default::default()
        },
    );
    handle.commands.send(train::Command::Start).unwrap();
    let (mut rows, mut log, mut run) = (Vec::new(), Vec::new(), None);
    let mut validating = Vec::new();
    for e in handle.events.iter() {
        match &e {
            Event::Batch {
                epoch: 1, batch: 1, ..
            } => handle.commands.send(train::Command::Pause).unwrap(),
            Event::Paused => {
                let mut edited = exp.clone();
                edited.finetune.lr = 5e-4;
                edited.seed = 99; // restart-kind: must not change the running seed
                let c = &handle.commands;
                c.send(train::Command::Apply(Box::new(edited))).unwrap();
                c.send(train::Command::Unfreeze).unwrap();
                // Paused time is not training time: epoch 1's seconds leave it out.
                std::thread::sleep(std::time::Duration::from_millis(1500));
                c.send(train::Command::Resume).unwrap();
            }
            Event::Validating { done, total, .. } => validating.push((*done, *total)),
            Event::EpochEnd(m) => rows.push(m.clone()),
            Event::RunDir(d) => run = Some(d.clone()),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
        log.push(format!("{e:?}").chars().take(40).collect::<String>());
    }
    let kinds: Vec<&str> = log
        .iter()
        .map(|l| l.split([' ', '(']).next().unwrap())
        .collect();
    let paused = kinds.iter().position(|k| *k == "Paused").unwrap();
    // While paused: the edit is taken (and says its epoch), the unfreeze happens.
    assert_eq!(kinds[paused + 1], "EditQueued", "{kinds:?}");
    assert_eq!(kinds[paused + 2], "PhaseChanged", "{kinds:?}");
    assert_eq!(kinds[paused + 3], "Resumed");
    let promised = log
        .iter()
        .find(|l| l.starts_with("EditQueued"))
        .expect("the edit was acknowledged");
    // Taken during epoch 1's batches: it applies from epoch 2, as the rows show.
    assert_eq!(promised, "EditQueued { epoch: 2 }");
    // Epoch 1 ended fine-tuning at the old rate; the edit applies from epoch 2.
    let phases: Vec<Phase> = rows.iter().map(|m| m.phase).collect();
    assert_eq!(phases, [Phase::Finetune, Phase::Finetune]);
    assert_eq!(rows[0].lr, exp.finetune.lr);
    assert_eq!(rows[1].lr, 5e-4);
    // Epoch 1 is mixed: its first batches (1, or 2 if the pause landed a batch later)
    // ran frozen at the frozen rate, the rest fine-tuned.
    let mixed = rows[0].mixed.expect("epoch 1 is mixed");
    assert!((2..=3).contains(&mixed.finetune_from_batch), "{mixed:?}");
    assert_eq!(mixed.frozen_lr, exp.frozen.lr);
    assert_eq!(rows[1].mixed, None);
    assert!(
        rows[0].seconds < 1.5,
        "paused time counted: {} s",
        rows[0].seconds
    );
    // Validation says how far it is, ending at every validation image.
    let val_images = rows[0].confusion.counts.iter().sum::<u64>() as usize;
    assert_eq!(validating.last(), Some(&(val_images, val_images)));
    let run = run.unwrap();
    let history = std::fs::read_to_string(run.join("config-history.jsonl")).unwrap();
    assert!(
        history.contains("finetune.lr") && history.contains("\"from_epoch\":2"),
        "{history}"
    );
    let saved = tlcap::train::run_dir::read_config(&run).unwrap();
    assert_eq!((saved.finetune.lr, saved.seed), (5e-4, exp.seed));
}

#[test]
fn shootout_command_runs_each_experiment_and_exports_results() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 12, 32);
    let exps = dir.path().join("exps");
    std::fs::create_dir_all(&exps).unwrap();
    for (name, dropout) in [("one", 0.1), ("two", 0.3)] {
        std::fs::write(
            exps.join(format!("{name}.yaml")),
            format!(
                "data: {{ dir: ../data, image_size: 32 }}\nmodel: {{ backbone: small_cnn, dropout: {dropout} }}\n\
                 frozen: {{ epochs: 2 }}\nfinetune: {{ epochs: 0 }}\ndevice: cpu\n"
            ),
        )
        .unwrap();
    }
    let runs = dir.path().join("runs");
    let out = tlcap()
        .args(["shootout", "--runs"])
        .arg(&runs)
        .arg(&exps)
        .output()
        .unwrap();
    let table = stdout_of_success(&out);
    assert!(
        table.contains("| one | small_cnn |") && table.contains("| two | small_cnn |"),
        "{table}"
    );
    let results = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("shootout-")
        })
        .unwrap();
    let csv = std::fs::read_to_string(results.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(results.join("results.md").is_file());

    // Over seeds: each experiment once per seed, and mean ± sd over them.
    let runs = dir.path().join("runs-seeds");
    let out = tlcap()
        .args(["shootout", "--seeds", "1,2,3", "--runs"])
        .arg(&runs)
        .arg(exps.join("one.yaml"))
        .output()
        .unwrap();
    let text = stdout_of_success(&out);
    for seed in 1..=3 {
        assert!(runs.join(format!("one-seed{seed}")).is_dir(), "{text}");
        let run = std::fs::read_dir(runs.join(format!("one-seed{seed}")))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_eq!(tlcap::train::run_dir::read_config(&run).unwrap().seed, seed);
    }
    assert!(text.contains("over seeds 1, 2, 3"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("| one | 3 |"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" ± ") && line.contains("–"), "{line}");
}

/// MobileNetV2 (ImageNet weights) on 64 px generated images with `augment` and
/// `settings` (YAML lines after `data:`/`model:`).
pub(crate) fn mobilenet_exp(data: &Path, augment: &str, settings: &str) -> Experiment {
    let mut exp = experiment(
        data,
        &format!("model: {{ backbone: mobilenet_v2 }}\ndevice: cpu\n{settings}"),
    );
    exp.data.image_size = tlcap::config::ImageSize {
        height: 64,
        width: 64,
    };
    exp.data.batch_size = 8;
    exp.data.augment = serde_yaml::from_str(augment).unwrap();
    exp
}

/// Runs [`mobilenet_exp`] to the end; returns the epoch rows, the notes and the run
/// folder.
fn mobilenet_run(
    data: &Path,
    runs: &Path,
    augment: &str,
    settings: &str,
) -> (Vec<EpochMetrics>, Vec<String>, PathBuf) {
    let exp = mobilenet_exp(data, augment, settings);
    let handle = train::spawn(
        exp,
        Options {
            runs_root: runs.to_path_buf(),
            autostart: true,
            ..Default::default()
        },
    );
    let (mut rows, mut notes, mut run) = (Vec::new(), Vec::new(), None);
    for e in handle.events.iter() {
        match e {
            Event::EpochEnd(m) => rows.push(m),
            // Said at every start (tests/integration/image_cache.rs checks it).
            Event::Note(n) if n.starts_with("image cache: ") => {}
            Event::Note(n) => notes.push(n),
            Event::RunDir(d) => run = Some(d),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    (rows, notes, run.expect("a run folder"))
}

/// The same figures within float noise: equal accuracies, losses within 1e-4.
fn assert_same_figures(a: &[EpochMetrics], b: &[EpochMetrics]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        assert_eq!((a.epoch, a.phase), (b.epoch, b.phase));
        assert_eq!(a.val_accuracy, b.val_accuracy, "epoch {}", a.epoch);
        assert_eq!(a.accuracy, b.accuracy, "epoch {}", a.epoch);
        for (x, y) in [(a.loss, b.loss), (a.val_loss, b.val_loss)] {
            assert!(
                (x - y).abs() < 1e-4 * y.abs().max(1.0),
                "epoch {}: {x} vs {y}",
                a.epoch
            );
        }
    }
}

/// The frozen-phase feature cache and the fine-tune prefix cache change the speed,
/// not the numbers: the same run with both `off` gives the same metrics, and every
/// row says how it computed.
#[test]
fn feature_and_prefix_caches_give_the_same_metrics() {
    tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 12, 64);
    let run = |cache: &str| {
        mobilenet_run(
            &data,
            &dir.path().join(format!("runs-{cache}")),
            "{}",
            &format!(
                "frozen: {{ epochs: 3, lr: 1.0e-3, feature_cache: {cache} }}\n\
                 finetune: {{ epochs: 2, lr: 1.0e-4, unfreeze_last: 4, prefix_cache: {cache} }}\n\
                 precision: fp32\n"
            ),
        )
    };
    let (cached, notes, _) = run("auto");
    let (plain, plain_notes, _) = run("off");
    assert!(
        notes.is_empty() && plain_notes.is_empty(),
        "{notes:?} {plain_notes:?}"
    );
    let compute: Vec<String> = cached.iter().map(words).collect();
    assert!(
        compute[0].starts_with("fp32 frozen part, features caching"),
        "{compute:?}"
    );
    assert!(
        compute[1].starts_with("fp32 frozen part, features cached"),
        "{compute:?}"
    );
    assert!(
        compute[2].starts_with("fp32 frozen part, features cached"),
        "{compute:?}"
    );
    assert!(
        compute[3].starts_with("fp32 frozen part, prefix up to features.16.conv.3 caching"),
        "{compute:?}"
    );
    assert!(
        compute[4].starts_with("fp32 frozen part, prefix up to features.16.conv.3 cached"),
        "{compute:?}"
    );
    assert!(plain
        .iter()
        .all(|m| words(m) == "fp32 frozen part, no cache"));
    assert_eq!(cached.len(), 5);
    assert_same_figures(&cached, &plain);
}

/// MobileNetV2 with its ImageNet weights in fp32 for two classes (an experiment on
/// generated 64 px images), and seven random 64 px images to run through it.
fn mobilenet_on_seven_images() -> (
    tempfile::TempDir,
    Experiment,
    tlcap::model::classifier::Classifier,
    Tensor,
) {
    tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 2, 64);
    let exp = mobilenet_exp(&data, "{}", "precision: fp32\n");
    let net = tlcap::model::classifier::Classifier::new(&exp, 2, tch::Device::Cpu).unwrap();
    tch::manual_seed(3);
    let pixels = Tensor::rand([7, 3, 64, 64], (tch::Kind::Float, tch::Device::Cpu)) * 255.0;
    (dir, exp, net, pixels)
}

/// How the frozen part runs on a CPU (BatchNorm folded into the convolutions, the
/// batch in passes of a few images) changes the speed, not the output: the same
/// prefix outputs as BatchNorm applied on its own over the whole batch at once, for the
/// whole frozen backbone and for the prefix the fine-tune phase keeps frozen.
#[test]
fn the_frozen_part_in_passes_with_folded_batchnorm_gives_the_same_output() {
    let (_dir, _exp, mut net, pixels) = mobilenet_on_seven_images();
    for phase in ["frozen", "finetune"] {
        if phase == "frozen" {
            net.set_frozen_phase();
        } else {
            net.set_finetune_phase(14, false);
        }
        net.set_precision(Some(tch::Kind::Float));
        let k = net.frozen_segments();
        assert!(k > 0, "{phase}: a frozen prefix");
        net.set_fold_batchnorm(false);
        net.set_pass_pixels(None);
        let plain = net.run_prefix(&pixels, k);
        net.set_fold_batchnorm(true);
        net.set_pass_pixels(Some(3 * 64 * 64));
        assert_eq!(net.images_per_pass(&pixels), 3);
        let fast = net.run_prefix(&pixels, k);
        assert_eq!(plain.size(), fast.size(), "{phase}");
        let err = (&plain - &fast).abs().max().double_value(&[]);
        let scale = plain.abs().max().double_value(&[]);
        eprintln!("{phase}: max abs difference {err:.2e} of {scale:.2e}");
        assert!(
            scale > 0.0 && err <= 1e-4 * scale.max(1.0),
            "{phase}: {err} of {scale}"
        );
    }
    // A pass holds the same bytes in bf16: twice the images.
    net.set_precision(Some(tch::Kind::BFloat16));
    assert_eq!(net.images_per_pass(&pixels), 6);
}

/// How the trainable part runs on a CPU (BatchNorm folded into the convolution's weight
/// inside the graph, channels-last activations, the batch in passes) changes the speed,
/// not the step: the same logits, loss and gradient for every trainable variable as
/// BatchNorm on its own over the whole batch in one contiguous pass, with the same
/// random draws (dropout and drop-connect masks), for the whole network and for its
/// last layers; a BatchNorm that computes batch statistics keeps the batch whole.
#[test]
fn the_trainable_part_in_passes_with_folded_batchnorm_gives_the_same_gradients() {
    use rand::{Rng, SeedableRng};
    use tlcap::model::classifier::TrainPath;
    let (_dir, exp, mut net, pixels) = mobilenet_on_seven_images();
    assert!(exp.model.dropout > 0.0, "the masks must matter");
    let labels = Tensor::from_slice(&[0i64, 1, 1, 0, 1, 0, 0]);
    let plain = TrainPath {
        fold_batchnorm: false,
        channels_last: false,
        pass_pixels: None,
    };
    let fast = TrainPath {
        fold_batchnorm: true,
        channels_last: true,
        pass_pixels: Some(3 * 64 * 64),
    };
    let cpu = TrainPath::for_device(tch::Device::Cpu);
    assert!(cpu.fold_batchnorm && cpu.channels_last && cpu.pass_pixels.is_some());
    let layers = net.table().len();
    for (phase, n) in [("whole network", layers), ("last 14 layers", 14)] {
        net.set_finetune_phase(n, false);
        let k = net.frozen_segments();
        let prefix = net.run_prefix(&pixels, k);
        let mut step = |path: TrainPath| {
            net.set_train_path(path);
            for (_, mut v) in net.vs.variables() {
                v.zero_grad();
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
            let (logits, loss) = net.backward_train_from(&prefix, k, &labels, &mut rng);
            let mut grads: Vec<(String, Tensor)> = net
                .vs
                .variables()
                .into_iter()
                .filter(|(_, v)| v.requires_grad())
                .map(|(name, v)| (name, v.grad().copy()))
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            (
                logits,
                loss,
                grads,
                rng.gen::<u64>(),
                net.images_per_train_pass(&prefix),
            )
        };
        let (l1, loss1, g1, draw1, pass1) = step(plain);
        let (l2, loss2, g2, draw2, pass2) = step(fast);
        assert_eq!(pass1, i64::MAX, "{phase}");
        let map = prefix.size()[2] * prefix.size()[3];
        assert_eq!(
            pass2,
            3 * 64 * 64 / map,
            "{phase}: passes of {pass2} images"
        );
        assert_eq!(draw1, draw2, "{phase}: the same draws");
        let close = |what: &str, a: &Tensor, b: &Tensor| {
            let err = (a - b).abs().max().double_value(&[]);
            let scale = a.abs().max().double_value(&[]);
            assert!(
                err <= 1e-4 * scale.max(1e-3),
                "{phase}, {what}: max difference {err:.2e} of {scale:.2e}"
            );
        };
        close("logits", &l1, &l2);
        close("loss", &loss1, &loss2);
        assert!(!g1.is_empty() && g1.len() == g2.len());
        // A weight's gradient sums thousands of terms (the stem's: every position of
        // every image), in another order in passes and in another layout, so it is
        // compared as a whole: the norm of the difference against the gradient's norm.
        // libtorch alone moves the stem's by 2.5e-3 of its norm between 1 and 2
        // threads (the plain path against itself, measured); a wrong step (a pass's
        // loss weighted wrongly, a fold missing its bias) is off by the order of the
        // gradient itself.
        let (mut nonzero, mut worst) = (0, 0.0f64);
        for ((name, a), (_, b)) in g1.iter().zip(&g2) {
            assert!(
                a.defined() && b.defined(),
                "{phase}: gradient of variable {name}"
            );
            let norm = a.norm().double_value(&[]);
            let rel = (a - b).norm().double_value(&[]) / norm.max(1e-12);
            assert!(
                rel <= 1e-2 || norm < 1e-9,
                "{phase}, gradient of variable {name}: relative difference {rel:.2e}"
            );
            worst = worst.max(rel);
            nonzero += usize::from(norm > 0.0);
        }
        eprintln!("{phase}: worst relative gradient difference {worst:.2e}");
        assert!(
            nonzero > g1.len() / 2,
            "{phase}: {nonzero} of {} gradients",
            g1.len()
        );
        let stem = g1.iter().any(|(name, _)| name == "features.0.0.weight");
        assert_eq!(
            stem,
            n == layers,
            "{phase}: the stem trains only with the whole network"
        );
    }
    // BatchNorm layers that update their statistics see the whole batch at once.
    net.set_finetune_phase(layers, true);
    assert!(net.table().batch_statistics());
    assert_eq!(net.images_per_train_pass(&pixels), i64::MAX);
}

/// Validation while layers train runs on a BatchNorm-folded, channels-last copy of the
/// weights made for it: the same logits as the trainable network itself (plain path,
/// one pass), for the whole network and its last layers, from the pixels and from a
/// cached prefix; and the copy is gone afterwards, so inference after a training step
/// sees the new weights, never the copy's.
#[test]
fn validation_on_the_folded_copy_gives_the_trainable_networks_logits() {
    use tlcap::model::classifier::TrainPath;
    let (_dir, _exp, mut net, pixels) = mobilenet_on_seven_images();
    let labels = Tensor::from_slice(&[0i64, 1, 1, 0, 1, 0, 0]);
    let fast = TrainPath::for_device(tch::Device::Cpu);
    let plain = TrainPath {
        fold_batchnorm: false,
        channels_last: false,
        pass_pixels: None,
    };
    let close = |what: &str, a: &Tensor, b: &Tensor| {
        let err = (a - b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]);
        assert!(
            scale > 0.0 && err <= 1e-4 * scale.max(1e-3),
            "{what}: max difference {err:.2e} of {scale:.2e}"
        );
    };
    let layers = net.table().len();
    for (phase, n) in [("whole network", layers), ("last 14 layers", 14)] {
        net.set_finetune_phase(n, false);
        let k = net.frozen_segments();
        assert!(k < net.backbone.segments(), "{phase}: layers train");
        net.set_train_path(plain);
        let reference = net.forward(&pixels);
        net.set_train_path(fast);
        let prefix = net.run_prefix(&pixels, k);
        let (copied, from_prefix) =
            net.with_inference_copy(|| (net.forward(&pixels), net.forward_from(&prefix, k)));
        close(&format!("{phase}, from pixels"), &reference, &copied);
        close(
            &format!("{phase}, from the prefix"),
            &reference,
            &from_prefix,
        );
    }
    // One large step moves the weights; inference afterwards must see them.
    let before = net.with_inference_copy(|| net.forward(&pixels));
    let mut opt = tch::nn::OptimizerConfig::build(tch::nn::Adam::default(), &net.vs, 0.05).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    opt.zero_grad();
    let k = net.frozen_segments();
    let prefix = net.run_prefix(&pixels, k);
    let _ = net.backward_train_from(&prefix, k, &labels, &mut rng);
    opt.step();
    net.set_train_path(plain);
    let moved = net.forward(&pixels);
    net.set_train_path(fast);
    let after = net.with_inference_copy(|| net.forward(&pixels));
    assert!(
        (&before - &moved).abs().max().double_value(&[]) > 1e-3,
        "the step moved the logits"
    );
    close("after a step", &moved, &after);
    close("after a step, no copy", &moved, &net.forward(&pixels));
}

/// bfloat16 for the frozen part: the run still learns, says `bf16`, and lands close to
/// float32.
#[test]
fn bf16_frozen_part_learns_like_fp32() {
    tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 12, 64);
    let run = |precision: &str| {
        mobilenet_run(
            &data,
            &dir.path().join(precision),
            "{}",
            &format!(
                "frozen: {{ epochs: 6, lr: 3.0e-3 }}\nfinetune: {{ epochs: 0 }}\nprecision: {precision}\n"
            ),
        )
    };
    let ((bf16, _, bf16_run), (fp32, _, _)) = (run("bf16"), run("fp32"));
    predict_agrees_with_the_best_epoch(&bf16_run, &bf16);
    assert!(
        bf16.iter().all(|m| words(m).starts_with("bf16 ")),
        "{:?}",
        words(&bf16[0])
    );
    let best = |rows: &[EpochMetrics]| rows.iter().map(|m| m.val_accuracy).fold(0.0, f64::max);
    assert!(best(&bf16) >= 0.8, "bf16 best {}", best(&bf16));
    assert!(
        (best(&bf16) - best(&fp32)).abs() <= 0.2,
        "bf16 {} vs fp32 {}",
        best(&bf16),
        best(&fp32)
    );
}

/// With random augmentation, `augment_views: 2` caches two augmented views during
/// the first two frozen epochs and cycles through them after; the fine-tune phase
/// keeps only the validation prefix. A prefix over its memory budget is refused with
/// a note and the phase runs without it.
#[test]
fn augment_views_cycle_and_an_oversized_prefix_cache_is_refused() {
    tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 8, 64);
    let (rows, notes, _) = mobilenet_run(
        &data,
        &dir.path().join("views"),
        "{ horizontal_flip: true, rotation_range: 10 }",
        "frozen: { epochs: 4, lr: 1.0e-3, augment_views: 2 }\n\
         finetune: { epochs: 1, lr: 1.0e-4, unfreeze_last: 4 }\nprecision: fp32\n",
    );
    let compute: Vec<String> = rows.iter().map(words).collect();
    let expected = [
        "features of view 1/2 caching",
        "features of view 2/2 caching",
        "features of view 1/2 cached",
        "features of view 2/2 cached",
        "validation prefix up to features.16.conv.3 cached (training is augmented)",
    ];
    for (c, e) in compute.iter().zip(expected) {
        assert!(
            c.starts_with(&format!("fp32 frozen part, {e}")),
            "{compute:?}"
        );
    }
    assert!(notes.is_empty(), "{notes:?}");

    let (rows, notes, _) = mobilenet_run(
        &data,
        &dir.path().join("budget"),
        "{}",
        "frozen: { epochs: 0 }\n\
         finetune: { epochs: 2, lr: 1.0e-4, unfreeze_last: 4, prefix_cache_mb: 0 }\n\
         precision: fp32\n",
    );
    assert_eq!(rows.len(), 2);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("cache off: it would need")),
        "{notes:?}"
    );
    assert_eq!(words(&rows[1]), "fp32 frozen part, no cache");
}

/// An Unfreeze in the middle of a frozen epoch that fills the feature cache: the
/// rest of the epoch runs without a cache, and the epoch's row says from which batch.
#[test]
fn a_mid_epoch_unfreeze_drops_the_cache_and_says_so() {
    tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 12, 64);
    let exp = mobilenet_exp(
        &data,
        "{}",
        "frozen: { epochs: 3, lr: 1.0e-3 }\nfinetune: { epochs: 2, lr: 1.0e-4, unfreeze_last: 4 }\n\
         precision: fp32\n",
    );
    let handle = train::spawn(
        exp,
        Options {
            runs_root: dir.path().join("runs"),
            autostart: true,
            ..Default::default()
        },
    );
    let mut rows = Vec::new();
    for e in handle.events.iter() {
        match e {
            // Pause holds at a batch boundary; unfreeze there.
            Event::Batch {
                epoch: 1, batch: 1, ..
            } => handle.commands.send(train::Command::Pause).unwrap(),
            Event::Paused => {
                handle.commands.send(train::Command::Unfreeze).unwrap();
                handle.commands.send(train::Command::Resume).unwrap();
            }
            Event::EpochEnd(m) => rows.push(m),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    let changed = rows
        .iter()
        .find(|m| words(m).starts_with("fp32 frozen part, no cache from batch "))
        .unwrap_or_else(|| panic!("no row says the cache stopped: {rows:#?}"));
    assert_eq!(changed.phase, Phase::Finetune);
    assert!(changed.val_accuracy.is_finite());
    let last = rows.last().unwrap();
    assert!(
        words(last).starts_with("fp32 frozen part, prefix up to"),
        "the next epoch plans a prefix cache: {}",
        words(last)
    );
}

/// `on_stall: reduce_lr` multiplies the rate by `factor` at each stall, never below
/// `min_lr`, recorded like an edit; `LowerLr` (the `r` key) does it from the next batch.
#[test]
fn reduce_lr_on_stall_and_lower_lr_now() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_images(&data, &["left", "right"], 16, 32);
    let mut exp = small(&data, "");
    exp.frozen.epochs = 5;
    exp.frozen.lr = 1e-3;
    exp.finetune.epochs = 0;
    exp.stall = serde_yaml::from_str(
        "{ patience: 1, min_delta: 1.0, on_stall: reduce_lr, factor: 0.1, min_lr: 1.0e-5 }",
    )
    .unwrap();
    let handle = train::spawn(
        exp.clone(),
        Options {
            runs_root: dir.path().join("runs"),
            autostart: true,
            ..Default::default()
        },
    );
    let (mut rows, mut lowered, mut run) = (Vec::new(), Vec::new(), None);
    for e in handle.events.iter() {
        match e {
            Event::EpochEnd(m) => rows.push(m),
            Event::LrLowered {
                from,
                to,
                by,
                batch,
                ..
            } => lowered.push((from, to, by, batch)),
            Event::RunDir(d) => run = Some(d),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    let lrs: Vec<f64> = rows.iter().map(|m| m.lr).collect();
    // Epoch 1 sets the best; stalls after epochs 2, 3, 4 (nothing gains 1.0):
    // 1e-3 -> 1e-4 -> 1e-5, then min_lr holds it.
    let want = [1e-3, 1e-3, 1e-4, 1e-5, 1e-5];
    assert!(
        lrs.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
        "{lrs:?}"
    );
    assert_eq!(lowered.len(), 2, "{lowered:?}");
    assert!(lowered
        .iter()
        .all(|l| l.2 == "on_stall: reduce_lr" && l.3.is_none()));
    let history = std::fs::read_to_string(run.unwrap().join("config-history.jsonl")).unwrap();
    assert_eq!(history.matches("frozen.lr").count(), 2, "{history}");

    // The r key: from the next batch, mid-epoch; again as the epoch's last batch ends,
    // which lands between epochs: the next epoch runs at the new rate from its first
    // batch, and no batch beyond the epoch's is named.
    let mut exp2 = exp.clone();
    exp2.stall.on_stall = tlcap::config::OnStall::Suggest;
    exp2.frozen.epochs = 2;
    exp2.data.batch_size = 8;
    let handle = train::spawn(
        exp2,
        Options {
            runs_root: dir.path().join("runs2"),
            autostart: true,
            ..Default::default()
        },
    );
    let (mut rows, mut lowered, mut per_epoch) = (Vec::new(), Vec::new(), 0);
    for e in handle.events.iter() {
        match e {
            Event::Batch {
                epoch: 1,
                batch,
                of,
                ..
            } => {
                per_epoch = of;
                if batch == 1 || batch == of {
                    handle.commands.send(train::Command::LowerLr).unwrap();
                }
            }
            Event::EpochEnd(m) => rows.push(m),
            Event::LrLowered {
                batch, by, epoch, ..
            } => lowered.push((epoch, batch, by)),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    // From a later batch of the same epoch (the command lands at the next boundary).
    let first = match &lowered[..] {
        [(1, Some(b), by), (_, second, _)] if *b >= 2 && by == "r" => {
            assert!(second.is_none_or(|b| b <= per_epoch), "{lowered:?}");
            *b
        }
        _ => panic!("{lowered:?}"),
    };
    assert!((rows[0].lr - 1e-4).abs() < 1e-12);
    // The epoch lowered part-way says from which batch and from what rate.
    let at = rows[0].lr_lowered.expect("epoch 1 was lowered part-way");
    assert_eq!(at.from_batch, first);
    assert!((at.lr_before - 1e-3).abs() < 1e-12);
    assert!((rows[1].lr - 1e-5).abs() < 1e-12);
    assert!(rows[1].lr_lowered.is_none(), "{:?}", rows[1].lr_lowered);
}

/// `model.label_smoothing` e moves the training loss's targets as Keras's
/// `label_smoothing` does, checked by hand on fixed batches: a sigmoid unit's 0/1
/// targets become (1 - e) y + e/2 (with class weights on top), softmax's one-hot rows
/// (1 - e) one_hot + e/K, and each multi-label label's target (1 - e) y + e/2. The
/// validation loss keeps the labels as they are.
#[test]
fn label_smoothing_moves_the_targets_as_keras_does() {
    use tlcap::model::classifier::Classifier;
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(
        dir.path(),
        "model: { backbone: small_cnn, weights: none, label_smoothing: 0.2 }\n",
    );
    assert_eq!(exp.model.label_smoothing, 0.2);
    let e = 0.2;
    let softplus = |z: f64| (1.0 + z.exp()).ln();
    let value = |t: Tensor| t.double_value(&[]);
    // Two classes: binary cross-entropy ln(1 + e^z) - t z with t = (1 - e) y + e/2.
    let mut net = Classifier::new(&exp, 2, tch::Device::Cpu).unwrap();
    let z = [0.5, -1.0, 2.0, 0.0];
    let y = [0i64, 1, 1, 0];
    let logits = Tensor::from_slice(&z.map(|v| v as f32)).view([4, 1]);
    let labels = Tensor::from_slice(&y);
    let bce = |t: &dyn Fn(i64) -> f64| -> Vec<f64> {
        z.iter()
            .zip(&y)
            .map(|(&z, &y)| softplus(z) - t(y) * z)
            .collect()
    };
    let smooth = bce(&|y| (1.0 - e) * y as f64 + e / 2.0);
    let plain = bce(&|y| y as f64);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!((value(net.train_loss(&logits, &labels)) - mean(&smooth)).abs() < 1e-6);
    assert!((value(net.loss(&logits, &labels)) - mean(&plain)).abs() < 1e-6);
    assert!(
        (mean(&smooth) - mean(&plain)).abs() > 0.01,
        "smoothing matters here"
    );
    let w = [2.0, 0.5];
    net.set_class_weights(Some(&w));
    let weighted: f64 = smooth
        .iter()
        .zip(&y)
        .map(|(l, &y)| w[y as usize] * l)
        .sum::<f64>()
        / 4.0;
    assert!((value(net.train_loss(&logits, &labels)) - weighted).abs() < 1e-6);
    // A live edit to 0: the labels as they are.
    net.set_class_weights(None);
    net.set_label_smoothing(0.0);
    assert!((value(net.train_loss(&logits, &labels)) - mean(&plain)).abs() < 1e-6);
    // Three classes: -sum_k q_k ln softmax(z)_k with q = (1 - e) one_hot + e/3.
    let net = Classifier::new(&exp, 3, tch::Device::Cpu).unwrap();
    let z3 = [[1.0, 0.0, -1.0], [0.2, 0.3, 0.1], [-2.0, 1.0, 0.5]];
    let y3 = [2i64, 1, 0];
    let ce: Vec<f64> = z3
        .iter()
        .zip(&y3)
        .map(|(row, &y)| {
            let log_sum = row.iter().map(|v: &f64| v.exp()).sum::<f64>().ln();
            (0..3)
                .map(|k| {
                    let q = if k == y as usize {
                        1.0 - e + e / 3.0
                    } else {
                        e / 3.0
                    };
                    -q * (row[k] - log_sum)
                })
                .sum::<f64>()
        })
        .collect();
    let flat: Vec<f32> = z3.iter().flatten().map(|&v| v as f32).collect();
    let logits = Tensor::from_slice(&flat).view([3, 3]);
    let labels = Tensor::from_slice(&y3);
    assert!((value(net.train_loss(&logits, &labels)) - mean(&ce)).abs() < 1e-5);
    // Multi-label: every (image, label) target (1 - e) y + e/2.
    let net = Classifier::new_multilabel(&exp, 3, tch::Device::Cpu).unwrap();
    let hot = [[1i64, 0, 1], [0, 0, 1], [1, 1, 0]];
    let per_label: Vec<f64> = z3
        .iter()
        .zip(&hot)
        .flat_map(|(row, hot)| {
            row.iter()
                .zip(hot)
                .map(|(&z, &y)| softplus(z) - ((1.0 - e) * y as f64 + e / 2.0) * z)
        })
        .collect();
    let hot_flat: Vec<f32> = hot.iter().flatten().map(|&v| v as f32).collect();
    let labels = Tensor::from_slice(&hot_flat).view([3, 3]);
    assert!((value(net.train_loss(&logits, &labels)) - mean(&per_label)).abs() < 1e-5);
}

/// `data.class_weight` weighs each image's training loss by its class's weight and
/// divides the batch's sum by the batch size, as Keras's `class_weight` does (not by
/// the weights' sum, as PyTorch's `weight=` would): checked by hand on a fixed batch,
/// for one sigmoid unit and for softmax. The validation loss stays unweighted.
#[test]
fn class_weights_change_the_training_loss_as_keras_does() {
    use tlcap::model::classifier::Classifier;
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(
        dir.path(),
        "model: { backbone: small_cnn, weights: none }\n",
    );
    let softplus = |z: f64| (1.0 + z.exp()).ln();
    // Two classes: one logit per image; binary cross-entropy ln(1 + e^z) - y z.
    let mut net = Classifier::new(&exp, 2, tch::Device::Cpu).unwrap();
    let z = [0.5, -1.0, 2.0, 0.0];
    let y = [0i64, 1, 1, 0];
    let logits = Tensor::from_slice(&z.map(|v| v as f32)).view([4, 1]);
    let labels = Tensor::from_slice(&y);
    let bce: Vec<f64> = z
        .iter()
        .zip(&y)
        .map(|(&z, &y)| softplus(z) - y as f64 * z)
        .collect();
    let w = [2.0, 0.5];
    let weighted: f64 = bce
        .iter()
        .zip(&y)
        .map(|(l, &y)| w[y as usize] * l)
        .sum::<f64>()
        / 4.0;
    let plain: f64 = bce.iter().sum::<f64>() / 4.0;
    let value = |t: Tensor| t.double_value(&[]);
    assert!((value(net.train_loss(&logits, &labels)) - plain).abs() < 1e-6);
    net.set_class_weights(Some(&w));
    assert!((value(net.train_loss(&logits, &labels)) - weighted).abs() < 1e-6);
    assert!((value(net.loss(&logits, &labels)) - plain).abs() < 1e-6);
    assert!((weighted - plain).abs() > 0.1, "the weights matter here");
    // Three classes: softmax cross-entropy, -ln softmax(z)[y].
    let mut net = Classifier::new(&exp, 3, tch::Device::Cpu).unwrap();
    let z = [[1.0, 0.0, -1.0], [0.2, 0.3, 0.1], [-2.0, 1.0, 0.5]];
    let y = [2i64, 1, 0];
    let ce: Vec<f64> = z
        .iter()
        .zip(&y)
        .map(|(row, &y)| {
            let sum: f64 = row.iter().map(|v: &f64| v.exp()).sum();
            sum.ln() - row[y as usize]
        })
        .collect();
    let w = [1.0, 3.0, 0.25];
    let weighted: f64 = ce
        .iter()
        .zip(&y)
        .map(|(l, &y)| w[y as usize] * l)
        .sum::<f64>()
        / 3.0;
    let flat: Vec<f32> = z.iter().flatten().map(|&v| v as f32).collect();
    let logits = Tensor::from_slice(&flat).view([3, 3]);
    let labels = Tensor::from_slice(&y);
    net.set_class_weights(Some(&w));
    assert!((value(net.train_loss(&logits, &labels)) - weighted).abs() < 1e-5);
    assert!((value(net.loss(&logits, &labels)) - ce.iter().sum::<f64>() / 3.0).abs() < 1e-5);
}
