//! The trainer: runs on its own OS thread, takes [`Command`]s, emits [`Event`]s, and
//! never touches the terminal.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use super::cache::{human_bytes, Cache, FeatureTable, TrainSource};
use super::events::{Command, EndReason, EpochMetrics, Event, Phase};
use super::metrics::{binary_scores, Confusion};
use super::run_dir::{self, CheckpointInfo, RunDir, Split};
use super::stall::{direction, Direction, StallDetector};
use crate::config::{
    ChangeKind, Experiment, FeatureCache, Monitor, OnStall, Optimizer, Precision, Weights,
};
use crate::data::Dataset;
use crate::model::classifier::Classifier;
use crate::runtime::{
    device_name, intra_op_threads, prepare_device, resolve_precision, select_device,
};

/// Trainer threads are named with this prefix and the experiment name.
pub const THREAD_PREFIX: &str = "trainer ";

/// Which phases a run goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phases {
    /// Frozen, then fine-tune.
    #[default]
    Both,
    /// Only the frozen phase.
    Frozen,
    /// Straight to fine-tuning.
    Finetune,
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where run folders go (`runs/` by default).
    pub runs_root: PathBuf,
    /// Which phases.
    pub phases: Phases,
    /// Stop after this many epochs in total.
    pub max_epochs: Option<u32>,
    /// Start at once; otherwise wait for [`Command::Start`].
    pub autostart: bool,
    /// Continue this run folder from its last finished epoch.
    pub resume: Option<PathBuf>,
    /// At the end, also write `model.safetensors`: every variable (backbone and head),
    /// a standalone model that needs no base weights.
    pub export_model: bool,
}

/// The UI's end of a trainer thread.
pub struct TrainerHandle {
    /// Send commands here.
    pub commands: Sender<Command>,
    /// Events arrive here; the last one is `Finished` or `Error`.
    pub events: Receiver<Event>,
    thread: JoinHandle<()>,
}

impl TrainerHandle {
    /// Waits for the thread to end.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Starts a trainer for `exp` on its own thread.
pub fn spawn(exp: Experiment, options: Options) -> TrainerHandle {
    let threads = intra_op_threads();
    let (commands, command_rx) = channel();
    let (event_tx, events) = channel();
    let thread = std::thread::Builder::new()
        .name(format!("{THREAD_PREFIX}{}", exp.name))
        .spawn(move || {
            // The first call fixes this thread's count from the process-wide value
            // (which an input thread may have lowered); then set ours.
            let _ = tch::get_num_threads();
            tch::set_num_threads(threads);
            let events = event_tx.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Trainer::new(exp, options, command_rx, event_tx).run()
            }));
            let error = match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => panic_message(panic.as_ref()),
            };
            let _ = events.send(Event::Error(error));
        })
        .expect("cannot start the trainer thread");
    TrainerHandle {
        commands,
        events,
        thread,
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// What a batch-boundary check of the command queue decided.
enum Control {
    Continue,
    Stop,
}

struct Trainer {
    exp: Experiment,
    /// An edit waiting for the next epoch boundary.
    pending: Option<Experiment>,
    options: Options,
    commands: Receiver<Command>,
    events: Sender<Event>,
    run: Option<RunDir>,
    /// Set when the user asked to unfreeze (or a stall did) during the frozen phase.
    unfreeze_requested: bool,
}

/// The mutable state of a run in progress.
struct State {
    net: Classifier,
    phase: Phase,
    /// Epochs finished in total (the next epoch is `epoch + 1`).
    epoch: u32,
    /// Epochs finished in the current phase.
    phase_epochs: u32,
    opt: nn::Optimizer,
    lr: f64,
    stall: StallDetector,
    best: Option<EpochMetrics>,
    /// Backbone layers trainable in the current phase.
    unfrozen: usize,
    /// Outputs of the frozen part of the backbone kept for the current layer states.
    cache: Option<Cache>,
    /// A cache was over its memory budget in this phase: do not try again.
    cache_refused: bool,
}

/// A training batch made ready ahead of time by the input thread: the batch's random
/// generator (after the augmentation draws) and its augmented pixels, unless the
/// batch's backbone outputs are cached.
struct Prepared {
    rng: ChaCha8Rng,
    pixels: Option<Tensor>,
}

/// What the training batches of an epoch add up to.
struct Trained {
    loss_sum: f64,
    correct: i64,
    seen: usize,
    /// Seconds spent waiting for the input thread.
    input_wait: f64,
}

/// The random generator of batch `b` of 1-based epoch `epoch`.
fn batch_rng(seed: u64, epoch: u32, b: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64) << 32 ^ (b as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
}

/// `bf16` or `fp32`.
pub fn precision_name(kind: Kind) -> &'static str {
    if kind == Kind::BFloat16 {
        "bf16"
    } else {
        "fp32"
    }
}

impl Trainer {
    fn new(
        exp: Experiment,
        options: Options,
        commands: Receiver<Command>,
        events: Sender<Event>,
    ) -> Trainer {
        Trainer {
            exp,
            pending: None,
            options,
            commands,
            events,
            run: None,
            unfreeze_requested: false,
        }
    }

    fn emit(&mut self, event: Event) {
        if let Some(run) = &mut self.run {
            match &event {
                Event::Batch { .. } | Event::Loading { .. } => {}
                Event::EpochEnd(m) => run.log(&format!(
                    "epoch {} {} val_accuracy {:.4} val_loss {:.4}",
                    m.epoch,
                    m.phase.name(),
                    m.val_accuracy,
                    m.val_loss
                )),
                other => run.log(&format!("{other:?}")),
            }
        }
        let _ = self.events.send(event);
    }

    fn run(mut self) -> anyhow::Result<()> {
        if !self.options.autostart && !self.wait_for_start() {
            self.emit(Event::Finished {
                reason: EndReason::Stopped,
                best: None,
            });
            return Ok(());
        }
        let events = self.events.clone();
        let last_sent = std::sync::atomic::AtomicUsize::new(0);
        let progress = move |done: usize, total: usize| {
            // At most ~100 events for the whole load.
            let step = (total / 100).max(1);
            if done == total || done >= last_sent.load(std::sync::atomic::Ordering::Relaxed) + step
            {
                last_sent.store(done, std::sync::atomic::Ordering::Relaxed);
                let _ = events.send(Event::Loading { done, total });
            }
        };
        let data = Dataset::load(&self.exp, &progress)?;
        self.emit(Event::DataReady {
            classes: data.classes.clone(),
            train: data.train.len(),
            val: data.val.len(),
            skipped: data.skipped.len(),
        });
        let device = select_device(&self.exp.device)?;
        prepare_device(device);
        let mut net = Classifier::new(&self.exp, data.classes.len(), device)?;
        net.set_precision(Some(resolve_precision(self.exp.precision, device)));
        let weights = match &self.exp.model.weights {
            Weights::None => "none (trained from scratch)".to_string(),
            Weights::Imagenet => format!("ImageNet ({})", self.exp.model.backbone.name()),
            Weights::File(p) => p.display().to_string(),
        };
        self.emit(Event::ModelReady {
            device: device_name(device),
            weights,
            layers: net.table().layers().cloned().collect(),
        });
        let mut state = self.open_run(net, &data)?;
        let reason = self.train(&mut state, &data)?;
        self.finish(&state, reason)
    }

    /// Blocks until Start; false if told to stop first (or the UI went away).
    fn wait_for_start(&mut self) -> bool {
        loop {
            match self.commands.recv() {
                Ok(Command::Start) => return true,
                Ok(Command::Stop) | Err(_) => return false,
                Ok(Command::ApplyConfig(exp)) => self.exp = *exp,
                Ok(_) => {}
            }
        }
    }

    /// Creates the run folder, or reopens it and restores the last finished epoch.
    fn open_run(&mut self, net: Classifier, data: &Dataset) -> anyhow::Result<State> {
        let mut state = State {
            lr: self.exp.frozen.lr,
            opt: build_optimizer(
                &net,
                self.exp.frozen.optimizer,
                self.exp.frozen.lr,
                self.exp.frozen.momentum,
            )?,
            net,
            phase: Phase::Frozen,
            epoch: 0,
            phase_epochs: 0,
            stall: StallDetector::new(self.exp.stall.clone()),
            best: None,
            unfrozen: 0,
            cache: None,
            cache_refused: false,
        };
        match self.options.resume.clone() {
            None => {
                let run = RunDir::create(&self.options.runs_root, &self.exp)?;
                let files = |idx: &[usize]| -> Vec<(PathBuf, usize)> {
                    idx.iter()
                        .map(|&i| (data.files[i].clone(), data.labels[i]))
                        .collect()
                };
                run.write_split(&Split {
                    classes: data.classes.clone(),
                    train: files(&data.train),
                    val: files(&data.val),
                })?;
                // How the run was started, so `resume` continues it the same way.
                let how = serde_json::json!({
                    "phases": self.options.phases,
                    "export_model": self.options.export_model,
                });
                crate::fsutil::write_atomic(
                    &run.path.join("run.json"),
                    how.to_string().as_bytes(),
                )?;
                self.emit(Event::RunDir(run.path.clone()));
                self.run = Some(run);
                let start_finetune = self.options.phases == Phases::Finetune
                    || (self.exp.frozen.epochs == 0 && self.options.phases == Phases::Both);
                if start_finetune {
                    self.enter_finetune(&mut state)?;
                } else {
                    self.enter_frozen(&mut state)?;
                }
            }
            Some(dir) => {
                if let Ok(text) = std::fs::read_to_string(dir.join("run.json")) {
                    let how: serde_json::Value = serde_json::from_str(&text)?;
                    if let Ok(phases) = serde_json::from_value(how["phases"].clone()) {
                        self.options.phases = phases;
                    }
                    self.options.export_model |= how["export_model"] == true;
                }
                let (tensors, info) = run_dir::read_checkpoint(&dir.join("last.safetensors"))
                    .context("cannot resume: no usable last.safetensors (did an epoch finish?)")?;
                if info.classes != data.classes {
                    anyhow::bail!(
                        "cannot resume: the run had classes {:?}, the data folder now has {:?}",
                        info.classes,
                        data.classes
                    );
                }
                // Epochs after the checkpoint (if the process died between writing the
                // metrics line and the checkpoint) are dropped: they will run again.
                let metrics: Vec<EpochMetrics> = run_dir::read_metrics(&dir)?
                    .into_iter()
                    .filter(|m| m.epoch <= info.epoch)
                    .collect();
                let mut text = String::new();
                for m in &metrics {
                    text.push_str(&serde_json::to_string(m)?);
                    text.push('\n');
                }
                crate::fsutil::write_atomic(&dir.join("metrics.jsonl"), text.as_bytes())?;
                let mut run = RunDir::open(&dir)?;
                run.log(&format!(
                    "resumed after epoch {} ({})",
                    info.epoch,
                    info.phase.name()
                ));
                self.emit(Event::RunDir(dir.clone()));
                self.run = Some(run);
                state.epoch = info.epoch;
                match info.phase {
                    Phase::Frozen => self.enter_frozen(&mut state)?,
                    Phase::Finetune => {
                        self.enter_finetune_with(&mut state, info.unfrozen.max(1))?
                    }
                }
                state.net.load_checkpoint(&tensors)?;
                // Replay the history through the detector and the best-epoch tracker.
                for m in &metrics {
                    if m.phase != info.phase {
                        continue;
                    }
                    state.phase_epochs += 1;
                    let epoch = m.epoch.saturating_sub(1);
                    state
                        .stall
                        .observe(epoch, monitored(self.exp.stall.monitor, m));
                }
                // A stall with `on_stall: unfreeze` on the last epoch before the process
                // died still unfreezes.
                if let Some(last) = metrics.last() {
                    let unfreeze = last.stalled
                        && last.phase == Phase::Frozen
                        && self.exp.stall.on_stall == OnStall::Unfreeze;
                    self.unfreeze_requested = unfreeze;
                }
                state.best = metrics
                    .iter()
                    .fold(None, |best, m| better(&self.exp, best, m));
                // best.safetensors is written before last.safetensors: if the process
                // died between the two, or best is stale, make it match the metrics kept.
                if let Some(best) = &state.best {
                    let best_file = dir.join("best.safetensors");
                    let on_disk = run_dir::read_checkpoint(&best_file)
                        .ok()
                        .map(|(_, i)| i.epoch);
                    if on_disk != Some(best.epoch) && best.epoch == info.epoch {
                        std::fs::copy(dir.join("last.safetensors"), &best_file)?;
                    }
                }
            }
        }
        Ok(state)
    }

    fn enter_frozen(&mut self, s: &mut State) -> anyhow::Result<()> {
        s.cache = None;
        s.net.set_frozen_phase();
        s.phase = Phase::Frozen;
        s.phase_epochs = 0;
        s.unfrozen = 0;
        s.lr = self.exp.frozen.lr;
        s.opt = build_optimizer(
            &s.net,
            self.exp.frozen.optimizer,
            s.lr,
            self.exp.frozen.momentum,
        )?;
        s.stall.reset();
        self.phase_event(s);
        Ok(())
    }

    /// Unfreezes the last N layers and starts a fresh optimizer at the fine-tune rate.
    fn enter_finetune(&mut self, s: &mut State) -> anyhow::Result<()> {
        self.enter_finetune_with(s, self.exp.finetune.unfreeze_last)
    }

    /// Starts the fine-tune phase with `n` layers unfrozen.
    fn enter_finetune_with(&mut self, s: &mut State, n: usize) -> anyhow::Result<()> {
        self.set_finetune_layers(s, n)?;
        s.phase = Phase::Finetune;
        s.phase_epochs = 0;
        s.stall.reset();
        self.unfreeze_requested = false;
        self.phase_event(s);
        Ok(())
    }

    /// Makes the last `n` layers trainable with a fresh optimizer at the fine-tune
    /// rate, without restarting the phase (also used by live edits).
    fn set_finetune_layers(&mut self, s: &mut State, n: usize) -> anyhow::Result<()> {
        // The layer states change: cached outputs would be stale.
        s.cache = None;
        s.cache_refused = false;
        let ft = self.exp.finetune.clone();
        s.unfrozen = s.net.set_finetune_phase(n, ft.train_bn);
        s.lr = ft.lr;
        s.opt = build_optimizer(&s.net, ft.optimizer, ft.lr, ft.momentum)?;
        Ok(())
    }

    fn phase_event(&mut self, s: &State) {
        let event = Event::PhaseChanged {
            phase: s.phase,
            epoch: s.epoch + 1,
            trainable_layers: s.net.table().layers().filter(|l| l.trainable).count(),
            trainable_params: s.net.table().trainable_params(),
            layers: s.net.table().layers().cloned().collect(),
        };
        self.emit(event);
    }

    /// Takes an edit waiting since the last epoch: live settings apply now.
    fn apply_pending(&mut self, s: &mut State) -> anyhow::Result<()> {
        let Some(new) = self.pending.take() else {
            return Ok(());
        };
        let changes = crate::config::diff(&self.exp, &new);
        let live: Vec<&str> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Live)
            .map(|c| c.path.as_str())
            .collect();
        // Restart-kind settings (data, model, device, seed) keep their running values.
        let mut next = new.clone();
        next.data.dir = self.exp.data.dir.clone();
        next.data.image_size = self.exp.data.image_size;
        next.data.validation_split = self.exp.data.validation_split;
        next.data.batch_size = self.exp.data.batch_size;
        next.data.interpolation = self.exp.data.interpolation;
        next.model.backbone = self.exp.model.backbone;
        next.model.weights = self.exp.model.weights.clone();
        next.device = self.exp.device.clone();
        next.seed = self.exp.seed;
        let touches = |prefix: &str| live.iter().any(|p| p.starts_with(prefix));
        let old = std::mem::replace(&mut self.exp, next);
        let cache_settings = |e: &Experiment| {
            (
                e.precision,
                e.data.augment.clone(),
                e.frozen.feature_cache,
                e.frozen.augment_views,
                e.finetune.prefix_cache,
                e.finetune.prefix_cache_mb,
            )
        };
        if cache_settings(&old) != cache_settings(&self.exp) {
            s.cache = None;
            let kind = resolve_precision(self.exp.precision, s.net.device());
            if kind != s.net.precision() {
                s.net.set_precision(Some(kind));
            }
        }
        s.stall.set_config(self.exp.stall.clone());
        if (old.stall.monitor, old.stall.mode) != (self.exp.stall.monitor, self.exp.stall.mode) {
            // A different metric or direction: the old best means nothing now.
            s.stall.reset();
        }
        match s.phase {
            Phase::Frozen => {
                if touches("frozen.optimizer") || touches("frozen.momentum") {
                    s.opt = build_optimizer(
                        &s.net,
                        self.exp.frozen.optimizer,
                        self.exp.frozen.lr,
                        self.exp.frozen.momentum,
                    )?;
                }
                s.lr = self.exp.frozen.lr;
            }
            Phase::Finetune => {
                let ft = &self.exp.finetune;
                if ft.unfreeze_last != old.finetune.unfreeze_last
                    || ft.train_bn != old.finetune.train_bn
                {
                    let n = ft.unfreeze_last;
                    self.set_finetune_layers(s, n)?;
                    self.phase_event(s);
                } else if touches("finetune.optimizer") || touches("finetune.momentum") {
                    s.opt = build_optimizer(&s.net, ft.optimizer, ft.lr, ft.momentum)?;
                }
                s.lr = self.exp.finetune.lr;
            }
        }
        s.opt.set_lr(s.lr);
        if let Some(run) = &mut self.run {
            run.record_config(s.epoch + 1, &self.exp, &changes)?;
        }
        self.emit(Event::ConfigApplied(changes));
        Ok(())
    }

    fn train(&mut self, s: &mut State, data: &Dataset) -> anyhow::Result<EndReason> {
        loop {
            self.apply_pending(s)?;
            if self.options.max_epochs.is_some_and(|m| s.epoch >= m) {
                return Ok(EndReason::Completed);
            }
            if self.unfreeze_requested && s.phase == Phase::Frozen {
                self.enter_finetune(s)?;
            }
            let phase_len = match s.phase {
                Phase::Frozen => self.exp.frozen.epochs,
                Phase::Finetune => self.exp.finetune.epochs,
            };
            if s.phase_epochs >= phase_len {
                let more = s.phase == Phase::Frozen
                    && self.options.phases == Phases::Both
                    && self.exp.finetune.epochs > 0;
                if !more {
                    return Ok(EndReason::Completed);
                }
                self.enter_finetune(s)?;
                continue;
            }
            let Some(mut m) = self.epoch(s, data)? else {
                return Ok(EndReason::Stopped);
            };
            s.epoch += 1;
            s.phase_epochs += 1;
            let value = monitored(self.exp.stall.monitor, &m);
            let mut stop = false;
            if s.stall.observe(m.epoch.saturating_sub(1), value) {
                m.stalled = true;
                let (suggestion, action) = self.on_stall(s, value);
                m.suggestion = Some(suggestion);
                match action {
                    OnStall::Stop => stop = true,
                    OnStall::Unfreeze => self.unfreeze_requested = true,
                    OnStall::Suggest => {}
                }
            }
            // On disk before the next epoch: the metrics line, then the checkpoints.
            let improved = s.best.as_ref().is_none_or(|b| is_better(&self.exp, &m, b));
            let info = checkpoint_info(s, data);
            let tensors = s.net.checkpoint_tensors();
            let run = self.run.as_mut().expect("run folder open");
            run.append_metrics(&m)?;
            if improved {
                run.write_checkpoint("best", &tensors, &info)?;
                s.best = Some(m.clone());
            }
            let last = run.write_checkpoint("last", &tensors, &info)?;
            self.emit(Event::EpochEnd(m.clone()));
            if let Some(suggestion) = m.suggestion.clone().filter(|_| m.stalled) {
                self.emit(Event::Stalled {
                    epoch: m.epoch,
                    suggestion,
                });
            }
            self.emit(Event::Checkpoint(last));
            if stop {
                return Ok(EndReason::Stalled);
            }
        }
    }

    /// The suggestion for a stall in words, and what `on_stall` makes of it.
    fn on_stall(&self, s: &State, value: f64) -> (String, OnStall) {
        let st = &self.exp.stall;
        let name = monitor_name(st.monitor);
        let seen = format!(
            "{name} {value:.4}, no gain > {} for {} epochs",
            st.min_delta, st.patience
        );
        let can_unfreeze = s.phase == Phase::Frozen
            && self.options.phases == Phases::Both
            && self.exp.finetune.epochs > 0;
        match (st.on_stall, can_unfreeze) {
            (OnStall::Stop, _) => (format!("{seen}: stopping"), OnStall::Stop),
            (action, true) => {
                let ft = &self.exp.finetune;
                let what = format!(
                    "unfreeze the last {} layers at lr {:e}",
                    ft.unfreeze_last, ft.lr
                );
                if action == OnStall::Unfreeze {
                    (
                        format!(
                            "{seen}: unfreezing the last {} layers at lr {:e} from the next epoch",
                            ft.unfreeze_last, ft.lr
                        ),
                        OnStall::Unfreeze,
                    )
                } else {
                    (format!("{seen}: {what}"), OnStall::Suggest)
                }
            }
            (_, false) => (
                format!(
                    "{seen}: stop, or lower the learning rate (e.g. to {})",
                    short_float(s.lr / 10.0)
                ),
                OnStall::Suggest,
            ),
        }
    }

    /// Checks commands at a batch boundary. Pause blocks here until Resume or Stop.
    fn control(&mut self, s: &mut State) -> anyhow::Result<Control> {
        loop {
            let command = match self.commands.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return Ok(Control::Continue),
                // The UI is gone: nobody to train for.
                Err(TryRecvError::Disconnected) => return Ok(Control::Stop),
            };
            match command {
                Command::Start | Command::Resume => {}
                Command::Stop => return Ok(Control::Stop),
                Command::Unfreeze => {
                    if s.phase == Phase::Frozen {
                        self.enter_finetune(s)?;
                    }
                }
                Command::ApplyConfig(exp) => self.pending = Some(*exp),
                Command::Pause => {
                    self.emit(Event::Paused);
                    loop {
                        match self.commands.recv() {
                            Ok(Command::Resume) | Ok(Command::Start) => break,
                            Ok(Command::Stop) | Err(_) => return Ok(Control::Stop),
                            Ok(Command::Unfreeze) if s.phase == Phase::Frozen => {
                                self.enter_finetune(s)?
                            }
                            Ok(Command::ApplyConfig(exp)) => self.pending = Some(*exp),
                            Ok(_) => {}
                        }
                    }
                    self.emit(Event::Resumed);
                }
            }
        }
    }

    /// One epoch: training batches, then validation. None if stopped mid-epoch (after
    /// saving `stopped.safetensors`). An input thread augments the next batches while
    /// this one computes.
    fn epoch(&mut self, s: &mut State, data: &Dataset) -> anyhow::Result<Option<EpochMetrics>> {
        let number = s.epoch + 1;
        let start = Instant::now();
        let seed = self.exp.seed;
        if s.cache.is_none() {
            s.cache = self.plan_cache(s, data);
        }
        let source = s
            .cache
            .as_ref()
            .map_or(TrainSource::Images, |c| c.train_source(number));
        let mut compute = self.describe_compute(s, data, source);
        self.emit(Event::Compute(compute.clone()));
        let batches = data.train_batches(self.exp.data.batch_size, seed, number as u64);
        let need_pixels: Vec<bool> = {
            let table = s.cache.as_mut().and_then(|c| c.train_table(source));
            batches
                .iter()
                .map(|b| !table.as_ref().is_some_and(|t| t.has(b)))
                .collect()
        };
        let augment = self.exp.data.augment.clone();
        let device = s.net.device();
        let train_start = Instant::now();
        let trained = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared, String>>(2);
            let (batches, need_pixels, augment) = (&batches, &need_pixels, &augment);
            std::thread::Builder::new()
                .name("tlcap input".into())
                .spawn_scoped(scope, move || {
                    // One libtorch thread here: the trainer's threads keep the cores.
                    let _ = tch::get_num_threads();
                    tch::set_num_threads(1);
                    for (b, images) in batches.iter().enumerate() {
                        let mut rng = batch_rng(seed, number, b);
                        // A panic here becomes the trainer's error, with its message.
                        let pixels = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            need_pixels[b].then(|| {
                                let x = data.train_batch(images, augment, &mut rng).0;
                                // Pinned host memory: the copy to a GPU does not block.
                                if device.is_cuda() {
                                    x.pin_memory(device)
                                } else {
                                    x
                                }
                            })
                        }));
                        let ready = match pixels {
                            Ok(pixels) => Ok(Prepared { rng, pixels }),
                            Err(panic) => Err(panic_message(panic.as_ref())),
                        };
                        let failed = ready.is_err();
                        if tx.send(ready).is_err() || failed {
                            return; // the epoch ended early, or input failed
                        }
                    }
                })
                .expect("cannot start the input thread");
            let epoch = (number, source, &mut compute);
            self.train_batches(s, data, batches, rx, epoch, train_start)
        })?;
        let Some(Trained {
            loss_sum,
            correct,
            seen,
            input_wait,
        }) = trained
        else {
            return self.stopped(s, data);
        };
        let train_seconds = train_start.elapsed().as_secs_f64().max(1e-9);
        let val_start = Instant::now();
        let k = s.net.frozen_segments();
        let plain = s
            .cache
            .as_mut()
            .filter(|c| c.split == k)
            .map(|c| &mut c.plain);
        let v = validate(&s.net, data, self.exp.data.batch_size, plain);
        let val_seconds = val_start.elapsed().as_secs_f64().max(1e-9);
        if let Some((needed, budget)) = s.cache.as_ref().and_then(Cache::too_big) {
            self.emit(Event::Note(format!(
                "cache off: it would need {}, over the cache budget of {} (finetune.prefix_cache_mb, \
                 at most half the available memory)",
                human_bytes(needed),
                human_bytes(budget)
            )));
            s.cache = None;
            s.cache_refused = true;
        }
        let seen = seen.max(1);
        Ok(Some(EpochMetrics {
            epoch: number,
            phase: s.phase,
            loss: loss_sum / seen as f64,
            accuracy: correct as f64 / seen as f64,
            val_loss: v.loss,
            val_accuracy: v.confusion.accuracy(),
            val_precision: v.binary.map(|b| b.precision),
            val_recall: v.binary.map(|b| b.recall),
            val_f1: v.binary.map(|b| b.f1),
            val_auc: v.binary.and_then(|b| b.auc),
            confusion: v.confusion,
            lr: s.lr,
            seconds: start.elapsed().as_secs_f64(),
            images_per_sec: seen as f64 / train_seconds,
            val_images_per_sec: data.val.len() as f64 / val_seconds,
            compute,
            input_wait_seconds: input_wait,
            stalled: false,
            suggestion: None,
        }))
    }

    /// The training batches of an epoch, fed by the input thread through `prepared`;
    /// None if told to stop.
    fn train_batches(
        &mut self,
        s: &mut State,
        data: &Dataset,
        batches: &[Vec<usize>],
        prepared: std::sync::mpsc::Receiver<Result<Prepared, String>>,
        (number, source, compute): (u32, TrainSource, &mut String),
        train_start: Instant,
    ) -> anyhow::Result<Option<Trained>> {
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        let mut input_wait = 0.0;
        let mut split = s.net.frozen_segments();
        for (b, images) in batches.iter().enumerate() {
            if let Control::Stop = self.control(s)? {
                return Ok(None);
            }
            let waiting = Instant::now();
            let ready = prepared
                .recv()
                .context("the input thread ended early")?
                .map_err(|e| anyhow!("preparing batch {}: {e}", b + 1))?;
            input_wait += waiting.elapsed().as_secs_f64();
            let Prepared { mut rng, pixels } = ready;
            // An Unfreeze or an edit between batches may change what is frozen.
            let k = s.net.frozen_segments();
            if s.cache.as_ref().is_some_and(|c| c.split != k) {
                s.cache = None;
            }
            if k != split {
                split = k;
                let now = self.describe_compute(s, data, source);
                *compute = format!("{now} from batch {}", b + 1);
                self.emit(Event::Compute(compute.clone()));
            }
            let mut table = s.cache.as_mut().and_then(|c| c.train_table(source));
            let prefix = match table.as_ref().and_then(|t| t.get(images)) {
                Some(stored) => stored,
                None => {
                    let x = match pixels {
                        Some(x) => x,
                        None => {
                            // Cached when the epoch began, not any more: augment here.
                            rng = batch_rng(self.exp.seed, number, b);
                            data.train_batch(images, &self.exp.data.augment, &mut rng).0
                        }
                    };
                    let out = s.net.run_prefix(&x, k);
                    if let Some(t) = table.as_mut() {
                        t.put(images, &out);
                    }
                    out
                }
            };
            let logits = s.net.forward_train_from(&prefix, k, &mut rng);
            let y = data.label_tensor(images);
            let loss = s.net.loss(&logits, &y);
            s.opt.backward_step(&loss);
            let n = images.len();
            loss_sum += loss.double_value(&[]) * n as f64;
            correct += predictions(&s.net, &logits)
                .eq_tensor(&y.to_device(logits.device()))
                .sum(Kind::Int64)
                .int64_value(&[]);
            seen += n;
            let elapsed = train_start.elapsed().as_secs_f64().max(1e-9);
            self.emit(Event::Batch {
                epoch: number,
                batch: b + 1,
                of: batches.len(),
                loss: loss_sum / seen as f64,
                images_per_sec: seen as f64 / elapsed,
            });
        }
        Ok(Some(Trained {
            loss_sum,
            correct,
            seen,
            input_wait,
        }))
    }

    /// A Stop mid-epoch: saves `stopped.safetensors` and ends the epoch without a row.
    fn stopped(&mut self, s: &State, data: &Dataset) -> anyhow::Result<Option<EpochMetrics>> {
        let info = checkpoint_info(s, data);
        let tensors = s.net.checkpoint_tensors();
        let run = self.run.as_mut().expect("run folder open");
        let path = run.write_checkpoint("stopped", &tensors, &info)?;
        self.emit(Event::Checkpoint(path));
        Ok(None)
    }

    /// What to keep for the current phase and layer states (see [`Cache`]): nothing
    /// when no leading part of the backbone is frozen, the phase's cache setting is
    /// `off`, or a cache was refused for memory earlier in this phase.
    fn plan_cache(&self, s: &State, data: &Dataset) -> Option<Cache> {
        let split = s.net.frozen_segments();
        let setting = match s.phase {
            Phase::Frozen => self.exp.frozen.feature_cache,
            Phase::Finetune => self.exp.finetune.prefix_cache,
        };
        if split == 0 || setting == FeatureCache::Off || s.cache_refused {
            return None;
        }
        let random = self.exp.data.augment.is_random();
        let views = match s.phase {
            Phase::Frozen if random => self.exp.frozen.augment_views as usize,
            _ => 0,
        };
        let budget = (self.exp.finetune.prefix_cache_mb << 20)
            .min(crate::data::memory_budget_bytes())
            / (1 + views as u64);
        let all: Vec<usize> = (0..data.len()).collect();
        let plain = if random { &data.val } else { &all };
        Some(Cache {
            split,
            plain: FeatureTable::new(plain, data.len(), budget),
            train_plain: !random,
            views: (0..views)
                .map(|_| FeatureTable::new(&data.train, data.len(), budget))
                .collect(),
        })
    }

    /// How this epoch computes, in words: the precision of the frozen part and what
    /// is cached (shown by the dashboard, kept in `metrics.jsonl`).
    fn describe_compute(&self, s: &mut State, data: &Dataset, source: TrainSource) -> String {
        let precision = precision_name(s.net.precision());
        let split = s.net.frozen_segments();
        let segments = s.net.backbone.segments();
        if split == 0 {
            // Nothing is frozen: everything runs in float32 on the model itself.
            return "fp32, no frozen part (the first segment trains)".into();
        }
        let frozen_part = if split == segments {
            "features".to_string()
        } else {
            let last = s.net.backbone.segment_layers(split - 1);
            let name = s
                .net
                .table()
                .layers()
                .nth(last.end - 1)
                .map_or(String::new(), |l| l.name.clone());
            format!("prefix up to {name}")
        };
        let Some(cache) = s.cache.as_mut() else {
            return format!("{precision} frozen part, no cache");
        };
        let bytes = cache.bytes();
        let table = cache.train_table(source);
        let state = |t: &FeatureTable| {
            if t.has(&data.train) {
                "cached"
            } else {
                "caching"
            }
        };
        let what = match (source, table) {
            (TrainSource::View(v), Some(t)) => format!(
                "{frozen_part} of view {}/{} {}",
                v + 1,
                self.exp.frozen.augment_views,
                state(t)
            ),
            (_, Some(t)) => format!("{frozen_part} {}", state(t)),
            (_, None) => format!("validation {frozen_part} cached (training is augmented)"),
        };
        if bytes == 0 {
            format!("{precision} frozen part, {what}")
        } else {
            format!("{precision} frozen part, {what} ({})", human_bytes(bytes))
        }
    }

    fn finish(&mut self, s: &State, reason: EndReason) -> anyhow::Result<()> {
        let summary = serde_json::json!({
            "experiment": self.exp.name,
            "backbone": self.exp.model.backbone.name(),
            "reason": reason,
            "epochs": s.epoch,
            "phase": s.phase,
            "best": s.best,
            "parameters": s.net.table().layers().map(|l| l.params).sum::<usize>() + s.net.head_params(),
            "trainable_parameters": s.net.table().trainable_params() + s.net.head_params(),
            "device": device_name(s.net.device()),
        });
        if let Some(run) = &self.run {
            run.write_summary(&summary)?;
            if self.options.export_model {
                let mut all: Vec<(String, Tensor)> = s
                    .net
                    .vs
                    .variables()
                    .into_iter()
                    .map(|(n, t)| (n, t.detach().to_device(tch::Device::Cpu)))
                    .collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                let path = run.path.join("model.safetensors");
                crate::weights::write_safetensors(&path, &all, None)?;
            }
        }
        self.emit(Event::Finished {
            reason,
            best: s.best.clone(),
        });
        Ok(())
    }
}

/// What a checkpoint written now records: the last finished epoch and its phase.
fn checkpoint_info(s: &State, data: &Dataset) -> CheckpointInfo {
    CheckpointInfo {
        epoch: s.epoch,
        phase: s.phase,
        unfrozen: s.unfrozen,
        classes: data.classes.clone(),
        precision: Some(if s.net.precision() == Kind::BFloat16 {
            Precision::Bf16
        } else {
            Precision::Fp32
        }),
    }
}

fn build_optimizer(
    net: &Classifier,
    kind: Optimizer,
    lr: f64,
    momentum: f64,
) -> anyhow::Result<nn::Optimizer> {
    let opt = match kind {
        Optimizer::Adam => nn::Adam::default().build(&net.vs, lr),
        Optimizer::Sgd => nn::Sgd {
            momentum,
            ..Default::default()
        }
        .build(&net.vs, lr),
    };
    opt.map_err(|e| anyhow!("cannot build the optimizer: {e}"))
}

/// Predicted class indices from logits.
fn predictions(net: &Classifier, logits: &Tensor) -> Tensor {
    if net.classes == 2 {
        logits.view([-1]).gt(0.0).to_kind(Kind::Int64)
    } else {
        logits.argmax(-1, false)
    }
}

struct Validation {
    loss: f64,
    confusion: Confusion,
    binary: Option<super::metrics::BinaryScores>,
}

/// Loss, confusion matrix and (two classes) binary scores on the validation split, in
/// inference mode. The frozen part's outputs come from `stored` when it has them and
/// are stored there otherwise.
fn validate(
    net: &Classifier,
    data: &Dataset,
    batch_size: usize,
    mut stored: Option<&mut FeatureTable>,
) -> Validation {
    let (mut loss_sum, mut truth, mut predicted, mut prob1) =
        (0.0, Vec::new(), Vec::new(), Vec::new());
    let k = net.frozen_segments();
    tch::no_grad(|| {
        for images in data.val_batches(batch_size) {
            let prefix = match stored.as_ref().and_then(|t| t.get(&images)) {
                Some(p) => p,
                None => {
                    let (x, _) = data.val_batch(&images);
                    let out = net.run_prefix(&x, k);
                    if let Some(t) = stored.as_mut() {
                        t.put(&images, &out);
                    }
                    out
                }
            };
            let logits = net.forward_from(&prefix, k);
            let y = data.label_tensor(&images);
            loss_sum += net.loss(&logits, &y).double_value(&[]) * images.len() as f64;
            let probs = net.probabilities(&logits).to_device(tch::Device::Cpu);
            let p = Vec::<f32>::try_from(probs.flatten(0, -1)).unwrap_or_default();
            let classes = net.classes;
            for (i, &label) in Vec::<i64>::try_from(&y)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let row = &p[i * classes..(i + 1) * classes];
                let best = (0..classes)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                truth.push(label as usize);
                predicted.push(best);
                if classes == 2 {
                    prob1.push(row[1] as f64);
                }
            }
        }
    });
    let n = truth.len().max(1);
    Validation {
        loss: loss_sum / n as f64,
        confusion: Confusion::new(net.classes, &truth, &predicted),
        binary: (net.classes == 2).then(|| binary_scores(&truth, &prob1)),
    }
}

/// A float in scientific notation with at most 4 significant digits: `1e-6`, not
/// `1.0000000000000002e-6`.
fn short_float(x: f64) -> String {
    let text = format!("{x:.3e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if mantissa.contains('.') => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        _ => text,
    }
}

/// The value of the monitored metric in an epoch row.
pub fn monitored(monitor: Monitor, m: &EpochMetrics) -> f64 {
    match monitor {
        Monitor::ValAccuracy => m.val_accuracy,
        Monitor::ValLoss => m.val_loss,
        Monitor::Accuracy => m.accuracy,
        Monitor::Loss => m.loss,
    }
}

fn monitor_name(monitor: Monitor) -> &'static str {
    match monitor {
        Monitor::ValAccuracy => "val_accuracy",
        Monitor::ValLoss => "val_loss",
        Monitor::Accuracy => "accuracy",
        Monitor::Loss => "loss",
    }
}

/// Whether `m` beats `best` on the stall monitor.
fn is_better(exp: &Experiment, m: &EpochMetrics, best: &EpochMetrics) -> bool {
    let (a, b) = (
        monitored(exp.stall.monitor, m),
        monitored(exp.stall.monitor, best),
    );
    // NaN is the worst value: anything real beats it, it beats nothing.
    if a.is_nan() || b.is_nan() {
        return !a.is_nan() && b.is_nan();
    }
    match direction(exp.stall.monitor, exp.stall.mode) {
        Direction::Max => a > b,
        Direction::Min => a < b,
    }
}

fn better(exp: &Experiment, best: Option<EpochMetrics>, m: &EpochMetrics) -> Option<EpochMetrics> {
    match best {
        Some(b) if !is_better(exp, m, &b) => Some(b),
        _ => Some(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_floats() {
        assert_eq!(super::short_float(1e-5 / 10.0), "1e-6");
        assert_eq!(super::short_float(2.5e-4), "2.5e-4");
    }
}
