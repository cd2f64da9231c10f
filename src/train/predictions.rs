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
    /// The probability of each class.
    pub probabilities: Vec<f32>,
}

impl ValPrediction {
    /// The probability the model gave the true class (low: badly wrong).
    pub fn truth_probability(&self) -> f32 {
        self.probabilities.get(self.truth).copied().unwrap_or(0.0)
    }

    /// Whether the prediction was right.
    pub fn correct(&self) -> bool {
        self.truth == self.predicted
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
            })
            .collect();
        ValPredictions {
            epoch,
            phase,
            classes: classes.to_vec(),
            threshold: (classes.len() == 2).then_some(0.5),
            images,
        }
    }

    /// The images from most to least badly predicted: by the probability of the true
    /// class, lowest first (the wrong ones come first); ties by path.
    pub fn worst_first(&self) -> Vec<&ValPrediction> {
        let mut all: Vec<&ValPrediction> = self.images.iter().collect();
        all.sort_by(|a, b| {
            a.truth_probability()
                .total_cmp(&b.truth_probability())
                .then_with(|| a.path.cmp(&b.path))
        });
        all
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
}
