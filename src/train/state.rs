//! What a run is made of while it goes: the options it was started with, and the
//! mutable state of a run in progress (the network, its optimizer, the phase, the
//! stall detector, the cache, the run folder and where its events go).

use std::path::PathBuf;

use anyhow::anyhow;
use tch::nn::{self, OptimizerConfig};

use super::cache::Cache;
use super::events::{EpochMetrics, Event, Phase, Phases};
use super::run_dir::{CheckpointInfo, RunDir};
use super::schedule::{PhaseSchedule, ScheduleSettings};
use super::stall::StallDetector;
use crate::config::{Experiment, FinetunePhase, Optimizer};
use crate::model::classifier::Classifier;

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where run folders go (`runs/` by default).
    pub runs_root: PathBuf,
    /// Which phases.
    pub phases: Phases,
    /// Stop after this many epochs in total.
    pub max_epochs: Option<u32>,
    /// Start at once; otherwise wait for [`super::Command::Start`].
    pub autostart: bool,
    /// Continue this run folder from its last finished epoch.
    pub resume: Option<PathBuf>,
    /// Start anew in this existing run folder instead of a new one: a folder whose
    /// earlier attempt ended before its first epoch finished (see
    /// [`super::run_dir::RunDir::restart`]).
    pub fresh_in: Option<PathBuf>,
    /// At the end, also write `model.safetensors`: every variable (backbone and head),
    /// a standalone model that needs no base weights.
    pub export_model: bool,
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
    /// The optimizer's parameter groups (see [`Classifier::assign_lr_groups`]).
    pub(super) lr_groups: usize,
    /// The phase's learning rate: its `lr`, or lower after a stall or `r`; the
    /// schedule's peak.
    pub(super) lr: f64,
    /// The rate the new head trained at in the last step (the schedule applied).
    pub(super) lr_used: f64,
    /// Block groups unfrozen by progressive unfreezing in this phase.
    pub(super) deepened: u32,
    /// A schedule (one_cycle) moved Adam's beta1 away from its 0.9.
    beta1_moved: bool,
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
    /// The run folder: metrics, checkpoints, settings history, `events.log`.
    pub(super) run: RunDir,
    /// Where the run's events go.
    pub(super) events: flume::Sender<Event>,
}

impl State {
    /// A new run state in the frozen phase at epoch 0, writing to `run`.
    pub(super) fn new(
        net: Classifier,
        exp: &Experiment,
        run: RunDir,
        events: flume::Sender<Event>,
    ) -> anyhow::Result<State> {
        let (opt, lr_groups) = build_optimizer(
            &net,
            exp.frozen.optimizer,
            exp.frozen.lr,
            exp.frozen.momentum,
        )?;
        Ok(State {
            lr: exp.frozen.lr,
            lr_used: exp.frozen.lr,
            opt,
            lr_groups,
            deepened: 0,
            beta1_moved: false,
            net,
            phase: Phase::Frozen,
            epoch: 0,
            phase_epochs: 0,
            stall: StallDetector::new(exp.stall.clone()),
            best: None,
            unfrozen: 0,
            val_probabilities: Vec::new(),
            cache: None,
            cache_refused: false,
            run,
            events,
        })
    }

    /// Sends an event, and writes it to `events.log` unless it is only progress.
    pub(super) fn emit(&mut self, event: Event) {
        match &event {
            Event::Batch { .. } | Event::Loading { .. } | Event::Validating { .. } => {}
            Event::EpochEnd(m) => self.run.log(&format!(
                "epoch {} {} val_accuracy {:.4} val_loss {:.4}",
                m.epoch,
                m.phase.name(),
                m.val_accuracy,
                m.val_loss
            )),
            other => self.run.log(&format!("{other:?}")),
        }
        let _ = self.events.send(event);
    }

    /// The frozen phase from its start: only the head trains, at `frozen.lr`.
    pub(super) fn enter_frozen(&mut self, exp: &Experiment) -> anyhow::Result<()> {
        self.cache = None;
        self.net.set_frozen_phase();
        self.phase = Phase::Frozen;
        self.phase_epochs = 0;
        self.unfrozen = 0;
        self.deepened = 0;
        self.lr = exp.frozen.lr;
        self.lr_used = self.lr;
        (self.opt, self.lr_groups) = build_optimizer(
            &self.net,
            exp.frozen.optimizer,
            self.lr,
            exp.frozen.momentum,
        )?;
        self.stall.reset();
        Ok(())
    }

    /// The fine-tune phase from its start, with the last `n` layers trainable.
    pub(super) fn enter_finetune(&mut self, ft: &FinetunePhase, n: usize) -> anyhow::Result<()> {
        self.set_finetune_layers(ft, n)?;
        self.phase = Phase::Finetune;
        self.phase_epochs = 0;
        self.deepened = 0;
        self.stall.reset();
        Ok(())
    }

    /// Makes the last `n` layers trainable with a fresh optimizer at the fine-tune
    /// rate, without restarting the phase (also used by live edits).
    pub(super) fn set_finetune_layers(
        &mut self,
        ft: &FinetunePhase,
        n: usize,
    ) -> anyhow::Result<()> {
        // The layer states change: cached outputs would be stale.
        self.cache = None;
        self.cache_refused = false;
        self.unfrozen = self.net.set_finetune_phase(n, ft.train_bn);
        self.lr = ft.lr;
        self.lr_used = ft.lr;
        (self.opt, self.lr_groups) = build_optimizer(&self.net, ft.optimizer, ft.lr, ft.momentum)?;
        Ok(())
    }

    /// Sets the rates of training step `t` of the phase (0-based; `steps_per_epoch`
    /// steps an epoch): the schedule's factor of [`State::lr`], times
    /// `finetune.layer_decay` per block group below the head, and Adam's beta1 for
    /// one_cycle. A constant schedule with one rate for every group leaves the
    /// optimizer as it is.
    pub(super) fn set_step_rates(&mut self, exp: &Experiment, t: u64, steps_per_epoch: usize) {
        let (settings, decay, optimizer) = match self.phase {
            Phase::Frozen => (
                ScheduleSettings::from(&exp.frozen),
                1.0,
                exp.frozen.optimizer,
            ),
            Phase::Finetune => (
                ScheduleSettings::from(&exp.finetune),
                exp.finetune.layer_decay,
                exp.finetune.optimizer,
            ),
        };
        let schedule = PhaseSchedule::new(settings, steps_per_epoch);
        self.lr_used = self.lr * schedule.factor(t);
        let beta1 = match (schedule.beta1(t), optimizer) {
            (Some(beta1), Optimizer::Adam) => Some(beta1),
            // Edited away from one_cycle: Adam's own beta1 again.
            (None, Optimizer::Adam) if self.beta1_moved => Some(ADAM_BETA1),
            _ => None,
        };
        if let Some(beta1) = beta1 {
            self.opt.set_momentum(beta1);
            self.beta1_moved = beta1 != ADAM_BETA1;
        }
        if schedule.is_flat() && decay == 1.0 {
            return;
        }
        if decay == 1.0 {
            self.opt.set_lr(self.lr_used);
        } else {
            let mut rate = self.lr_used;
            for group in 0..self.lr_groups {
                self.opt.set_lr_group(group, rate);
                rate *= decay;
            }
        }
    }

    /// What a checkpoint written now records: the last finished epoch and its phase;
    /// multi-label: the labels' `thresholds` at that epoch.
    pub(super) fn checkpoint_info(
        &self,
        classes: &[String],
        thresholds: Option<Vec<f64>>,
    ) -> CheckpointInfo {
        CheckpointInfo {
            epoch: self.epoch,
            phase: self.phase,
            unfrozen: self.unfrozen,
            classes: classes.to_vec(),
            precision: Some(crate::runtime::precision_of(self.net.precision())),
            multilabel: self.net.multilabel,
            thresholds: thresholds.unwrap_or_default(),
        }
    }
}

/// Adam's beta1 as tch builds it (PyTorch's default).
const ADAM_BETA1: f64 = 0.9;

/// A fresh optimizer over the trainable variables, in parameter groups by depth (see
/// [`Classifier::assign_lr_groups`]), and the number of groups.
pub(super) fn build_optimizer(
    net: &Classifier,
    kind: Optimizer,
    lr: f64,
    momentum: f64,
) -> anyhow::Result<(nn::Optimizer, usize)> {
    let groups = net.assign_lr_groups();
    let opt = match kind {
        Optimizer::Adam => nn::Adam::default().build(&net.vs, lr),
        Optimizer::Sgd => nn::Sgd {
            momentum,
            ..Default::default()
        }
        .build(&net.vs, lr),
    };
    let mut opt = opt.map_err(|e| anyhow!("cannot build the optimizer: {e}"))?;
    // zero_grad hands the variables to libtorch's optimizer, and with them the
    // groups, so rates can be set per group before the first step.
    opt.zero_grad();
    Ok((opt, groups))
}

/// The message of a caught panic.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}
