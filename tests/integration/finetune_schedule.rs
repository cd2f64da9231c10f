//! The fine-tuning schedule on a real MobileNetV2 with its ImageNet weights:
//! progressive unfreezing group by group on stalls (the counts `tlcap-tui layers`
//! prints), discriminative learning rates reaching the optimizer per block group,
//! scheduled rates in the epoch rows, and a resumed run keeping depth, rates and
//! schedule position; `check` on the new settings.

use std::path::{Path, PathBuf};

use crate::train::mobilenet_exp;
use crate::util::{make_images, stdout_of_success};
use tlcap::config::Experiment;
use tlcap::train::events::{Deepened, StallAction};
use tlcap::train::run_dir::read_checkpoint;
use tlcap::train::schedule::{PhaseSchedule, ScheduleSettings};
use tlcap::train::{self, EpochMetrics, Event, Options, Phase};

/// MobileNetV2 on eight generated 64 px images (six train in one batch of 8), fp32.
fn mobilenet(data: &Path, settings: &str) -> Experiment {
    tlcap::model::imagenet_weights(tlcap::config::Backbone::MobilenetV2)
        .expect("run `make setup` first");
    make_images(data, &["left", "right"], 4, 64);
    let mut exp = mobilenet_exp(data, "{}", &format!("precision: fp32\n{settings}"));
    exp.data.validation_split = 0.25;
    exp
}

/// What a run said: its epoch rows, each phase event's trainable layers and
/// progressive step, the stall actions, and its folder.
struct Seen {
    rows: Vec<EpochMetrics>,
    phases: Vec<(u32, usize, Option<Deepened>)>,
    stalls: Vec<(u32, StallAction)>,
    run: PathBuf,
}

fn run(exp: Experiment, options: Options) -> Seen {
    let handle = train::spawn(
        exp,
        Options {
            autostart: true,
            ..options
        },
    );
    let mut seen = Seen {
        rows: Vec::new(),
        phases: Vec::new(),
        stalls: Vec::new(),
        run: PathBuf::new(),
    };
    for e in handle.events.iter() {
        match e {
            Event::EpochEnd(m) => seen.rows.push(m),
            Event::PhaseChanged {
                epoch,
                trainable_layers,
                deepened,
                ..
            } => seen.phases.push((epoch, trainable_layers, deepened)),
            Event::Stalled { epoch, suggestion } => seen.stalls.push((epoch, suggestion.action)),
            Event::RunDir(d) => seen.run = d,
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    handle.join();
    seen
}

/// The `unfreeze_last` column of `tlcap-tui layers mobilenet_v2`: the layer count that
/// reaches down to each block group, last group first.
fn layers_command_depths() -> Vec<usize> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(["layers", "mobilenet_v2"])
        .output()
        .unwrap();
    let text = stdout_of_success(&out);
    let table = text
        .split("unfreeze_last\n")
        .nth(1)
        .expect("the group table");
    table
        .lines()
        .map(|l| l.split_whitespace().last().unwrap().parse().unwrap())
        .collect()
}

const PROGRESSIVE: &str = "frozen: { epochs: 1 }
finetune: { epochs: 10, lr: 1.0e-4, unfreeze_last: 2, schedule: cosine, warmup_epochs: 1, layer_decay: 0.5 }
stall: { patience: 1, min_delta: 1.0, on_stall: unfreeze_more }
";

/// A stall at every fine-tune epoch after the first (nothing gains 1.0) unfreezes one
/// block group after another, exactly the counts `layers` prints, until the whole
/// network trains; then the suggestion is to stop or lower the rate. Each step is an
/// event, a row mark and a line in config-history.jsonl. The rows' lr is the cosine
/// schedule's rate at each epoch's last step. A run cut after 5 epochs and resumed
/// continues at the same depth, step count and rates as the uninterrupted one.
#[test]
fn stalls_unfreeze_group_after_group_and_resume_keeps_depth_and_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let exp = mobilenet(&dir.path().join("data"), PROGRESSIVE);
    let full = run(
        exp.clone(),
        Options {
            runs_root: dir.path().join("runs"),
            ..Default::default()
        },
    );
    assert_eq!(full.rows.len(), 11);
    let depths = layers_command_depths();
    assert_eq!(depths.len(), 9, "{depths:?}");
    // Phase events: the fine-tune start at 2 layers (features.18), then one per stall.
    let trainable: Vec<usize> = full.phases.iter().skip(1).map(|p| p.1).collect();
    assert_eq!(trainable, depths, "{:?}", full.phases);
    let steps: Vec<&Deepened> = full.phases.iter().filter_map(|p| p.2.as_ref()).collect();
    assert_eq!(steps.len(), 8);
    assert_eq!(steps[0].group, "features.17");
    assert_eq!(
        (steps[7].group.as_str(), steps[7].groups, steps[7].of),
        ("features.0", 9, 9)
    );
    assert!(steps.iter().all(|d| d.by == "on_stall: unfreeze_more"));
    // Fine-tune epochs 1-2 at the first depth, then one group deeper each epoch.
    let marks: Vec<u32> = full.rows.iter().skip(1).map(|m| m.deepened).collect();
    assert_eq!(marks, [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(tlcap::text::phase_label(&full.rows[4]), "ft+2");
    // Stalls: epochs 3..=10 asked for the next group, epoch 11 found none left.
    let actions: Vec<&StallAction> = full.stalls.iter().map(|s| &s.1).collect();
    assert_eq!(actions.len(), 9, "{actions:?}");
    assert!(actions[..8].iter().all(|a| matches!(
        a,
        StallAction::UnfreezeMore {
            automatic: true,
            ..
        }
    )));
    assert!(matches!(actions[8], StallAction::StopOrLowerLr { .. }));
    let history = std::fs::read_to_string(full.run.join("config-history.jsonl")).unwrap();
    assert_eq!(
        history.matches("finetune.unfreeze_last").count(),
        8,
        "{history}"
    );
    // The rows' rates: the cosine schedule's at each epoch's last step (one step an
    // epoch here), warm-up first.
    let schedule = PhaseSchedule::new(ScheduleSettings::from(&exp.finetune), 1);
    for (i, m) in full.rows.iter().skip(1).enumerate() {
        let want = 1e-4 * schedule.factor(i as u64);
        assert!(
            (m.lr - want).abs() < 1e-15,
            "epoch {}: {} vs {want}",
            m.epoch,
            m.lr
        );
    }
    assert_eq!(
        full.rows[0].lr, exp.frozen.lr,
        "the frozen phase is constant"
    );

    // Cut after epoch 5, then resumed from the run folder's own settings.
    let cut = run(
        exp.clone(),
        Options {
            runs_root: dir.path().join("runs-cut"),
            max_epochs: Some(5),
            ..Default::default()
        },
    );
    assert_eq!(cut.rows.len(), 5);
    let saved = std::fs::read_to_string(cut.run.join("config.yaml")).unwrap();
    let settings = tlcap::config::parse_str(&saved, &cut.run.join("config.yaml")).unwrap();
    let resumed = run(
        settings,
        Options {
            resume: Some(cut.run.clone()),
            ..Default::default()
        },
    );
    let (first, rest) = full.rows.split_at(5);
    assert_eq!(first.len() + resumed.rows.len(), 11);
    for (a, b) in rest.iter().zip(&resumed.rows) {
        assert_eq!(
            (a.epoch, a.phase, a.deepened),
            (b.epoch, b.phase, b.deepened)
        );
        assert!(
            (a.lr - b.lr).abs() < 1e-15,
            "epoch {}: {} vs {}",
            a.epoch,
            a.lr,
            b.lr
        );
    }
    let resumed_depths: Vec<usize> = resumed.phases.iter().map(|p| p.1).collect();
    assert_eq!(resumed_depths, depths[2..], "{:?}", resumed.phases);
}

/// `finetune.layer_decay` gives each block group its own rate: after one Adam step
/// (whose first update is about lr x sign(gradient) for every weight with a gradient),
/// the median change of each group's convolution weights is lr x decay^depth, depth 1
/// for the last group (the head has depth 0). Measured: within 0.1% for all 9 groups.
#[test]
fn layer_decay_gives_each_block_group_its_own_rate() {
    let dir = tempfile::tempdir().unwrap();
    let exp = mobilenet(
        &dir.path().join("data"),
        "frozen: { epochs: 0 }\nfinetune: { epochs: 1, lr: 1.0e-3, unfreeze_last: 104, layer_decay: 0.5 }\n",
    );
    let before = tlcap::model::classifier::Classifier::new(&exp, 2, tch::Device::Cpu).unwrap();
    let start: std::collections::HashMap<String, tch::Tensor> =
        before.all_variables().into_iter().collect();
    let seen = run(
        exp,
        Options {
            runs_root: dir.path().join("runs"),
            ..Default::default()
        },
    );
    assert_eq!(seen.rows.len(), 1);
    let (after, _) = read_checkpoint(&seen.run.join("last.safetensors")).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let backbone =
        tlcap::model::Backbone::new(&vs.root(), tlcap::config::Backbone::MobilenetV2, false);
    let groups = backbone.groups();
    let table = backbone.table();
    for (g, group) in groups.iter().enumerate() {
        let depth = groups.len() - g;
        let want = 1e-3 * 0.5f64.powi(depth as i32);
        let mut changes: Vec<f64> = Vec::new();
        for layer in table
            .layers()
            .skip(group.layers.start)
            .take(group.layers.len())
        {
            if layer.kind == tlcap::model::LayerKind::BatchNorm {
                continue;
            }
            let name = format!("{}.weight", layer.name);
            let new = &after.iter().find(|(n, _)| *n == name).unwrap().1;
            let delta = (new - &start[&name]).abs().flatten(0, -1).contiguous();
            // Weights without a gradient (a ReLU6 shut for all six images) stay put.
            let moved = Vec::<f32>::try_from(delta).unwrap();
            changes.extend(moved.iter().filter(|&&d| d > 0.0).map(|&d| d as f64));
        }
        changes.sort_by(f64::total_cmp);
        let median = changes[changes.len() / 2];
        assert!(
            (median / want - 1.0).abs() < 0.2,
            "{}: median change {median:e}, want {want:e}",
            group.name
        );
    }
}

/// The rows of a run with no schedule settings are today's: constant `lr` in every
/// row of either phase.
#[test]
fn without_schedule_settings_every_row_runs_at_the_phase_rate() {
    let dir = tempfile::tempdir().unwrap();
    let exp = mobilenet(
        &dir.path().join("data"),
        "frozen: { epochs: 2, lr: 1.0e-3 }\nfinetune: { epochs: 2, lr: 1.0e-5, unfreeze_last: 14 }\n",
    );
    let seen = run(
        exp,
        Options {
            runs_root: dir.path().join("runs"),
            ..Default::default()
        },
    );
    let lrs: Vec<(Phase, f64)> = seen.rows.iter().map(|m| (m.phase, m.lr)).collect();
    assert_eq!(
        lrs,
        [
            (Phase::Frozen, 1e-3),
            (Phase::Frozen, 1e-3),
            (Phase::Finetune, 1e-5),
            (Phase::Finetune, 1e-5)
        ]
    );
    assert!(seen.rows.iter().all(|m| m.deepened == 0));
}

/// Progressive unfreezing with the caches on (no augmentation here, so the fine-tune
/// phase keeps the frozen prefix's outputs of training and validation images) gives
/// the figures of the same run with them off: each step drops the cache for a shorter
/// prefix, and no epoch reads a stale one.
#[test]
fn progressive_unfreezing_with_the_prefix_cache_matches_a_run_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let cached = mobilenet(&dir.path().join("data"), PROGRESSIVE);
    let mut plain = cached.clone();
    plain.frozen.feature_cache = tlcap::config::FeatureCache::Off;
    plain.finetune.prefix_cache = tlcap::config::FeatureCache::Off;
    let a = run(
        cached,
        Options {
            runs_root: dir.path().join("runs-cached"),
            ..Default::default()
        },
    );
    let b = run(
        plain,
        Options {
            runs_root: dir.path().join("runs-plain"),
            ..Default::default()
        },
    );
    let words = |m: &EpochMetrics| tlcap::text::compute(&m.compute);
    assert!(
        a.rows
            .iter()
            .any(|m| words(m).contains("prefix up to") && words(m).contains(" cached")),
        "the cached run read a prefix cache: {:?}",
        a.rows.iter().map(words).collect::<Vec<_>>()
    );
    assert!(b
        .rows
        .iter()
        .all(|m| words(m).contains("no cache") || m.compute.precision.is_none()));
    assert_eq!(a.rows.len(), b.rows.len());
    for (x, y) in a.rows.iter().zip(&b.rows) {
        assert_eq!((x.epoch, x.deepened), (y.epoch, y.deepened));
        assert_eq!(x.val_accuracy, y.val_accuracy, "epoch {}", x.epoch);
        for (p, q) in [(x.loss, y.loss), (x.val_loss, y.val_loss)] {
            assert!((p - q).abs() < 1e-4, "epoch {}: {p} vs {q}", x.epoch);
        }
    }
}

/// `u` while fine-tuning (the Unfreeze command) queues the next block group for the
/// next epoch, says so, and the step names `u` as who asked.
#[test]
fn unfreeze_while_fine_tuning_adds_the_next_group_at_the_next_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let exp = mobilenet(
        &dir.path().join("data"),
        "frozen: { epochs: 1 }\nfinetune: { epochs: 2, unfreeze_last: 2 }\n",
    );
    let handle = train::spawn(
        exp,
        Options {
            runs_root: dir.path().join("runs"),
            autostart: true,
            ..Default::default()
        },
    );
    let (mut notes, mut steps, mut rows, mut asked) = (Vec::new(), Vec::new(), Vec::new(), false);
    for e in handle.events.iter() {
        match e {
            Event::Batch { epoch: 2, .. } if !asked => {
                handle.commands.send(train::Command::Unfreeze).unwrap();
                asked = true;
            }
            Event::Note(n) => notes.push(n),
            Event::PhaseChanged {
                epoch,
                trainable_layers,
                deepened: Some(d),
                ..
            } => steps.push((epoch, trainable_layers, d.group, d.by)),
            Event::EpochEnd(m) => rows.push((m.epoch, m.deepened)),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    handle.join();
    assert!(
        notes
            .iter()
            .any(|n| n == "unfreezing features.17 from epoch 3: the last 8 layers will train"),
        "{notes:?}"
    );
    assert_eq!(steps, [(3, 8, "features.17".to_string(), "u".to_string())]);
    assert_eq!(rows, [(1, 0), (2, 0), (3, 1)]);
}
