//! ResNet-18/34/50/101/152 as in torchvision (v1.5: the stride sits on the 3x3 conv of
//! a bottleneck), with torchvision's parameter names.

use tch::Tensor;

use super::layers::{conv_bn, relu, Bn, Builder, Conv, ConvSpec, Ctx};

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// ResNet-18/34.
    Basic,
    /// ResNet-50/101/152.
    Bottleneck,
}

/// One residual block.
#[derive(Debug)]
struct Block {
    convs: Vec<(Conv, Bn)>,
    downsample: Option<(Conv, Bn)>,
}

impl Block {
    fn forward(&self, x: &Tensor, ctx: Ctx) -> Tensor {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, pair) in self.convs.iter().enumerate() {
            y = conv_bn(pair, &y, ctx);
            if i < last {
                y = relu(y);
            }
        }
        let shortcut = match &self.downsample {
            Some(pair) => conv_bn(pair, x, ctx),
            None => x.shallow_clone(),
        };
        relu(y + shortcut)
    }
}

/// A ResNet without its `fc` layer.
#[derive(Debug)]
pub struct Resnet {
    /// The stem's convolution and BatchNorm (`conv1`, `bn1`).
    stem: (Conv, Bn),
    blocks: Vec<Block>,
    /// Channels after the last stage (512 or 2048).
    pub features: i64,
    /// First layer index of each segment (the stem, then one per block).
    pub starts: Vec<usize>,
    /// Block groups (`conv1`, `layer1` .. `layer4`): name and first layer index.
    pub groups: Vec<(String, usize)>,
}

impl Resnet {
    /// Builds a ResNet with `depths` blocks per stage.
    pub fn new(b: &mut Builder, kind: BlockKind, depths: [usize; 4]) -> Resnet {
        let expansion = if kind == BlockKind::Basic { 1 } else { 4 };
        let conv1 = b.conv("conv1", ConvSpec::new(3, 64, 7, 2).padding(3));
        let bn1 = b.bn("bn1", 64, EPS, MOMENTUM);
        let mut blocks = Vec::new();
        let mut starts = vec![0];
        let mut groups = vec![("conv1".to_string(), 0)];
        let mut cin = 64;
        for (stage, &depth) in depths.iter().enumerate() {
            let planes = 64 << stage;
            groups.push((format!("layer{}", stage + 1), b.next_index()));
            for i in 0..depth {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                starts.push(b.next_index());
                let mut convs = Vec::new();
                let cout = planes * expansion;
                let specs = match kind {
                    BlockKind::Basic => vec![
                        ConvSpec::new(cin, planes, 3, stride),
                        ConvSpec::new(planes, planes, 3, 1),
                    ],
                    BlockKind::Bottleneck => vec![
                        ConvSpec::new(cin, planes, 1, 1),
                        ConvSpec::new(planes, planes, 3, stride),
                        ConvSpec::new(planes, cout, 1, 1),
                    ],
                };
                for (j, spec) in specs.into_iter().enumerate() {
                    let conv = b.conv(&format!("{name}.conv{}", j + 1), spec);
                    let bn = b.bn(&format!("{name}.bn{}", j + 1), spec.cout, EPS, MOMENTUM);
                    convs.push((conv, bn));
                }
                let downsample = (stride != 1 || cin != cout).then(|| {
                    let conv = b.conv(
                        &format!("{name}.downsample.0"),
                        ConvSpec::new(cin, cout, 1, stride).padding(0),
                    );
                    let bn = b.bn(&format!("{name}.downsample.1"), cout, EPS, MOMENTUM);
                    (conv, bn)
                });
                blocks.push(Block { convs, downsample });
                cin = cout;
            }
        }
        Resnet {
            stem: (conv1, bn1),
            blocks,
            features: cin,
            starts,
            groups,
        }
    }

    /// Segment `i`: 0 is the stem (conv, BatchNorm, ReLU, max-pool), then the blocks.
    pub fn segment(&self, i: usize, x: &Tensor, ctx: Ctx) -> Tensor {
        match i {
            0 => {
                relu(conv_bn(&self.stem, x, ctx)).max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
            }
            i => self.blocks[i - 1].forward(x, ctx),
        }
    }
}
