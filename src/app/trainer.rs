//! Trainer events folded into the state of the run they belong to.

use super::{App, RunStatus};
use crate::config::ChangeKind;
use crate::train::events::{StallAction, Suggestion};
use crate::train::{Event, Phase};

pub(super) fn on_trainer(app: &mut App, id: u64, event: Event) {
    let Some(entry) = app.entries.iter_mut().find(|e| e.id == id) else {
        return;
    };
    let name = entry.name();
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
            batch_loss,
            images_per_sec,
        } => {
            if of > 0 && batch_loss.is_finite() {
                let x = epoch.saturating_sub(1) as f64 + batch as f64 / of as f64;
                run.batch_losses.push_back((x, batch_loss));
                if run.batch_losses.len() > super::run_view::BATCH_HISTORY {
                    run.batch_losses.pop_front();
                }
            }
            if run.status != RunStatus::Paused {
                run.status = RunStatus::Running;
            }
            run.epoch = epoch;
            run.batch = (batch, of);
            run.validating = None;
            run.batch_loss = loss;
            run.images_per_sec = images_per_sec;
        }
        Event::Validating { epoch, done, total } => {
            run.epoch = epoch;
            run.validating = Some((done, total));
        }
        Event::EpochEnd(m) => {
            run.validating = None;
            run.epoch = m.epoch;
            run.epochs.push(m);
        }
        Event::Stalled { suggestion, .. } => {
            note = Some((
                true,
                format!("{name}: stalled: {}", crate::text::suggestion(&suggestion)),
            ));
            run.stall = Some(suggestion);
            run.stall_outlived = false;
        }
        Event::PhaseChanged {
            phase,
            epoch,
            layers,
            trainable_layers,
            epochs,
            deepened,
            ..
        } => {
            // A phase that begins mid-run, and each step of progressive unfreezing,
            // gets a marker on the charts.
            if epoch > 1 {
                run.phase_marks.push((epoch, phase));
            }
            // Between batches of the epoch in progress: that epoch is mixed.
            let (done, of) = run.batch;
            let mid_epoch = run.epoch == epoch && done > 0 && done < of;
            let before = run.total_epochs;
            // The trainer's count (an early unfreeze: the fine-tune epochs count from
            // here).
            run.total_epochs = epochs;
            if phase == Phase::Finetune {
                let automatic = |s: &Suggestion| {
                    matches!(
                        s.action,
                        StallAction::Unfreeze {
                            automatic: true,
                            ..
                        } | StallAction::UnfreezeMore {
                            automatic: true,
                            ..
                        }
                    )
                };
                let mut text = match &deepened {
                    Some(d) => format!(
                        "unfroze {} from epoch {epoch}: {trainable_layers} layers train \
                         ({} of {} block groups; {})",
                        d.group, d.groups, d.of, d.by
                    ),
                    None => format!("fine-tuning {trainable_layers} layers from epoch {epoch}"),
                };
                // An automatic unfreeze says why in the same line: on a short terminal
                // the stall's own message may already be out of sight.
                if let Some(s) = run.stall.as_ref().filter(|s| automatic(s)) {
                    let by = if deepened.is_some() {
                        ""
                    } else {
                        " (on_stall: unfreeze)"
                    };
                    text = format!(
                        "stalled at {} {:.4}, so {text}{by}",
                        crate::text::word(&s.monitor),
                        s.value
                    );
                }
                if mid_epoch {
                    text += &format!(
                        ", batch {} (epoch {epoch} is mixed: batches 1-{done} ran frozen)",
                        done + 1
                    );
                }
                if before > 0 && run.total_epochs < before {
                    text += &format!(
                        "; the frozen epochs left are skipped: {} in all",
                        crate::text::epochs(run.total_epochs)
                    );
                }
                note = Some((false, format!("{name}: {text}")));
                if deepened.is_some() {
                    // The suggestion (if any) is answered.
                    run.stall = None;
                } else if run.stall.as_ref().is_some_and(|s| !automatic(s)) && !mid_epoch {
                    // Not acted on: it stays up, saying the phase moved on.
                    run.stall_outlived = true;
                } else {
                    run.stall = None;
                }
            }
            if !mid_epoch {
                // A new phase's pace is not the old one's.
                run.images_per_sec = 0.0;
                run.batch = (0, of);
            }
            run.phase = phase;
            run.layers = layers;
            run.deepest_group = deepened.map(|d| d.group);
        }
        Event::Paused => {
            run.status = RunStatus::Paused;
            run.pending = None;
            let (done, of) = run.batch;
            let at = if of > 0 && done < of {
                format!(" before batch {} of {of}, epoch {}", done + 1, run.epoch)
            } else {
                String::new()
            };
            note = Some((false, format!("{name}: paused{at}; p resumes")));
        }
        Event::Control { command, source } => {
            note = Some((false, format!("{name}: {command} (from {source})")));
        }
        Event::Resumed => {
            run.status = RunStatus::Running;
            run.pending = None;
            note = Some((false, format!("{name}: resumed")));
        }
        Event::EditQueued { epoch } => {
            note = Some((
                false,
                format!("{name}: the trainer took the edit; it applies from epoch {epoch}"),
            ));
        }
        Event::ConfigApplied {
            changes,
            epoch,
            epochs,
        } => {
            run.total_epochs = epochs;
            let live: Vec<String> = changes
                .iter()
                .filter(|c| c.kind == ChangeKind::Live)
                .map(|c| c.to_string())
                .collect();
            if !live.is_empty() {
                note = Some((
                    false,
                    format!("{name}: applied: {} from epoch {epoch}", live.join(", "),),
                ));
            }
        }
        Event::LrLowered {
            from,
            to,
            epoch,
            batch,
            by,
        } => {
            // The suggestion to lower it is answered.
            if run
                .stall
                .as_ref()
                .is_some_and(|s| matches!(s.action, StallAction::StopOrLowerLr { .. }))
            {
                run.stall = None;
            }
            note = Some((
                false,
                format!(
                    "{name}: {}",
                    crate::text::lr_lowered(from, to, epoch, batch, &by)
                ),
            ));
        }
        Event::Checkpoint(_) => {}
        Event::Finished { reason, best, .. } => {
            run.status = RunStatus::Done(reason);
            run.pending = None;
            // Nothing left to act on: the banner's key would do nothing now.
            run.stall = None;
            run.stall_outlived = false;
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
