//! Validation: loss, confusion matrix and (two classes) binary scores on the
//! validation split, in inference mode, reusing the frozen part's stored outputs.

use super::cache::FeatureTable;
use super::metrics::{
    binary_scores, multilabel_scores, tuned_thresholds, BinaryScores, Confusion, MultiLabelScores,
};
use crate::config::Experiment;
use crate::data::augment::tta_views;
use crate::data::Dataset;
use crate::model::classifier::Classifier;

pub(super) struct Validation {
    /// Class probabilities of every validation image, flat, in validation order.
    pub(super) probabilities: Vec<f32>,
    pub(super) loss: f64,
    pub(super) confusion: Confusion,
    pub(super) binary: Option<BinaryScores>,
    /// Multi-label: the scores per label at each label's threshold (tuned here with
    /// `multilabel.tune_thresholds`).
    pub(super) multilabel: Option<MultiLabelScores>,
}

/// Loss, confusion matrix and (two classes) binary scores on the validation split, in
/// inference mode, averaged over test-time augmentation views (`exp.tta`; the first
/// view is the image itself). The frozen part's outputs of the image itself come from
/// `stored` when it has them and are stored there otherwise; other views run whole.
/// `progress(done, total)` is told after each batch.
pub(super) fn validate(
    net: &Classifier,
    data: &Dataset,
    exp: &Experiment,
    mut stored: Option<&mut FeatureTable>,
    mut progress: impl FnMut(usize, usize),
) -> Validation {
    let size = exp.data.image_size;
    let augment = &exp.data.augment;
    let views = tta_views(augment, exp.tta, size.width as i64, size.height as i64);
    let fill = (augment.fill_mode, augment.cval);
    let (mut loss_sum, mut truth, mut predicted, mut prob1) =
        (0.0, Vec::new(), Vec::new(), Vec::new());
    let mut hot: Vec<u8> = Vec::new();
    let mut probabilities = Vec::with_capacity(data.val.len() * net.classes);
    let k = net.frozen_segments();
    net.with_inference_copy(|| {
        for images in data.val_batches(exp.data.batch_size) {
            let prefix = match stored.as_ref().and_then(|t| t.get(&images)) {
                Some(p) => p,
                None => {
                    let (x, _) = data.val_batch(&images);
                    let out = net.run_prefix(&x, k);
                    if let Some(t) = stored.as_mut() {
                        t.put(&images, &out);
                    }
                    out
                }
            };
            let logits = net.forward_from(&prefix, k);
            let y = data.label_tensor(&images);
            let probs = if views.len() > 1 {
                let (x, _) = data.val_batch(&images);
                let p = net.probabilities_over_views(&x, &views, fill, Some(&logits));
                loss_sum +=
                    net.loss_of_probabilities(&p, &y).double_value(&[]) * images.len() as f64;
                p
            } else {
                loss_sum += net.loss(&logits, &y).double_value(&[]) * images.len() as f64;
                net.probabilities(&logits)
            };
            let probs = probs.to_device(tch::Device::Cpu);
            let p = Vec::<f32>::try_from(probs.flatten(0, -1)).unwrap_or_default();
            probabilities.extend_from_slice(&p);
            let classes = net.classes;
            if net.multilabel {
                for &i in &images {
                    hot.extend_from_slice(data.hot_row(i));
                }
                progress(hot.len() / classes, data.val.len());
                continue;
            }
            for (i, &label) in Vec::<i64>::try_from(&y)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let row = &p[i * classes..(i + 1) * classes];
                let best = (0..classes)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                truth.push(label as usize);
                predicted.push(best);
                if classes == 2 {
                    prob1.push(row[1] as f64);
                }
            }
            progress(truth.len(), data.val.len());
        }
    });
    if net.multilabel {
        let n = (hot.len() / net.classes.max(1)).max(1);
        // Names the data lacks are refused at the start and in live edits.
        let mut at = exp.multilabel.thresholds_for(&data.classes);
        if exp.multilabel.tune_thresholds {
            at = tuned_thresholds(&hot, &probabilities, &at);
        }
        let scores = multilabel_scores(&hot, &probabilities, &at);
        return Validation {
            probabilities,
            loss: loss_sum / n as f64,
            confusion: Confusion::new(0, &[], &[]),
            binary: None,
            multilabel: Some(scores),
        };
    }
    let n = truth.len().max(1);
    Validation {
        probabilities,
        loss: loss_sum / n as f64,
        confusion: Confusion::new(net.classes, &truth, &predicted),
        binary: (net.classes == 2).then(|| binary_scores(&truth, &prob1)),
        multilabel: None,
    }
}
