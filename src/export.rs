//! `tlcap-tui export`: a trained run's whole model, ready to serve elsewhere.
//!
//! - `torchscript`: the network traced with libtorch, preprocessing inside the graph:
//!   uint8 RGB images `[N, 3, H, W]` at the trained size in, class probabilities
//!   `[N, classes]` out. Loads with `torch.jit.load` (Python) or `torch::jit::load`
//!   (C++), no tlcap needed.
//! - `safetensors`: every variable of the network, with the same description in the
//!   file's metadata (`tlcap_model`), for `predict` or another framework.
//!
//! Both get a JSON sidecar ([`ModelCard`]): class names, input size, resize filter,
//! normalisation, threshold, backbone, precision, and the metrics of the exported
//! epoch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::config::Experiment;
use crate::data::Normalisation;
use crate::predict::Predictor;
use crate::train::EpochMetrics;

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
    pub phase: crate::train::Phase,
    /// Backbone layers unfrozen in it (the frozen rest computes in `precision`).
    pub unfrozen: usize,
    /// The run folder it came from.
    pub run_dir: PathBuf,
    /// That epoch's metrics, from `metrics.jsonl`.
    pub metrics: Option<EpochMetrics>,
    /// The settings it was trained with (rebuilds the network for safetensors).
    pub experiment: Experiment,
}

impl ModelCard {
    /// The precision as a setting.
    pub fn precision_kind(&self) -> crate::config::Precision {
        serde_json::from_value(serde_json::Value::String(self.precision.clone()))
            .unwrap_or(crate::config::Precision::Fp32)
    }

    /// The card beside a model file: `model.pt` -> `model.json`.
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("json")
    }

    /// Reads the card of a model file.
    pub fn read_for(model: &Path) -> anyhow::Result<ModelCard> {
        let path = ModelCard::path_for(model);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} has no model card ({}): export writes one beside it",
                model.display(),
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }
}

fn normalisation_words(n: Normalisation) -> String {
    match n {
        Normalisation::ImageNet => {
            "(pixel / 255 - mean) / std, ImageNet mean [0.485, 0.456, 0.406] and std \
             [0.229, 0.224, 0.225]"
                .into()
        }
        Normalisation::MinusOneToOne => "(pixel - 127) / 128".into(),
        Normalisation::Rescale(f) => format!("pixel * {f}"),
    }
}

/// Exports the chosen checkpoint of `run` to `out` (and its card beside it).
pub fn export(
    run: &Path,
    checkpoint: Checkpoint,
    format: Format,
    out: &Path,
) -> anyhow::Result<ModelCard> {
    let file = run.join(match checkpoint {
        Checkpoint::Best => "best.safetensors",
        Checkpoint::Last => "last.safetensors",
    });
    if !file.is_file() {
        anyhow::bail!(
            "{} has no {}: no epoch finished there yet",
            run.display(),
            file.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    let mut predictor = Predictor::load(&file)?;
    let exp = predictor.experiment.clone();
    let epoch = predictor.epoch;
    let metrics = crate::train::run_dir::read_metrics(run)
        .ok()
        .and_then(|rows| rows.into_iter().rev().find(|m| m.epoch == epoch));
    let card = ModelCard {
        format,
        file: out
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        input: Input {
            dtype: "uint8".into(),
            layout: "NCHW".into(),
            height: exp.data.image_size.height,
            width: exp.data.image_size.width,
            resize: crate::text::word(&exp.data.interpolation),
        },
        normalisation: normalisation_words(Normalisation::for_model(
            exp.model.backbone,
            exp.data.augment.rescale,
        )),
        output: format!("probabilities [N, {}]", predictor.classes.len()),
        threshold: (predictor.classes.len() == 2).then_some(0.5),
        classes: predictor.classes.clone(),
        backbone: exp.model.backbone.name().to_string(),
        precision: predictor.precision_name(),
        checkpoint,
        epoch,
        phase: predictor.phase.0,
        unfrozen: predictor.phase.1,
        run_dir: run.to_path_buf(),
        metrics,
        experiment: exp,
    };
    let card_json = serde_json::to_string_pretty(&card)?;
    match format {
        Format::Torchscript => {
            let module = predictor.trace()?;
            // Written beside, then renamed: a reader never sees half a model.
            let tmp = out.with_extension("pt.tmp");
            module
                .save(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, out)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        Format::Safetensors => {
            let tensors = predictor.variables();
            let meta = HashMap::from([("tlcap_model".to_string(), card_json.clone())]);
            crate::weights::write_safetensors(out, &tensors, Some(meta))?;
        }
    }
    crate::fsutil::write_atomic(&ModelCard::path_for(out), card_json.as_bytes())?;
    Ok(card)
}

/// `tlcap-tui export`: writes the model and its card, and says what it wrote.
pub fn run(
    run_dir: &Path,
    checkpoint: Checkpoint,
    format: Format,
    out: &Path,
) -> anyhow::Result<()> {
    let card = export(run_dir, checkpoint, format, out)?;
    let metric = card
        .metrics
        .as_ref()
        .map(|m| format!(", val_accuracy {:.4}", m.val_accuracy))
        .unwrap_or_default();
    crate::stdout::line(format!(
        "{} ({:?}, epoch {}{metric}; input uint8 [N, 3, {}, {}] RGB, output {}) and {}",
        out.display(),
        card.format,
        card.epoch,
        card.input.height,
        card.input.width,
        card.output,
        ModelCard::path_for(out).display()
    ))
}

/// An exported TorchScript model with its card, answering like [`Predictor`].
pub struct Exported {
    module: tch::CModule,
    /// Its card.
    pub card: ModelCard,
}

impl Exported {
    /// Loads `model.pt` and its card.
    pub fn load(model: &Path) -> anyhow::Result<Exported> {
        let card = ModelCard::read_for(model)?;
        let module = tch::CModule::load(model)
            .with_context(|| format!("cannot load {} as TorchScript", model.display()))?;
        Ok(Exported { module, card })
    }

    /// Probabilities `[N, classes]` for a uint8 batch `[N, 3, H, W]`.
    pub fn forward(&self, pixels: &Tensor) -> anyhow::Result<Tensor> {
        let out = tch::no_grad(|| self.module.forward_ts(&[pixels.to_kind(Kind::Uint8)]))?;
        Ok(out)
    }
}
