//! MobileNetV2 (width 1.0) as in torchvision, with torchvision's parameter names
//! (`features.N...`); the original classifier is `classifier.1`.

use tch::Tensor;

use super::layers::{conv_bn, relu6, Bn, Builder, Conv, ConvSpec, Ctx};

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;
/// (expansion t, output channels c, repeats n, first stride s), from the paper.
const SETTING: [(i64, i64, usize, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];
/// Channels of the last 1x1 conv: the pooled feature size.
pub const FEATURES: i64 = 1280;

/// An inverted residual block: optional 1x1 expansion, 3x3 depthwise, 1x1 projection.
#[derive(Debug)]
struct InvertedResidual {
    /// Conv + BN pairs followed by ReLU6 (expansion, depthwise).
    activated: Vec<(Conv, Bn)>,
    project: (Conv, Bn),
    residual: bool,
}

impl InvertedResidual {
    fn forward(&self, x: &Tensor, ctx: Ctx) -> Tensor {
        let mut y = x.shallow_clone();
        for pair in &self.activated {
            y = relu6(conv_bn(pair, &y, ctx));
        }
        let y = conv_bn(&self.project, &y, ctx);
        if self.residual {
            y + x
        } else {
            y
        }
    }
}

/// MobileNetV2 without its classifier.
#[derive(Debug)]
pub struct MobilenetV2 {
    stem: (Conv, Bn),
    blocks: Vec<InvertedResidual>,
    last: (Conv, Bn),
    /// First layer index of each segment (stem, blocks, last conv).
    pub starts: Vec<usize>,
    /// Block groups (the stem, one per stage of equal width, the last conv): name and
    /// first layer index, in forward order.
    pub groups: Vec<(String, usize)>,
}

impl MobilenetV2 {
    /// Builds the network, registering its layers in forward order.
    pub fn new(b: &mut Builder) -> MobilenetV2 {
        let stem = (
            b.conv("features.0.0", ConvSpec::new(3, 32, 3, 2)),
            b.bn("features.0.1", 32, EPS, MOMENTUM),
        );
        let mut cin = 32;
        let mut blocks = Vec::new();
        let mut starts = vec![0];
        let mut groups = vec![("features.0".to_string(), 0)];
        let mut index = 1;
        for (t, c, n, s) in SETTING {
            groups.push((
                match n {
                    1 => format!("features.{index}"),
                    _ => format!("features.{index}-{}", index + n - 1),
                },
                b.next_index(),
            ));
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = cin * t;
                starts.push(b.next_index());
                let p = format!("features.{index}.conv");
                let mut activated = Vec::new();
                let mut sub = 0;
                if t != 1 {
                    activated.push((
                        b.conv(&format!("{p}.0.0"), ConvSpec::new(cin, hidden, 1, 1)),
                        b.bn(&format!("{p}.0.1"), hidden, EPS, MOMENTUM),
                    ));
                    sub = 1;
                }
                activated.push((
                    b.conv(
                        &format!("{p}.{sub}.0"),
                        ConvSpec::new(hidden, hidden, 3, stride).depthwise(),
                    ),
                    b.bn(&format!("{p}.{sub}.1"), hidden, EPS, MOMENTUM),
                ));
                let project = (
                    b.conv(&format!("{p}.{}", sub + 1), ConvSpec::new(hidden, c, 1, 1)),
                    b.bn(&format!("{p}.{}", sub + 2), c, EPS, MOMENTUM),
                );
                blocks.push(InvertedResidual {
                    activated,
                    project,
                    residual: stride == 1 && cin == c,
                });
                cin = c;
                index += 1;
            }
        }
        starts.push(b.next_index());
        groups.push((format!("features.{index}"), b.next_index()));
        let last = (
            b.conv(
                &format!("features.{index}.0"),
                ConvSpec::new(cin, FEATURES, 1, 1),
            ),
            b.bn(&format!("features.{index}.1"), FEATURES, EPS, MOMENTUM),
        );
        MobilenetV2 {
            stem,
            blocks,
            last,
            starts,
            groups,
        }
    }

    /// Segment `i`: 0 is the stem, then the inverted residual blocks, then the last
    /// 1x1 conv.
    pub fn segment(&self, i: usize, x: &Tensor, ctx: Ctx) -> Tensor {
        match i {
            0 => relu6(conv_bn(&self.stem, x, ctx)),
            i if i <= self.blocks.len() => self.blocks[i - 1].forward(x, ctx),
            _ => relu6(conv_bn(&self.last, x, ctx)),
        }
    }
}
