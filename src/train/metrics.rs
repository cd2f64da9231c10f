//! Classification metrics computed from validation predictions: the confusion matrix,
//! and for two classes precision, recall, F1 and ROC AUC of class 1 (the class the
//! sigmoid unit predicts, as in Keras).

use serde::{Deserialize, Serialize};

/// One class's scores against the rest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Of the images predicted as this class, the fraction that are.
    pub precision: f64,
    /// Of the images of this class, the fraction predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Images of this class.
    pub support: u64,
}

/// Counts of (true class, predicted class); `counts[t * n + p]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Number of classes.
    pub n: usize,
    /// Row-major counts: row = true class, column = predicted class.
    pub counts: Vec<u64>,
}

impl Confusion {
    /// Tallies predictions. Panics if a class index is `>= n` (a programming error).
    pub fn new(n: usize, truth: &[usize], predicted: &[usize]) -> Confusion {
        let mut counts = vec![0; n * n];
        for (&t, &p) in truth.iter().zip(predicted) {
            counts[t * n + p] += 1;
        }
        Confusion { n, counts }
    }

    /// The count of true class `t` predicted as `p`.
    pub fn get(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.n + p]
    }

    /// The fraction of true class `t`'s images predicted as `p` (0 for an empty row):
    /// the row percentages of the matrix.
    pub fn row_share(&self, t: usize, p: usize) -> f64 {
        let total: u64 = (0..self.n).map(|q| self.get(t, q)).sum();
        if total == 0 {
            0.0
        } else {
            self.get(t, p) as f64 / total as f64
        }
    }

    /// Precision, recall, F1 and support of each class (one against the rest); a
    /// score with nothing to divide by is 0.
    pub fn class_scores(&self) -> Vec<ClassScores> {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        (0..self.n)
            .map(|c| {
                let right = self.get(c, c);
                let predicted: u64 = (0..self.n).map(|t| self.get(t, c)).sum();
                let support: u64 = (0..self.n).map(|p| self.get(c, p)).sum();
                let (precision, recall) = (ratio(right, predicted), ratio(right, support));
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassScores {
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect()
    }

    /// Balanced accuracy: the mean recall over the classes that have images (0 when
    /// empty), as scikit-learn's `balanced_accuracy_score`: always answering the
    /// larger class scores 1 / classes whatever the imbalance.
    pub fn balanced_accuracy(&self) -> f64 {
        let recalls: Vec<f64> = self
            .class_scores()
            .iter()
            .filter(|c| c.support > 0)
            .map(|c| c.recall)
            .collect();
        if recalls.is_empty() {
            0.0
        } else {
            recalls.iter().sum::<f64>() / recalls.len() as f64
        }
    }

    /// Each class's recall (0 for a class without images), in class order.
    pub fn recalls(&self) -> Vec<f64> {
        self.class_scores().iter().map(|c| c.recall).collect()
    }

    /// Fraction predicted correctly (0 when empty).
    pub fn accuracy(&self) -> f64 {
        let total: u64 = self.counts.iter().sum();
        let right: u64 = (0..self.n).map(|i| self.get(i, i)).sum();
        if total == 0 {
            0.0
        } else {
            right as f64 / total as f64
        }
    }
}

/// Two-class scores for class 1 at threshold 0.5.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BinaryScores {
    /// TP / (TP + FP); 0 when nothing is predicted positive.
    pub precision: f64,
    /// TP / (TP + FN); 0 when there are no positives.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// Area under the ROC curve; None when only one class is present.
    pub auc: Option<f64>,
}

/// Scores from the true classes (0/1) and the predicted probability of class 1.
pub fn binary_scores(truth: &[usize], prob: &[f64]) -> BinaryScores {
    let predicted: Vec<usize> = prob.iter().map(|&p| usize::from(p >= 0.5)).collect();
    let c = Confusion::new(2, truth, &predicted);
    let (tp, fp, fn_) = (c.get(1, 1) as f64, c.get(0, 1) as f64, c.get(1, 0) as f64);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = ratio(2.0 * precision * recall, precision + recall);
    BinaryScores {
        precision,
        recall,
        f1,
        auc: roc_auc(truth, prob),
    }
}

/// ROC AUC as the Mann-Whitney statistic: the probability that a random positive
/// scores above a random negative, ties counting one half. None with one class only.
pub fn roc_auc(truth: &[usize], score: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    // Average ranks (1-based) over tied scores.
    let mut ranks = vec![0.0; score.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && score[order[j + 1]] == score[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    let positives = truth.iter().filter(|&&t| t == 1).count() as f64;
    let negatives = truth.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let rank_sum: f64 = truth
        .iter()
        .zip(&ranks)
        .filter(|(&t, _)| t == 1)
        .map(|(_, &r)| r)
        .sum();
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// One label's scores in a multi-label task, at its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelScores {
    /// Validation images that have the label.
    pub support: u64,
    /// ROC AUC of the label's probability; None when every image has it or none does.
    pub auc: Option<f64>,
    /// Average precision (the area under the precision-recall curve, as scikit-learn's
    /// `average_precision_score`); None when no image has the label.
    pub average_precision: Option<f64>,
    /// The probability at or above which the label is predicted.
    pub threshold: f64,
    /// Of the images predicted to have the label, the fraction that do.
    pub precision: f64,
    /// Of the images that have the label, the fraction predicted to.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// (true positives, false positives, false negatives, true negatives).
    pub counts: [u64; 4],
}

/// A multi-label task's validation scores: each label's and their summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelScores {
    /// In label order.
    pub labels: Vec<LabelScores>,
    /// Mean ROC AUC over the labels that have one.
    pub mean_auc: Option<f64>,
    /// Mean average precision (mAP) over the labels that have one.
    pub map: Option<f64>,
    /// Mean F1 over the labels.
    pub macro_f1: f64,
    /// Fraction of (image, label) decisions that are right (Keras `binary_accuracy`):
    /// the task's `val_accuracy`.
    pub label_accuracy: f64,
    /// Fraction of images whose whole label set is right (subset accuracy).
    pub exact_match: f64,
}

impl MultiLabelScores {
    /// Mean over labels of (sensitivity + specificity) / 2, each label's mean over
    /// the terms it has (a label without validation positives counts its specificity
    /// alone; one with neither is left out), as balanced accuracy skips classes
    /// without images.
    pub fn balanced_accuracy(&self) -> f64 {
        let per: Vec<f64> = self
            .labels
            .iter()
            .filter_map(|l| {
                let [tp, fp, fn_, tn] = l.counts;
                let terms: Vec<f64> = [(tp, tp + fn_), (tn, tn + fp)]
                    .iter()
                    .filter(|(_, all)| *all > 0)
                    .map(|&(right, all)| right as f64 / all as f64)
                    .collect();
                mean(&terms)
            })
            .collect();
        mean(&per).unwrap_or(0.0)
    }

    /// Each label's thresholds, in label order.
    pub fn thresholds(&self) -> Vec<f64> {
        self.labels.iter().map(|l| l.threshold).collect()
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Label `l`'s column of flat `[N, labels]` values.
fn column<T: Copy>(flat: &[T], labels: usize, l: usize) -> impl Iterator<Item = T> + '_ {
    flat.iter().skip(l).step_by(labels.max(1)).copied()
}

/// Scores of a multi-label task from the truth (0/1, flat `[N, labels]`), the
/// probabilities (flat, same shape) and each label's threshold (predicted when the
/// probability is at or above it).
pub fn multilabel_scores(truth: &[u8], prob: &[f32], thresholds: &[f64]) -> MultiLabelScores {
    let n_labels = thresholds.len();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let labels: Vec<LabelScores> = (0..n_labels)
        .map(|l| {
            let t: Vec<usize> = column(truth, n_labels, l).map(usize::from).collect();
            let p: Vec<f64> = column(prob, n_labels, l).map(f64::from).collect();
            let mut counts = [0u64; 4];
            for (&y, &q) in t.iter().zip(&p) {
                let said = q >= thresholds[l];
                let at = match (y == 1, said) {
                    (true, true) => 0,
                    (false, true) => 1,
                    (true, false) => 2,
                    (false, false) => 3,
                };
                counts[at] += 1;
            }
            let [tp, fp, fn_, _] = counts;
            let (precision, recall) = (ratio(tp, tp + fp), ratio(tp, tp + fn_));
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            LabelScores {
                support: tp + fn_,
                auc: roc_auc(&t, &p),
                average_precision: average_precision(&t, &p),
                threshold: thresholds[l],
                precision,
                recall,
                f1,
                counts,
            }
        })
        .collect();
    let images = truth.len() / n_labels.max(1);
    let right: usize = truth
        .iter()
        .zip(prob)
        .enumerate()
        .filter(|(i, (&y, &q))| (y == 1) == (f64::from(q) >= thresholds[i % n_labels]))
        .count();
    let exact = (0..images)
        .filter(|&i| {
            (0..n_labels).all(|l| {
                let k = i * n_labels + l;
                (truth[k] == 1) == (f64::from(prob[k]) >= thresholds[l])
            })
        })
        .count();
    let aucs: Vec<f64> = labels.iter().filter_map(|l| l.auc).collect();
    let aps: Vec<f64> = labels.iter().filter_map(|l| l.average_precision).collect();
    let f1s: Vec<f64> = labels.iter().map(|l| l.f1).collect();
    MultiLabelScores {
        mean_auc: mean(&aucs),
        map: mean(&aps),
        macro_f1: mean(&f1s).unwrap_or(0.0),
        label_accuracy: ratio(right as u64, truth.len() as u64),
        exact_match: ratio(exact as u64, images as u64),
        labels,
    }
}

/// One cut of a ranking, at a distinct score from the highest down: the images at or
/// above `score` predicted positive.
struct Cut {
    /// The score (every image tied at it is taken at once).
    score: f64,
    /// The next lower distinct score, if any.
    next: Option<f64>,
    /// Positives and images at or above `score`.
    tp: usize,
    seen: usize,
}

/// The cuts of `score` from the highest, with the positives (1) in `truth` counted.
fn cuts(truth: &[usize], score: &[f64]) -> Vec<Cut> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
    let (mut out, mut tp, mut seen, mut i) = (Vec::new(), 0, 0, 0);
    while i < order.len() {
        let mut j = i;
        while j < order.len() && score[order[j]] == score[order[i]] {
            tp += usize::from(truth[order[j]] == 1);
            seen += 1;
            j += 1;
        }
        out.push(Cut {
            score: score[order[i]],
            next: order.get(j).map(|&k| score[k]),
            tp,
            seen,
        });
        i = j;
    }
    out
}

/// Average precision of a score for the positives (1) in `truth`, as scikit-learn's
/// `average_precision_score`: the sum over the distinct score thresholds, from the
/// highest, of the recall gained times the precision there. None without positives.
pub fn average_precision(truth: &[usize], score: &[f64]) -> Option<f64> {
    let positives = truth.iter().filter(|&&t| t == 1).count();
    if positives == 0 {
        return None;
    }
    let (mut ap, mut recall_before) = (0.0, 0.0);
    for c in cuts(truth, score) {
        let recall = c.tp as f64 / positives as f64;
        ap += (recall - recall_before) * (c.tp as f64 / c.seen as f64);
        recall_before = recall;
    }
    Some(ap)
}

/// The threshold with the best F1 for the positives (1) in `truth` (predicted when
/// the score is at or above it): half-way between the lowest score predicted
/// positive and the next lower one, so that near-equal new scores decide alike.
/// `fallback` when there are no positives.
pub fn best_f1_threshold(truth: &[usize], score: &[f64], fallback: f64) -> f64 {
    let positives = truth.iter().filter(|&&t| t == 1).count();
    if positives == 0 {
        return fallback;
    }
    let (mut best_f1, mut best) = (-1.0, fallback);
    for c in cuts(truth, score) {
        let f1 = 2.0 * c.tp as f64 / (c.seen + positives) as f64;
        if f1 > best_f1 {
            best_f1 = f1;
            best = c.next.map_or(c.score, |next| (c.score + next) / 2.0);
        }
    }
    best.clamp(1e-6, 1.0 - 1e-6)
}

/// Each label's F1-best threshold on flat `[N, labels]` truth and probabilities;
/// `fallback` gives the threshold of a label without positives.
pub fn tuned_thresholds(truth: &[u8], prob: &[f32], fallback: &[f64]) -> Vec<f64> {
    let n_labels = fallback.len();
    (0..n_labels)
        .map(|l| {
            let t: Vec<usize> = column(truth, n_labels, l).map(usize::from).collect();
            let p: Vec<f64> = column(prob, n_labels, l).map(f64::from).collect();
            best_f1_threshold(&t, &p, fallback[l])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_by_hand() {
        // Scores high to low: 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-).
        // Recall 0.5 at precision 1, then recall 1 at precision 2/3: AP = 0.5 + 0.5*2/3.
        let ap = average_precision(&[1, 0, 1, 0], &[0.9, 0.8, 0.7, 0.1]).unwrap();
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12, "{ap}");
        assert_eq!(average_precision(&[0, 0], &[0.1, 0.2]), None);
        // A tie of a positive and a negative at the top: precision 1/2 there.
        let tied = average_precision(&[1, 0], &[0.5, 0.5]).unwrap();
        assert!((tied - 0.5).abs() < 1e-12);
    }

    #[test]
    fn best_f1_threshold_by_hand() {
        // Positives at 0.9 and 0.6, negatives at 0.7 and 0.2. Cuts: {0.9} F1 2/3,
        // {0.9,0.7} 1/2, {0.9,0.7,0.6} 4/5, all 2/3: the best predicts 0.6 and above,
        // half-way to 0.2.
        let t = best_f1_threshold(&[1, 0, 1, 0], &[0.9, 0.7, 0.6, 0.2], 0.5);
        assert!((t - 0.4).abs() < 1e-12, "{t}");
        assert_eq!(best_f1_threshold(&[0, 0], &[0.3, 0.4], 0.5), 0.5);
    }

    #[test]
    fn multilabel_scores_by_hand() {
        // Three images, two labels. Label 0: truth 1,0,1; prob .8,.6,.3.
        // Label 1: truth 0,0,1; prob .1,.2,.9.
        let truth = [1, 0, 0, 0, 1, 1];
        let prob = [0.8, 0.1, 0.6, 0.2, 0.3, 0.9];
        let s = multilabel_scores(&truth, &prob, &[0.5, 0.5]);
        let l0 = s.labels[0];
        assert_eq!(l0.counts, [1, 1, 1, 0]);
        assert_eq!(
            (l0.precision, l0.recall, l0.f1, l0.support),
            (0.5, 0.5, 0.5, 2)
        );
        // Label 0 AUC: pairs (pos, neg) = (.8,.6) right, (.3,.6) wrong: 0.5.
        assert_eq!(l0.auc, Some(0.5));
        let l1 = s.labels[1];
        assert_eq!(l1.counts, [1, 0, 0, 2]);
        assert_eq!(
            (l1.f1, l1.auc, l1.average_precision),
            (1.0, Some(1.0), Some(1.0))
        );
        assert_eq!(s.mean_auc, Some(0.75));
        assert_eq!(s.macro_f1, 0.75);
        // 4 of 6 decisions right; images 1 and 2 have a wrong label: 1 of 3 exact.
        assert!((s.label_accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((s.exact_match - 1.0 / 3.0).abs() < 1e-12);
        // Label 0 AP: .8 (+) P 1 R .5; .6 (-); .3 (+) P 2/3 R 1: 0.5 + 1/3.
        assert!((s.map.unwrap() - (0.5 + 1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        // Balanced: label 0 (0.5 + 0) / 2, label 1 (1 + 1) / 2.
        assert!((s.balanced_accuracy() - 0.625).abs() < 1e-12);
        // A label without validation positives counts its specificity alone.
        let none = multilabel_scores(&[0, 0], &[0.2, 0.7], &[0.5]);
        assert_eq!(none.balanced_accuracy(), 0.5);
        assert_eq!(
            (none.labels[0].auc, none.labels[0].average_precision),
            (None, None)
        );
        // Tuned: label 0's best F1 takes every image (.8 .6 .3: F1 0.8), nothing lower:
        // 0.3 itself; label 1's takes .9 alone, half-way to .2.
        let tuned = tuned_thresholds(&truth, &prob, &[0.5, 0.5]);
        assert!((tuned[0] - 0.3).abs() < 1e-6, "{tuned:?}");
        assert!((tuned[1] - 0.55).abs() < 1e-6, "{tuned:?}");
    }

    #[test]
    fn balanced_accuracy_is_the_mean_recall_of_classes_with_images() {
        // class 0: 8 of 10 right; class 1: 1 of 2; class 2 has no images.
        let truth = [vec![0; 10], vec![1; 2]].concat();
        let predicted = [vec![0; 8], vec![1; 2], vec![1, 0]].concat();
        let c = Confusion::new(3, &truth, &predicted);
        assert_eq!(c.recalls(), [0.8, 0.5, 0.0]);
        assert!((c.balanced_accuracy() - 0.65).abs() < 1e-12);
        // Always answering the larger class: accuracy 10/12, balanced 0.5.
        let lazy = Confusion::new(2, &truth, &[0; 12]);
        assert!((lazy.accuracy() - 10.0 / 12.0).abs() < 1e-12);
        assert_eq!(lazy.balanced_accuracy(), 0.5);
        assert_eq!(Confusion::new(2, &[], &[]).balanced_accuracy(), 0.0);
    }

    #[test]
    fn class_scores_one_against_the_rest() {
        // truth 0,0,0,1,1,2 ; predicted 0,0,1,1,2,2
        let c = Confusion::new(3, &[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2]);
        let s = c.class_scores();
        assert_eq!(
            (s[0].precision, s[0].recall, s[0].support),
            (1.0, 2.0 / 3.0, 3)
        );
        assert_eq!((s[1].precision, s[1].recall), (0.5, 0.5));
        assert_eq!((s[2].precision, s[2].recall), (0.5, 1.0));
        assert!((s[2].f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn confusion_and_accuracy() {
        let c = Confusion::new(3, &[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2]);
        assert_eq!(c.counts, vec![1, 1, 0, 0, 1, 0, 1, 0, 2]);
        assert!((c.accuracy() - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn binary_scores_by_hand() {
        // TP 2 (0.9, 0.6), FN 1 (0.4), FP 1 (0.7), TN 2 (0.1, 0.2).
        let truth = [1, 1, 1, 0, 0, 0];
        let prob = [0.9, 0.6, 0.4, 0.7, 0.1, 0.2];
        let s = binary_scores(&truth, &prob);
        assert!((s.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
        // Pairs (pos, neg) with pos > neg: 0.9 > all 3, 0.6 > 2, 0.4 > 2 => 7 / 9.
        assert!((s.auc.unwrap() - 7.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn auc_edge_cases() {
        assert_eq!(roc_auc(&[1, 1], &[0.2, 0.3]), None);
        assert_eq!(roc_auc(&[0, 1], &[0.5, 0.5]), Some(0.5));
        assert_eq!(roc_auc(&[0, 1], &[0.1, 0.9]), Some(1.0));
        assert_eq!(roc_auc(&[1, 0], &[0.1, 0.9]), Some(0.0));
        let s = binary_scores(&[0, 0], &[0.1, 0.2]);
        assert_eq!((s.precision, s.recall, s.f1, s.auc), (0.0, 0.0, 0.0, None));
    }
}
