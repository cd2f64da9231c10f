//! `tlcap-tui predict`: a trained run's class and probability for image files — the
//! smallest real serving path. Images get exactly the validation preprocessing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tch::{Kind, Tensor};

use crate::data::decode_into;
use crate::model::classifier::Classifier;
use crate::runtime::{resolve_precision, select_device};
use crate::train::run_dir::{read_checkpoint, read_config};
use crate::train::Phase;

/// One image's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The image.
    pub path: PathBuf,
    /// Index of the most probable class.
    pub class: usize,
    /// Its probability.
    pub probability: f64,
}

/// A trained model ready to answer.
pub struct Predictor {
    net: Classifier,
    /// Class names in label order.
    pub classes: Vec<String>,
    size: crate::config::ImageSize,
    interpolation: crate::config::Interpolation,
}

impl Predictor {
    /// Loads a run folder (its `best.safetensors`, else `last.safetensors`) or a
    /// checkpoint file inside one (its folder's `config.yaml` gives the model).
    pub fn load(target: &Path) -> anyhow::Result<Predictor> {
        let (run, checkpoint) = if target.is_dir() {
            let best = target.join("best.safetensors");
            let ckpt = if best.is_file() {
                best
            } else {
                target.join("last.safetensors")
            };
            (target.to_path_buf(), ckpt)
        } else {
            let run = target.parent().unwrap_or(Path::new(".")).to_path_buf();
            (run, target.to_path_buf())
        };
        let exp = read_config(&run)?;
        let (tensors, info) = read_checkpoint(&checkpoint)
            .with_context(|| format!("cannot use {}", checkpoint.display()))?;
        let device = select_device(&exp.device)?;
        let mut net = Classifier::new(&exp, info.classes.len(), device)?;
        // The layer states and precision of the checkpoint's epoch (recorded in it), so
        // that the frozen part computes as it did in validation.
        match info.phase {
            Phase::Frozen => net.set_frozen_phase(),
            Phase::Finetune => {
                net.set_finetune_phase(info.unfrozen.max(1), exp.finetune.train_bn);
            }
        }
        let precision = info.precision.unwrap_or(exp.precision);
        net.set_precision(Some(resolve_precision(precision, device)));
        net.load_checkpoint(&tensors)?;
        Ok(Predictor {
            net,
            classes: info.classes,
            size: exp.data.image_size,
            interpolation: exp.data.interpolation,
        })
    }

    /// Class and probability for each image; an unreadable image gives its reason.
    pub fn predict(&self, images: &[PathBuf]) -> Vec<Result<Prediction, String>> {
        let per = 3 * (self.size.width * self.size.height) as usize;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(32) {
            let mut buf = vec![0u8; per * chunk.len()];
            let decoded: Vec<Result<(), String>> = chunk
                .iter()
                .zip(buf.chunks_mut(per))
                .map(|(p, dst)| decode_into(p, self.size, self.interpolation, dst).map(|_| ()))
                .collect();
            let x = Tensor::from_slice(&buf)
                .view([
                    chunk.len() as i64,
                    3,
                    self.size.height as i64,
                    self.size.width as i64,
                ])
                .to_kind(Kind::Float);
            let probs = tch::no_grad(|| self.net.probabilities(&self.net.forward(&x)))
                .to_device(tch::Device::Cpu);
            for (i, (path, ok)) in chunk.iter().zip(decoded).enumerate() {
                out.push(ok.map(|()| {
                    let row = probs.get(i as i64);
                    let class = row.argmax(0, false).int64_value(&[]) as usize;
                    Prediction {
                        path: path.clone(),
                        class,
                        probability: row.double_value(&[class as i64]),
                    }
                }));
            }
        }
        out
    }
}

/// Prints `path  class  probability` per image; fails if any image could not be read.
pub fn run(target: &Path, images: &[PathBuf]) -> anyhow::Result<()> {
    let predictor = Predictor::load(target)?;
    let mut failed = 0;
    for (path, result) in images.iter().zip(predictor.predict(images)) {
        match result {
            Ok(p) => crate::stdout::line(format!(
                "{}\t{}\t{:.4}",
                path.display(),
                predictor.classes[p.class],
                p.probability
            ))?,
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e}", path.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} image(s) could not be read", images.len());
    }
    Ok(())
}
