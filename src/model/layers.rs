//! The ordered, named layer list every backbone is made of, and the building blocks
//! (convolution, BatchNorm, linear) that register themselves in it.
//!
//! A *layer* is one module that owns parameters, in forward order: a convolution, a
//! BatchNorm or a linear layer, named exactly as in the reference implementation
//! (`layer4.1.conv2`, `features.18.1`, `_blocks.15._bn2`). Activations, additions,
//! padding and pooling own nothing and are not counted (Keras counts them; see the
//! README). Freezing and "unfreeze the last N" work on this list.

use std::ops::Range;

use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// What a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A dense convolution.
    Conv,
    /// A depthwise convolution (groups = channels).
    DepthwiseConv,
    /// BatchNorm (weight and bias trainable; running statistics never are).
    BatchNorm,
    /// A fully connected layer.
    Linear,
}

impl LayerKind {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Conv => "conv",
            LayerKind::DepthwiseConv => "dwconv",
            LayerKind::BatchNorm => "batchnorm",
            LayerKind::Linear => "linear",
        }
    }
}

/// One layer as the model pane and the freeze logic see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// Reference name, e.g. `features.3.conv.1.0`.
    pub name: String,
    /// Its kind.
    pub kind: LayerKind,
    /// Number of trainable-able values (weights and biases, not running statistics).
    pub params: usize,
    /// Whether its parameters currently receive gradients.
    pub trainable: bool,
}

/// A layer and handles to its parameters (shallow clones of the VarStore's tensors).
struct Entry {
    info: LayerInfo,
    params: Vec<Tensor>,
    /// A BatchNorm's running statistics and epsilon, for folding.
    stats: Option<RunningStats>,
}

/// A BatchNorm's running mean and variance (shallow clones) and its epsilon.
struct RunningStats {
    mean: Tensor,
    var: Tensor,
    eps: f64,
}

/// The ordered layer list of a backbone, with each layer's trainable state.
pub struct LayerTable {
    entries: Vec<Entry>,
    /// Whether trainable BatchNorm layers update their statistics in training mode.
    train_bn: bool,
    /// Per layer index: for a BatchNorm folded into the convolution before it, the
    /// convolution's new bias (see [`LayerTable::fold_batchnorm`]).
    folded: Vec<Option<Tensor>>,
    /// Whether an inference-mode BatchNorm runs as a per-channel scale of the
    /// convolution's weight inside the graph (see [`conv_bn`]); on by default.
    fold_in_graph: bool,
}

impl LayerTable {
    /// The layers in forward order.
    pub fn layers(&self) -> impl Iterator<Item = &LayerInfo> {
        self.entries.iter().map(|e| &e.info)
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no layers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn set(&mut self, range: Range<usize>, trainable: bool) {
        for e in &mut self.entries[range] {
            e.info.trainable = trainable;
            for p in &mut e.params {
                let _ = p.set_requires_grad(trainable);
            }
        }
    }

    /// Freezes every layer: no gradients, BatchNorm in inference mode.
    pub fn freeze_all(&mut self) {
        self.set(0..self.entries.len(), false);
    }

    /// Makes every layer trainable (training from scratch).
    pub fn unfreeze_all(&mut self) {
        self.set(0..self.entries.len(), true);
    }

    /// Freezes everything, then makes the last `n` layers trainable (all of them if
    /// `n` is larger). Returns the index range made trainable.
    pub fn unfreeze_last(&mut self, n: usize) -> Range<usize> {
        let len = self.entries.len();
        let range = len.saturating_sub(n)..len;
        self.freeze_all();
        self.set(range.clone(), true);
        range
    }

    /// Sets whether trainable BatchNorm layers update their statistics (`train_bn`).
    pub fn set_train_bn(&mut self, train_bn: bool) {
        self.train_bn = train_bn;
    }

    /// Number of trainable values in the trainable layers.
    pub fn trainable_params(&self) -> usize {
        self.layers()
            .filter(|l| l.trainable)
            .map(|l| l.params)
            .sum()
    }

    /// Whether a BatchNorm at `index` runs in training mode for a forward pass.
    fn bn_updates(&self, index: usize, train: bool) -> bool {
        train && self.train_bn && self.entries[index].info.trainable
    }

    /// Whether a training step computes BatchNorm statistics over its batch (a
    /// trainable BatchNorm with `train_bn`): then the batch must run in one pass.
    pub fn batch_statistics(&self) -> bool {
        self.train_bn
            && self
                .entries
                .iter()
                .any(|e| e.info.trainable && e.info.kind == LayerKind::BatchNorm)
    }

    /// Sets whether inference-mode BatchNorm is folded into the convolution's weight
    /// inside the graph (the default) or runs as its own pass (only to measure the
    /// difference: `tlcap-tui bench`).
    pub fn set_fold_in_graph(&mut self, fold: bool) {
        self.fold_in_graph = fold;
    }

    /// The device of the parameters (CPU for an empty table).
    pub fn device(&self) -> tch::Device {
        self.entries
            .first()
            .and_then(|e| e.params.first())
            .map_or(tch::Device::Cpu, Tensor::device)
    }

    /// Whether any layer in `range` is trainable.
    pub fn any_trainable(&self, range: Range<usize>) -> bool {
        self.entries[range].iter().any(|e| e.info.trainable)
    }

    /// Folds every BatchNorm into the convolution before it, for inference only: the
    /// convolution's weights are scaled by `gamma / sqrt(var + eps)` per output channel
    /// and it gains the bias `beta - mean * gamma / sqrt(var + eps)` (kept here, in
    /// `bias_kind`), so one pass over the activations replaces two. Folding is computed
    /// in the weights' own precision (float32 before a cast to bfloat16). Only for a
    /// table that never trains again (a frozen copy). Returns how many were folded.
    pub fn fold_batchnorm(&mut self, bias_kind: tch::Kind) -> usize {
        assert!(
            self.entries.iter().all(|e| !e.info.trainable),
            "BatchNorm can only be folded in a frozen table"
        );
        self.folded = self.entries.iter().map(|_| None).collect();
        let mut count = 0;
        tch::no_grad(|| {
            for i in 1..self.entries.len() {
                let (before, rest) = self.entries.split_at(i);
                let (conv, bn) = (&before[i - 1], &rest[0]);
                let Some(stats) = &bn.stats else { continue };
                if !matches!(conv.info.kind, LayerKind::Conv | LayerKind::DepthwiseConv) {
                    continue;
                }
                let weight = &conv.params[0];
                let (scaled, bias) = fold(
                    weight,
                    conv.params.get(1),
                    (&bn.params[0], &bn.params[1]),
                    stats,
                );
                weight.shallow_clone().copy_(&scaled);
                self.folded[i] = Some(bias.to_kind(bias_kind));
                count += 1;
            }
        });
        count
    }

    /// The bias of a convolution whose BatchNorm (at `bn_index`) was folded into it.
    fn folded_bias(&self, bn_index: usize) -> Option<&Tensor> {
        self.folded.get(bn_index).and_then(Option::as_ref)
    }
}

/// Per-forward-pass context: training or inference, and the layer states.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// True during a training step (dropout, drop-connect, trainable BatchNorm).
    pub train: bool,
    /// The backbone's layer table.
    pub table: &'a LayerTable,
    /// Uniform [0, 1) values `[rows, batch]` drawn by the caller's seeded generator,
    /// for per-block randomness (drop-connect), so a run does not depend on torch's
    /// process-wide generator; None falls back to it.
    pub noise: Option<&'a Tensor>,
}

/// Registers layers in order while a backbone is built.
pub struct Builder<'a> {
    root: nn::Path<'a>,
    entries: Vec<Entry>,
}

/// Convolution options.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// Input channels.
    pub cin: i64,
    /// Output channels.
    pub cout: i64,
    /// Square kernel size.
    pub kernel: i64,
    /// Stride.
    pub stride: i64,
    /// Symmetric zero padding (ignored with `same`).
    pub padding: i64,
    /// Groups (`cin` for depthwise).
    pub groups: i64,
    /// Whether the conv has a bias.
    pub bias: bool,
    /// TensorFlow "SAME" padding, computed from the input size.
    pub same: bool,
}

impl ConvSpec {
    /// A bias-free convolution with PyTorch padding `(k - 1) / 2`.
    pub fn new(cin: i64, cout: i64, kernel: i64, stride: i64) -> ConvSpec {
        ConvSpec {
            cin,
            cout,
            kernel,
            stride,
            padding: (kernel - 1) / 2,
            groups: 1,
            bias: false,
            same: false,
        }
    }

    /// Depthwise (groups = channels).
    pub fn depthwise(self) -> ConvSpec {
        ConvSpec {
            groups: self.cin,
            ..self
        }
    }

    /// With explicit symmetric padding.
    pub fn padding(self, padding: i64) -> ConvSpec {
        ConvSpec { padding, ..self }
    }

    /// With a bias.
    pub fn bias(self) -> ConvSpec {
        ConvSpec { bias: true, ..self }
    }

    /// TensorFlow "SAME" padding.
    pub fn same(self) -> ConvSpec {
        ConvSpec { same: true, ..self }
    }
}

/// A convolution layer.
#[derive(Debug)]
pub struct Conv {
    conv: nn::Conv2D,
    spec: ConvSpec,
    /// Its place in the layer table.
    index: usize,
}

thread_local! {
    /// (layer index, floating-point operations) of the convolutions run on this thread,
    /// while counting.
    static FLOPS: std::cell::RefCell<Option<Vec<(usize, u64)>>> =
        const { std::cell::RefCell::new(None) };
}

/// The floating-point operations (2 per multiply-add) of each convolution `f` runs on
/// this thread, by layer index; nothing is counted outside such a call.
pub fn count_flops(f: impl FnOnce()) -> Vec<(usize, u64)> {
    FLOPS.with(|c| c.replace(Some(Vec::new())));
    f();
    FLOPS.with(|c| c.take()).unwrap_or_default()
}

impl Conv {
    /// Applies the convolution (with TF "SAME" padding when asked).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = match self.same_padding(x) {
            None => self.conv.forward(x),
            Some(pad) => self.conv.forward(&x.constant_pad_nd(pad)),
        };
        self.count(&y);
        y
    }

    /// The convolution with `bias` in place of its own (a folded BatchNorm's).
    fn forward_with_bias(&self, x: &Tensor, bias: &Tensor) -> Tensor {
        self.forward_with(x, &self.conv.ws, bias)
    }

    /// The convolution with `weight` and `bias` in place of its own.
    fn forward_with(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
        let s = &self.spec;
        let padding = if s.same { 0 } else { s.padding };
        let run = |x: &Tensor| {
            x.conv2d(
                weight,
                Some(bias),
                [s.stride, s.stride],
                [padding, padding],
                [1, 1],
                s.groups,
            )
        };
        let y = match self.same_padding(x) {
            None => run(x),
            Some(pad) => run(&x.constant_pad_nd(pad)),
        };
        self.count(&y);
        y
    }

    /// Records this convolution's work while [`count_flops`] counts.
    fn count(&self, y: &Tensor) {
        FLOPS.with(|c| {
            if let Some(counts) = c.borrow_mut().as_mut() {
                let s = &self.spec;
                let per_output = 2 * (s.cin / s.groups) * s.kernel * s.kernel;
                counts.push((self.index, (y.numel() as i64 * per_output) as u64));
            }
        });
    }

    /// TensorFlow "SAME" padding for `x` (left, right, top, bottom), when needed.
    fn same_padding(&self, x: &Tensor) -> Option<[i64; 4]> {
        if !self.spec.same {
            return None;
        }
        let pad = |i: i64| {
            let s = self.spec.stride;
            let o = (i + s - 1) / s;
            ((o - 1) * s + self.spec.kernel - i).max(0)
        };
        let size = x.size();
        let (ph, pw) = (pad(size[2]), pad(size[3]));
        (ph != 0 || pw != 0).then_some([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2])
    }
}

/// A convolution and the BatchNorm after it: convolution, then normalisation — or
/// one convolution with a bias where the BatchNorm was folded into it. Every
/// BatchNorm runs through here, so a folded one is never applied twice or skipped.
///
/// A BatchNorm in inference mode that was not folded ahead of time (the trainable
/// part, where weights change every step) is folded inside the graph: one
/// convolution with the weight scaled per output channel by `gamma / sqrt(var + eps)`
/// and the bias `beta - mean * gamma / sqrt(var + eps)`. Autograd then gives the
/// convolution's weight, gamma and beta exactly the gradients the two separate
/// layers would get, and the activations take one pass (and one saved tensor) fewer
/// forward and backward.
pub fn conv_bn((conv, bn): &(Conv, Bn), x: &Tensor, ctx: Ctx) -> Tensor {
    match ctx.table.folded_bias(bn.index) {
        Some(bias) => {
            assert_eq!(
                conv.index + 1,
                bn.index,
                "BatchNorm folded into another conv"
            );
            conv.forward_with_bias(x, bias)
        }
        None if ctx.table.fold_in_graph && !ctx.table.bn_updates(bn.index, ctx.train) => {
            let (weight, bias) = bn.fold_into(conv);
            conv.forward_with(x, &weight, &bias)
        }
        None => bn.forward(&conv.forward(x), ctx),
    }
}

/// ReLU6 (MobileNetV2, EfficientNet-Lite), in place: its gradient needs only its
/// output, and the convolution or BatchNorm before it never keeps its own output.
pub fn relu6(x: Tensor) -> Tensor {
    let mut x = x;
    let _ = x.relu6_();
    x
}

/// ReLU (ResNet), in place for the same reason as [`relu6`].
pub fn relu(x: Tensor) -> Tensor {
    let mut x = x;
    let _ = x.relu_();
    x
}

/// A convolution's weight and bias with an inference-mode BatchNorm folded in: the
/// weight scaled per output channel by `gamma / sqrt(var + eps)`, the bias `beta +
/// (conv_bias - mean) * gamma / sqrt(var + eps)`. The one formula for a frozen copy
/// folded ahead of time and for the trainable part folded inside the graph.
fn fold(
    weight: &Tensor,
    conv_bias: Option<&Tensor>,
    (gamma, beta): (&Tensor, &Tensor),
    stats: &RunningStats,
) -> (Tensor, Tensor) {
    let scale = gamma / (&stats.var + stats.eps).sqrt();
    let scaled = weight * scale.view([-1, 1, 1, 1]);
    let shift = match conv_bias {
        Some(b) => b - &stats.mean,
        None => -&stats.mean,
    };
    (scaled, beta + shift * scale)
}

/// A BatchNorm layer that knows its place in the table.
#[derive(Debug)]
pub struct Bn {
    bn: nn::BatchNorm,
    index: usize,
    eps: f64,
}

impl Bn {
    /// `conv`'s weight and bias with this inference-mode BatchNorm folded in, as graph
    /// operations on the variables (see [`conv_bn`]).
    fn fold_into(&self, conv: &Conv) -> (Tensor, Tensor) {
        let gamma = self.bn.ws.as_ref().expect("BatchNorm has a weight");
        let beta = self.bn.bs.as_ref().expect("BatchNorm has a bias");
        let stats = RunningStats {
            mean: self.bn.running_mean.shallow_clone(),
            var: self.bn.running_var.shallow_clone(),
            eps: self.eps,
        };
        fold(&conv.conv.ws, conv.conv.bs.as_ref(), (gamma, beta), &stats)
    }

    /// Normalises; training mode only if the layer is trainable and `train_bn` is set.
    /// Only [`conv_bn`] calls it, which knows whether it was folded.
    fn forward(&self, x: &Tensor, ctx: Ctx) -> Tensor {
        self.bn
            .forward_t(x, ctx.table.bn_updates(self.index, ctx.train))
    }
}

impl<'a> Builder<'a> {
    /// A builder whose layer names are relative to `root`.
    pub fn new(root: nn::Path<'a>) -> Self {
        Builder {
            root,
            entries: Vec::new(),
        }
    }

    /// Index the next layer will get.
    pub fn next_index(&self) -> usize {
        self.entries.len()
    }

    fn path(&self, name: &str) -> nn::Path<'a> {
        name.split('.').fold(self.root.clone(), |p, s| p.sub(s))
    }

    fn push(
        &mut self,
        name: &str,
        kind: LayerKind,
        params: Vec<Tensor>,
        stats: Option<RunningStats>,
    ) -> usize {
        let count = params.iter().map(Tensor::numel).sum();
        self.entries.push(Entry {
            info: LayerInfo {
                name: name.to_owned(),
                kind,
                params: count,
                trainable: true,
            },
            params,
            stats,
        });
        self.entries.len() - 1
    }

    /// A convolution named `name` (its variables are `name.weight`, `name.bias`).
    pub fn conv(&mut self, name: &str, spec: ConvSpec) -> Conv {
        let config = nn::ConvConfig {
            stride: spec.stride,
            padding: if spec.same { 0 } else { spec.padding },
            groups: spec.groups,
            bias: spec.bias,
            ws_init: nn::init::DEFAULT_KAIMING_UNIFORM,
            ..Default::default()
        };
        let conv = nn::conv2d(self.path(name), spec.cin, spec.cout, spec.kernel, config);
        let mut params = vec![conv.ws.shallow_clone()];
        params.extend(conv.bs.as_ref().map(Tensor::shallow_clone));
        let kind = if spec.groups > 1 && spec.groups == spec.cin {
            LayerKind::DepthwiseConv
        } else {
            LayerKind::Conv
        };
        let index = self.push(name, kind, params, None);
        Conv { conv, spec, index }
    }

    /// A BatchNorm named `name` with PyTorch `eps` and `momentum`.
    pub fn bn(&mut self, name: &str, channels: i64, eps: f64, momentum: f64) -> Bn {
        let config = nn::BatchNormConfig {
            eps,
            momentum,
            ws_init: nn::Init::Const(1.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let bn = nn::batch_norm2d(self.path(name), channels, config);
        let params = [&bn.ws, &bn.bs]
            .into_iter()
            .flatten()
            .map(Tensor::shallow_clone)
            .collect();
        let stats = RunningStats {
            mean: bn.running_mean.shallow_clone(),
            var: bn.running_var.shallow_clone(),
            eps,
        };
        let index = self.push(name, LayerKind::BatchNorm, params, Some(stats));
        Bn { bn, index, eps }
    }

    /// A linear layer named `name`, outside the table (original classifiers, heads).
    pub fn linear_untracked(&self, name: &str, cin: i64, cout: i64) -> nn::Linear {
        nn::linear(self.path(name), cin, cout, Default::default())
    }

    /// Finishes: the table, every layer trainable.
    pub fn finish(self) -> LayerTable {
        LayerTable {
            entries: self.entries,
            train_bn: false,
            folded: Vec::new(),
            fold_in_graph: true,
        }
    }
}
