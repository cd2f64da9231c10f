//! What the dashboard knows about one experiment's run: its status, progress, epoch
//! rows, stall and layers, as the trainer's events reported them.

use std::path::PathBuf;

use crate::config::Experiment;
use crate::model::LayerInfo;
use crate::train::events::{Compute, Suggestion};
use crate::train::stall::BestRule;
use crate::train::{EndReason, EpochMetrics, Phase};

/// What the user sees about one experiment's run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStatus {
    /// Not started.
    Idle,
    /// Decoding images.
    Loading {
        /// Images decoded.
        done: usize,
        /// Images to decode.
        total: usize,
    },
    /// Training.
    Running,
    /// Held by the user.
    Paused,
    /// Ended.
    Done(EndReason),
    /// Attached: the run's heartbeat stopped `seconds` ago while it was running (its
    /// process died, or its machine went away).
    Lost {
        /// Seconds since the last heartbeat.
        seconds: u64,
    },
    /// Failed with this message.
    Failed(String),
}

/// One run as the dashboard follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    /// Status.
    pub status: RunStatus,
    /// What the user asked of the run that its trainer has not confirmed yet
    /// (`pausing…`, `resuming…`, `stopping…`): shown in the header until it does.
    pub pending: Option<&'static str>,
    /// Current phase.
    pub phase: Phase,
    /// The epoch in progress (1-based); 0 before the first batch.
    pub epoch: u32,
    /// Epochs the run plans in all, as its trainer (or heartbeat) last said; 0 until
    /// it says.
    pub total_epochs: u32,
    /// Batch progress in the current epoch: (done, of).
    pub batch: (usize, usize),
    /// Validation of the current epoch in progress: (images done, of).
    pub validating: Option<(usize, usize)>,
    /// Recent batch losses as (epochs done, loss): x = epoch - 1 + batch / batches.
    pub batch_losses: std::collections::VecDeque<(f64, f64)>,
    /// Running training loss of the current epoch.
    pub batch_loss: f64,
    /// Training images/s in the current epoch.
    pub images_per_sec: f64,
    /// Every finished epoch.
    pub epochs: Vec<EpochMetrics>,
    /// First epochs of each phase change after the first phase: (epoch, phase).
    pub phase_marks: Vec<(u32, Phase)>,
    /// The stall suggestion in force (cleared when acted on, or dismissed with Esc).
    pub stall: Option<Suggestion>,
    /// The phase the stall was about ended as planned without the user acting: the
    /// banner stays up, saying so, until Esc.
    pub stall_outlived: bool,
    /// The backbone's layers (trainable marks as of the last phase change).
    pub layers: Vec<LayerInfo>,
    /// The deepest block group progressive unfreezing reached in this phase, if any.
    pub deepest_group: Option<String>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Where the backbone weights came from.
    pub weights: String,
    /// The run folder.
    pub run_dir: Option<PathBuf>,
    /// Training / validation images.
    pub images: (usize, usize),
    /// How the current epoch computes (precision, what is cached).
    pub compute: Option<Compute>,
    /// Which epoch is the best (the experiment's stall monitor).
    pub best_rule: BestRule,
    /// The settings the run started with: restart-only edits are counted from these
    /// (None for an attached run folder without its settings).
    pub started_with: Option<Box<Experiment>>,
    /// Attached: what its run folder's files could not say (a heartbeat that does not
    /// parse, damaged metrics lines), shown over its table.
    pub file_problems: Vec<String>,
    /// The held-out test accuracy from the run folder's `test.json`, if evaluated.
    pub test_accuracy: Option<f64>,
}

/// Batch losses kept for the loss chart.
pub const BATCH_HISTORY: usize = 2000;

impl RunView {
    pub(super) fn new(exp: &Experiment) -> RunView {
        RunView {
            best_rule: BestRule::of(exp),
            started_with: Some(Box::new(exp.clone())),
            file_problems: Vec::new(),
            test_accuracy: None,
            ..RunView::bare()
        }
    }

    /// A run whose settings are unknown (an attached run folder without a config).
    pub(super) fn bare() -> RunView {
        RunView {
            best_rule: BestRule::default(),
            status: RunStatus::Loading { done: 0, total: 0 },
            pending: None,
            phase: Phase::Frozen,
            epoch: 0,
            total_epochs: 0,
            batch: (0, 0),
            validating: None,
            batch_losses: std::collections::VecDeque::new(),
            batch_loss: 0.0,
            images_per_sec: 0.0,
            epochs: Vec::new(),
            phase_marks: Vec::new(),
            deepest_group: None,
            stall: None,
            stall_outlived: false,
            layers: Vec::new(),
            device: String::new(),
            weights: String::new(),
            run_dir: None,
            images: (0, 0),
            compute: None,
            started_with: None,
            file_problems: Vec::new(),
            test_accuracy: None,
        }
    }

    /// True while a trainer thread is alive for this run.
    pub fn is_active(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Loading { .. } | RunStatus::Running | RunStatus::Paused
        )
    }

    /// Index into `epochs` of the best row, by the rule `best.safetensors` follows.
    pub fn best(&self) -> Option<usize> {
        self.best_rule.best_index(&self.epochs)
    }

    /// Seconds left: the rest of this epoch plus the remaining epochs, at the pace
    /// of the current phase. Epochs that read a complete cache run far faster than the
    /// one that fills it, so each part is paced by a finished epoch of this phase that
    /// computed the same way (cache filling or complete), else by the current epoch's
    /// own training rate plus the last validation's time. None before the first batch
    /// of a phase has given a pace.
    pub fn eta_seconds(&self) -> Option<f64> {
        use crate::train::events::CacheUse;
        let last_finished = self.epochs.last().map_or(0, |m| m.epoch);
        let in_progress = self.epoch > last_finished;
        let val_seconds = self
            .epochs
            .last()
            .map(|m| self.images.1 as f64 / m.val_images_per_sec)
            .filter(|s| s.is_finite())
            .unwrap_or(0.0);
        let live = (self.images_per_sec > 0.0 && self.images.0 > 0)
            .then(|| self.images.0 as f64 / self.images_per_sec + val_seconds);
        // Some(complete) for an epoch that trains from a cache, None without one.
        let cached = |c: &Compute| match c.cache {
            CacheUse::Training { complete } | CacheUse::View { complete, .. } => Some(complete),
            CacheUse::Off | CacheUse::ValidationOnly => None,
        };
        let phase_epochs = || {
            self.epochs
                .iter()
                .rev()
                .filter(|m| m.phase == self.phase && m.mixed.is_none())
        };
        let last_of_phase = phase_epochs().next().map(|m| m.seconds);
        let like = |state: Option<bool>| {
            phase_epochs()
                .find(|m| cached(&m.compute) == state)
                .map(|m| m.seconds)
        };
        let now = self.compute.as_ref().and_then(cached);
        let (this_pace, later_pace) = match now {
            None => {
                let pace = last_of_phase.or(live);
                (pace, pace)
            }
            // Filling the cache: this epoch like earlier filling ones; the later ones
            // read it, like a complete one did (unknown yet: the last of the phase).
            Some(false) => (
                like(Some(false)).or(live),
                like(Some(true)).or(last_of_phase).or(live),
            ),
            // Reading a complete cache: this one and the later ones alike.
            Some(true) => {
                let pace = like(Some(true)).or(live);
                (pace, pace)
            }
        };
        let (this_pace, later_pace) = (this_pace?, later_pace?);
        let this_epoch = match (in_progress, self.validating, self.batch) {
            (false, ..) => 0.0,
            (true, Some((done, of)), _) if of > 0 => {
                val_seconds.min(this_pace) * (of - done.min(of)) as f64 / of as f64
            }
            (true, _, (done, of)) if of > 0 => this_pace * (of - done.min(of)) as f64 / of as f64,
            (true, ..) => this_pace,
        };
        let current = if in_progress {
            self.epoch
        } else {
            last_finished
        };
        let left_epochs = self.total_epochs.saturating_sub(current) as f64;
        Some(this_epoch + left_epochs * later_pace)
    }
}
