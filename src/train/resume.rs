//! Opening a run: a new run folder (split, how the run was started), or an existing
//! one resumed from its last finished epoch, with the history replayed through the
//! stall detector and the best-epoch tracker.

use std::path::PathBuf;

use anyhow::Context;

use super::controller::{build_optimizer, Phases, State, Trainer};
use super::events::{EpochMetrics, Event, Phase};
use super::run_dir::{self, RunDir, RunInfo, Split};
use super::stall::{monitored, BestRule, StallDetector};
use crate::config::OnStall;
use crate::data::Dataset;
use crate::model::classifier::Classifier;

impl Trainer {
    /// Creates the run folder, or reopens it and restores the last finished epoch.
    pub(super) fn open_run(&mut self, net: Classifier, data: &Dataset) -> anyhow::Result<State> {
        let mut state = State {
            lr: self.exp.frozen.lr,
            opt: build_optimizer(
                &net,
                self.exp.frozen.optimizer,
                self.exp.frozen.lr,
                self.exp.frozen.momentum,
            )?,
            net,
            phase: Phase::Frozen,
            epoch: 0,
            phase_epochs: 0,
            stall: StallDetector::new(self.exp.stall.clone()),
            best: None,
            unfrozen: 0,
            val_probabilities: Vec::new(),
            cache: None,
            cache_refused: false,
        };
        match self.options.resume.clone() {
            None => {
                let run = RunDir::create(&self.options.runs_root, &self.exp)?;
                let files = |idx: &[usize]| -> Vec<(PathBuf, usize)> {
                    idx.iter()
                        .map(|&i| (data.files[i].clone(), data.labels[i]))
                        .collect()
                };
                run.write_split(&Split {
                    classes: data.classes.clone(),
                    train: files(&data.train),
                    val: files(&data.val),
                })?;
                // How the run was started, so `resume` continues it the same way.
                run.write_info(&RunInfo {
                    phases: self.options.phases,
                    export_model: self.options.export_model,
                })?;
                self.emit(Event::RunDir(run.path.clone()));
                self.run = Some(run);
                let start_finetune = self.options.phases == Phases::Finetune
                    || (self.exp.frozen.epochs == 0 && self.options.phases == Phases::Both);
                if start_finetune {
                    self.enter_finetune(&mut state)?;
                } else {
                    self.enter_frozen(&mut state)?;
                }
            }
            Some(dir) => {
                if let Some(info) = run_dir::read_info(&dir)? {
                    self.options.phases = info.phases;
                    self.options.export_model |= info.export_model;
                }
                let (tensors, info) = run_dir::read_checkpoint(&dir.join("last.safetensors"))
                    .context("cannot resume: no usable last.safetensors (did an epoch finish?)")?;
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
                self.emit(Event::RunDir(dir.clone()));
                self.run = Some(run);
                state.epoch = info.epoch;
                match info.phase {
                    Phase::Frozen => self.enter_frozen(&mut state)?,
                    Phase::Finetune => {
                        self.enter_finetune_with(&mut state, info.unfrozen.max(1))?
                    }
                }
                state.net.load_checkpoint(&tensors)?;
                // Replay the history through the detector and the best-epoch tracker.
                for m in &metrics {
                    if m.phase != info.phase {
                        continue;
                    }
                    state.phase_epochs += 1;
                    let epoch = m.epoch.saturating_sub(1);
                    state
                        .stall
                        .observe(epoch, monitored(self.exp.stall.monitor, m));
                }
                // A stall with `on_stall: unfreeze` on the last epoch before the process
                // died still unfreezes.
                if let Some(last) = metrics.last() {
                    let unfreeze = last.stalled
                        && last.phase == Phase::Frozen
                        && self.exp.stall.on_stall == OnStall::Unfreeze;
                    self.unfreeze_requested = unfreeze;
                }
                state.best = metrics
                    .iter()
                    .fold(None, |best, m| BestRule::of(&self.exp).better(best, m));
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
            }
        }
        Ok(state)
    }
}
