//! The whole network the recipe trains: normalisation, a backbone without its top,
//! global average pooling, dropout and a new dense layer — one sigmoid unit for two
//! classes (binary cross-entropy on logits, as in the Keras seed), softmax over N
//! classes otherwise.

use std::cell::RefCell;

use anyhow::{anyhow, bail, Context};
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

use super::{Backbone, LayerTable, HEAD_PREFIX};
use crate::config::{Experiment, Weights};
use crate::data::Normalisation;

/// Serialises seeded initialisation (see [`Classifier::new`]).
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Backbone plus new head, with its own variables.
pub struct Classifier {
    /// All variables: the backbone's under their reference names, the head's under `head.`.
    pub vs: nn::VarStore,
    /// The backbone and its layer table.
    pub backbone: Backbone,
    head: nn::Linear,
    dropout: f64,
    /// Number of classes (multi-label: of labels).
    pub classes: usize,
    /// One sigmoid per label, any number of them on (multi-label), instead of one
    /// class per image.
    pub multilabel: bool,
    /// Multi-label: each label's positive weight in the training loss, on the device.
    pos_weight: Option<Tensor>,
    normalisation: Normalisation,
    /// Its constant tensors, made once (see [`Normalisation::constants`]).
    norm_constants: Option<(Tensor, Tensor)>,

    /// Whether the backbone started from pretrained weights.
    pub pretrained: bool,
    /// Backbone layers trainable at any point so far: what checkpoints must hold.
    ever_trained: Vec<bool>,
    /// The precision of the frozen part, run on [`FrozenCopy`]; None: the variables.
    precision: Option<Kind>,
    /// Built on first use, dropped whenever layer states or weights change.
    frozen_copy: RefCell<Option<FrozenCopy>>,
    /// During [`Classifier::with_inference_copy`]: a BatchNorm-folded, channels-last
    /// float32 copy of every current weight, which inference runs instead of the
    /// trainable segments' own variables.
    inference_copy: RefCell<Option<FrozenCopy>>,
    /// Whether the frozen copy folds BatchNorm into the convolutions (the default).
    fold_batchnorm: bool,
    /// Input pixels (height x width, summed over images) per forward pass of the
    /// frozen part in float32 (twice as many in bf16); None: the whole batch at once.
    pass_pixels: Option<i64>,
    /// How the trainable part runs (see [`TrainPath`]).
    train_path: TrainPath,
    /// Each class's weight in the training loss (`data.class_weight`), on the device.
    class_weights: Option<Tensor>,
    /// Label smoothing of the training loss's targets (`model.label_smoothing`).
    label_smoothing: f64,
}

/// How the trainable part of a training step runs. Each setting changes speed and
/// memory, not the result (up to float rounding); `tlcap-tui bench` turns them off one
/// at a time to show what each is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainPath {
    /// Inference-mode BatchNorm folded into the convolution's weight inside the graph
    /// (see [`super::layers::conv_bn`]) instead of running as its own layer.
    pub fold_batchnorm: bool,
    /// Activations in channels-last layout, which oneDNN's convolutions (forward and
    /// backward) take without reordering. CPU only.
    pub channels_last: bool,
    /// Input pixels (height x width, summed over images) per forward + backward pass:
    /// a batch is split into passes whose gradients add up to the batch's (images are
    /// independent when BatchNorm is in inference mode), so each layer's activations
    /// stay nearer the caches and far fewer are held for the backward pass at once.
    /// None: the whole batch in one pass (always so when BatchNorm layers train, since
    /// their statistics are the batch's).
    pub pass_pixels: Option<i64>,
}

impl TrainPath {
    /// The defaults for a device: both on for a CPU, the plain path for a GPU.
    pub fn for_device(device: Device) -> TrainPath {
        let cpu = device == Device::Cpu;
        TrainPath {
            fold_batchnorm: true,
            channels_last: cpu,
            pass_pixels: cpu.then_some(CPU_TRAIN_PASS_PIXELS),
        }
    }
}

/// Input pixels per forward + backward pass of the trainable part on a CPU: 4 images at
/// 224 px, more of smaller images or feature maps. `tlcap-tui bench --only whole`
/// measured a whole-network MobileNetV2 step at 224 px (batch 32, 2 threads, AVX2 AMD
/// EPYC) at 20.6 / 26.2 / 28.4 / 30.1 / 28.5 img/s in passes of 1 / 2 / 4 / 8 / 16
/// images against 18.4 in one pass; 4 and 8 are within noise of each other in every
/// run, and 4 holds half the activations.
pub const CPU_TRAIN_PASS_PIXELS: i64 = 4 * 224 * 224;

/// Input pixels per forward pass of the frozen part on a CPU in float32: 4 images at
/// 224 px, more of smaller ones; a 2-byte precision (bf16) takes twice as many, so a
/// pass holds the same bytes of activations. Smaller passes keep each layer's
/// activations in the caches: `tlcap-tui bench` measured MobileNetV2 at 224 px (fp32,
/// BatchNorm folded, AVX2 kernels, 2 threads) at 166-199 img/s in passes of 4 images
/// against 95 img/s in one pass of 32; in bf16 (AVX512-BF16), 296 img/s in passes of 8
/// against 257 in passes of 4 and 233 in one pass of 32.
pub const CPU_PASS_PIXELS: i64 = 4 * 224 * 224;

/// How many images of a batch shaped like `x` (`[B, C, H, W]`) fit a pass of `budget`
/// pixels (at least one); unbounded without a budget or for pooled features `[B, C]`.
fn images_within(budget: Option<i64>, x: &Tensor) -> i64 {
    match (budget, x.size().as_slice()) {
        (Some(budget), [_, _, h, w]) => (budget / (h * w).max(1)).max(1),
        _ => i64::MAX,
    }
}

/// Binary cross-entropy of one logit per image `[B, 1]` against targets in [0, 1]
/// (labels 0/1, or smoothed ones).
fn binary_cross_entropy(logits: &Tensor, labels: &Tensor, reduction: Reduction) -> Tensor {
    logits
        .view([-1])
        .binary_cross_entropy_with_logits::<Tensor>(
            &labels.to_kind(Kind::Float),
            None,
            None,
            reduction,
        )
}

/// Targets 0/1 (float) moved towards 1/`k` by label smoothing `e`: (1 - e) * y + e / k.
fn smoothed(targets: &Tensor, e: f64, k: i64) -> Tensor {
    if e == 0.0 {
        return targets.shallow_clone();
    }
    targets * (1.0 - e) + e / k as f64
}

/// Binary cross-entropy of every (image, label) of logits `[B, L]` against 0/1 labels,
/// each label's positives weighted by `pos_weight` when given (multi-label).
fn multilabel_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    pos_weight: Option<&Tensor>,
    reduction: Reduction,
) -> Tensor {
    logits.binary_cross_entropy_with_logits::<&Tensor>(
        &labels.to_kind(Kind::Float),
        None,
        pos_weight,
        reduction,
    )
}

/// The random numbers of one training step, drawn for the whole batch before it runs
/// in passes.
struct StepNoise {
    /// Per-block uniform values `[NOISE_ROWS, B]` (drop-connect).
    blocks: Tensor,
    /// The dropout keep mask `[B, F]` (1 keeps), when dropout is on.
    dropout: Option<Tensor>,
}

/// The backbone again, frozen, with channels-last weights in the frozen precision and
/// (by default) its BatchNorm layers folded into the convolutions before them.
struct FrozenCopy {
    _vs: nn::VarStore,
    backbone: Backbone,
}

/// The same values with channels-last strides (NHWC in memory, NCHW in shape).
pub fn channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl Classifier {
    /// Builds the network for `exp` with `classes` classes on `device` and loads the
    /// backbone weights the file names. The head is initialised from the seed.
    pub fn new(exp: &Experiment, classes: usize, device: Device) -> anyhow::Result<Classifier> {
        Classifier::build(exp, classes, false, device)
    }

    /// As [`Classifier::new`] for a multi-label task: one sigmoid unit per label.
    pub fn new_multilabel(
        exp: &Experiment,
        labels: usize,
        device: Device,
    ) -> anyhow::Result<Classifier> {
        Classifier::build(exp, labels, true, device)
    }

    /// A single-label (`multilabel` false) or multi-label network.
    pub fn build(
        exp: &Experiment,
        classes: usize,
        multilabel: bool,
        device: Device,
    ) -> anyhow::Result<Classifier> {
        if multilabel && classes < 1 {
            bail!("need at least one label");
        }
        if !multilabel && classes < 2 {
            bail!("need at least two classes, found {classes}");
        }
        let kind = exp.model.backbone;
        let vs = nn::VarStore::new(device);
        // Initialisation draws from torch's process-wide generator: hold a lock from
        // seeding to the last draw so runs started together stay reproducible.
        let (backbone, head) = {
            let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(exp.seed as i64);
            let backbone = Backbone::new(&vs.root(), kind, false);
            let outputs = if classes == 2 && !multilabel {
                1
            } else {
                classes as i64
            };
            let head = nn::linear(
                vs.root().sub(HEAD_PREFIX.trim_end_matches('.')).sub("fc"),
                backbone.feature_dim(),
                outputs,
                Default::default(),
            );
            (backbone, head)
        };
        let path = match &exp.model.weights {
            Weights::None => None,
            Weights::File(p) => Some(p.clone()),
            Weights::Imagenet => Some(super::imagenet_weights(kind)?),
        };
        if let Some(p) = &path {
            // Weight files are read on the CPU; copying moves them to the device.
            let file = crate::weights::read_file(p)
                .with_context(|| format!("cannot load weights {}", p.display()))?;
            super::load_weights(&vs, kind, &file)
                .with_context(|| format!("cannot load weights {}", p.display()))?;
        }
        let normalisation = Normalisation::for_model(kind, exp.data.augment.rescale);
        Ok(Classifier {
            norm_constants: normalisation.constants(vs.device()),
            vs,
            backbone,
            head,
            dropout: exp.model.dropout,
            classes,
            multilabel,
            pos_weight: None,
            normalisation,
            pretrained: path.is_some(),
            ever_trained: Vec::new(),
            precision: None,
            frozen_copy: RefCell::new(None),
            inference_copy: RefCell::new(None),
            fold_batchnorm: true,
            pass_pixels: (device == Device::Cpu).then_some(CPU_PASS_PIXELS),
            train_path: TrainPath::for_device(device),
            class_weights: None,
            label_smoothing: exp.model.label_smoothing,
        })
    }

    /// `t` on the model's device. A batch in pinned host memory (the input thread pins
    /// batches for a GPU) is copied without blocking, overlapping the copy with compute.
    pub fn to_model_device(&self, t: &Tensor) -> Tensor {
        let device = self.device();
        if device.is_cuda() && t.device() == Device::Cpu && t.is_pinned(device) {
            t.to_device_(device, t.kind(), true, false)
        } else {
            t.to_device(device)
        }
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Values in the new head (always trainable).
    pub fn head_params(&self) -> usize {
        self.head.ws.numel() + self.head.bs.as_ref().map_or(0, Tensor::numel)
    }

    /// Puts every trainable variable in an optimizer parameter group by its depth from
    /// the top: 0 for the new head, 1 for the backbone's last block group (see
    /// [`super::Backbone::groups`]), 2 for the group below, and so on. Returns the
    /// number of groups. An optimizer built afterwards takes the groups with the
    /// variables, so discriminative learning rates can be set per group.
    pub fn assign_lr_groups(&self) -> usize {
        let groups = self.backbone.groups().len();
        let index: std::collections::HashMap<&str, usize> = self
            .table()
            .layers()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), i))
            .collect();
        let depth_of = |name: &str| -> usize {
            if name.starts_with(HEAD_PREFIX) {
                return 0;
            }
            let layer = name.rsplit_once('.').map_or(name, |(layer, _)| layer);
            index
                .get(layer)
                .map_or(groups, |&i| groups - self.backbone.group_of(i))
        };
        let mut vars = self.vs.variables_.lock().unwrap_or_else(|e| e.into_inner());
        let depths: std::collections::HashMap<usize, usize> = vars
            .named_variables
            .iter()
            .map(|(name, t)| (t.data_ptr() as usize, depth_of(name)))
            .collect();
        for var in vars.trainable_variables.iter_mut() {
            var.group = depths
                .get(&(var.tensor.data_ptr() as usize))
                .copied()
                .unwrap_or(groups);
        }
        groups + 1
    }

    /// The backbone's layer table.
    pub fn table(&self) -> &LayerTable {
        self.backbone.table()
    }

    /// Phase 1: the backbone frozen (inference mode), only the head trains. A backbone
    /// without pretrained weights has nothing to preserve, so it trains whole, with
    /// BatchNorm in training mode.
    pub fn set_frozen_phase(&mut self) {
        self.set_frozen_layers();
        self.remember_trained();
    }

    fn set_frozen_layers(&mut self) {
        let table = self.backbone.table_mut();
        if self.pretrained {
            table.freeze_all();
            table.set_train_bn(false);
        } else {
            table.unfreeze_all();
            table.set_train_bn(true);
        }
    }

    /// Phase 2: the last `n` layers trainable; BatchNorm statistics update only with
    /// `train_bn` (always for a backbone trained from scratch). Returns how many layers
    /// are trainable.
    pub fn set_finetune_phase(&mut self, n: usize, train_bn: bool) -> usize {
        let count = self.set_finetune_layers(n, train_bn);
        self.remember_trained();
        count
    }

    fn remember_trained(&mut self) {
        // The layer states changed: the frozen copy may miss trained weights.
        self.frozen_copy = RefCell::new(None);
        let table = self.backbone.table();
        self.ever_trained.resize(table.len(), false);
        for (i, layer) in table.layers().enumerate() {
            self.ever_trained[i] |= layer.trainable;
        }
    }

    fn set_finetune_layers(&mut self, n: usize, train_bn: bool) -> usize {
        let table = self.backbone.table_mut();
        if self.pretrained {
            let range = table.unfreeze_last(n);
            table.set_train_bn(train_bn);
            range.len()
        } else {
            table.unfreeze_all();
            table.set_train_bn(true);
            table.len()
        }
    }

    /// Logits `[B, 1]` (two classes) or `[B, classes]` for float pixels on the
    /// 0..255 scale, in inference mode.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let k = self.frozen_segments();
        self.forward_from(&self.run_prefix(pixels, k), k)
    }

    /// Logits for a training step. Dropout and drop-connect draw from `rng` (not from
    /// torch's process-wide generator), so a seeded run repeats exactly even with
    /// other runs in the same process.
    pub fn forward_train(&self, pixels: &Tensor, rng: &mut impl rand::Rng) -> Tensor {
        let k = self.frozen_segments();
        self.forward_train_from(&self.run_prefix(pixels, k), k, rng)
    }

    /// How many leading backbone segments are frozen: [`Classifier::run_prefix`] may
    /// run them once and cache the result. Equal to the segment count when the whole
    /// backbone is frozen.
    pub fn frozen_segments(&self) -> usize {
        self.backbone.frozen_segments()
    }

    /// The output of the first `k` segments (which must be frozen) for float pixels
    /// (0..255), without a graph: a feature map in the frozen precision, or pooled
    /// float32 features `[B, C]` when `k` covers the whole backbone. The same pixels
    /// always give the same output while the layer states stay as they are.
    pub fn run_prefix(&self, pixels: &Tensor, k: usize) -> Tensor {
        let x = self
            .normalisation
            .apply(&self.to_model_device(pixels), self.norm_constants.as_ref());
        if k == 0 {
            return x;
        }
        let all = k == self.backbone.segments();
        tch::no_grad(|| {
            let chunk = self.images_per_pass(&x);
            if x.size()[0] <= chunk {
                return self.run_prefix_chunk(&x, k, all);
            }
            let parts: Vec<Tensor> = x
                .split(chunk, 0)
                .iter()
                .map(|x| self.run_prefix_chunk(x, k, all))
                .collect();
            Tensor::cat(&parts, 0)
        })
    }

    /// [`Classifier::run_prefix`] on normalised pixels, without a graph, in one go.
    fn run_prefix_chunk(&self, x: &Tensor, k: usize, all: bool) -> Tensor {
        let map = match self.precision {
            None => self.backbone.forward_segments(x, 0..k, false, None),
            Some(kind) => {
                let mut copy = self.frozen_copy.borrow_mut();
                let copy = copy.get_or_insert_with(|| self.build_frozen_copy(kind));
                let x = channels_last(&x.to_kind(kind));
                copy.backbone.forward_segments(&x, 0..k, false, None)
            }
        };
        if all {
            super::pool(&map).to_kind(Kind::Float)
        } else {
            map
        }
    }

    /// Training-step logits from the output of [`Classifier::run_prefix`] with the same
    /// `k`: the remaining segments (with a graph where layers train), pooling, dropout
    /// and the head, in one pass. It draws from `rng` exactly what
    /// [`Classifier::forward_train`] and [`Classifier::backward_train_from`] draw, so a
    /// cached prefix gives the numbers an uncached run gives.
    pub fn forward_train_from(
        &self,
        prefix: &Tensor,
        k: usize,
        rng: &mut impl rand::Rng,
    ) -> Tensor {
        let prefix = prefix.to_device(self.device());
        let draws = self.draw_step_noise(prefix.size()[0], rng);
        self.logits_train(&prefix, k, &draws, 0, prefix.size()[0])
    }

    /// One training step's gradients (accumulated into the variables' `grad`; the
    /// caller zeroes them before and steps the optimizer after) for the output of
    /// [`Classifier::run_prefix`] with the same `k`. The batch runs forward and
    /// backward in passes (see [`TrainPath::pass_pixels`]), each pass's loss weighted
    /// by its share of the batch, so the gradients are the whole batch's mean loss's.
    /// Returns the batch's logits and mean loss, detached.
    pub fn backward_train_from(
        &self,
        prefix: &Tensor,
        k: usize,
        labels: &Tensor,
        rng: &mut impl rand::Rng,
    ) -> (Tensor, Tensor) {
        let prefix = prefix.to_device(self.device());
        let labels = labels.to_device(self.device());
        let batch = prefix.size()[0];
        let draws = self.draw_step_noise(batch, rng);
        let per_pass = self.images_per_train_pass(&prefix).clamp(1, batch.max(1));
        let mut logits = Vec::new();
        let mut loss = Tensor::zeros([], (Kind::Float, self.device()));
        let mut start = 0;
        while start < batch {
            let n = per_pass.min(batch - start);
            let part = self.logits_train(&prefix.narrow(0, start, n), k, &draws, start, n);
            let share =
                self.train_loss(&part, &labels.narrow(0, start, n)) * (n as f64 / batch as f64);
            share.backward();
            loss += share.detach();
            logits.push(part.detach());
            start += n;
        }
        (Tensor::cat(&logits, 0), loss)
    }

    /// Images per forward + backward pass of the trainable part for a prefix shaped
    /// like `prefix`: the whole batch unless [`TrainPath::pass_pixels`] sets a budget
    /// and no BatchNorm layer computes batch statistics.
    pub fn images_per_train_pass(&self, prefix: &Tensor) -> i64 {
        if self.table().batch_statistics() {
            return i64::MAX;
        }
        images_within(self.train_path.pass_pixels, prefix)
    }

    /// The random numbers a training step draws, in the order it has always drawn
    /// them: per-block noise `[NOISE_ROWS, B]`, then the dropout mask `[B, F]`.
    fn draw_step_noise(&self, batch: i64, rng: &mut impl rand::Rng) -> StepNoise {
        let blocks = self.uniform(super::NOISE_ROWS, batch, rng);
        let dropout = (self.dropout > 0.0).then(|| {
            let keep = 1.0 - self.dropout;
            self.uniform(batch, self.backbone.feature_dim(), rng)
                .lt(keep)
                .to_kind(Kind::Float)
        });
        StepNoise { blocks, dropout }
    }

    /// Training logits for images `start..start + n` of a batch whose draws are `draws`.
    fn logits_train(
        &self,
        prefix: &Tensor,
        k: usize,
        draws: &StepNoise,
        start: i64,
        n: i64,
    ) -> Tensor {
        let noise = draws.blocks.narrow(1, start, n);
        let features = self.suffix(prefix, k, true, Some(&noise));
        let features = match &draws.dropout {
            Some(mask) => features * mask.narrow(0, start, n) / (1.0 - self.dropout),
            None => features,
        };
        self.head.forward(&features)
    }

    /// Inference logits from the output of [`Classifier::run_prefix`] with the same `k`.
    /// The remaining segments run in passes of [`TrainPath::pass_pixels`] (inference
    /// BatchNorm keeps images independent), which keeps each layer's activations near
    /// the caches as the frozen part's passes do.
    /// Inside [`Classifier::with_inference_copy`] they run on its copy of the weights.
    pub fn forward_from(&self, prefix: &Tensor, k: usize) -> Tensor {
        let prefix = prefix.to_device(self.device());
        let n = self.backbone.segments();
        let copy = self.inference_copy.borrow();
        let run = |p: &Tensor| match copy.as_ref() {
            Some(copy) if k < n => {
                let x = channels_last(&p.to_kind(Kind::Float));
                super::pool(&copy.backbone.forward_segments(&x, k..n, false, None))
            }
            _ => self.suffix(p, k, false, None),
        };
        let chunk = images_within(self.train_path.pass_pixels, &prefix);
        let features = tch::no_grad(|| {
            if k == n || prefix.size()[0] <= chunk {
                return run(&prefix);
            }
            let parts: Vec<Tensor> = prefix.split(chunk, 0).iter().map(run).collect();
            Tensor::cat(&parts, 0)
        });
        self.head.forward(&features)
    }

    /// Runs `f` without a graph, its inference ([`Classifier::forward`],
    /// [`Classifier::forward_from`]) on a float32 copy of the current weights with
    /// BatchNorm folded in and channels-last layout, made once here, when layers train
    /// and the model runs on a CPU: validation then runs the trainable segments as fast
    /// as the frozen part (`tlcap-tui bench --only whole` shows both). The copy is
    /// dropped when `f` returns, so a later training step can never meet stale weights.
    pub fn with_inference_copy<R>(&self, f: impl FnOnce() -> R) -> R {
        tch::no_grad(|| {
            let trains = self.frozen_segments() < self.backbone.segments();
            if trains && self.train_path.channels_last {
                let copy = self.build_frozen_copy(Kind::Float);
                self.inference_copy.replace(Some(copy));
            }
            let result = f();
            self.inference_copy.replace(None);
            result
        })
    }

    /// Segments `k..` and pooling on a prefix output (float32 from here on).
    fn suffix(&self, prefix: &Tensor, k: usize, train: bool, noise: Option<&Tensor>) -> Tensor {
        let n = self.backbone.segments();
        if k == n {
            return prefix.to_kind(Kind::Float);
        }
        let x = prefix.to_kind(Kind::Float);
        let x = if self.train_path.channels_last {
            channels_last(&x)
        } else {
            x.contiguous()
        };
        super::pool(&self.backbone.forward_segments(&x, k..n, train, noise))
    }

    /// Runs the frozen part of the backbone in `kind` (float32 or bfloat16) on a
    /// channels-last copy of its weights, which oneDNN runs faster; `None` runs it on
    /// the model's own variables. The head and the loss are always float32.
    pub fn set_precision(&mut self, kind: Option<Kind>) {
        self.precision = kind;
        self.frozen_copy = RefCell::new(None);
    }

    /// Whether the frozen part folds inference-mode BatchNorm into the convolutions
    /// (on by default; off only to measure what folding gains).
    pub fn set_fold_batchnorm(&mut self, fold: bool) {
        self.fold_batchnorm = fold;
        self.frozen_copy = RefCell::new(None);
    }

    /// Input pixels per forward pass of the frozen part (None: the whole batch at
    /// once); the default is [`CPU_PASS_PIXELS`] on a CPU and the whole batch on a GPU.
    /// The output is the same either way, up to rounding.
    pub fn set_pass_pixels(&mut self, pixels: Option<i64>) {
        self.pass_pixels = pixels;
    }

    /// How the trainable part runs; the defaults are [`TrainPath::for_device`].
    pub fn set_train_path(&mut self, path: TrainPath) {
        self.train_path = path;
        self.backbone
            .table_mut()
            .set_fold_in_graph(path.fold_batchnorm);
    }

    /// How the trainable part runs.
    pub fn train_path(&self) -> TrainPath {
        self.train_path
    }

    /// Input pixels per forward pass of the frozen part (None: the whole batch).
    pub fn pass_pixels(&self) -> Option<i64> {
        self.pass_pixels
    }

    /// Images per forward pass of the frozen part for a batch shaped like `x`: the
    /// pixel budget, scaled up for a precision narrower than float32.
    pub fn images_per_pass(&self, x: &Tensor) -> i64 {
        let narrower = (4 / self.precision().elt_size_in_bytes().max(1)).max(1) as i64;
        images_within(self.pass_pixels.map(|budget| budget * narrower), x)
    }

    /// The precision the frozen part runs in.
    pub fn precision(&self) -> Kind {
        self.precision.unwrap_or(Kind::Float)
    }

    /// A frozen, channels-last copy of the backbone's current weights in `kind`, its
    /// BatchNorm folded in float32 before the cast (unless turned off).
    fn build_frozen_copy(&self, kind: Kind) -> FrozenCopy {
        let mut vs = nn::VarStore::new(self.device());
        // Building initialises from torch's global generator: keep other runs' seeded
        // initialisation undisturbed.
        let mut backbone = {
            let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            Backbone::new(&vs.root(), self.backbone.kind(), false)
        };
        backbone.table_mut().freeze_all();
        let source = self.vs.variables();
        tch::no_grad(|| {
            for (name, var) in vs.variables() {
                if let Some(src) = source.get(&name) {
                    var.shallow_clone().copy_(src);
                }
            }
        });
        if self.fold_batchnorm {
            backbone.table_mut().fold_batchnorm(kind);
        } else {
            // Measuring BatchNorm as its own pass: not folded in the graph either.
            backbone.table_mut().set_fold_in_graph(false);
        }
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        tch::no_grad(|| {
            for (_, var) in vs.variables() {
                if var.dim() == 4 {
                    var.shallow_clone().set_data(&channels_last(&var));
                }
            }
        });
        FrozenCopy { _vs: vs, backbone }
    }

    /// Uniform [0, 1) values `[rows, cols]` from `rng`, on the model's device.
    fn uniform(&self, rows: i64, cols: i64, rng: &mut impl rand::Rng) -> Tensor {
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen::<f32>()).collect();
        Tensor::from_slice(&v)
            .view([rows, cols])
            .to_device(self.device())
    }

    /// One sigmoid unit for two classes (not multi-label).
    fn binary(&self) -> bool {
        self.classes == 2 && !self.multilabel
    }

    /// Mean loss: binary cross-entropy on logits for two classes, cross-entropy else;
    /// multi-label: binary cross-entropy of every (image, label), unweighted.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        let labels = labels.to_device(logits.device());
        if self.multilabel {
            return multilabel_cross_entropy(logits, &labels, None, Reduction::Mean);
        }
        if self.binary() {
            binary_cross_entropy(logits, &labels, Reduction::Mean)
        } else {
            logits.cross_entropy_for_logits(&labels)
        }
    }

    /// Each image's training loss `[B]` for a single-label task (multi-label losses are
    /// per (image, label): [`Classifier::train_loss`] handles them), with label
    /// smoothing `e`: a sigmoid unit's target (1 - e) y + e/2, softmax's
    /// -sum_k q_k log p_k with q = (1 - e) one_hot + e/K. At e = 0, [`Classifier::loss`]
    /// before the mean.
    fn image_losses(&self, logits: &Tensor, labels: &Tensor, e: f64) -> Tensor {
        let labels = labels.to_device(logits.device());
        if self.binary() {
            let targets = smoothed(&labels.to_kind(Kind::Float), e, 2);
            return binary_cross_entropy(logits, &targets, Reduction::None);
        }
        let log_p = logits.log_softmax(-1, Kind::Float);
        let nll = -log_p.gather(1, &labels.view([-1, 1]), false).view([-1]);
        if e == 0.0 {
            return nll;
        }
        nll * (1.0 - e) - log_p.mean_dim(1, false, Kind::Float) * e
    }

    /// Sets each class's weight in the training loss (`data.class_weight`, in class
    /// order); None weighs every image alike.
    pub fn set_class_weights(&mut self, weights: Option<&[f64]>) {
        self.class_weights = weights.map(|w| {
            Tensor::from_slice(w)
                .to_kind(Kind::Float)
                .to_device(self.device())
        });
    }

    /// Multi-label: sets each label's positive weight in the training loss
    /// (`multilabel.pos_weight`, in label order); None weighs positives as negatives.
    pub fn set_pos_weight(&mut self, weights: Option<&[f64]>) {
        self.pos_weight = weights.map(|w| {
            Tensor::from_slice(w)
                .to_kind(Kind::Float)
                .to_device(self.device())
        });
    }

    /// Sets the dropout rate before the head (`model.dropout`, a live setting): the
    /// next training step draws its mask with it.
    pub fn set_dropout(&mut self, rate: f64) {
        self.dropout = rate;
    }

    /// Sets the label smoothing of the training loss (`model.label_smoothing`, a live
    /// setting; 0 trains on the labels as they are).
    pub fn set_label_smoothing(&mut self, smoothing: f64) {
        self.label_smoothing = smoothing;
    }

    /// The training loss: [`Classifier::loss`], or with class weights each image's
    /// loss times its class's weight, summed over the batch and divided by the batch
    /// size (Keras `class_weight`; PyTorch's `weight=` would divide by the weights'
    /// sum instead). Multi-label: binary cross-entropy with each label's positives
    /// weighted by its positive weight (PyTorch `BCEWithLogitsLoss(pos_weight=...)`).
    ///
    /// With `model.label_smoothing` e the targets are Keras's: one-hot rows become
    /// (1 - e) * one_hot + e / K for K classes, and the 0/1 target of a sigmoid unit
    /// (two classes, or each multi-label label) becomes (1 - e) * y + e / 2.
    pub fn train_loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        let e = self.label_smoothing;
        if self.multilabel {
            let labels = labels.to_device(logits.device());
            let targets = smoothed(&labels.to_kind(Kind::Float), e, 2);
            return multilabel_cross_entropy(
                logits,
                &targets,
                self.pos_weight.as_ref(),
                Reduction::Mean,
            );
        }
        if e == 0.0 && self.class_weights.is_none() {
            return self.loss(logits, labels);
        }
        let labels = labels.to_device(logits.device());
        let per_image = self.image_losses(logits, &labels, e);
        match &self.class_weights {
            Some(weights) => (per_image * weights.index_select(0, &labels)).mean(Kind::Float),
            None => per_image.mean(Kind::Float),
        }
    }

    /// Right decisions and decisions made in a batch at probability 0.5 (the training
    /// accuracy's counts): one per image, or one per (image, label) for multi-label
    /// (Keras `binary_accuracy`).
    pub fn right_decisions(&self, logits: &Tensor, labels: &Tensor) -> (i64, i64) {
        let labels = labels.to_device(logits.device());
        if self.multilabel {
            let said = logits.ge(0.0).to_kind(Kind::Float);
            let right = said
                .eq_tensor(&labels.to_kind(Kind::Float))
                .sum(Kind::Int64)
                .int64_value(&[]);
            return (right, labels.numel() as i64);
        }
        let predicted = if self.binary() {
            logits.view([-1]).gt(0.0).to_kind(Kind::Int64)
        } else {
            logits.argmax(-1, false)
        };
        let right = predicted
            .eq_tensor(&labels)
            .sum(Kind::Int64)
            .int64_value(&[]);
        (right, labels.size()[0])
    }

    /// Class probabilities `[B, classes]` (for two classes: `[1 - p, p]`); multi-label:
    /// each label's probability `[B, labels]`.
    pub fn probabilities(&self, logits: &Tensor) -> Tensor {
        if self.multilabel {
            return logits.sigmoid();
        }
        if self.binary() {
            let p = logits.view([-1, 1]).sigmoid();
            Tensor::cat(&[&(1.0 - &p), &p], 1)
        } else {
            logits.softmax(-1, Kind::Float)
        }
    }

    /// Class probabilities `[N, classes]` of float pixels (0..255) averaged over
    /// test-time augmentation `views` (see [`crate::data::augment::tta_views`]),
    /// drawn with the augmentation's fill; one view is a plain forward pass.
    /// `first`: the logits of the first view when the caller has them already.
    pub fn probabilities_over_views(
        &self,
        pixels: &Tensor,
        views: &[crate::data::augment::Transform],
        fill: (crate::config::FillMode, f64),
        first: Option<&Tensor>,
    ) -> Tensor {
        let n = pixels.size()[0] as usize;
        let mut sum: Option<Tensor> = None;
        for (i, view) in views.iter().enumerate() {
            let logits = match first {
                Some(l) if i == 0 => l.shallow_clone(),
                _ => {
                    let x = crate::data::augment::apply(pixels, &vec![*view; n], fill.0, fill.1);
                    self.forward(&x)
                }
            };
            let p = self.probabilities(&logits);
            sum = Some(match sum {
                Some(s) => s + p,
                None => p,
            });
        }
        let sum = sum.expect("at least one view");
        if views.len() > 1 {
            sum / views.len() as f64
        } else {
            sum
        }
    }

    /// The mean negative log-likelihood of `labels` under class probabilities
    /// `[N, classes]` (the validation loss of averaged test-time views), each
    /// probability kept above 1e-7.
    pub fn loss_of_probabilities(&self, probabilities: &Tensor, labels: &Tensor) -> Tensor {
        if self.multilabel {
            // Binary cross-entropy of every (image, label).
            let y = labels
                .to_device(probabilities.device())
                .to_kind(Kind::Float);
            let p = probabilities.clamp(1e-7, 1.0 - 1e-7);
            let (not_y, not_p) = (y.ones_like() - &y, p.ones_like() - &p);
            return -(&y * p.log() + not_y * not_p.log()).mean(Kind::Float);
        }
        let y = labels.to_device(probabilities.device()).view([-1, 1]);
        -probabilities
            .gather(1, &y, false)
            .clamp_min(1e-7)
            .log()
            .mean(Kind::Float)
    }

    /// Every variable (backbone and head, running statistics included), detached, on
    /// the CPU, sorted by name: a standalone copy of the whole network.
    pub fn all_variables(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(tch::Device::Cpu)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Names and tensors a checkpoint holds: the head, and every variable (running
    /// statistics included) of each backbone layer trained at any point of the run.
    pub fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let trainable: Vec<String> = self
            .table()
            .layers()
            .zip(&self.ever_trained)
            .filter(|(_, &t)| t)
            .map(|(l, _)| format!("{}.", l.name))
            .collect();
        let mut out: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with(HEAD_PREFIX) || trainable.iter().any(|p| name.starts_with(p))
            })
            .map(|(name, t)| (name, t.detach().to_device(Device::Cpu)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Copies checkpoint tensors over the current variables; every name must exist
    /// with the same shape.
    pub fn load_checkpoint(&self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        let vars = self.vs.variables();
        for (name, t) in tensors {
            let var = vars
                .get(name)
                .ok_or_else(|| anyhow!("checkpoint tensor `{name}` is not in this model"))?;
            if var.size() != t.size() {
                bail!(
                    "checkpoint tensor `{name}` has shape {:?}, the model {:?}",
                    t.size(),
                    var.size()
                );
            }
            tch::no_grad(|| var.shallow_clone().copy_(t));
        }
        self.frozen_copy.replace(None);
        Ok(())
    }
}
