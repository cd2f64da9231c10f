//! The trainer's typed interface: commands in, events out.

use serde::{Deserialize, Serialize};

use super::metrics::Confusion;

impl EpochMetrics {
    /// The balanced accuracy: the row's own, else (rows written before it was
    /// recorded) from the confusion matrix.
    pub fn balanced_accuracy(&self) -> f64 {
        self.val_balanced_accuracy
            .unwrap_or_else(|| self.confusion.balanced_accuracy())
    }

    /// The mean ROC AUC over the labels (multi-label), else the AUC (two classes).
    pub fn mean_auc(&self) -> Option<f64> {
        match &self.multilabel {
            Some(s) => s.mean_auc,
            None => self.val_auc,
        }
    }
}
use crate::config::{Change, Experiment};
use crate::model::LayerInfo;

/// The two phases of the recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Backbone frozen, only the new head trains.
    Frozen,
    /// The last N backbone layers unfrozen at a tiny learning rate.
    Finetune,
}

impl Phase {
    /// `frozen` or `finetune`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Frozen => "frozen",
            Phase::Finetune => "finetune",
        }
    }
}

/// What anyone steering a run asks of its trainer: the dashboard's keys, a headless
/// run's signals and edits, and the lines of a run folder's control file
/// (`control.jsonl`, one JSON object per line, e.g. `{"command": "pause"}`) are all
/// this one type. Everything but `Start` takes effect at the next batch boundary;
/// settings apply from the next epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Begin (a trainer spawned without autostart waits for this). Not a control line.
    #[serde(skip)]
    Start,
    /// Hold after the current batch.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Switch to the fine-tune phase now.
    Unfreeze,
    /// Multiply the current learning rate by `stall.factor` (not below `stall.min_lr`)
    /// from the next batch.
    LowerLr,
    /// Save a checkpoint and finish.
    Stop {
        /// Who asked, when something other than the user did (`SIGTERM`, `stdout
        /// closed`): recorded in `summary.json` as `stopped_by`. A control line's stop
        /// is recorded as coming from the control file.
        #[serde(skip)]
        by: Option<String>,
    },
    /// Merge these settings (a part of an experiment file, as JSON) into the running
    /// ones; applied like a saved edit.
    Set {
        /// E.g. `{"finetune": {"lr": 5e-6}}`.
        settings: serde_json::Value,
    },
    /// New settings from an edited file; live changes apply from the next epoch. Not a
    /// control line (a control line says `set`).
    #[serde(skip)]
    Apply(Box<Experiment>),
}

impl Command {
    /// The plain stop the user asks for.
    pub const STOP: Command = Command::Stop { by: None };

    /// The command's name, as a control line writes it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Unfreeze => "unfreeze",
            Command::LowerLr => "lower_lr",
            Command::Stop { .. } => "stop",
            Command::Set { .. } | Command::Apply(_) => "set",
        }
    }

    /// The command as a run that is steered only through its control file takes it:
    /// `start` resumes, full settings are sent as `set`. None if the settings cannot
    /// be written as JSON.
    pub fn for_control_file(self) -> Option<Command> {
        Some(match self {
            Command::Start => Command::Resume,
            Command::Stop { .. } => Command::STOP,
            Command::Apply(exp) => Command::Set {
                settings: serde_json::to_value(&exp).ok()?,
            },
            other => other,
        })
    }
}

/// Everything measured in one epoch: one line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based, counted across phases.
    pub epoch: u32,
    /// The phase the epoch ended in.
    pub phase: Phase,
    /// Mean training loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Training accuracy.
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    /// Mean validation loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// Validation accuracy.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_accuracy: f64,
    /// Two classes: precision of class 1 on validation.
    pub val_precision: Option<f64>,
    /// Two classes: recall of class 1 on validation.
    pub val_recall: Option<f64>,
    /// Two classes: F1 of class 1 on validation.
    pub val_f1: Option<f64>,
    /// Two classes: ROC AUC on validation.
    pub val_auc: Option<f64>,
    /// Mean recall over the classes (see [`Confusion::balanced_accuracy`]); absent in
    /// runs written before it was recorded.
    #[serde(default)]
    pub val_balanced_accuracy: Option<f64>,
    /// Each class's recall on validation, in class order.
    #[serde(default)]
    pub val_class_recall: Vec<f64>,
    /// Validation confusion matrix (rows: true class, columns: predicted).
    pub confusion: Confusion,
    /// The learning rate the new head trained at in the epoch's last step (the
    /// phase's `lr` with the schedule applied).
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Block groups progressive unfreezing had added in this phase by this epoch
    /// (`on_stall: unfreeze_more`, `u` while fine-tuning).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deepened: u32,
    /// Wall seconds for the epoch (training and validation).
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    /// Training images per second.
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_sec: f64,
    /// Validation images per second.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_images_per_sec: f64,
    /// How the epoch computed (precision, cache); the default in older files.
    #[serde(default, deserialize_with = "lenient")]
    pub compute: Compute,
    /// Seconds the training loop waited for the input thread (augmentation) to hand
    /// over a batch: near 0 when input keeps up with compute.
    #[serde(default)]
    pub input_wait_seconds: f64,
    /// Whether the stall detector fired at this epoch.
    pub stalled: bool,
    /// What to do about the stall; None in older files.
    #[serde(default, deserialize_with = "lenient")]
    pub suggestion: Option<Suggestion>,
    /// An epoch in which the fine-tune phase began part-way (an unfreeze between
    /// batches): its batches before that ran frozen at another rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed: Option<MixedEpoch>,
    /// The learning rate was lowered part-way through this epoch (`r`, a `lower_lr`
    /// line): `lr` is the rate it ended at; this says from which batch and from what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_lowered: Option<LrLoweredAt>,
    /// A multi-label task's scores per label and their summaries (then
    /// `val_accuracy` is the fraction of right (image, label) decisions, `val_auc`
    /// the mean AUC, `val_f1` the macro F1, and the confusion matrix is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multilabel: Option<super::metrics::MultiLabelScores>,
}

/// Where in an epoch the learning rate was lowered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrLoweredAt {
    /// The first batch (1-based) at the lower rate.
    pub from_batch: usize,
    /// The rate of the batches before it.
    pub lr_before: f64,
}

/// Reads a field written by this version, or its default when an older file has
/// something else there (older files kept these as text).
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

/// The part of the backbone that does not train and runs without a graph.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrozenPart {
    /// Nothing is frozen: the first segment trains, all in float32.
    #[default]
    Nothing,
    /// The whole backbone (the features).
    Features,
    /// The segments up to and including this layer.
    PrefixUpTo(String),
}

/// What the cache holds for the training batches of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheUse {
    /// No cache.
    #[default]
    Off,
    /// The frozen part's outputs of the training images; `complete` once every image
    /// is in.
    Training {
        /// Every training image is in.
        complete: bool,
    },
    /// Augmented view `view` (0-based) of `of`.
    View {
        /// 0-based.
        view: usize,
        /// Views in all (`frozen.augment_views`).
        of: u32,
        /// Every training image is in.
        complete: bool,
    },
    /// Only validation outputs (training is augmented afresh each epoch).
    ValidationOnly,
}

/// How an epoch computes: the number format of the frozen part and what is cached.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Compute {
    /// `bf16` or `fp32` for the frozen part.
    pub precision: Option<crate::config::Precision>,
    /// Which part is frozen.
    pub frozen: FrozenPart,
    /// What the cache holds.
    pub cache: CacheUse,
    /// Bytes the cache holds now.
    pub cache_bytes: u64,
    /// Set when what is frozen changed mid-epoch: the 1-based batch from which this
    /// holds.
    pub from_batch: Option<usize>,
}

/// What to do about a stall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StallAction {
    /// The run stops (`on_stall: stop`).
    Stopping,
    /// Unfreeze the last `layers` layers at `lr`: by itself from the next epoch
    /// (`automatic`, `on_stall: unfreeze`), or when the user presses `u`.
    Unfreeze {
        /// Layers to unfreeze.
        layers: usize,
        /// The fine-tune learning rate.
        lr: f64,
        /// Done by the trainer (`on_stall: unfreeze`).
        automatic: bool,
    },
    /// While fine-tuning: unfreeze the next block group down, `group`, so that the last
    /// `layers` layers train; by itself from the next epoch (`automatic`, `on_stall:
    /// unfreeze_more`), or when the user presses `u`.
    UnfreezeMore {
        /// The group to unfreeze.
        group: String,
        /// Layers trainable after it.
        layers: usize,
        /// Done by the trainer (`on_stall: unfreeze_more`).
        automatic: bool,
    },
    /// `on_stall: reduce_lr`: the learning rate goes from `from` to `to` from the next
    /// epoch.
    LowerLr {
        /// The rate until now.
        from: f64,
        /// The rate from the next epoch.
        to: f64,
    },
    /// Nothing left to unfreeze: stop, or lower the learning rate (e.g. to `to`).
    StopOrLowerLr {
        /// A suggested lower rate.
        to: f64,
    },
}

/// One step of progressive unfreezing: the block group unfrozen and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deepened {
    /// The block group unfrozen (see `tlcap-tui layers`).
    pub group: String,
    /// Block groups now reached, of `of` in the backbone.
    pub groups: usize,
    /// The backbone's block groups.
    pub of: usize,
    /// Who asked: `on_stall: unfreeze_more`, `u`, or the control file.
    pub by: String,
}

/// A stall and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// The monitored metric.
    pub monitor: crate::config::Monitor,
    /// Its value at the stall.
    pub value: f64,
    /// The `min_delta` no epoch gained more than.
    pub min_delta: f64,
    /// For this many epochs.
    pub patience: u32,
    /// What to do.
    pub action: StallAction,
}

/// JSON has no NaN: serde_json writes a NaN metric (a diverged epoch) as `null`;
/// read it back as NaN instead of failing on the whole file.
fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Which phases a run goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// How an epoch was split between the two phases.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MixedEpoch {
    /// The first batch (1-based) that fine-tuned; the ones before ran frozen.
    pub finetune_from_batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// The learning rate of the frozen batches (`lr` is the fine-tune rate).
    pub frozen_lr: f64,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// All epochs of all phases ran.
    Completed,
    /// The user stopped it.
    Stopped,
    /// The stall detector stopped it (`on_stall: stop`).
    Stalled,
}

/// What the trainer reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// Decoding images: `done` of `total`.
    Loading {
        /// Images decoded.
        done: usize,
        /// Images to decode.
        total: usize,
    },
    /// How the epoch about to run computes: the precision of the frozen part of the
    /// backbone and what of it is cached.
    Compute(Compute),
    /// Something worth telling the user, in words.
    Note(String),
    /// The data is in memory.
    DataReady {
        /// Class names (sub-folder names), in label order.
        classes: Vec<String>,
        /// Training images.
        train: usize,
        /// Validation images.
        val: usize,
        /// Files skipped (unreadable, not images).
        skipped: usize,
    },
    /// The network is built and its weights loaded.
    ModelReady {
        /// `cpu` or `cuda:N`.
        device: String,
        /// Where the backbone weights came from, in words.
        weights: String,
        /// The backbone's layers.
        layers: Vec<LayerInfo>,
        /// The number format the frozen part runs in.
        precision: crate::config::Precision,
    },
    /// The run folder in use.
    RunDir(std::path::PathBuf),
    /// A training batch finished.
    Batch {
        /// 1-based epoch.
        epoch: u32,
        /// 1-based batch.
        batch: usize,
        /// Batches in the epoch.
        of: usize,
        /// Mean loss so far this epoch.
        loss: f64,
        /// This batch's mean loss.
        batch_loss: f64,
        /// Training images per second so far this epoch.
        images_per_sec: f64,
    },
    /// Validation in progress: `done` of `total` validation images.
    Validating {
        /// 1-based epoch.
        epoch: u32,
        /// Validation images done.
        done: usize,
        /// Validation images in all.
        total: usize,
    },
    /// The learning rate was lowered (the `r` key, a control line, or `on_stall:
    /// reduce_lr`); recorded in the run folder like an edit.
    LrLowered {
        /// The rate until now.
        from: f64,
        /// The new rate.
        to: f64,
        /// 1-based epoch it applies in.
        epoch: u32,
        /// Part-way through that epoch: the first batch (1-based) at the new rate.
        batch: Option<usize>,
        /// Who asked: `r`, `control.jsonl`, `on_stall: reduce_lr`.
        by: String,
    },
    /// An epoch finished (already on disk).
    EpochEnd(EpochMetrics),
    /// The stall detector fired.
    Stalled {
        /// 1-based epoch.
        epoch: u32,
        /// What to do.
        suggestion: Suggestion,
    },
    /// A phase began.
    PhaseChanged {
        /// The new phase.
        phase: Phase,
        /// The first epoch (1-based) it applies to.
        epoch: u32,
        /// Layers now trainable.
        trainable_layers: usize,
        /// Values now trainable in the backbone.
        trainable_params: usize,
        /// The layer table after the change.
        layers: Vec<LayerInfo>,
        /// Epochs the run now plans in all (the trainer's count: its options, the
        /// phases it runs, `--max-epochs`).
        epochs: u32,
        /// Set when progressive unfreezing made the fine-tune phase go deeper (the
        /// phase itself goes on).
        deepened: Option<Deepened>,
    },
    /// Holding after a Pause.
    Paused,
    /// Running again.
    Resumed,
    /// An edit (a saved file, a `set` line) reached the trainer: its live settings
    /// apply from this 1-based epoch, which `ConfigApplied` confirms then. Said by the
    /// code that applies it, so the promise holds.
    EditQueued {
        /// The first epoch the edit applies to.
        epoch: u32,
    },
    /// An edited file was taken: what changed and when it applies.
    ConfigApplied {
        /// What changed (live ones apply from `epoch`; restart-only ones keep their
        /// running values).
        changes: Vec<Change>,
        /// The 1-based epoch the live changes apply from.
        epoch: u32,
        /// Epochs the run now plans in all.
        epochs: u32,
    },
    /// A checkpoint was written.
    Checkpoint(std::path::PathBuf),
    /// A command arrived from outside the UI (a line of the run folder's control file)
    /// and was taken.
    Control {
        /// `pause`, `resume`, `unfreeze`, `stop` or `set`.
        command: String,
        /// Where it came from, e.g. `control.jsonl line 3`.
        source: String,
    },
    /// The run ended; nothing follows.
    Finished {
        /// Why.
        reason: EndReason,
        /// The best epoch by the stall monitor, if any epoch finished.
        best: Option<EpochMetrics>,
        /// What stopped it, when something said (`SIGTERM`, `control.jsonl`, ...).
        stopped_by: Option<String>,
    },
    /// The run failed; nothing follows.
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diverged_epoch_reads_back() {
        let m = EpochMetrics {
            epoch: 3,
            phase: Phase::Finetune,
            loss: f64::NAN,
            accuracy: 0.5,
            val_loss: f64::INFINITY,
            val_accuracy: 0.5,
            val_precision: None,
            val_balanced_accuracy: None,
            val_class_recall: Vec::new(),
            val_recall: None,
            val_f1: None,
            val_auc: None,
            confusion: Confusion::new(2, &[0], &[1]),
            lr: 1e-5,
            seconds: 1.0,
            images_per_sec: 10.0,
            val_images_per_sec: 10.0,
            compute: Compute::default(),
            input_wait_seconds: 0.0,
            stalled: false,
            suggestion: None,
            mixed: None,
            lr_lowered: None,
            multilabel: None,
            deepened: 0,
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(line.contains("\"loss\":null"), "{line}");
        let back: EpochMetrics = serde_json::from_str(&line).unwrap();
        assert!(back.loss.is_nan() && back.val_loss.is_nan());
        assert_eq!(back.accuracy, 0.5);
    }

    /// Lines written before compute and suggestion were typed still read (as their
    /// defaults).
    #[test]
    fn older_text_fields_read_as_defaults() {
        let m = EpochMetrics {
            epoch: 1,
            phase: Phase::Frozen,
            loss: 0.5,
            accuracy: 0.5,
            val_loss: 0.5,
            val_accuracy: 0.5,
            val_precision: None,
            val_balanced_accuracy: None,
            val_class_recall: Vec::new(),
            val_recall: None,
            val_f1: None,
            val_auc: None,
            confusion: Confusion::new(2, &[0], &[1]),
            lr: 1e-3,
            seconds: 1.0,
            images_per_sec: 10.0,
            val_images_per_sec: 10.0,
            compute: Compute::default(),
            input_wait_seconds: 0.0,
            stalled: true,
            suggestion: None,
            mixed: None,
            lr_lowered: None,
            multilabel: None,
            deepened: 0,
        };
        let mut v = serde_json::to_value(&m).unwrap();
        v["compute"] = "fp32 frozen part, no cache".into();
        v["suggestion"] = "val_accuracy 0.5, no gain: unfreeze".into();
        let back: EpochMetrics = serde_json::from_value(v).unwrap();
        assert_eq!(back.compute, Compute::default());
        assert_eq!(back.suggestion, None);
        let old_line = serde_json::to_value(&m).unwrap();
        let mut without = old_line.as_object().unwrap().clone();
        without.remove("compute");
        without.remove("suggestion");
        let back: EpochMetrics = serde_json::from_value(without.into()).unwrap();
        assert_eq!(back.compute, Compute::default());
    }
}
