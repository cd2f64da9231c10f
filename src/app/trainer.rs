//! Trainer events folded into the state of the run they belong to.

use super::{App, RunStatus};
use crate::config::ChangeKind;
use crate::train::{Event, Phase};

pub(super) fn on_trainer(app: &mut App, id: u64, event: Event) {
    let Some(entry) = app.entries.iter_mut().find(|e| e.id == id) else {
        return;
    };
    let name = entry.name();
    let settings = entry.settings().cloned();
    let Some(run) = entry.run.as_mut() else {
        return;
    };
    let mut note: Option<(bool, String)> = None;
    match event {
        Event::Loading { done, total } => run.status = RunStatus::Loading { done, total },
        Event::Compute(c) => run.compute = Some(c),
        Event::Note(text) => note = Some((false, format!("{name}: {text}"))),
        Event::DataReady {
            train,
            val,
            skipped,
            ..
        } => {
            run.images = (train, val);
            if skipped > 0 {
                note = Some((
                    true,
                    format!("{name}: {skipped} unreadable file(s) skipped"),
                ));
            }
        }
        Event::ModelReady {
            device,
            weights,
            layers,
            ..
        } => {
            run.device = device;
            run.weights = weights;
            run.layers = layers;
            run.status = RunStatus::Running;
        }
        Event::RunDir(dir) => run.run_dir = Some(dir),
        Event::Batch {
            epoch,
            batch,
            of,
            loss,
            images_per_sec,
        } => {
            if run.status != RunStatus::Paused {
                run.status = RunStatus::Running;
            }
            run.epoch = epoch;
            run.batch = (batch, of);
            run.batch_loss = loss;
            run.images_per_sec = images_per_sec;
        }
        Event::EpochEnd(m) => {
            run.epoch = m.epoch;
            run.epochs.push(m);
        }
        Event::Stalled { suggestion, .. } => {
            note = Some((
                true,
                format!("{name}: stalled: {}", crate::text::suggestion(&suggestion)),
            ));
            run.stall = Some(suggestion);
        }
        Event::PhaseChanged {
            phase,
            epoch,
            layers,
            trainable_layers,
            ..
        } => {
            // A phase that begins mid-run gets a marker on the charts.
            if epoch > 1 {
                run.phase_marks.push((epoch, phase));
            }
            if phase == Phase::Finetune {
                // An early unfreeze: the fine-tune epochs count from here.
                if let Some(exp) = settings {
                    run.total_epochs = exp.planned_epochs(Some(epoch.saturating_sub(1)));
                }
                run.stall = None;
                note = Some((
                    false,
                    format!("{name}: fine-tuning {trainable_layers} layers from epoch {epoch}"),
                ));
            }
            run.phase = phase;
            run.layers = layers;
        }
        Event::Paused => run.status = RunStatus::Paused,
        Event::Control { command, source } => {
            note = Some((false, format!("{name}: {command} (from {source})")));
        }
        Event::Resumed => run.status = RunStatus::Running,
        Event::ConfigApplied(changes) => {
            let live: Vec<String> = changes
                .iter()
                .filter(|c| c.kind == ChangeKind::Live)
                .map(|c| c.to_string())
                .collect();
            if !live.is_empty() {
                note = Some((
                    false,
                    format!(
                        "{name}: applied: {} from epoch {}",
                        live.join(", "),
                        run.epoch + 1
                    ),
                ));
            }
        }
        Event::Checkpoint(_) => {}
        Event::Finished { reason, best, .. } => {
            run.status = RunStatus::Done(reason);
            let why = crate::text::end_reason(reason);
            let best = best.map_or("no epoch finished".to_string(), |b| {
                format!(
                    "best epoch {} ({}) val_acc {:.4}",
                    b.epoch,
                    b.phase.name(),
                    b.val_accuracy
                )
            });
            let folder = run
                .run_dir
                .as_ref()
                .map(|d| format!(" · {}", d.display()))
                .unwrap_or_default();
            note = Some((false, format!("{name}: {why}: {best}{folder}")));
        }
        Event::Error(e) => {
            note = Some((true, format!("{name}: {e}")));
            run.status = RunStatus::Failed(e);
        }
    }
    if let Some((warning, text)) = note {
        app.say(warning, text);
    }
}
