//! A trained model read back from its files, for `export` and `predict` alike: the
//! model card (the JSON sidecar `export` writes beside a model: class names, input
//! size, resize filter, normalisation, threshold, backbone, precision, the exported
//! epoch and its metrics), [`Predictor`] (the network of a run's checkpoint, or of an
//! exported safetensors model, rebuilt) and [`Exported`] (an exported TorchScript
//! module with its card).
//!
//! `export` writes what this reads; `predict` answers with it. Neither of the two
//! imports the other.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::config::{Experiment, Precision};
use crate::model::classifier::Classifier;
use crate::runtime::{precision_of, resolve_precision, select_device};
use crate::train::run_dir::{read_checkpoint, read_config};
use crate::train::{EpochMetrics, Phase};

/// Why a model card or an exported model cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelCardError {
    /// No card beside the model file.
    #[error("{model} has no model card ({card}): export writes one beside it")]
    Missing {
        model: PathBuf,
        card: PathBuf,
        source: std::io::Error,
    },
    /// The card is not a model card.
    #[error("{card} is not valid")]
    Invalid {
        card: PathBuf,
        source: serde_json::Error,
    },
    /// libtorch cannot load the model file as TorchScript.
    #[error("cannot load {model} as TorchScript")]
    TorchScript {
        model: PathBuf,
        source: tch::TchError,
    },
}

/// A run folder without the checkpoint asked for: no epoch has finished there. `export`
/// and `predict` both say it in these words.
#[derive(Debug, thiserror::Error)]
#[error("{run} has no {file}: no epoch finished there yet")]
pub struct NoEpochFinished {
    /// The run folder.
    pub run: PathBuf,
    /// The checkpoint file it lacks (`best.safetensors` or `last.safetensors`).
    pub file: &'static str,
}

/// The checkpoint file of a run folder: `best.safetensors` or `last.safetensors` as
/// asked, or, with `None`, the best if there is one and else the last. One rule for
/// `export` and `predict`: fails with [`NoEpochFinished`] when the file is not there.
pub fn run_checkpoint(run: &Path, which: Option<Checkpoint>) -> Result<PathBuf, NoEpochFinished> {
    let which = which.unwrap_or_else(|| {
        if run.join(Checkpoint::Best.file_name()).is_file() {
            Checkpoint::Best
        } else {
            Checkpoint::Last
        }
    });
    let file = run.join(which.file_name());
    if file.is_file() {
        Ok(file)
    } else {
        Err(NoEpochFinished {
            run: run.to_path_buf(),
            file: which.file_name(),
        })
    }
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A traced TorchScript module with the preprocessing inside.
    Torchscript,
    /// The variables, with the model card in the metadata.
    Safetensors,
}

/// Which checkpoint of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpoint {
    /// `best.safetensors`: the best epoch by the experiment's stall monitor.
    Best,
    /// `last.safetensors`: the last finished epoch.
    Last,
}

impl Checkpoint {
    /// Its file in a run folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Checkpoint::Best => "best.safetensors",
            Checkpoint::Last => "last.safetensors",
        }
    }

    /// Which checkpoint a path names by its file name, if either.
    fn named_by(path: &Path) -> Option<Checkpoint> {
        [Checkpoint::Best, Checkpoint::Last]
            .into_iter()
            .find(|c| path.file_name().is_some_and(|n| n == c.file_name()))
    }
}

/// The input a model expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Always `uint8`: 0..255 pixel values.
    pub dtype: String,
    /// Always `NCHW`, channels in RGB order.
    pub layout: String,
    /// Pixels.
    pub height: u32,
    /// Pixels.
    pub width: u32,
    /// How images were resized to it in training (`bilinear`, `nearest`, ...).
    pub resize: String,
    /// How 8-bit levels were made in training: `full` (the file's range) or `stretch`
    /// (each image's own lowest..highest value to 0..255). Cards from before it: full.
    #[serde(default)]
    pub intensity: crate::config::Intensity,
}

/// The sidecar of an exported model: everything needed to feed it and read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The file's format.
    pub format: Format,
    /// The model file, next to this card.
    pub file: String,
    /// What goes in.
    pub input: Input,
    /// What the graph does to the pixels first (TorchScript: inside the graph), in words.
    pub normalisation: String,
    /// What comes out: `probabilities [N, classes]`.
    pub output: String,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// Two classes: the probability of the second class above which it is predicted.
    pub threshold: Option<f64>,
    /// The backbone.
    pub backbone: String,
    /// The number format of the frozen part (`bf16` or `fp32`).
    pub precision: String,
    /// Which checkpoint.
    pub checkpoint: Checkpoint,
    /// Epoch (1-based) of the checkpoint.
    pub epoch: u32,
    /// Its phase.
    pub phase: Phase,
    /// Backbone layers unfrozen in it (the frozen rest computes in `precision`).
    pub unfrozen: usize,
    /// The run folder it came from.
    pub run_dir: PathBuf,
    /// That epoch's metrics, from `metrics.jsonl`.
    pub metrics: Option<EpochMetrics>,
    /// The settings it was trained with (rebuilds the network for safetensors).
    pub experiment: Experiment,
    /// Test-time augmentation (`tta` over 1): whether this model includes it, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta: Option<String>,
    /// Multi-label: `classes` are labels, each output its own sigmoid probability, and
    /// a label is predicted at or over its threshold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multilabel: bool,
    /// Multi-label: each label's threshold, in output order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<f64>,
}

impl ModelCard {
    /// The precision as a setting.
    pub fn precision_kind(&self) -> Precision {
        serde_json::from_value(serde_json::Value::String(self.precision.clone()))
            .unwrap_or(Precision::Fp32)
    }

    /// The card beside a model file: its name with `.json` for the extension
    /// (`m.pt` -> `m.json`, `m.safetensors` -> `m.json`). `export` writes it there and
    /// `predict` reads it there.
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("json")
    }

    /// Reads the card of a model file.
    pub fn read_for(model: &Path) -> Result<ModelCard, ModelCardError> {
        let card = ModelCard::path_for(model);
        let text = match std::fs::read_to_string(&card) {
            Ok(text) => text,
            Err(source) => {
                return Err(ModelCardError::Missing {
                    model: model.to_path_buf(),
                    card,
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| ModelCardError::Invalid { card, source })
    }
}

/// What a network's outputs mean: one class per image, or labels with thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Class (or label) names in output order.
    pub classes: Vec<String>,
    /// Multi-label: each label's threshold; None for one class per image.
    pub thresholds: Option<Vec<f64>>,
}

impl Head {
    /// From a checkpoint's metadata: multi-label ones without thresholds (written
    /// before an epoch finished) take the settings'.
    fn of(info: &crate::train::run_dir::CheckpointInfo, exp: &Experiment) -> Head {
        Head {
            classes: info.classes.clone(),
            thresholds: info.multilabel.then(|| {
                if info.thresholds.len() == info.classes.len() {
                    info.thresholds.clone()
                } else {
                    exp.multilabel.thresholds_for(&info.classes)
                }
            }),
        }
    }
}

/// A trained network ready to answer (`predict` adds `Predictor::predict`: answers for
/// image files).
pub struct Predictor {
    net: Classifier,
    /// Class names in label order (multi-label: label names).
    pub classes: Vec<String>,
    /// Multi-label: each label's threshold; None for one class per image.
    pub thresholds: Option<Vec<f64>>,
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
    /// safetensors model `export` wrote (its card gives the model). A run folder with
    /// no checkpoint yet fails with [`NoEpochFinished`], as `export` does.
    pub fn load(target: &Path) -> anyhow::Result<Predictor> {
        if target.is_file() && ModelCard::path_for(target).is_file() {
            let card = ModelCard::read_for(target)?;
            let tensors = crate::weights::read_file(target)?.tensors;
            let precision = card.precision_kind();
            let head = Head {
                thresholds: card.multilabel.then_some(card.thresholds),
                classes: card.classes,
            };
            return Predictor::build(
                card.experiment,
                head,
                (card.epoch, card.phase, card.unfrozen),
                precision,
                &tensors,
            );
        }
        let (run, file) = if target.is_dir() {
            (target.to_path_buf(), None)
        } else {
            let run = target.parent().unwrap_or(Path::new(".")).to_path_buf();
            (run, Some(target))
        };
        let exp = read_config(&run)?;
        // The run folder's checkpoint, or its best / last by path: missing, it is said
        // as `export` says it.
        let checkpoint = match file {
            None => run_checkpoint(&run, None)?,
            Some(file) => match Checkpoint::named_by(file) {
                Some(which) if !file.exists() => run_checkpoint(&run, Some(which))?,
                _ => file.to_path_buf(),
            },
        };
        let (tensors, info) = read_checkpoint(&checkpoint)
            .with_context(|| format!("cannot use {}", checkpoint.display()))?;
        let precision = info.precision.unwrap_or(exp.precision);
        let head = Head::of(&info, &exp);
        Predictor::build(
            exp,
            head,
            (info.epoch, info.phase, info.unfrozen),
            precision,
            &tensors,
        )
    }

    /// The network of `exp` with these tensors, its layers as in that epoch's phase.
    fn build(
        exp: Experiment,
        head: Head,
        (epoch, phase, unfrozen): (u32, Phase, usize),
        precision: Precision,
        tensors: &[(String, Tensor)],
    ) -> anyhow::Result<Predictor> {
        let device = select_device(&exp.device)?;
        let Head {
            classes,
            thresholds,
        } = head;
        let mut net = Classifier::build(&exp, classes.len(), thresholds.is_some(), device)?;
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
            thresholds,
            experiment: exp,
            epoch,
            phase: (phase, unfrozen),
        })
    }

    /// How the frozen part computes: `Bf16` or `Fp32`.
    pub fn precision(&self) -> Precision {
        precision_of(self.net.precision())
    }

    /// Probabilities `[N, classes]` for uint8 pixels `[N, 3, H, W]`, averaged over the
    /// run's test-time augmentation views (`tta`), as its validation did.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let x = pixels.to_kind(Kind::Float);
        let exp = &self.experiment;
        let size = exp.data.image_size;
        let views = crate::data::augment::tta_views(
            &exp.data.augment,
            exp.tta,
            size.width as i64,
            size.height as i64,
        );
        let fill = (exp.data.augment.fill_mode, exp.data.augment.cval);
        tch::no_grad(|| self.net.probabilities_over_views(&x, &views, fill, None))
            .to_device(tch::Device::Cpu)
    }

    /// The network traced into TorchScript: uint8 `[N, 3, H, W]` in, probabilities out.
    pub fn trace(&mut self) -> Result<tch::CModule, tch::TchError> {
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
        module
    }

    /// Every variable of the network, on the CPU, by name.
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        self.net.all_variables()
    }
}

/// An exported TorchScript model with its card, answering like [`Predictor`].
pub struct Exported {
    module: tch::CModule,
    /// Its card.
    pub card: ModelCard,
}

impl Exported {
    /// Loads `model.pt` and its card.
    pub fn load(model: &Path) -> Result<Exported, ModelCardError> {
        let card = ModelCard::read_for(model)?;
        let module = tch::CModule::load(model).map_err(|source| ModelCardError::TorchScript {
            model: model.to_path_buf(),
            source,
        })?;
        Ok(Exported { module, card })
    }

    /// Probabilities `[N, classes]` for a uint8 batch `[N, 3, H, W]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor, tch::TchError> {
        tch::no_grad(|| self.module.forward_ts(&[pixels.to_kind(Kind::Uint8)]))
    }
}
