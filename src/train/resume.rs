//! Opening a run: a new run folder (split, how the run was started), or an existing
//! one resumed from its last finished epoch, with the history replayed through the
//! stall detector and the best-epoch tracker.

use std::path::PathBuf;

use anyhow::Context;

use super::events::{EpochMetrics, Event, Phase, Phases};
use super::run_dir::{self, RunDir, RunInfo, Split};
use super::stall::{monitored, BestRule};
use super::state::{Options, State};
use crate::config::{Experiment, OnStall};
use crate::data::Dataset;
use crate::model::classifier::Classifier;

/// A run folder opened: the state in its phase, ready for its next epoch.
pub(super) struct Opened {
    pub(super) state: State,
    /// The last epoch before the process died stalled with `on_stall: unfreeze`: the
    /// run unfreezes before its next epoch.
    pub(super) unfreeze_requested: bool,
    /// The last epoch stalled while fine-tuning with `on_stall: unfreeze_more`: the
    /// next block group unfreezes before the next epoch.
    pub(super) deepen_requested: bool,
}

/// Creates the run folder, or reopens the one `options.resume` names and restores its
/// last finished epoch (taking the phases and export setting it was started with into
/// `options`). The state is in the phase it enters; the caller announces the phase.
pub(super) fn open(
    exp: &Experiment,
    options: &mut Options,
    net: Classifier,
    data: &Dataset,
    events: flume::Sender<Event>,
) -> anyhow::Result<Opened> {
    let mut unfreeze_requested = false;
    let mut deepen_requested = false;
    let state = match options.resume.clone() {
        None => {
            let run = match &options.fresh_in {
                Some(dir) => RunDir::restart(dir, exp)?,
                None => RunDir::create(&options.runs_root, exp)?,
            };
            let files = |idx: &[usize]| -> Vec<(PathBuf, usize)> {
                idx.iter()
                    .map(|&i| (data.files[i].clone(), data.labels[i]))
                    .collect()
            };
            let labels = |idx: &[usize]| -> Vec<Vec<usize>> {
                if !data.is_multilabel() {
                    return Vec::new();
                }
                idx.iter().map(|&i| data.label_indices(i)).collect()
            };
            run.write_split(&Split {
                classes: data.classes.clone(),
                train: files(&data.train),
                val: files(&data.val),
                train_labels: labels(&data.train),
                val_labels: labels(&data.val),
            })?;
            // How the run was started, so `resume` continues it the same way.
            run.write_info(&RunInfo {
                phases: options.phases,
                export_model: options.export_model,
            })?;
            let _ = events.send(Event::RunDir(run.path.clone()));
            let mut state = State::new(net, exp, run, events)?;
            let start_finetune = options.phases == Phases::Finetune
                || (exp.frozen.epochs == 0 && options.phases == Phases::Both);
            if start_finetune {
                state.enter_finetune(&exp.finetune, exp.finetune.unfreeze_last)?;
            } else {
                state.enter_frozen(exp)?;
            }
            state
        }
        Some(dir) => {
            if let Some(info) = run_dir::read_info(&dir)? {
                options.phases = info.phases;
                options.export_model |= info.export_model;
            }
            let (tensors, info) = run_dir::read_checkpoint(&dir.join("last.safetensors"))
                .context("cannot resume: no usable last.safetensors (did an epoch finish?)")?;
            if info.multilabel != data.is_multilabel() {
                anyhow::bail!(
                    "cannot resume: the run was {}, the label file now reads as {}",
                    if info.multilabel {
                        "multi-label"
                    } else {
                        "single-label"
                    },
                    if data.is_multilabel() {
                        "multi-label"
                    } else {
                        "single-label"
                    }
                );
            }
            if info.classes != data.classes {
                anyhow::bail!(
                    "cannot resume: the run had classes {:?}, the data folder now has {:?}",
                    info.classes,
                    data.classes
                );
            }
            // Epochs after the checkpoint (if the process died between writing the
            // metrics line and the checkpoint) are dropped: they will run again.
            let metrics: Vec<EpochMetrics> = run_dir::read_metrics(&dir)?
                .into_iter()
                .filter(|m| m.epoch <= info.epoch)
                .collect();
            let mut text = String::new();
            for m in &metrics {
                text.push_str(&serde_json::to_string(m)?);
                text.push('\n');
            }
            crate::fsutil::write_atomic(&dir.join("metrics.jsonl"), text.as_bytes())?;
            let mut run = RunDir::open(&dir)?;
            run.log(&format!(
                "resumed after epoch {} ({})",
                info.epoch,
                info.phase.name()
            ));
            let _ = events.send(Event::RunDir(dir.clone()));
            let mut state = State::new(net, exp, run, events)?;
            state.epoch = info.epoch;
            match info.phase {
                Phase::Frozen => state.enter_frozen(exp)?,
                Phase::Finetune => state.enter_finetune(&exp.finetune, info.unfrozen.max(1))?,
            }
            state.net.load_checkpoint(&tensors)?;
            // Replay the history through the detector and the best-epoch tracker.
            for m in &metrics {
                if m.phase != info.phase {
                    continue;
                }
                state.phase_epochs += 1;
                let epoch = m.epoch.saturating_sub(1);
                state.stall.observe(epoch, monitored(exp.stall.monitor, m));
            }
            // A stall with `on_stall: unfreeze` on the last epoch before the process
            // died still unfreezes.
            if let Some(last) = metrics.last() {
                let unfreezing = matches!(
                    exp.stall.on_stall,
                    OnStall::Unfreeze | OnStall::UnfreezeMore
                );
                unfreeze_requested = last.stalled && last.phase == Phase::Frozen && unfreezing;
                // The depth the checkpoint holds is the one its epoch trained at; a
                // stall on it asks for the next group again.
                deepen_requested = last.stalled
                    && last.phase == Phase::Finetune
                    && exp.stall.on_stall == OnStall::UnfreezeMore;
                if last.phase == Phase::Finetune {
                    state.deepened = last.deepened;
                }
            }
            state.best = metrics
                .iter()
                .fold(None, |best, m| BestRule::of(exp).better(best, m));
            // best.safetensors is written before last.safetensors: if the process
            // died between the two, or best is stale, make it match the metrics kept.
            if let Some(best) = &state.best {
                let best_file = dir.join("best.safetensors");
                let on_disk = run_dir::read_checkpoint(&best_file)
                    .ok()
                    .map(|(_, i)| i.epoch);
                if on_disk != Some(best.epoch) && best.epoch == info.epoch {
                    std::fs::copy(dir.join("last.safetensors"), &best_file)?;
                }
            }
            state
        }
    };
    Ok(Opened {
        state,
        unfreeze_requested,
        deepen_requested,
    })
}
