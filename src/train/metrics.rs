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

#[cfg(test)]
mod tests {
    use super::*;

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
