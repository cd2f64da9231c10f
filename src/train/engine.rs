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

use super::events::{Command, EndReason, EpochMetrics, Event, Phase};
use super::metrics::{binary_scores, Confusion};
use super::run_dir::{self, CheckpointInfo, RunDir, Split};
use super::stall::{direction, Direction, StallDetector};
use crate::config::{ChangeKind, Experiment, FeatureCache, Monitor, OnStall, Optimizer, Weights};
use crate::data::Dataset;
use crate::model::classifier::{device_name, select_device, Classifier};

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
    let (commands, command_rx) = channel();
    let (event_tx, events) = channel();
    let thread = std::thread::Builder::new()
        .name(format!("{THREAD_PREFIX}{}", exp.name))
        .spawn(move || {
            let events = event_tx.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Trainer::new(exp, options, command_rx, event_tx).run()
            }));
            let error = match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the trainer panicked".into()),
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
    /// Frozen-phase feature cache: pooled backbone features of every image, by index.
    features: Option<Tensor>,
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
        let net = Classifier::new(&self.exp, data.classes.len(), device)?;
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
            features: None,
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
        // The backbone changes from now on: cached features would be stale.
        s.features = None;
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
                    "{seen}: stop, or lower the learning rate (e.g. to {:e})",
                    s.lr / 10.0
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
    /// saving `stopped.safetensors`).
    fn epoch(&mut self, s: &mut State, data: &Dataset) -> anyhow::Result<Option<EpochMetrics>> {
        let number = s.epoch + 1;
        let start = Instant::now();
        let seed = self.exp.seed;
        // Building the feature cache counts as training time of the first epoch.
        let train_start = Instant::now();
        if !self.cache_features(s, data)? {
            return self.stopped(s, data);
        }
        let batches = data.train_batches(self.exp.data.batch_size, seed, number as u64);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        for (b, images) in batches.iter().enumerate() {
            if let Control::Stop = self.control(s)? {
                return self.stopped(s, data);
            }
            let mut rng = ChaCha8Rng::seed_from_u64(
                seed ^ (number as u64) << 32 ^ (b as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            );
            let cached = s.features.as_ref().filter(|_| s.phase == Phase::Frozen);
            let (logits, y) = match cached {
                Some(features) => {
                    let rows: Vec<i64> = images.iter().map(|&i| i as i64).collect();
                    let f = features.index_select(0, &Tensor::from_slice(&rows));
                    (
                        s.net.forward_train_cached(&f, &mut rng),
                        data.label_tensor(images),
                    )
                }
                None => {
                    let (x, y) = data.train_batch(images, &self.exp.data.augment, &mut rng);
                    (s.net.forward_train(&x, &mut rng), y)
                }
            };
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
        let train_seconds = train_start.elapsed().as_secs_f64().max(1e-9);
        let val_start = Instant::now();
        let cached = s.features.as_ref().filter(|_| s.phase == Phase::Frozen);
        let v = validate(&s.net, data, self.exp.data.batch_size, cached);
        let val_seconds = val_start.elapsed().as_secs_f64().max(1e-9);
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
            stalled: false,
            suggestion: None,
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

    /// Makes sure the frozen-phase feature cache exists when it applies (frozen phase,
    /// `feature_cache: auto`, pretrained backbone, no random augmentation) and is gone
    /// otherwise. Commands are taken between batches; false if told to stop.
    fn cache_features(&mut self, s: &mut State, data: &Dataset) -> anyhow::Result<bool> {
        let applies = s.phase == Phase::Frozen
            && self.exp.frozen.feature_cache == FeatureCache::Auto
            && s.net.pretrained
            && !self.exp.data.augment.is_random();
        if !applies {
            s.features = None;
            return Ok(true);
        }
        if s.features.is_some() {
            return Ok(true);
        }
        let start = Instant::now();
        let all: Vec<usize> = (0..data.len()).collect();
        let chunks: Vec<&[usize]> = all.chunks(self.exp.data.batch_size.max(1)).collect();
        let mut parts = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            if let Control::Stop = self.control(s)? {
                return Ok(false);
            }
            if s.phase != Phase::Frozen {
                return Ok(true); // unfrozen meanwhile: no cache
            }
            let (x, _) = data.val_batch(chunk);
            parts.push(s.net.features(&x));
            self.emit(Event::Caching {
                done: i + 1,
                total: chunks.len(),
            });
        }
        s.features = Some(Tensor::cat(&parts, 0));
        self.emit(Event::Note(format!(
            "frozen phase: backbone features of {} images cached in {:.1} s; the head trains on them",
            data.len(),
            start.elapsed().as_secs_f64()
        )));
        Ok(true)
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
/// inference mode; from cached backbone features when given.
fn validate(
    net: &Classifier,
    data: &Dataset,
    batch_size: usize,
    cached: Option<&Tensor>,
) -> Validation {
    let (mut loss_sum, mut truth, mut predicted, mut prob1) =
        (0.0, Vec::new(), Vec::new(), Vec::new());
    tch::no_grad(|| {
        for images in data.val_batches(batch_size) {
            let (logits, y) = match cached {
                Some(features) => {
                    let rows: Vec<i64> = images.iter().map(|&i| i as i64).collect();
                    let f = features.index_select(0, &Tensor::from_slice(&rows));
                    (net.head_eval(&f), data.label_tensor(&images))
                }
                None => {
                    let (x, y) = data.val_batch(&images);
                    (net.forward(&x), y)
                }
            };
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
