//! `tlcap-tui predict`: class and probabilities for images, from a run folder (or a
//! checkpoint in one), or from a model `export` wrote (TorchScript or safetensors,
//! with its card). Images get exactly the validation preprocessing; folders are read
//! recursively.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::config::Experiment;
use crate::data::decode_into;
use crate::export::{Exported, ModelCard};
use crate::model::classifier::Classifier;
use crate::runtime::{resolve_precision, select_device};
use crate::train::run_dir::{read_checkpoint, read_config};
use crate::train::Phase;

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

/// A trained network ready to answer.
pub struct Predictor {
    net: Classifier,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The settings it was trained with.
    pub experiment: Experiment,
    /// The epoch of the checkpoint (1-based).
    pub epoch: u32,
    /// Its phase, and the backbone layers unfrozen in it.
    pub phase: (Phase, usize),
}

impl Predictor {
    /// Loads a run folder (its `best.safetensors`, else `last.safetensors`), a
    /// checkpoint file inside one (its folder's `config.yaml` gives the model), or a
    /// safetensors model `export` wrote (its card gives the model).
    pub fn load(target: &Path) -> anyhow::Result<Predictor> {
        if target.is_file() && ModelCard::path_for(target).is_file() {
            let card = ModelCard::read_for(target)?;
            let tensors = crate::weights::read_file(target)?.tensors;
            let precision = card.precision_kind();
            return Predictor::build(
                card.experiment,
                card.classes,
                (card.epoch, card.phase, card.unfrozen),
                precision,
                &tensors,
            );
        }
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
        let precision = info.precision.unwrap_or(exp.precision);
        Predictor::build(
            exp,
            info.classes,
            (info.epoch, info.phase, info.unfrozen),
            precision,
            &tensors,
        )
    }

    /// The network of `exp` with these tensors, its layers as in that epoch's phase.
    fn build(
        exp: Experiment,
        classes: Vec<String>,
        (epoch, phase, unfrozen): (u32, Phase, usize),
        precision: crate::config::Precision,
        tensors: &[(String, Tensor)],
    ) -> anyhow::Result<Predictor> {
        let device = select_device(&exp.device)?;
        let mut net = Classifier::new(&exp, classes.len(), device)?;
        // The layer states and precision of the checkpoint's epoch, so that the frozen
        // part computes as it did in validation.
        match phase {
            Phase::Frozen => net.set_frozen_phase(),
            Phase::Finetune => {
                net.set_finetune_phase(unfrozen.max(1), exp.finetune.train_bn);
            }
        }
        net.set_precision(Some(resolve_precision(precision, device)));
        net.load_checkpoint(tensors)?;
        // Answering only: no gradients (and tracing keeps the variables as constants).
        net.vs.freeze();
        Ok(Predictor {
            net,
            classes,
            experiment: exp,
            epoch,
            phase: (phase, unfrozen),
        })
    }

    /// `bf16` or `fp32`: how the frozen part computes.
    pub fn precision_name(&self) -> String {
        crate::text::precision(crate::runtime::precision_of(self.net.precision())).to_string()
    }

    /// Probabilities `[N, classes]` for uint8 pixels `[N, 3, H, W]`.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let x = pixels.to_kind(Kind::Float).to_device(self.net.device());
        tch::no_grad(|| self.net.probabilities(&self.net.forward(&x))).to_device(tch::Device::Cpu)
    }

    /// The network traced into TorchScript: uint8 `[N, 3, H, W]` in, probabilities out.
    pub fn trace(&mut self) -> anyhow::Result<tch::CModule> {
        let size = self.experiment.data.image_size;
        // The whole batch in one pass: a traced split into passes would fix the
        // number of passes to the example's.
        let pass_pixels = self.net.pass_pixels();
        self.net.set_pass_pixels(None);
        let example = Tensor::zeros(
            [2, 3, size.height as i64, size.width as i64],
            (Kind::Uint8, tch::Device::Cpu),
        );
        // One pass first: the frozen part's bf16 copy is made now, outside the trace,
        // and goes into the graph as it is.
        let _ = self.forward(&example);
        let net = &self.net;
        let mut closure = |inputs: &[Tensor]| {
            let x = inputs[0].to_kind(Kind::Float).to_device(net.device());
            vec![tch::no_grad(|| net.probabilities(&net.forward(&x)))]
        };
        let module = tch::CModule::create_by_tracing("tlcap", "forward", &[example], &mut closure);
        self.net.set_pass_pixels(pass_pixels);
        Ok(module?)
    }

    /// Every variable of the network, on the CPU, by name.
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        self.net.all_variables()
    }

    /// Class and probabilities for each image; an unreadable image gives its reason.
    pub fn predict(&self, images: &[PathBuf]) -> Vec<Result<Prediction, String>> {
        let exp = &self.experiment;
        answer(images, (exp.data.image_size, exp.data.interpolation), |x| {
            Ok(self.forward(x))
        })
    }
}

/// Decodes `images` in batches as validation does, runs `forward` on each uint8
/// batch, and reads the answers.
fn answer(
    images: &[PathBuf],
    (size, interpolation): (crate::config::ImageSize, crate::config::Interpolation),
    forward: impl Fn(&Tensor) -> anyhow::Result<Tensor>,
) -> Vec<Result<Prediction, String>> {
    let per = 3 * (size.width * size.height) as usize;
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(32) {
        let mut buf = vec![0u8; per * chunk.len()];
        let decoded: Vec<Result<(), String>> = chunk
            .iter()
            .zip(buf.chunks_mut(per))
            .map(|(p, dst)| decode_into(p, size, interpolation, dst).map(|_| ()))
            .collect();
        let x = Tensor::from_slice(&buf).view([
            chunk.len() as i64,
            3,
            size.height as i64,
            size.width as i64,
        ]);
        let probs = forward(&x).and_then(|p| Ok(Vec::<f32>::try_from(p.contiguous().view([-1]))?));
        for (i, (path, ok)) in chunk.iter().zip(decoded).enumerate() {
            let result = match (&probs, ok) {
                (Err(e), _) => Err(format!("{e:#}")),
                (_, Err(e)) => Err(e),
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

    /// Class and probabilities for each image.
    pub fn predict(&self, images: &[PathBuf]) -> Vec<Result<Prediction, String>> {
        match self {
            Model::Native(p) => p.predict(images),
            Model::Script(e) => {
                let exp = &e.card.experiment;
                answer(images, (exp.data.image_size, exp.data.interpolation), |x| {
                    e.forward(x)
                })
            }
        }
    }
}

/// The image files named: files as given, folders searched recursively for images
/// (by extension, hidden entries skipped), sorted.
pub fn image_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
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
            bail!("{} holds no images", path.display());
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
    /// (default: the most probable class, i.e. 0.5).
    pub threshold: Option<f64>,
}

/// Prints one line per image: `path  class  probability` (or JSON with every
/// probability); fails if any image could not be read.
pub fn run(target: &Path, paths: &[PathBuf], options: PredictOptions) -> anyhow::Result<()> {
    let model = Model::load(target)?;
    let classes = model.classes().to_vec();
    if options.threshold.is_some() && classes.len() != 2 {
        bail!(
            "--threshold applies to two classes; this model has {}",
            classes.len()
        );
    }
    let images = image_files(paths)?;
    let mut failed = 0;
    for (path, result) in images.iter().zip(model.predict(&images)) {
        match result {
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
                    crate::stdout::line(serde_json::json!({"path": path, "error": e}).to_string())?;
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
