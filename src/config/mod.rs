//! Experiment files: the schema, Keras-style defaults, validation with file/line/column,
//! and the diff between two versions (what may change live, what needs a restart).

mod diff;
mod load;
mod schema;
mod validate;

pub use diff::{diff, Change, ChangeKind, LiveEdit};
pub use load::{
    experiment_files, is_experiment_file, load, load_all, load_file, parse_str, positions_of,
    ConfigError, ConfigErrors, Loaded, MAX_FILE_BYTES,
};
pub use schema::json_schema;

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Shown in the dashboard and used for the run folder; defaults to the file name.
    #[serde(default)]
    pub name: String,
    /// The images: one sub-folder per class, like Keras `flow_from_directory`.
    pub data: DataConfig,
    /// The backbone and the new head.
    pub model: ModelConfig,
    /// Phase 1: backbone frozen, only the head trains.
    #[serde(default)]
    pub frozen: FrozenPhase,
    /// Phase 2: the last N backbone layers unfrozen at a tiny learning rate.
    #[serde(default)]
    pub finetune: FinetunePhase,
    /// When validation stops improving (Keras EarlyStopping / ReduceLROnPlateau semantics).
    #[serde(default)]
    pub stall: StallConfig,
    /// `auto` (CUDA when available, else the CPU), `cpu`, `cuda`, `cuda:N` or `mps`
    /// (Apple GPUs, macOS builds).
    #[serde(default = "defaults::device")]
    #[schemars(regex(pattern = r"^(auto|cpu|cuda|cuda:[0-9]+|mps)$"))]
    pub device: String,
    /// Seeds the split, the augmentation, the head's initial weights and dropout.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Number format of the frozen part of the backbone: `auto` (bfloat16 where the CPU
    /// computes it natively, AVX512-BF16 or AMX; float32 otherwise), `fp32` or `bf16`.
    /// The trainable layers, the head and the loss are always float32.
    #[serde(default)]
    pub precision: Precision,
    /// Test-time augmentation: validation, `predict` and `evaluate` average the class
    /// probabilities of this many fixed views of each image (the image, its mirrors
    /// where `augment` flips, then small shifts), 1..=8; 1 (the
    /// default) is the image alone. The stall detector and the best epoch see the
    /// averaged figures.
    #[serde(default = "defaults::tta", skip_serializing_if = "is_one_view")]
    #[schemars(range(min = 1, max = 8))]
    pub tta: u32,
    /// `single_label` (each image is one class: sigmoid for two, softmax for more),
    /// `multilabel` (each image has any number of labels, findings: one sigmoid per
    /// label) or `auto` (the default): multilabel when the label file names one 0/1
    /// column per label (`data.columns.labels`) or its label column joins several
    /// labels with `data.label_delimiter`, single label otherwise.
    #[serde(default, skip_serializing_if = "Task::is_auto")]
    pub task: Task,
    /// Multi-label settings: the loss's weight of positives, the thresholds.
    #[serde(default, skip_serializing_if = "MultilabelConfig::is_default")]
    pub multilabel: MultilabelConfig,
}

/// `task:` — one class per image, or any number of labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Multi-label when the label file says so, else single label.
    #[default]
    Auto,
    /// One class per image.
    SingleLabel,
    /// Any number of labels per image (none included).
    Multilabel,
}

impl Task {
    /// The default, which run folders' `config.yaml` leave out.
    pub fn is_auto(&self) -> bool {
        *self == Task::Auto
    }
}

/// `multilabel:` — how a multi-label task trains and decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MultilabelConfig {
    /// The weight of each label's positives in the binary cross-entropy (PyTorch
    /// `BCEWithLogitsLoss(pos_weight=...)`): `balanced` (the default: the label's
    /// training negatives / positives, so a rare finding counts as much as its
    /// absence), `none` (1 for every label) or `{label: weight > 0}` (labels left
    /// out weigh 1).
    #[serde(default, skip_serializing_if = "PosWeight::is_balanced")]
    pub pos_weight: PosWeight,
    /// The probability at or above which a label is predicted, in (0, 1).
    #[serde(default = "defaults::threshold", skip_serializing_if = "is_half")]
    #[schemars(extend("exclusiveMinimum" = 0.0, "exclusiveMaximum" = 1.0))]
    pub threshold: f64,
    /// Per-label thresholds in (0, 1), over `threshold`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub thresholds: std::collections::BTreeMap<String, f64>,
    /// After each epoch, each label's threshold is the one with the best F1 on
    /// validation (over `threshold` and `thresholds`); the best epoch's thresholds
    /// are the run's (`predict`, `evaluate`, the export card).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tune_thresholds: bool,
}

/// Whether a threshold is the default 0.5 (left out of saved settings).
fn is_half(t: &f64) -> bool {
    *t == 0.5
}

impl Default for MultilabelConfig {
    fn default() -> MultilabelConfig {
        MultilabelConfig {
            pos_weight: PosWeight::default(),
            threshold: defaults::threshold(),
            thresholds: Default::default(),
            tune_thresholds: false,
        }
    }
}

impl MultilabelConfig {
    /// The defaults, which run folders' `config.yaml` leave out.
    pub fn is_default(&self) -> bool {
        *self == MultilabelConfig::default()
    }

    /// Each label's threshold, in `labels` order, from `thresholds` where it names the
    /// label, else `threshold` (names of other labels are ignored here; the run's
    /// start refuses them, see [`MultilabelConfig::thresholds_of`]).
    pub fn thresholds_for(&self, labels: &[String]) -> Vec<f64> {
        labels
            .iter()
            .map(|l| self.thresholds.get(l).copied().unwrap_or(self.threshold))
            .collect()
    }

    /// Each label's threshold, in `labels` order; an error names a threshold for a
    /// label that is not in the data.
    pub fn thresholds_of(&self, labels: &[String]) -> Result<Vec<f64>, String> {
        if let Some(unknown) = self.thresholds.keys().find(|k| !labels.contains(k)) {
            return Err(format!(
                "multilabel.thresholds names `{unknown}`, which is not a label of the data \
                 (labels: {})",
                labels.join(", ")
            ));
        }
        Ok(labels
            .iter()
            .map(|l| self.thresholds.get(l).copied().unwrap_or(self.threshold))
            .collect())
    }
}

/// `multilabel.pos_weight:` — `balanced`, `none`, or a weight per label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "`balanced`, `none` or `{label: weight > 0}` (multilabel.pos_weight)"
)]
pub enum PosWeight {
    /// `balanced` or `none`.
    Rule(PosWeightRule),
    /// A weight > 0 per label; labels not named weigh 1.
    #[schemars(with = "std::collections::BTreeMap<String, ClassWeightValue>")]
    Weights(std::collections::BTreeMap<String, f64>),
}

impl Default for PosWeight {
    fn default() -> PosWeight {
        PosWeight::Rule(PosWeightRule::Balanced)
    }
}

/// The named positive-weight rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PosWeightRule {
    /// Training negatives / positives of each label.
    Balanced,
    /// 1 for every label.
    None,
}

impl PosWeight {
    /// The default, which saved settings leave out.
    pub fn is_balanced(&self) -> bool {
        *self == PosWeight::default()
    }

    /// Each label's positive weight in `labels` order, from the training images'
    /// (positives, negatives) per label; an error names a label not in the data.
    pub fn resolve(
        &self,
        labels: &[String],
        counts: &[(usize, usize)],
    ) -> Result<Vec<f64>, String> {
        match self {
            PosWeight::Rule(PosWeightRule::Balanced) => Ok(counts
                .iter()
                .map(|&(pos, neg)| {
                    if pos == 0 || neg == 0 {
                        1.0
                    } else {
                        neg as f64 / pos as f64
                    }
                })
                .collect()),
            PosWeight::Rule(PosWeightRule::None) => Ok(vec![1.0; labels.len()]),
            PosWeight::Weights(map) => {
                if let Some(unknown) = map.keys().find(|k| !labels.contains(k)) {
                    return Err(format!(
                        "multilabel.pos_weight names `{unknown}`, which is not a label of the \
                         data (labels: {})",
                        labels.join(", ")
                    ));
                }
                Ok(labels
                    .iter()
                    .map(|l| map.get(l).copied().unwrap_or(1.0))
                    .collect())
            }
        }
    }
}

/// The most views test-time augmentation averages (`tta`).
pub const MAX_TTA_VIEWS: u32 = 8;

/// Whether `tta` is the default, one view (left out of saved settings).
fn is_one_view(n: &u32) -> bool {
    *n == 1
}

/// `precision:` — the number format of the frozen part of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 on a CPU with native bfloat16 arithmetic, fp32 elsewhere.
    #[default]
    Auto,
    /// float32.
    Fp32,
    /// bfloat16.
    Bf16,
}

/// `data:` — where the images are and how they are fed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Folder with one sub-folder per class (or `train/` and `val/` folders of them);
    /// relative to the experiment file. With `labels`, the folder the CSV's paths are
    /// relative to.
    pub dir: PathBuf,
    /// A CSV of labels (Keras `flow_from_dataframe`): a header row, then one row per
    /// image with its path (relative to `dir`) and class, and optionally its split
    /// (`train`, `val`, `test`) and group (e.g. a patient id: no group is on both
    /// sides of a drawn split). Relative to the experiment file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
    /// The label file's column names.
    #[serde(default, skip_serializing_if = "Columns::is_default")]
    pub columns: Columns,
    /// Every image is resized once to this size: `224` or `[height, width]`, each >= 32.
    #[serde(default)]
    pub image_size: ImageSize,
    /// Fraction of each class held out for validation, in (0, 1).
    #[serde(default = "defaults::validation_split")]
    #[schemars(extend("exclusiveMinimum" = 0.0, "exclusiveMaximum" = 1.0))]
    pub validation_split: f64,
    /// Images per batch, >= 1.
    #[serde(default = "defaults::batch_size")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Resampling used for the one-time resize (Keras default: nearest).
    #[serde(default)]
    pub interpolation: Interpolation,
    /// How pixel values become the 8-bit levels the model sees: `full` (the format's
    /// whole range) or `stretch` (each image's own darkest..brightest value, for
    /// 12-bit X-rays stored in 16-bit files and low-contrast scans).
    #[serde(default, skip_serializing_if = "Intensity::is_full")]
    pub intensity: Intensity,
    /// Random augmentation of training images (never of validation images).
    #[serde(default)]
    pub augment: AugmentConfig,
    /// How much each class's images weigh in the training loss (Keras `class_weight`):
    /// `balanced` (images / (classes x images of the class), counted on the training
    /// side) or `{class name: weight > 0}` (classes left out weigh 1). Each image's
    /// loss is multiplied by its class's weight and the batch's sum divided by the
    /// batch size, as Keras does. The validation loss stays unweighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weight: Option<ClassWeight>,
    /// How each epoch's training images are chosen: `shuffle` (every image once, in a
    /// new order) or `balanced` (as many draws, every class equally likely, images
    /// drawn with replacement: PyTorch's class-balanced `WeightedRandomSampler`).
    #[serde(default, skip_serializing_if = "Sampling::is_shuffle")]
    pub sampling: Sampling,
    /// Where decoded images are kept: `auto` (decoded once into the on-disk cache,
    /// reused by later runs; held in memory when they fit in half of the available
    /// memory, read from the cache per batch when they don't), `disk` (always read
    /// from the cache per batch: memory stays small) or `off` (no cache on disk:
    /// decoded into memory at every start, refused when they don't fit).
    #[serde(default, skip_serializing_if = "ImageCache::is_auto")]
    pub image_cache: ImageCache,
    /// Multi-label: what separates the labels of one image in the label column
    /// (`Effusion|Infiltration`, as NIH ChestX-ray14 writes them; fastai's
    /// `label_delim`). A label value holding it makes `task: auto` multi-label.
    #[serde(default = "defaults::label_delimiter", skip_serializing_if = "is_bar")]
    #[schemars(length(min = 1))]
    pub label_delimiter: String,
}

/// Whether the label delimiter is the default `|` (left out of saved settings).
fn is_bar(s: &str) -> bool {
    s == "|"
}

/// `data.image_cache:` — where decoded images are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImageCache {
    /// The on-disk cache; in memory when they fit.
    #[default]
    Auto,
    /// The on-disk cache, read per batch.
    Disk,
    /// No on-disk cache: decoded into memory at every start.
    Off,
}

impl ImageCache {
    /// The default, which run folders' `config.yaml` leave out.
    pub fn is_auto(&self) -> bool {
        *self == ImageCache::Auto
    }
}

/// `data.sampling:` — how an epoch's training images are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Every training image once an epoch, shuffled.
    #[default]
    Shuffle,
    /// Classes equally likely, images with replacement.
    Balanced,
}

impl Sampling {
    /// The default, which run folders' `config.yaml` leave out.
    pub fn is_shuffle(&self) -> bool {
        *self == Sampling::Shuffle
    }
}

/// `data.class_weight:` — `balanced`, or a weight per class name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "`balanced` or `{class: weight > 0}` (data.class_weight)"
)]
pub enum ClassWeight {
    /// `balanced`: inversely proportional to each class's training images.
    Rule(ClassWeightRule),
    /// A weight > 0 per class name; classes not named weigh 1.
    #[schemars(with = "std::collections::BTreeMap<String, ClassWeightValue>")]
    Weights(std::collections::BTreeMap<String, f64>),
}

/// One class's weight in the schema: > 0, at most 1e6 (what `check` accepts).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct ClassWeightValue(#[schemars(extend("exclusiveMinimum" = 0.0), range(max = 1e6))] f64);

/// The named class-weight rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeightRule {
    /// images / (classes x images of the class), as scikit-learn's `balanced`.
    Balanced,
}

impl ClassWeight {
    /// The weight of each class in `classes` order, from the training images per
    /// class; an error names a class that is not in the data.
    pub fn resolve(&self, classes: &[String], train_counts: &[usize]) -> Result<Vec<f64>, String> {
        match self {
            ClassWeight::Rule(ClassWeightRule::Balanced) => {
                let total: usize = train_counts.iter().sum();
                Ok(train_counts
                    .iter()
                    .map(|&n| {
                        if n == 0 {
                            1.0
                        } else {
                            total as f64 / (classes.len() as f64 * n as f64)
                        }
                    })
                    .collect())
            }
            ClassWeight::Weights(map) => {
                self.check_classes(classes)?;
                Ok(classes
                    .iter()
                    .map(|c| map.get(c).copied().unwrap_or(1.0))
                    .collect())
            }
        }
    }

    /// An error naming a class weight for a class not in `classes`.
    pub fn check_classes(&self, classes: &[String]) -> Result<(), String> {
        let ClassWeight::Weights(map) = self else {
            return Ok(());
        };
        match map.keys().find(|k| !classes.contains(k)) {
            None => Ok(()),
            Some(unknown) => Err(format!(
                "data.class_weight names `{unknown}`, which is not a class of the data \
                 (classes: {})",
                classes.join(", ")
            )),
        }
    }
}

/// `data.augment:` — Keras `ImageDataGenerator` arguments, applied per batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Multiplies pixel values (0..255) after the geometric transforms, e.g. 1/255.
    /// Only used by backbones without their own input normalisation (small_cnn);
    /// pretrained backbones always get their own normalisation of pixel/255.
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub rescale: Option<f64>,
    /// Random rotation, uniform in [-r, r] degrees; 0..=180.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 180.0))]
    pub rotation_range: f64,
    /// Random horizontal shift, uniform in [-w, w] as a fraction of the width; 0..1.
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub width_shift_range: f64,
    /// Random vertical shift, uniform in [-h, h] as a fraction of the height; 0..1.
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub height_shift_range: f64,
    /// Mirror left-right with probability 0.5.
    #[serde(default)]
    pub horizontal_flip: bool,
    /// Mirror top-bottom with probability 0.5 (for images with no up and down:
    /// solar cells, wafers, slides, aerial views).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vertical_flip: bool,
    /// Random zoom: `z` means a scale in [1-z, 1+z] for each axis; 0..1.
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub zoom_range: f64,
    /// How points outside the image are filled (Keras default: nearest).
    #[serde(default)]
    pub fill_mode: FillMode,
    /// The fill value (0..255 pixel scale) for `fill_mode: constant`.
    #[serde(default)]
    pub cval: f64,
}

/// `model:` — backbone, weights and head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The ImageNet backbone without its top, or `small_cnn` (no pretrained weights).
    pub backbone: Backbone,
    /// `imagenet` (files fetched by `make setup`), `none` (random init), or a path to
    /// `.safetensors` / `.ot` / `.pth`, relative to the experiment file.
    #[serde(default)]
    pub weights: Weights,
    /// Dropout rate before the new dense layer, in [0, 1).
    #[serde(default = "defaults::dropout")]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub dropout: f64,
    /// Label smoothing of the training loss, in [0, 1) (Keras `label_smoothing`):
    /// targets move from 0 and 1 towards 1/K (1/2 for a sigmoid unit). Default 0.
    /// Validation loss and metrics use the labels as they are. A live setting.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub label_smoothing: f64,
}

/// `frozen:` — the head-only phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FrozenPhase {
    /// Number of epochs (0 skips the phase).
    #[serde(default = "defaults::frozen_epochs")]
    pub epochs: u32,
    /// `adam` or `sgd`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Learning rate, > 0 (Keras Adam default 0.001).
    #[serde(default = "defaults::frozen_lr")]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub lr: f64,
    /// SGD momentum in [0, 1) (Keras default 0); ignored by Adam.
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub momentum: f64,
    /// How the learning rate moves over the phase's steps: `constant` (the default),
    /// `cosine` (warm-up, then down to 0 along a half cosine) or `one_cycle` (fastai's
    /// and PyTorch's OneCycle: up from lr/25 to lr, then down to lr/25e4, with Adam's
    /// beta1 going 0.95 -> 0.85 -> 0.95). `lr` is the peak; a live edit of `lr` or
    /// `epochs` recomputes the rest from the current step.
    #[serde(default, skip_serializing_if = "Schedule::is_constant")]
    pub schedule: Schedule,
    /// Warm-up length in epochs (fractions allowed, e.g. 0.5): the rate climbs linearly
    /// from 0 (from lr/25 for one_cycle) to `lr`. Default 0 (one_cycle: a quarter of
    /// the phase). Give this or `warmup_steps`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub warmup_epochs: Option<f64>,
    /// Warm-up length in training steps (batches) instead of epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// `auto`: with augmentation off and pretrained weights, the frozen backbone's
    /// features are computed once and later epochs train the head on them (the same
    /// numbers, much faster); `off`: the backbone runs every epoch.
    #[serde(default)]
    pub feature_cache: FeatureCache,
    /// With random augmentation: 0 (default) augments afresh every epoch, as Keras does;
    /// K >= 1 keeps the backbone features of K augmented views of each training image,
    /// computed during the first K frozen epochs, and later epochs cycle through them
    /// (much faster; the head then sees only K variants of each image). 0..=100.
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub augment_views: u32,
}

/// How a phase's learning rate moves over its steps (see `train::schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// `lr` at every step (after the warm-up, if any).
    #[default]
    Constant,
    /// Warm-up, then a half cosine from `lr` down to 0.
    Cosine,
    /// fastai's one-cycle: a cosine up from lr/25 to lr, then down to lr/25e4.
    OneCycle,
}

impl Schedule {
    /// The default, which run folders' `config.yaml` leave out.
    pub fn is_constant(&self) -> bool {
        *self == Schedule::Constant
    }
}

/// Whether a factor is 1 (the default layer decay, left out of saved settings).
fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// Whether a value is 0 (the default label smoothing, left out of saved settings).
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Whether a phase keeps outputs of the frozen part of the backbone between epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FeatureCache {
    /// Whenever the result is the same as without the cache.
    #[default]
    Auto,
    /// Never.
    Off,
}

/// `finetune:` — the phase that unfreezes the last layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetunePhase {
    /// Number of epochs (0 skips the phase).
    #[serde(default = "defaults::finetune_epochs")]
    pub epochs: u32,
    /// `adam` or `sgd`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Learning rate, > 0; tiny, e.g. 1e-5, so the pretrained features are not wrecked.
    #[serde(default = "defaults::finetune_lr")]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub lr: f64,
    /// SGD momentum in [0, 1); ignored by Adam.
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub momentum: f64,
    /// How the learning rate moves over the phase's steps: `constant` (the default),
    /// `cosine` (warm-up, then down to 0 along a half cosine) or `one_cycle` (fastai's
    /// and PyTorch's OneCycle: up from lr/25 to lr, then down to lr/25e4, with Adam's
    /// beta1 going 0.95 -> 0.85 -> 0.95). `lr` is the peak; a live edit of `lr` or
    /// `epochs` recomputes the rest from the current step.
    #[serde(default, skip_serializing_if = "Schedule::is_constant")]
    pub schedule: Schedule,
    /// Warm-up length in epochs (fractions allowed, e.g. 0.5): the rate climbs linearly
    /// from 0 (from lr/25 for one_cycle) to `lr`. Default 0 (one_cycle: a quarter of
    /// the phase). Give this or `warmup_steps`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub warmup_epochs: Option<f64>,
    /// Warm-up length in training steps (batches) instead of epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// Discriminative learning rates, in (0, 1]: the new head trains at `lr`, the
    /// backbone's last block group (see `tlcap-tui layers`) at lr x decay, the group
    /// below at lr x decay^2, and so on (fastai's `slice(lo, hi)`, timm's layer-wise
    /// decay). 1 (the default): one rate for everything.
    #[serde(default = "defaults::layer_decay", skip_serializing_if = "is_one")]
    #[schemars(extend("exclusiveMinimum" = 0.0), range(max = 1.0))]
    pub layer_decay: f64,
    /// The most block groups progressive unfreezing (`on_stall: unfreeze_more`, `u`
    /// while fine-tuning) may reach, >= 1; absent: down to the whole network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_groups: Option<usize>,
    /// How many of the backbone's last layers to unfreeze, >= 1 (see the README for how
    /// layers are counted).
    #[serde(default = "defaults::unfreeze_last")]
    #[schemars(range(min = 1))]
    pub unfreeze_last: usize,
    /// Let unfrozen BatchNorm layers update their statistics (default false: inference mode).
    #[serde(default)]
    pub train_bn: bool,
    /// `auto`: the output of the frozen part of the backbone (every block before the
    /// first unfrozen layer) is kept after the first fine-tune epoch, so later epochs
    /// run only the trainable blocks; with random augmentation only validation images
    /// are kept. `off`: the whole backbone runs every step.
    #[serde(default)]
    pub prefix_cache: FeatureCache,
    /// Memory the prefix cache may take, in MiB (also never more than half of the
    /// memory available at the start of the phase); when it would need more, the
    /// phase runs without it and says so.
    #[serde(default = "defaults::prefix_cache_mb")]
    pub prefix_cache_mb: u64,
}

/// `stall:` — plateau detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StallConfig {
    /// The metric watched.
    #[serde(default)]
    pub monitor: Monitor,
    /// `auto` (max for accuracies, min for losses), `min` or `max`.
    #[serde(default)]
    pub mode: StallMode,
    /// Epochs without improvement before the run counts as stalled.
    #[serde(default = "defaults::patience")]
    pub patience: u32,
    /// The smallest change that counts as an improvement, >= 0.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub min_delta: f64,
    /// Epochs to wait after a stall before watching again.
    #[serde(default)]
    pub cooldown: u32,
    /// Epochs to wait before watching at all.
    #[serde(default)]
    pub start_from_epoch: u32,
    /// `suggest` (banner only), `unfreeze` (start fine-tuning), `unfreeze_more` (start
    /// fine-tuning, then unfreeze the next block group down at each stall while
    /// fine-tuning, up to `finetune.max_groups`), `reduce_lr` (multiply the current
    /// phase's learning rate by `factor`, as Keras `ReduceLROnPlateau`) or `stop`.
    #[serde(default)]
    pub on_stall: OnStall,
    /// What `reduce_lr` (and the `r` key) multiply the learning rate by, 0 < factor < 1.
    #[serde(default = "defaults::factor")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub factor: f64,
    /// The learning rate is never lowered below this, >= 0.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub min_lr: f64,
}

impl Experiment {
    /// The epochs a run plans in all (the one rule for every progress display): the
    /// frozen and the fine-tune epochs, or, once fine-tuning started after
    /// `finetune_after` epochs, those plus the fine-tune epochs.
    pub fn planned_epochs(&self, finetune_after: Option<u32>) -> u32 {
        match finetune_after {
            None => self.frozen.epochs + self.finetune.epochs,
            Some(before) => before + self.finetune.epochs,
        }
    }
}

impl StallConfig {
    /// The learning rate after one lowering (the `r` key, a `lower_lr` line,
    /// `on_stall: reduce_lr`): `lr` times `factor`, not below `min_lr`; None when that
    /// is not lower (the rate is at `min_lr` already).
    pub fn lowered(&self, lr: f64) -> Option<f64> {
        let to = (lr * self.factor).max(self.min_lr);
        (to < lr).then_some(to)
    }
}

impl AugmentConfig {
    /// Whether any random transform is on (then every epoch sees different images).
    pub fn is_random(&self) -> bool {
        self.rotation_range > 0.0
            || self.width_shift_range > 0.0
            || self.height_shift_range > 0.0
            || self.zoom_range > 0.0
            || self.horizontal_flip
            || self.vertical_flip
    }
}

/// Image size after the one-time resize; written as `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    pub height: u32,
    pub width: u32,
}

/// Supported backbones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    MobilenetV2,
    EfficientnetLite0,
    EfficientnetLite1,
    EfficientnetLite2,
    EfficientnetLite3,
    EfficientnetLite4,
    /// A small CNN trained from scratch: fast tests and the no-transfer baseline.
    SmallCnn,
}

/// Where the backbone's weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Weights {
    /// The ImageNet file fetched by `make setup` for this backbone.
    #[default]
    Imagenet,
    /// Random initialisation.
    None,
    /// A weight file (resolved against the experiment file's folder).
    File(PathBuf),
}

/// Resampling filter for the one-time resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    #[default]
    Nearest,
    Bilinear,
    Bicubic,
}

/// `data.columns:` — which columns of the label file say what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Columns {
    /// The image's path, relative to `data.dir`.
    pub path: String,
    /// Its class.
    pub label: String,
    /// `train`, `val` (or `validation`) or `test`; optional: without the column the
    /// split is drawn.
    pub split: String,
    /// A group no drawn split may cut (a patient, a camera, a wafer); optional.
    pub group: String,
    /// Multi-label: one column per label holding 0 or 1 (`1`/`0`, `true`/`false`,
    /// `yes`/`no`, empty for 0), named here in place of a `label` column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl Default for Columns {
    fn default() -> Columns {
        Columns {
            path: "path".into(),
            label: "label".into(),
            split: "split".into(),
            group: "group".into(),
            labels: Vec::new(),
        }
    }
}

impl Columns {
    /// The defaults, which run folders' `config.yaml` leave out.
    pub fn is_default(&self) -> bool {
        *self == Columns::default()
    }
}

/// How pixel values become 8-bit levels (`data.intensity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Intensity {
    /// The format's whole range: 8-bit values as they are, 16-bit ones x 255/65535.
    #[default]
    Full,
    /// Each image's own lowest..highest value (over its colour channels) to 0..255.
    Stretch,
}

impl Intensity {
    /// The default, which run folders' `config.yaml` leave out.
    pub fn is_full(&self) -> bool {
        *self == Intensity::Full
    }
}

/// Keras `fill_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FillMode {
    #[default]
    Nearest,
    Constant,
    Reflect,
}

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    #[default]
    Adam,
    Sgd,
}

/// Metrics the stall detector can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    #[default]
    ValAccuracy,
    /// Mean recall over the classes: for imbalanced data.
    ValBalancedAccuracy,
    ValLoss,
    Accuracy,
    Loss,
    /// Multi-label: the mean over labels of each label's ROC AUC on validation (two
    /// classes: the AUC).
    ValMeanAuc,
}

/// Direction of improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum StallMode {
    #[default]
    Auto,
    Min,
    Max,
}

/// What happens on a stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnStall {
    #[default]
    Suggest,
    Unfreeze,
    UnfreezeMore,
    ReduceLr,
    Stop,
}

impl Serialize for ImageSize {
    /// As `[height, width]`, the form the files use, so a saved config reads back.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.height, self.width].serialize(s)
    }
}

impl Default for ImageSize {
    /// Keras `flow_from_directory` default target_size (256, 256).
    fn default() -> Self {
        ImageSize {
            height: 256,
            width: 256,
        }
    }
}

impl Default for FrozenPhase {
    fn default() -> Self {
        FrozenPhase {
            epochs: defaults::frozen_epochs(),
            optimizer: Optimizer::Adam,
            lr: defaults::frozen_lr(),
            momentum: 0.0,
            schedule: Schedule::Constant,
            warmup_epochs: None,
            warmup_steps: None,
            feature_cache: FeatureCache::Auto,
            augment_views: 0,
        }
    }
}

impl Default for FinetunePhase {
    fn default() -> Self {
        FinetunePhase {
            epochs: defaults::finetune_epochs(),
            optimizer: Optimizer::Adam,
            lr: defaults::finetune_lr(),
            momentum: 0.0,
            schedule: Schedule::Constant,
            warmup_epochs: None,
            warmup_steps: None,
            layer_decay: defaults::layer_decay(),
            max_groups: None,
            unfreeze_last: defaults::unfreeze_last(),
            train_bn: false,
            prefix_cache: FeatureCache::Auto,
            prefix_cache_mb: defaults::prefix_cache_mb(),
        }
    }
}

impl Default for StallConfig {
    fn default() -> Self {
        StallConfig {
            monitor: Monitor::ValAccuracy,
            mode: StallMode::Auto,
            patience: defaults::patience(),
            min_delta: 0.0,
            cooldown: 0,
            start_from_epoch: 0,
            on_stall: OnStall::Suggest,
            factor: defaults::factor(),
            min_lr: 0.0,
        }
    }
}

impl Backbone {
    /// The name used in experiment files.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet34 => "resnet34",
            Backbone::Resnet50 => "resnet50",
            Backbone::Resnet101 => "resnet101",
            Backbone::Resnet152 => "resnet152",
            Backbone::MobilenetV2 => "mobilenet_v2",
            Backbone::EfficientnetLite0 => "efficientnet_lite0",
            Backbone::EfficientnetLite1 => "efficientnet_lite1",
            Backbone::EfficientnetLite2 => "efficientnet_lite2",
            Backbone::EfficientnetLite3 => "efficientnet_lite3",
            Backbone::EfficientnetLite4 => "efficientnet_lite4",
            Backbone::SmallCnn => "small_cnn",
        }
    }

    /// True for backbones that normalise their own input (every pretrained one).
    pub fn has_own_normalisation(self) -> bool {
        self != Backbone::SmallCnn
    }
}

mod defaults {
    pub fn threshold() -> f64 {
        0.5
    }
    pub fn label_delimiter() -> String {
        "|".into()
    }
    pub fn prefix_cache_mb() -> u64 {
        2048
    }
    pub fn device() -> String {
        "auto".into()
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn validation_split() -> f64 {
        0.2
    }
    pub fn batch_size() -> usize {
        32
    }
    pub fn dropout() -> f64 {
        0.2
    }
    pub fn frozen_epochs() -> u32 {
        10
    }
    pub fn frozen_lr() -> f64 {
        1e-3
    }
    pub fn finetune_epochs() -> u32 {
        10
    }
    pub fn finetune_lr() -> f64 {
        1e-5
    }
    pub fn unfreeze_last() -> usize {
        20
    }
    pub fn patience() -> u32 {
        3
    }
    pub fn factor() -> f64 {
        0.1
    }
    pub fn layer_decay() -> f64 {
        1.0
    }
    pub fn tta() -> u32 {
        1
    }
}

mod image_size_serde {
    use super::ImageSize;
    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use std::fmt;

    /// Sizes are range-checked by `validate`; here only the shape is read.
    fn side<E: de::Error>(v: u64) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| E::custom(format!("image_size {v} is too large")))
    }

    struct SizeVisitor;
    impl<'de> Visitor<'de> for SizeVisitor {
        type Value = ImageSize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size in pixels (224) or [height, width]")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<ImageSize, E> {
            let s = side(v)?;
            Ok(ImageSize {
                height: s,
                width: s,
            })
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<ImageSize, E> {
            let v = u64::try_from(v)
                .map_err(|_| E::custom(format!("image_size must be positive, got {v}")))?;
            self.visit_u64(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ImageSize, A::Error> {
            let h: u64 = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(0, &self))?;
            let w: u64 = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(1, &self))?;
            if seq.next_element::<u64>()?.is_some() {
                return Err(de::Error::invalid_length(3, &self));
            }
            Ok(ImageSize {
                height: side(h)?,
                width: side(w)?,
            })
        }
    }

    impl<'de> de::Deserialize<'de> for ImageSize {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(SizeVisitor)
        }
    }
}

mod weights_serde {
    use super::Weights;
    use serde::de::{Deserialize, Deserializer};
    use serde::ser::{Serialize, Serializer};

    impl Serialize for Weights {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                Weights::Imagenet => s.serialize_str("imagenet"),
                Weights::None => s.serialize_str("none"),
                Weights::File(p) => s.serialize_str(&p.to_string_lossy()),
            }
        }
    }

    impl<'de> Deserialize<'de> for Weights {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            Ok(match s.as_str() {
                "imagenet" => Weights::Imagenet,
                "none" => Weights::None,
                _ => Weights::File(s.into()),
            })
        }
    }
}

#[cfg(test)]
mod class_weight_tests {
    use super::*;

    #[test]
    fn balanced_weights_follow_scikit_learn_and_names_must_be_classes() {
        let classes = ["defective".to_string(), "functional".to_string()];
        let balanced = ClassWeight::Rule(ClassWeightRule::Balanced);
        // 40 images, 2 classes: 40 / (2 x 10) and 40 / (2 x 30).
        let w = balanced.resolve(&classes, &[10, 30]).unwrap();
        assert_eq!(w, [2.0, 40.0 / 60.0]);
        let named: ClassWeight = serde_yaml::from_str("{ defective: 3.5 }").unwrap();
        assert_eq!(named.resolve(&classes, &[10, 30]).unwrap(), [3.5, 1.0]);
        let typo: ClassWeight = serde_yaml::from_str("{ defectve: 2 }").unwrap();
        let err = typo.resolve(&classes, &[10, 30]).unwrap_err();
        assert!(
            err.contains("`defectve`") && err.contains("defective, functional"),
            "{err}"
        );
        assert_eq!(
            serde_yaml::from_str::<ClassWeight>("balanced").unwrap(),
            balanced
        );
    }
}
