//! A small CNN (four conv/BatchNorm/ReLU stages, max-pooling between them) for fast
//! tests and as the no-transfer baseline: it has no pretrained weights.

use tch::Tensor;

use super::layers::{conv_bn, relu, Bn, Builder, Conv, ConvSpec, Ctx};

/// Channels per stage; the last is the pooled feature size.
const CHANNELS: [i64; 4] = [16, 32, 64, 128];
/// Pooled feature size.
pub const FEATURES: i64 = CHANNELS[3];

/// The small CNN without a classifier.
#[derive(Debug)]
pub struct SmallCnn {
    stages: Vec<(Conv, Bn)>,
}

impl SmallCnn {
    /// Builds it (`conv1`, `bn1`, ..., `conv4`, `bn4`).
    pub fn new(b: &mut Builder) -> SmallCnn {
        let mut cin = 3;
        let stages = CHANNELS
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let conv = b.conv(&format!("conv{}", i + 1), ConvSpec::new(cin, c, 3, 1));
                let bn = b.bn(&format!("bn{}", i + 1), c, 1e-5, 0.1);
                cin = c;
                (conv, bn)
            })
            .collect();
        SmallCnn { stages }
    }

    /// First layer index of each segment (one conv + BatchNorm per stage).
    pub fn starts(&self) -> Vec<usize> {
        (0..self.stages.len()).map(|i| 2 * i).collect()
    }

    /// Block groups: one per stage (`conv1` with `bn1`, ...), name and first layer.
    pub fn groups(&self) -> Vec<(String, usize)> {
        (0..self.stages.len())
            .map(|i| (format!("conv{}", i + 1), 2 * i))
            .collect()
    }

    /// Stage `i`: conv, BatchNorm, ReLU, and max-pooling except after the last.
    pub fn segment(&self, i: usize, x: &Tensor, ctx: Ctx) -> Tensor {
        let x = relu(conv_bn(&self.stages[i], x, ctx));
        if i + 1 < self.stages.len() {
            x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
        } else {
            x
        }
    }
}
