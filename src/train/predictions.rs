//! `best-predictions.json`: every validation image's prediction at the best epoch,
//! written with `best.safetensors`, so that the error-analysis view and `report` need
//! no recomputation.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::events::Phase;

/// The file name inside a run folder.
pub const FILE: &str = "best-predictions.json";

/// One validation image at the best epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValPrediction {
    /// The image file.
    pub path: PathBuf,
    /// Its class index.
    pub truth: usize,
    /// The predicted class index.
    pub predicted: usize,
    /// The probability of each class (multi-label: of each label).
    pub probabilities: Vec<f32>,
    /// Multi-label: the image's labels (then `truth` and `predicted` are 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<usize>>,
    /// Multi-label: the labels predicted (at or over their thresholds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_labels: Option<Vec<usize>>,
}

impl ValPrediction {
    /// The probability the model gave the truth (low: badly wrong); multi-label: the
    /// lowest over the labels of the probability given to the truth (`p` where the
    /// image has the label, `1 - p` where it has not).
    pub fn truth_probability(&self) -> f32 {
        match &self.labels {
            None => self.probabilities.get(self.truth).copied().unwrap_or(0.0),
            Some(_) => self
                .worst_label()
                .map_or(1.0, |l| self.label_truth_probability(l)),
        }
    }

    /// Multi-label: the label given the lowest probability of its truth (the first
    /// on a tie); None without labels.
    pub fn worst_label(&self) -> Option<usize> {
        (0..self.probabilities.len()).min_by(|&a, &b| {
            self.label_truth_probability(a)
                .total_cmp(&self.label_truth_probability(b))
        })
    }

    /// Multi-label: the probability given to the truth of label `l`.
    pub fn label_truth_probability(&self, l: usize) -> f32 {
        let p = self.probabilities.get(l).copied().unwrap_or(0.0);
        if self.has(l) {
            p
        } else {
            1.0 - p
        }
    }

    /// Multi-label: whether the image has label `l`.
    pub fn has(&self, l: usize) -> bool {
        self.labels.as_ref().is_some_and(|ls| ls.contains(&l))
    }

    /// Multi-label: whether label `l` was predicted.
    pub fn said(&self, l: usize) -> bool {
        self.predicted_labels
            .as_ref()
            .is_some_and(|ls| ls.contains(&l))
    }

    /// Whether the prediction was right (multi-label: every label).
    pub fn correct(&self) -> bool {
        match &self.labels {
            None => self.truth == self.predicted,
            Some(ls) => Some(ls) == self.predicted_labels.as_ref(),
        }
    }

    /// Multi-label: the labels decided wrong, as (label, false positive).
    pub fn label_errors(&self) -> Vec<(usize, bool)> {
        (0..self.probabilities.len())
            .filter(|&l| self.has(l) != self.said(l))
            .map(|l| (l, self.said(l)))
            .collect()
    }
}

/// Every validation image's prediction at one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValPredictions {
    /// The epoch (1-based) these come from.
    pub epoch: u32,
    /// Its phase.
    pub phase: Phase,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Two classes: the probability of class 1 above which it is predicted.
    pub threshold: Option<f64>,
    /// Multi-label: each label's threshold (then `classes` are the labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<f64>,
    /// In validation order.
    pub images: Vec<ValPrediction>,
}

impl ValPredictions {
    /// From flat probabilities (`classes` per image, validation order) of the images
    /// `files` with their `labels`.
    pub fn new(
        (epoch, phase): (u32, Phase),
        classes: &[String],
        files: Vec<(PathBuf, usize)>,
        probabilities: &[f32],
    ) -> ValPredictions {
        let n = classes.len().max(1);
        let images = files
            .into_iter()
            .zip(probabilities.chunks(n))
            .map(|((path, truth), p)| ValPrediction {
                path,
                truth,
                predicted: (0..p.len())
                    .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                    .unwrap_or(0),
                probabilities: p.to_vec(),
                labels: None,
                predicted_labels: None,
            })
            .collect();
        ValPredictions {
            epoch,
            phase,
            classes: classes.to_vec(),
            threshold: (classes.len() == 2).then_some(0.5),
            thresholds: Vec::new(),
            images,
        }
    }

    /// A multi-label task's: `files` with their label indices, flat probabilities
    /// (`labels` per image) and each label's threshold.
    pub fn new_multilabel(
        (epoch, phase): (u32, Phase),
        labels: &[String],
        files: Vec<(PathBuf, Vec<usize>)>,
        probabilities: &[f32],
        thresholds: Vec<f64>,
    ) -> ValPredictions {
        let n = labels.len().max(1);
        let images = files
            .into_iter()
            .zip(probabilities.chunks(n))
            .map(|((path, truth), p)| ValPrediction {
                path,
                truth: 0,
                predicted: 0,
                predicted_labels: Some(
                    (0..p.len())
                        .filter(|&l| f64::from(p[l]) >= thresholds[l])
                        .collect(),
                ),
                labels: Some(truth),
                probabilities: p.to_vec(),
            })
            .collect();
        ValPredictions {
            epoch,
            phase,
            classes: labels.to_vec(),
            threshold: None,
            thresholds,
            images,
        }
    }

    /// Whether these are a multi-label task's.
    pub fn is_multilabel(&self) -> bool {
        !self.thresholds.is_empty()
    }

    /// The images from most to least badly predicted: by the probability of the true
    /// class, lowest first (the wrong ones come first); ties by path. Multi-label: by
    /// the probability given to the truth of their worst label.
    pub fn worst_first(&self) -> Vec<&ValPrediction> {
        self.worst_first_for(None)
    }

    /// As [`ValPredictions::worst_first`]; multi-label with `Some(label)`: by that
    /// label alone (its worst false negatives and false positives first).
    pub fn worst_first_for(&self, label: Option<usize>) -> Vec<&ValPrediction> {
        let key = |p: &ValPrediction| match label {
            Some(l) if self.is_multilabel() => p.label_truth_probability(l),
            _ => p.truth_probability(),
        };
        let mut all: Vec<&ValPrediction> = self.images.iter().collect();
        all.sort_by(|a, b| key(a).total_cmp(&key(b)).then_with(|| a.path.cmp(&b.path)));
        all
    }

    /// Multi-label: images with label `l` decided wrong (false negatives, false
    /// positives).
    pub fn label_wrong(&self, l: usize) -> (usize, usize) {
        let fn_ = self
            .images
            .iter()
            .filter(|p| p.has(l) && !p.said(l))
            .count();
        let fp = self
            .images
            .iter()
            .filter(|p| !p.has(l) && p.said(l))
            .count();
        (fn_, fp)
    }

    /// How many were predicted wrong.
    pub fn wrong(&self) -> usize {
        self.images.iter().filter(|p| !p.correct()).count()
    }

    /// Writes `best-predictions.json` in `run` atomically.
    pub fn write(&self, run: &Path) -> anyhow::Result<()> {
        crate::fsutil::write_atomic(&run.join(FILE), serde_json::to_string(self)?.as_bytes())
    }

    /// Reads `best-predictions.json` of a run folder.
    pub fn read(run: &Path) -> anyhow::Result<ValPredictions> {
        let path = run.join(FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_first_puts_confident_mistakes_first_and_the_file_reads_back() {
        let classes = vec!["defective".to_string(), "functional".to_string()];
        let files = vec![
            ("a.png".into(), 0),
            ("b.png".into(), 1),
            ("c.png".into(), 1),
        ];
        // a: right (0.8); b: wrong, confident (p(true) 0.1); c: wrong, barely (0.45).
        let probs = [0.8, 0.2, 0.9, 0.1, 0.55, 0.45];
        let p = ValPredictions::new((3, Phase::Finetune), &classes, files, &probs);
        let order: Vec<&str> = p
            .worst_first()
            .iter()
            .map(|v| v.path.to_str().unwrap())
            .collect();
        assert_eq!(order, ["b.png", "c.png", "a.png"]);
        assert_eq!((p.wrong(), p.threshold), (2, Some(0.5)));
        let dir = tempfile::tempdir().unwrap();
        p.write(dir.path()).unwrap();
        assert_eq!(ValPredictions::read(dir.path()).unwrap(), p);
    }

    #[test]
    fn multilabel_worst_first_by_the_worst_label_or_one_label() {
        let labels = vec!["crack".to_string(), "dust".to_string()];
        let files = vec![
            ("a.png".into(), vec![0]),    // crack only
            ("b.png".into(), vec![0, 1]), // both
            ("c.png".into(), vec![]),     // none
        ];
        // a: crack .9, dust .2 (right); b: crack .3 (missed), dust .8;
        // c: crack .1, dust .7 (false positive).
        let probs = [0.9, 0.2, 0.3, 0.8, 0.1, 0.7];
        let p = ValPredictions::new_multilabel(
            (2, Phase::Frozen),
            &labels,
            files,
            &probs,
            vec![0.5, 0.5],
        );
        let names = |v: Vec<&ValPrediction>| {
            v.iter()
                .map(|x| x.path.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        // Worst labels: b's crack (0.3 to the truth), c's dust (0.3): tie by path.
        assert_eq!(names(p.worst_first()), ["b.png", "c.png", "a.png"]);
        // Dust alone: c (1 - .7 = .3), then a (.8), b (.8): ties by path.
        assert_eq!(
            names(p.worst_first_for(Some(1))),
            ["c.png", "a.png", "b.png"]
        );
        assert_eq!(p.wrong(), 2);
        assert_eq!((p.label_wrong(0), p.label_wrong(1)), ((1, 0), (0, 1)));
        assert_eq!(p.images[1].label_errors(), [(0, false)]);
        assert_eq!(p.images[2].label_errors(), [(1, true)]);
        let dir = tempfile::tempdir().unwrap();
        p.write(dir.path()).unwrap();
        assert_eq!(ValPredictions::read(dir.path()).unwrap(), p);
    }
}
