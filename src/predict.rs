//! `tlcap-tui predict`: class and probabilities for images, from a run folder (or a
//! checkpoint in one), or from a model `export` wrote (TorchScript or safetensors,
//! with its card). Images get exactly the validation preprocessing; folders are read
//! recursively.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;
use tch::Tensor;

use crate::data::{decode_into, DecodeError, Decoding};
use crate::model_card::Exported;
// The network of a run's checkpoint or of an exported safetensors model, at the path the
// tests name it by; this module adds `Predictor::predict`.
pub use crate::model_card::Predictor;

/// One image's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The image.
    pub path: PathBuf,
    /// Index of the predicted class.
    pub class: usize,
    /// Its probability.
    pub probability: f64,
    /// Every class's probability, in class order.
    pub probabilities: Vec<f64>,
}

/// Why one image got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The image cannot be read or decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The network failed on the batch the image was in: libtorch's error with its
    /// causes, as one message (every image of the batch gets it).
    #[error("{0}")]
    Forward(String),
}

/// A folder given to `predict` holds no image.
#[derive(Debug, thiserror::Error)]
#[error("{0} holds no images")]
pub struct NoImages(pub PathBuf);

impl Predictor {
    /// Class and probabilities for each image; an unreadable image gives its reason.
    pub fn predict(&self, images: &[PathBuf]) -> Vec<Result<Prediction, PredictError>> {
        let exp = &self.experiment;
        answer(images, &Decoding::of(&exp.data), |x| Ok(self.forward(x)))
    }
}

/// Decodes `images` in batches as validation does, runs `forward` on each uint8
/// batch, and reads the answers.
fn answer(
    images: &[PathBuf],
    decoding: &Decoding,
    forward: impl Fn(&Tensor) -> Result<Tensor, tch::TchError>,
) -> Vec<Result<Prediction, PredictError>> {
    let size = decoding.size;
    let per = 3 * (size.width * size.height) as usize;
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(32) {
        let mut buf = vec![0u8; per * chunk.len()];
        let decoded: Vec<Result<(), DecodeError>> = chunk
            .iter()
            .zip(buf.chunks_mut(per))
            .map(|(p, dst)| decode_into(p, decoding, dst).map(|_| ()))
            .collect();
        let x = Tensor::from_slice(&buf).view([
            chunk.len() as i64,
            3,
            size.height as i64,
            size.width as i64,
        ]);
        // A failure reads as anyhow's `{:#}` would print it: the error and its causes.
        let probs = forward(&x)
            .and_then(|p| Vec::<f32>::try_from(p.contiguous().view([-1])))
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        for (i, (path, ok)) in chunk.iter().zip(decoded).enumerate() {
            let result = match (&probs, ok) {
                (Err(e), _) => Err(PredictError::Forward(e.clone())),
                (_, Err(e)) => Err(PredictError::Decode(e)),
                (Ok(all), Ok(())) => {
                    let n = all.len() / chunk.len();
                    let row: Vec<f64> = all[i * n..(i + 1) * n].iter().map(|&p| p as f64).collect();
                    let class = (0..n)
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .unwrap_or(0);
                    Ok(Prediction {
                        path: path.clone(),
                        class,
                        probability: row[class],
                        probabilities: row,
                    })
                }
            };
            out.push(result);
        }
    }
    out
}

/// What answers: a network this program builds, or an exported TorchScript module.
pub enum Model {
    /// A run folder, a checkpoint, or an exported safetensors model.
    Native(Box<Predictor>),
    /// An exported TorchScript model.
    Script(Box<Exported>),
}

impl Model {
    /// `model.pt` (with its card) is TorchScript; anything else is read natively.
    pub fn load(target: &Path) -> anyhow::Result<Model> {
        let script = target.is_file()
            && matches!(
                target.extension().and_then(|e| e.to_str()),
                Some("pt" | "pts" | "torchscript")
            );
        Ok(if script {
            Model::Script(Box::new(Exported::load(target)?))
        } else {
            Model::Native(Box::new(Predictor::load(target)?))
        })
    }

    /// Class names in output order.
    pub fn classes(&self) -> &[String] {
        match self {
            Model::Native(p) => &p.classes,
            Model::Script(e) => &e.card.classes,
        }
    }

    /// Multi-label: each label's threshold; None for one class per image.
    pub fn thresholds(&self) -> Option<Vec<f64>> {
        match self {
            Model::Native(p) => p.thresholds.clone(),
            Model::Script(e) => e.card.multilabel.then(|| e.card.thresholds.clone()),
        }
    }

    /// Class and probabilities for each image.
    pub fn predict(&self, images: &[PathBuf]) -> Vec<Result<Prediction, PredictError>> {
        match self {
            Model::Native(p) => p.predict(images),
            Model::Script(e) => {
                let exp = &e.card.experiment;
                answer(images, &Decoding::of(&exp.data), |x| e.forward(x))
            }
        }
    }
}

/// The image files named: files as given, folders searched recursively for images
/// (by extension, hidden entries skipped), sorted.
pub fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, NoImages> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = walkdir::WalkDir::new(path)
            .follow_links(true)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(walkdir::DirEntry::into_path)
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    crate::data::IMAGE_EXTENSIONS.contains(&e.to_lowercase().as_str())
                })
            })
            .collect();
        if found.is_empty() {
            return Err(NoImages(path.clone()));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// How `predict` prints and decides.
#[derive(Debug, Clone, Copy, Default)]
pub struct PredictOptions {
    /// One JSON object per line instead of tab-separated text.
    pub json: bool,
    /// Two classes: predict the second class when its probability is at least this
    /// (default: the most probable class, i.e. 0.5). Multi-label: every label's
    /// threshold (default: each label's own, from the run).
    pub threshold: Option<f64>,
}

/// A multi-label answer's line: the labels at or over their thresholds (`-` for
/// none), then every label's probability; or the JSON object with the labels, every
/// probability and the thresholds.
fn multilabel_line(p: &Prediction, labels: &[String], thresholds: &[f64], json: bool) -> String {
    let on: Vec<&str> = (0..labels.len())
        .filter(|&l| p.probabilities[l] >= thresholds[l])
        .map(|l| labels[l].as_str())
        .collect();
    let by_label = |values: &[f64]| {
        labels
            .iter()
            .zip(values)
            .map(|(c, v)| (c.clone(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    if json {
        return serde_json::json!({
            "path": p.path,
            "labels": on,
            "probabilities": by_label(&p.probabilities),
            "thresholds": by_label(thresholds),
        })
        .to_string();
    }
    let all: Vec<String> = labels
        .iter()
        .zip(&p.probabilities)
        .map(|(c, v)| format!("{c}={v:.4}"))
        .collect();
    format!(
        "{}\t{}\t{}",
        p.path.display(),
        if on.is_empty() {
            "-".to_string()
        } else {
            on.join(",")
        },
        all.join(" ")
    )
}

/// Prints one line per image: `path  class  probability` (or JSON with every
/// probability); fails if any image could not be read.
pub fn run(target: &Path, paths: &[PathBuf], options: PredictOptions) -> anyhow::Result<()> {
    let model = Model::load(target)?;
    let classes = model.classes().to_vec();
    let thresholds = model.thresholds().map(|own| match options.threshold {
        Some(t) => vec![t; own.len()],
        None => own,
    });
    if options.threshold.is_some() && classes.len() != 2 && thresholds.is_none() {
        bail!(
            "--threshold applies to two classes or a multi-label model; this model has {} \
             classes",
            classes.len()
        );
    }
    let images = image_files(paths)?;
    let mut failed = 0;
    for (path, result) in images.iter().zip(model.predict(&images)) {
        match result {
            Ok(p) if thresholds.is_some() => {
                let at = thresholds.as_deref().unwrap_or_default();
                crate::stdout::line(multilabel_line(&p, &classes, at, options.json))?;
            }
            Ok(mut p) => {
                if let Some(t) = options.threshold {
                    p.class = usize::from(p.probabilities[1] >= t);
                    p.probability = p.probabilities[p.class];
                }
                let line = if options.json {
                    serde_json::json!({
                        "path": p.path,
                        "class": classes[p.class],
                        "probability": p.probability,
                        "probabilities": classes
                            .iter()
                            .zip(&p.probabilities)
                            .map(|(c, v)| (c.clone(), serde_json::json!(v)))
                            .collect::<serde_json::Map<_, _>>(),
                    })
                    .to_string()
                } else {
                    format!(
                        "{}\t{}\t{:.4}",
                        path.display(),
                        classes[p.class],
                        p.probability
                    )
                };
                crate::stdout::line(line)?;
            }
            Err(e) => {
                failed += 1;
                if options.json {
                    let error = e.to_string();
                    crate::stdout::line(
                        serde_json::json!({"path": path, "error": error}).to_string(),
                    )?;
                } else {
                    eprintln!("{}: {e}", path.display());
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} image(s) could not be read", images.len());
    }
    Ok(())
}
