//! EfficientNet-Lite0..4 as in PyPI `efficientnet-lite-pytorch` 0.1.0: TensorFlow
//! "SAME" padding, ReLU6, no squeeze-excitation, stem and head not scaled, and that
//! package's parameter names (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`, ...).

use tch::Tensor;

use super::layers::{conv_bn, relu6, Bn, Builder, Conv, ConvSpec, Ctx};

/// TF epsilon 1e-3; TF momentum 0.99 is PyTorch momentum 0.01.
const EPS: f64 = 1e-3;
const MOMENTUM: f64 = 0.01;
/// Drop-connect rate of the last block (scaled linearly from 0 over the blocks).
const DROP_CONNECT: f64 = 0.2;
/// Channels of the head conv: the pooled feature size (not scaled in Lite).
pub const FEATURES: i64 = 1280;

/// (repeats, kernel, stride, expansion, input filters, output filters).
const BLOCKS: [(usize, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// (width, depth) multipliers of Lite0..4.
const SCALES: [(f64, f64); 5] = [(1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8)];

/// The reference `round_filters`: scale, round to a multiple of 8, never drop > 10%.
fn round_filters(filters: i64, width: f64) -> i64 {
    let divisor = 8.0;
    let f = filters as f64 * width;
    let mut new = ((f + divisor / 2.0) as i64 / 8 * 8).max(8);
    if (new as f64) < 0.9 * f {
        new += 8;
    }
    new
}

/// A mobile inverted bottleneck block.
#[derive(Debug)]
struct MbConv {
    expand: Option<(Conv, Bn)>,
    depthwise: (Conv, Bn),
    project: (Conv, Bn),
    residual: bool,
    drop_connect: f64,
    /// This block's layer indices (drop-connect applies only if one is trainable).
    layers: std::ops::Range<usize>,
}

impl MbConv {
    /// `index` picks this block's row of `ctx.noise` for drop-connect.
    fn forward(&self, x: &Tensor, ctx: Ctx, index: usize) -> Tensor {
        let mut y = x.shallow_clone();
        if let Some(expand) = &self.expand {
            y = relu6(conv_bn(expand, &y, ctx));
        }
        y = relu6(conv_bn(&self.depthwise, &y, ctx));
        y = conv_bn(&self.project, &y, ctx);
        if !self.residual {
            return y;
        }
        if ctx.train && self.drop_connect > 0.0 && ctx.table.any_trainable(self.layers.clone()) {
            let keep = 1.0 - self.drop_connect;
            let n = y.size()[0];
            let uniform = match ctx.noise {
                Some(noise) if (index as i64) < noise.size()[0] => noise
                    .get(index as i64)
                    .to_device(y.device())
                    .view([n, 1, 1, 1]),
                _ => Tensor::rand([n, 1, 1, 1], (y.kind(), y.device())),
            };
            let mask = (uniform + keep).floor();
            y = y / keep * mask;
        }
        y + x
    }
}

/// EfficientNet-Lite without its `_fc` layer.
#[derive(Debug)]
pub struct EfficientnetLite {
    stem: (Conv, Bn),
    blocks: Vec<MbConv>,
    head: (Conv, Bn),
    /// First layer index of each segment (stem, blocks, head conv).
    pub starts: Vec<usize>,
    /// Block groups (the stem, one per stage, the head conv): name and first layer
    /// index, in forward order.
    pub groups: Vec<(String, usize)>,
}

impl EfficientnetLite {
    /// Builds Lite`variant` (0..=4).
    pub fn new(b: &mut Builder, variant: usize) -> EfficientnetLite {
        let (width, depth) = SCALES[variant];
        let stem = (
            b.conv("_conv_stem", ConvSpec::new(3, 32, 3, 2).same()),
            b.bn("_bn0", 32, EPS, MOMENTUM),
        );
        let mut specs = Vec::new();
        // The first block of each stage.
        let mut stage_starts = Vec::new();
        for (i, &(repeats, k, s, e, cin, cout)) in BLOCKS.iter().enumerate() {
            let fixed = i == 0 || i == BLOCKS.len() - 1;
            let repeats = if fixed {
                repeats
            } else {
                (depth * repeats as f64).ceil() as usize
            };
            let cin = if i == 0 {
                32
            } else {
                round_filters(cin, width)
            };
            let cout = round_filters(cout, width);
            stage_starts.push(specs.len());
            for r in 0..repeats {
                let (cin, s) = if r == 0 { (cin, s) } else { (cout, 1) };
                specs.push((k, s, e, cin, cout));
            }
        }
        let total = specs.len();
        let mut blocks = Vec::new();
        let mut groups = vec![("_conv_stem".to_string(), 0)];
        for (n, &(k, s, e, cin, cout)) in specs.iter().enumerate() {
            let p = format!("_blocks.{n}");
            let first = b.next_index();
            if let Some(stage) = stage_starts.iter().position(|&f| f == n) {
                let last = stage_starts.get(stage + 1).copied().unwrap_or(total) - 1;
                let name = if last == n {
                    p.clone()
                } else {
                    format!("{p}-{last}")
                };
                groups.push((name, first));
            }
            let hidden = cin * e;
            let expand = (e != 1).then(|| {
                (
                    b.conv(
                        &format!("{p}._expand_conv"),
                        ConvSpec::new(cin, hidden, 1, 1).same(),
                    ),
                    b.bn(&format!("{p}._bn0"), hidden, EPS, MOMENTUM),
                )
            });
            let depthwise = (
                b.conv(
                    &format!("{p}._depthwise_conv"),
                    ConvSpec::new(hidden, hidden, k, s).depthwise().same(),
                ),
                b.bn(&format!("{p}._bn1"), hidden, EPS, MOMENTUM),
            );
            let project = (
                b.conv(
                    &format!("{p}._project_conv"),
                    ConvSpec::new(hidden, cout, 1, 1).same(),
                ),
                b.bn(&format!("{p}._bn2"), cout, EPS, MOMENTUM),
            );
            blocks.push(MbConv {
                expand,
                depthwise,
                project,
                residual: s == 1 && cin == cout,
                drop_connect: DROP_CONNECT * n as f64 / total as f64,
                layers: first..b.next_index(),
            });
        }
        let mut starts = vec![0];
        starts.extend(blocks.iter().map(|b| b.layers.start));
        starts.push(b.next_index());
        let cin = specs.last().map_or(32, |s| s.4);
        groups.push(("_conv_head".to_string(), b.next_index()));
        let head = (
            b.conv("_conv_head", ConvSpec::new(cin, FEATURES, 1, 1).same()),
            b.bn("_bn1", FEATURES, EPS, MOMENTUM),
        );
        EfficientnetLite {
            stem,
            blocks,
            head,
            starts,
            groups,
        }
    }

    /// Segment `i`: 0 is the stem, then the MBConv blocks, then the head conv.
    pub fn segment(&self, i: usize, x: &Tensor, ctx: Ctx) -> Tensor {
        match i {
            0 => relu6(conv_bn(&self.stem, x, ctx)),
            i if i <= self.blocks.len() => self.blocks[i - 1].forward(x, ctx, i - 1),
            _ => relu6(conv_bn(&self.head, x, ctx)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_filters_matches_the_reference() {
        // Values from the reference formula with width 1.1 / 1.2 / 1.4.
        assert_eq!(round_filters(16, 1.1), 16);
        assert_eq!(round_filters(24, 1.1), 24);
        assert_eq!(round_filters(40, 1.2), 48);
        assert_eq!(round_filters(320, 1.4), 448);
        assert_eq!(round_filters(112, 1.0), 112);
    }
}
