//! The trainer's controller: runs on its own OS thread, owns the phases and the
//! command protocol, and drives the epochs. It takes [`Command`]s, emits [`Event`]s,
//! and never touches the terminal. The jobs it delegates each have their own file:
//! opening or resuming the run folder ([`super::resume`]), live edits
//! ([`super::live_edit`]), one epoch ([`super::epoch`]), validation
//! ([`super::validate`]), cache planning ([`super::plan`]) and the stall helpers
//! ([`super::stall`]).

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use anyhow::anyhow;
use tch::nn::{self, OptimizerConfig};

use super::cache::Cache;
use super::epoch::checkpoint_info;
pub use super::events::Phases;
use super::events::{Command, EndReason, EpochMetrics, Event, Phase, StallAction, Suggestion};
use super::predictions::ValPredictions;
use super::run_dir::{RunDir, Summary};
use super::stall::{monitored, BestRule, StallDetector};
use super::status::{RunState, HEARTBEAT};
use super::steering::{Next, Steering};
use crate::config::{Experiment, OnStall, Optimizer, Weights};
use crate::data::Dataset;
use crate::model::classifier::Classifier;
use crate::runtime::{
    device_name, intra_op_threads, prepare_device, resolve_precision, select_device,
};

/// Trainer threads are named with this prefix and the experiment name.
pub const THREAD_PREFIX: &str = "trainer ";

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
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// What a batch-boundary check of the command queue decided.
pub(super) enum Control {
    Continue,
    Stop,
}

pub(super) struct Trainer {
    pub(super) exp: Experiment,
    /// An edit waiting for the next epoch boundary.
    pub(super) pending: Option<Experiment>,
    pub(super) options: Options,
    pub(super) commands: Receiver<Command>,
    pub(super) events: Sender<Event>,
    pub(super) run: Option<RunDir>,
    /// Set when the user asked to unfreeze (or a stall did) during the frozen phase.
    pub(super) unfreeze_requested: bool,
    /// Why the run was stopped, when a stop said so.
    pub(super) stopped_by: Option<String>,
    /// The control file and the heartbeat.
    pub(super) steering: Steering,
    /// Batches done of the epoch in progress, and its training images/s.
    pub(super) progress: ((usize, usize), f64),
    /// Time spent paused since the run began: left out of epoch seconds and images/s.
    pub(super) paused: std::time::Duration,
}

/// The mutable state of a run in progress.
pub(super) struct State {
    pub(super) net: Classifier,
    pub(super) phase: Phase,
    /// Epochs finished in total (the next epoch is `epoch + 1`).
    pub(super) epoch: u32,
    /// Epochs finished in the current phase.
    pub(super) phase_epochs: u32,
    pub(super) opt: nn::Optimizer,
    pub(super) lr: f64,
    pub(super) stall: StallDetector,
    pub(super) best: Option<EpochMetrics>,
    /// Backbone layers trainable in the current phase.
    pub(super) unfrozen: usize,
    /// The last validation's class probabilities (flat, validation order).
    pub(super) val_probabilities: Vec<f32>,
    /// Outputs of the frozen part of the backbone kept for the current layer states.
    pub(super) cache: Option<Cache>,
    /// A cache was over its memory budget in this phase: do not try again.
    pub(super) cache_refused: bool,
}

impl Trainer {
    pub(super) fn new(
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
            stopped_by: None,
            steering: Steering::default(),
            progress: ((0, 0), 0.0),
            paused: std::time::Duration::ZERO,
        }
    }

    pub(super) fn emit(&mut self, event: Event) {
        if let Some(run) = &mut self.run {
            match &event {
                Event::Batch { .. } | Event::Loading { .. } | Event::Validating { .. } => {}
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

    pub(super) fn run(mut self) -> anyhow::Result<()> {
        let result = self.run_inner();
        if result.is_err() {
            self.beat_failed();
        }
        result
    }

    fn run_inner(&mut self) -> anyhow::Result<()> {
        if !self.options.autostart && !self.wait_for_start() {
            self.emit(Event::Finished {
                reason: EndReason::Stopped,
                best: None,
                stopped_by: self.stopped_by.clone(),
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
            precision: crate::runtime::precision_of(net.precision()),
        });
        let mut state = self.open_run(net, &data)?;
        self.open_steering()?;
        self.beat(&state, RunState::Running, (0, 0), 0.0, true);
        let reason = self.train(&mut state, &data)?;
        self.finish(&state, reason)
    }

    /// Blocks until Start; false if told to stop first (or the UI went away).
    pub(super) fn wait_for_start(&mut self) -> bool {
        loop {
            match self.commands.recv() {
                Ok(Command::Start) => return true,
                Ok(Command::Stop) | Err(_) => return false,
                Ok(Command::StopBecause(why)) => {
                    self.stopped_by = Some(why);
                    return false;
                }
                Ok(Command::ApplyConfig(exp)) => self.exp = *exp,
                Ok(_) => {}
            }
        }
    }

    pub(super) fn enter_frozen(&mut self, s: &mut State) -> anyhow::Result<()> {
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
    pub(super) fn enter_finetune(&mut self, s: &mut State) -> anyhow::Result<()> {
        self.enter_finetune_with(s, self.exp.finetune.unfreeze_last)
    }

    /// Starts the fine-tune phase with `n` layers unfrozen.
    pub(super) fn enter_finetune_with(&mut self, s: &mut State, n: usize) -> anyhow::Result<()> {
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
    pub(super) fn set_finetune_layers(&mut self, s: &mut State, n: usize) -> anyhow::Result<()> {
        // The layer states change: cached outputs would be stale.
        s.cache = None;
        s.cache_refused = false;
        let ft = self.exp.finetune.clone();
        s.unfrozen = s.net.set_finetune_phase(n, ft.train_bn);
        s.lr = ft.lr;
        s.opt = build_optimizer(&s.net, ft.optimizer, ft.lr, ft.momentum)?;
        Ok(())
    }

    pub(super) fn phase_event(&mut self, s: &State) {
        let event = Event::PhaseChanged {
            phase: s.phase,
            epoch: s.epoch + 1,
            trainable_layers: s.net.table().layers().filter(|l| l.trainable).count(),
            trainable_params: s.net.table().trainable_params(),
            layers: s.net.table().layers().cloned().collect(),
        };
        self.emit(event);
        self.beat(s, RunState::Running, (0, 0), 0.0, true);
    }

    pub(super) fn train(&mut self, s: &mut State, data: &Dataset) -> anyhow::Result<EndReason> {
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
            let (mut stop, mut reduce) = (false, false);
            if s.stall.observe(m.epoch.saturating_sub(1), value) {
                m.stalled = true;
                let (suggestion, action) = self.on_stall(s, value);
                m.suggestion = Some(suggestion);
                match action {
                    OnStall::Stop => stop = true,
                    OnStall::Unfreeze => self.unfreeze_requested = true,
                    OnStall::ReduceLr => reduce = true,
                    OnStall::Suggest => {}
                }
            }
            // On disk before the next epoch: the metrics line, then the checkpoints.
            let improved = s
                .best
                .as_ref()
                .is_none_or(|b| BestRule::of(&self.exp).is_better(&m, b));
            let info = checkpoint_info(s, data);
            let tensors = s.net.checkpoint_tensors();
            let run = self.run.as_mut().expect("run folder open");
            run.append_metrics(&m)?;
            if improved {
                run.write_checkpoint("best", &tensors, &info)?;
                let files = data
                    .val
                    .iter()
                    .map(|&i| (data.files[i].clone(), data.labels[i]))
                    .collect();
                ValPredictions::new(
                    (m.epoch, m.phase),
                    &data.classes,
                    files,
                    &s.val_probabilities,
                )
                .write(&run.path)?;
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
            if reduce {
                self.lower_lr(s, None, "on_stall: reduce_lr")?;
            }
            self.beat(s, RunState::Running, (0, 0), 0.0, true);
            if stop {
                return Ok(EndReason::Stalled);
            }
        }
    }

    /// The suggestion for a stall, and what `on_stall` makes of it.
    pub(super) fn on_stall(&self, s: &State, value: f64) -> (Suggestion, OnStall) {
        let st = &self.exp.stall;
        let can_unfreeze = s.phase == Phase::Frozen
            && self.options.phases == Phases::Both
            && self.exp.finetune.epochs > 0;
        let ft = &self.exp.finetune;
        let lower = (s.lr * st.factor).max(st.min_lr);
        let (action, on_stall) = match (st.on_stall, can_unfreeze) {
            (OnStall::Stop, _) => (StallAction::Stopping, OnStall::Stop),
            (OnStall::ReduceLr, _) if lower < s.lr => (
                StallAction::LowerLr {
                    from: s.lr,
                    to: lower,
                },
                OnStall::ReduceLr,
            ),
            (action, true) => {
                let automatic = action == OnStall::Unfreeze;
                (
                    StallAction::Unfreeze {
                        layers: ft.unfreeze_last,
                        lr: ft.lr,
                        automatic,
                    },
                    if automatic {
                        OnStall::Unfreeze
                    } else {
                        OnStall::Suggest
                    },
                )
            }
            (_, false) => (StallAction::StopOrLowerLr { to: lower }, OnStall::Suggest),
        };
        let suggestion = Suggestion {
            monitor: st.monitor,
            value,
            min_delta: st.min_delta,
            patience: st.patience,
            action,
        };
        (suggestion, on_stall)
    }

    /// Checks commands (and control-file lines) at a batch boundary. Pause blocks here
    /// until Resume or Stop, keeping the heartbeat going.
    pub(super) fn control(&mut self, s: &mut State) -> anyhow::Result<Control> {
        loop {
            let command = match self.next_command(None) {
                Next::Command(c) => c,
                Next::Empty => return Ok(Control::Continue),
                // The UI is gone: nobody to train for.
                Next::Gone => return Ok(Control::Stop),
            };
            match command {
                Command::Start | Command::Resume => {}
                Command::Stop => return Ok(Control::Stop),
                Command::StopBecause(why) => {
                    self.stopped_by = Some(why);
                    return Ok(Control::Stop);
                }
                Command::Unfreeze => {
                    if s.phase == Phase::Frozen {
                        self.enter_finetune(s)?;
                    }
                }
                Command::ApplyConfig(exp) => self.pending = Some(*exp),
                Command::LowerLr => {
                    let next_batch = self.progress.0 .0 + 1;
                    self.lower_lr(s, Some(next_batch), "r")?;
                }
                Command::Pause => {
                    let since = std::time::Instant::now();
                    let held = self.hold(s);
                    self.paused += since.elapsed();
                    if let Some(control) = held? {
                        return Ok(control);
                    }
                }
            }
        }
    }

    /// Multiplies the current phase's learning rate by `stall.factor` (not below
    /// `stall.min_lr`) from now on, and records it in the run folder like an edit of
    /// that phase's `lr`. `batch`: the first batch of the epoch in progress at the new
    /// rate (None between epochs).
    pub(super) fn lower_lr(
        &mut self,
        s: &mut State,
        batch: Option<usize>,
        by: &str,
    ) -> anyhow::Result<()> {
        let st = &self.exp.stall;
        let to = (s.lr * st.factor).max(st.min_lr);
        if to >= s.lr {
            self.emit(Event::Note(format!(
                "the learning rate {} is at stall.min_lr already: not lowered",
                crate::text::short_float(s.lr)
            )));
            return Ok(());
        }
        let mut next = self.exp.clone();
        match s.phase {
            Phase::Frozen => next.frozen.lr = to,
            Phase::Finetune => next.finetune.lr = to,
        }
        let changes = crate::config::diff(&self.exp, &next);
        self.exp = next;
        let from = s.lr;
        s.lr = to;
        s.opt.set_lr(to);
        let epoch = s.epoch + 1;
        if let Some(run) = &mut self.run {
            run.record_config(epoch, &self.exp, &changes)?;
        }
        self.emit(Event::LrLowered {
            from,
            to,
            epoch,
            batch: batch.filter(|b| *b > 1),
            by: by.to_string(),
        });
        Ok(())
    }

    /// Paused: waits for Resume (None) or a stop, keeping the heartbeat going.
    fn hold(&mut self, s: &mut State) -> anyhow::Result<Option<Control>> {
        self.emit(Event::Paused);
        let (batch, ips) = self.progress;
        self.beat(s, RunState::Paused, batch, ips, true);
        loop {
            let command = match self.next_command(Some(HEARTBEAT)) {
                Next::Command(c) => c,
                Next::Empty => {
                    self.beat(s, RunState::Paused, batch, ips, false);
                    continue;
                }
                Next::Gone => return Ok(Some(Control::Stop)),
            };
            match command {
                Command::Resume | Command::Start => break,
                Command::Stop => return Ok(Some(Control::Stop)),
                Command::StopBecause(why) => {
                    self.stopped_by = Some(why);
                    return Ok(Some(Control::Stop));
                }
                Command::Unfreeze if s.phase == Phase::Frozen => self.enter_finetune(s)?,
                Command::ApplyConfig(exp) => self.pending = Some(*exp),
                Command::LowerLr => {
                    let next_batch = self.progress.0 .0 + 1;
                    self.lower_lr(s, Some(next_batch), "r")?;
                }
                _ => {}
            }
        }
        self.emit(Event::Resumed);
        self.beat(s, RunState::Running, batch, ips, true);
        Ok(None)
    }

    pub(super) fn finish(&mut self, s: &State, reason: EndReason) -> anyhow::Result<()> {
        let summary = Summary {
            experiment: self.exp.name.clone(),
            backbone: self.exp.model.backbone.name().to_string(),
            reason,
            epochs: s.epoch,
            phase: s.phase,
            best: s.best.clone(),
            parameters: s.net.table().layers().map(|l| l.params).sum::<usize>()
                + s.net.head_params(),
            trainable_parameters: s.net.table().trainable_params() + s.net.head_params(),
            device: device_name(s.net.device()),
            stopped_by: self.stopped_by.clone(),
        };
        if let Some(run) = &self.run {
            run.write_summary(&summary)?;
            if self.options.export_model {
                let path = run.path.join("model.safetensors");
                crate::weights::write_safetensors(&path, &s.net.all_variables(), None)?;
            }
        }
        self.beat(s, RunState::Finished, (0, 0), 0.0, true);
        self.emit(Event::Finished {
            reason,
            best: s.best.clone(),
            stopped_by: self.stopped_by.clone(),
        });
        Ok(())
    }
}

pub(super) fn build_optimizer(
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
