//! `tlcap-tui export`: a trained run's whole model, ready to serve elsewhere.
//!
//! - `torchscript`: the network traced with libtorch, preprocessing inside the graph:
//!   uint8 RGB images `[N, 3, H, W]` at the trained size in, class probabilities
//!   `[N, classes]` out. Loads with `torch.jit.load` (Python) or `torch::jit::load`
//!   (C++), no tlcap needed.
//! - `safetensors`: every variable of the network, with the same description in the
//!   file's metadata (`tlcap_model`), for `predict` or another framework.
//!
//! Both get a JSON sidecar ([`ModelCard`]) beside the model, named as the model with
//! `.json` for its extension (`-o m.pt` -> `m.json`, [`ModelCard::path_for`]): class
//! names, input size, resize filter, normalisation, threshold, backbone, precision, and
//! the metrics of the exported epoch. The card and the network are read back by [`crate::model_card`].

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

use crate::data::Normalisation;
use crate::model_card::{run_checkpoint, Input, Predictor};
// `export::run`'s argument types and what it writes, at the paths `main` and the tests
// name them by.
pub use crate::model_card::{Checkpoint, Format, ModelCard};

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
    if ModelCard::path_for(out) == out {
        anyhow::bail!(
            "{}: the model card is written as NAME.json beside the model: name the model \
             with another extension (e.g. -o model.pt)",
            out.display()
        );
    }
    // Missing, it is said as `predict` says it: no epoch finished there yet.
    let file = run_checkpoint(run, Some(checkpoint))?;
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
            intensity: exp.data.intensity,
        },
        normalisation: normalisation_words(Normalisation::for_model(
            exp.model.backbone,
            exp.data.augment.rescale,
        )),
        output: match &predictor.thresholds {
            None => format!("probabilities [N, {}]", predictor.classes.len()),
            Some(_) => format!(
                "probabilities [N, {}]: each label's own (sigmoid), not summing to 1",
                predictor.classes.len()
            ),
        },
        threshold: (predictor.classes.len() == 2 && predictor.thresholds.is_none()).then_some(0.5),
        multilabel: predictor.thresholds.is_some(),
        thresholds: predictor.thresholds.clone().unwrap_or_default(),
        classes: predictor.classes.clone(),
        backbone: exp.model.backbone.name().to_string(),
        precision: crate::text::precision(predictor.precision()).to_string(),
        checkpoint,
        epoch,
        phase: predictor.phase.0,
        unfrozen: predictor.phase.1,
        run_dir: run.to_path_buf(),
        metrics,
        tta: (exp.tta > 1).then(|| match format {
            Format::Torchscript => format!(
                "not included: the run averaged {} views (tta) in validation; this graph \
                 answers for the image alone",
                exp.tta
            ),
            Format::Safetensors => format!(
                "included: `tlcap-tui predict` on this model averages {} views (tta), as \
                 the run's validation did",
                exp.tta
            ),
        }),
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
            // Overwriting: the mode the model has now, as a write in place keeps it.
            if let Ok(meta) = std::fs::metadata(out) {
                let _ = std::fs::set_permissions(&tmp, meta.permissions());
            }
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
