//! Headless mode (`tlcap-tui run`, `tlcap-tui resume`): drives the same trainer as the
//! dashboard and prints one line per epoch to stdout (plain), or the tagged event
//! stream (`--json`, see [`stream`]), with a progress line on stderr when stderr is a
//! terminal. Signals and a closed stdout stop the run cleanly ([`signals`]).

use std::io::{IsTerminal, Write};

use anyhow::bail;

mod signals;
pub mod stream;

use signals::SignalGuard;
pub use signals::{name as signal_name, Interrupted, SAME_STOP};

use crate::config::{ChangeKind, Experiment};
use crate::train::{self, EpochMetrics, Event, Options, Phase};
use crate::watch::FileEvent;

/// One epoch as a JSON object: the stable keys scripts rely on, then the rest.
pub fn epoch_json(m: &EpochMetrics) -> serde_json::Value {
    serde_json::json!({
        "epoch": m.epoch,
        "phase": m.phase,
        "loss": m.loss,
        "accuracy": m.accuracy,
        "val_loss": m.val_loss,
        "val_accuracy": m.val_accuracy,
        "lr": m.lr,
        "seconds": m.seconds,
        "images_per_sec": m.images_per_sec,
        "stalled": m.stalled,
        "suggestion": m.suggestion.as_ref().map(crate::text::suggestion),
        "val_precision": m.val_precision,
        "val_recall": m.val_recall,
        "val_f1": m.val_f1,
        "val_auc": m.val_auc,
        "confusion": m.confusion.counts,
        "val_images_per_sec": m.val_images_per_sec,
        "compute": crate::text::compute(&m.compute),
        "input_wait_seconds": m.input_wait_seconds,
        "lr_lowered": m.lr_lowered,
        "val_balanced_accuracy": m.balanced_accuracy(),
        "val_class_recall": if m.multilabel.is_some() {
            m.val_class_recall.clone()
        } else {
            m.confusion.recalls()
        },
        "deepened": m.deepened,
        "multilabel": m.multilabel.as_ref().map(|ml| serde_json::json!({
            "val_mean_auc": ml.mean_auc,
            "val_map": ml.map,
            "val_macro_f1": ml.macro_f1,
            "val_exact_match": ml.exact_match,
            "labels": ml.labels,
        })),
    })
}

/// One epoch as a human-readable line.
pub fn epoch_line(m: &EpochMetrics, total: u32) -> String {
    let mut line = format!(
        "epoch {:>3}/{total} {:<8} loss {:.4} acc {:.4} val_loss {:.4} val_acc {:.4}",
        m.epoch,
        crate::text::phase_label(m),
        m.loss,
        m.accuracy,
        m.val_loss,
        m.val_accuracy
    );
    match &m.multilabel {
        Some(ml) => {
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |a| format!("{a:.4}"));
            line.push_str(&format!(
                " val_mean_auc {} val_map {} val_macro_f1 {:.4}",
                opt(ml.mean_auc),
                opt(ml.map),
                ml.macro_f1
            ));
        }
        None => {
            if let Some(auc) = m.val_auc {
                line.push_str(&format!(" val_auc {auc:.4}"));
            }
            line.push_str(&format!(" val_bal_acc {:.4}", m.balanced_accuracy()));
        }
    }
    line.push_str(&format!(
        " lr {:.0e} {:.1}s {:.0} img/s",
        m.lr, m.seconds, m.images_per_sec
    ));
    if let Some(mixed) = &m.mixed {
        line.push_str(&format!(
            "\n  mixed epoch: batches 1-{} of {} ran frozen at lr {}",
            mixed.finetune_from_batch.saturating_sub(1),
            mixed.batches,
            crate::text::short_float(mixed.frozen_lr)
        ));
    }
    if let Some(at) = &m.lr_lowered {
        line.push_str(&format!(
            "\n  lr lowered part-way: batches 1-{} ran at lr {}, the rest at {}",
            at.from_batch.saturating_sub(1),
            crate::text::short_float(at.lr_before),
            crate::text::short_float(m.lr)
        ));
    }
    if let Some(s) = m.suggestion.as_ref().filter(|_| m.stalled) {
        line.push_str(&format!("\n  stalled: {}", crate::text::suggestion(s)));
    }
    line
}

/// What the main loop hears: the trainer's events, edits of the experiment file, and
/// signals. Short-lived (one per loop turn): not worth a box per trainer event.
#[allow(clippy::large_enum_variant)]
enum Incoming {
    /// A trainer event.
    Trainer(Event),
    /// The trainer's thread ended.
    TrainerGone,
    /// An edit (or a problem) of the watched experiment file.
    File(FileEvent),
    /// A signal was caught: the stop is on its way to the trainer.
    Signal(&'static str),
    /// Stdout's reader went away (a pipe closed before the next line is written).
    ReaderGone,
}

/// Runs `exp` to the end, printing epochs (plain lines, or with `json` the tagged
/// event stream, see [`stream`]); an error if the trainer failed. With `watch`, edits
/// of that file are applied while the run goes on (live settings from the next epoch;
/// a broken save is reported and the last good settings stay). SIGINT, SIGTERM and
/// SIGHUP stop the run at the next batch boundary ([`Interrupted`]); a closed stdout
/// stops it the same way ([`crate::stdout::ReaderGone`]).
pub fn run(
    exp: Experiment,
    options: Options,
    json: bool,
    watch: Option<&std::path::Path>,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    // The trainer says the planned total with each phase and edit.
    let mut total = 0;
    let tty = std::io::stderr().is_terminal();
    let progress = |text: String| {
        if tty {
            eprint!("\r\x1b[2K{text}");
            let _ = std::io::stderr().flush();
        }
    };
    let cr = if tty { "\r" } else { "" };
    let name = exp.name.clone();
    let rule = crate::train::stall::BestRule::of(&exp);
    let handle = train::spawn(
        exp,
        Options {
            autostart: true,
            ..options
        },
    );
    // The loop keeps a sender of each side channel: they never read as closed.
    let (signal_tx, caught) = flume::unbounded();
    let keep_signals = signal_tx.clone();
    let signals = SignalGuard::new(handle.commands.clone(), move |signal| {
        let _ = signal_tx.send(signal);
    })?;
    let (file_tx, files) = flume::unbounded();
    let keep_files = file_tx.clone();
    // A closed pipe is noticed between batches, not at the next line written.
    let (gone_tx, gone) = flume::unbounded();
    let keep_gone = gone_tx.clone();
    let _reader_watch = crate::stdout::watch_reader(move || {
        let _ = gone_tx.send(());
    });
    let _watcher = match watch {
        Some(file) => Some(crate::watch::watch(file, file_tx)?),
        None => None,
    };
    let mut out = Output {
        json,
        reader_gone: false,
        commands: handle.commands.clone(),
    };
    let mut failure = None;
    let mut run_dir = None;
    let mut started = stream::Started {
        experiment: name,
        ..Default::default()
    };
    let mut checkpoints = stream::Checkpoints::default();
    loop {
        let incoming = flume::Selector::new()
            .recv(&handle.events, |e| {
                e.map_or(Incoming::TrainerGone, Incoming::Trainer)
            })
            .recv(&caught, |s| Incoming::Signal(s.expect("kept open")))
            .recv(&files, |f| Incoming::File(f.expect("kept open")))
            .recv(&gone, |_| Incoming::ReaderGone)
            .wait();
        let event = match incoming {
            Incoming::Trainer(event) => event,
            Incoming::TrainerGone => break,
            Incoming::ReaderGone => {
                out.reader_left();
                continue;
            }
            Incoming::Signal(signal) => {
                out.event(|| stream::control("stop", signal));
                continue;
            }
            Incoming::File(FileEvent::Changed(_, Ok(exp))) => {
                let _ = handle.commands.send(train::Command::Apply(exp));
                continue;
            }
            Incoming::File(FileEvent::Changed(_, Err(errors))) => {
                for e in &errors {
                    eprintln!("error   {e}");
                }
                eprintln!("config: the last good settings stay in force");
                out.event(|| stream::config_error(&errors));
                continue;
            }
            Incoming::File(FileEvent::Removed(path)) => {
                eprintln!("config: {} was deleted; the run goes on", path.display());
                continue;
            }
            Incoming::File(FileEvent::Problem(text)) => {
                eprintln!("{text}");
                continue;
            }
        };
        match event {
            Event::Loading { done, total } => progress(format!("decoding {done}/{total} images")),
            Event::Compute(c) => {
                progress(String::new());
                let text = crate::text::compute(&c);
                eprintln!("{cr}compute: {text}");
            }
            Event::Note(text) => {
                progress(String::new());
                eprintln!("{cr}{text}");
                out.event(|| stream::note(&text));
            }
            Event::LrLowered {
                from,
                to,
                epoch,
                batch,
                by,
            } => {
                progress(String::new());
                eprintln!(
                    "{cr}{}",
                    crate::text::lr_lowered(from, to, epoch, batch, &by)
                );
                out.event(|| stream::lr_lowered(from, to, epoch, batch, &by));
            }
            Event::DataReady {
                classes,
                train,
                val,
                skipped,
            } => {
                progress(String::new());
                eprintln!(
                    "{cr}data: {} classes ({}), {train} train, {val} validation, {skipped} skipped",
                    classes.len(),
                    classes.join(", ")
                );
                started.classes = classes;
                started.images = (train, val, skipped);
            }
            Event::ModelReady {
                device,
                weights,
                layers,
                precision,
            } => {
                eprintln!(
                    "model: {} layers, weights {weights}, device {device}, frozen part in {}",
                    layers.len(),
                    crate::text::precision(precision)
                );
                started.device = device;
                started.weights = weights;
                started.precision = precision;
            }
            Event::RunDir(dir) => {
                eprintln!("run folder: {}", dir.display());
                started.run_dir = dir.clone();
                out.event(|| stream::started(&started));
                run_dir = Some(dir);
            }
            Event::PhaseChanged {
                phase,
                epoch,
                trainable_layers,
                trainable_params,
                epochs,
                deepened,
                ..
            } => {
                total = epochs;
                progress(String::new());
                let what = match phase {
                    Phase::Frozen => "frozen backbone, training the head".to_string(),
                    Phase::Finetune => format!(
                        "fine-tuning {trainable_layers} backbone layers ({trainable_params} parameters)"
                    ),
                };
                match &deepened {
                    Some(d) => eprintln!(
                        "{cr}unfroze {} from epoch {epoch} ({} of {} block groups; {}): {what}",
                        d.group, d.groups, d.of, d.by
                    ),
                    None => eprintln!("{cr}phase {} from epoch {epoch}: {what}", phase.name()),
                }
                out.event(|| {
                    stream::phase(
                        phase,
                        epoch,
                        (trainable_layers, trainable_params),
                        deepened.as_ref(),
                    )
                });
            }
            Event::Batch {
                epoch,
                batch,
                of,
                loss,
                images_per_sec,
                ..
            } => progress(format!(
                "epoch {epoch} batch {batch}/{of} loss {loss:.4} {images_per_sec:.0} img/s"
            )),
            Event::Validating { epoch, done, total } => {
                progress(format!("epoch {epoch} validating {done}/{total}"))
            }
            Event::EpochEnd(m) => {
                progress(String::new());
                if tty {
                    eprint!("\r");
                }
                if json {
                    out.event(|| stream::epoch(&m));
                } else {
                    out.line(|| epoch_line(&m, total));
                }
            }
            Event::Stalled { epoch, suggestion } => {
                out.event(|| stream::stall(epoch, &suggestion));
            }
            Event::ConfigApplied {
                changes, epochs, ..
            } => {
                total = epochs;
                for c in &changes {
                    match c.kind {
                        ChangeKind::Live => eprintln!("config: {c} (from this epoch)"),
                        ChangeKind::Restart => {
                            eprintln!("config: {c} needs a restart: the run keeps the old value")
                        }
                    }
                }
                out.event(|| stream::config_applied(&changes));
            }
            Event::Checkpoint(path) => checkpoints.saw(path),
            Event::Finished {
                reason,
                best,
                stopped_by,
            } => {
                progress(String::new());
                let why = crate::text::end_reason(reason);
                match &best {
                    Some(b) => eprintln!(
                        "{cr}{why}; best epoch {} ({}) val_accuracy {:.4} val_loss {:.4}",
                        b.epoch,
                        b.phase.name(),
                        b.val_accuracy,
                        b.val_loss
                    ),
                    None => eprintln!("{why}; no epoch finished"),
                }
                let stopped_by = stopped_by
                    .or_else(|| signals.caught().map(|i| i.name.to_string()))
                    .or_else(|| out.reader_gone.then(|| "stdout closed".to_string()));
                out.event(|| {
                    stream::finished(
                        reason,
                        stopped_by.as_deref(),
                        best.as_ref(),
                        rule,
                        run_dir.as_deref(),
                        &checkpoints,
                    )
                });
            }
            Event::Error(e) => failure = Some(e),
            Event::Control { command, source } => {
                progress(String::new());
                eprintln!("{cr}control: {command} (from {source})");
                out.event(|| stream::control(&command, &source));
            }
            Event::EditQueued { epoch } => {
                progress(String::new());
                eprintln!("{cr}config: edit taken; live settings apply from epoch {epoch}");
            }
            Event::Paused => eprintln!("{cr}paused"),
            Event::Resumed => eprintln!("{cr}resumed"),
        }
    }
    drop((keep_signals, keep_files, keep_gone));
    handle.join();
    if let Some(e) = failure {
        bail!(e);
    }
    if let Some(interrupted) = signals.caught() {
        return Err(interrupted.into());
    }
    if out.reader_gone {
        return Err(crate::stdout::ReaderGone.into());
    }
    Ok(run_dir)
}

/// Stdout of a headless run: epoch lines or JSON events. When the reader goes away
/// the run is stopped (once) and nothing more is printed.
struct Output {
    json: bool,
    reader_gone: bool,
    commands: flume::Sender<train::Command>,
}

impl Output {
    /// The reader went away: stop the run (once) and print nothing more.
    fn reader_left(&mut self) {
        if self.reader_gone {
            return;
        }
        self.reader_gone = true;
        eprintln!("stdout closed: stopping at the next batch boundary");
        let _ = self.commands.send(train::Command::Stop {
            by: Some("stdout closed".into()),
        });
    }

    /// Prints a JSON event (only with `--json`).
    fn event(&mut self, make: impl FnOnce() -> serde_json::Value) {
        if self.json {
            self.line(|| make().to_string());
        }
    }

    /// Prints a line unless the reader is gone; a closed pipe stops the run.
    fn line(&mut self, make: impl FnOnce() -> String) {
        if self.reader_gone {
            return;
        }
        if let Err(e) = crate::stdout::line(make()) {
            if crate::stdout::reader_gone(&e) {
                self.reader_left();
            } else {
                eprintln!("{e:#}");
            }
        }
    }
}

/// The experiment settings of every valid file under `target`, for the headless
/// fallback (stdout not a terminal); an invalid file is an error, with its problems.
pub fn valid_experiments(target: &std::path::Path) -> anyhow::Result<Vec<Experiment>> {
    let mut out = Vec::new();
    for (path, loaded) in crate::config::load_all(target)? {
        match loaded {
            Ok(e) => out.push(*e),
            Err(errors) => {
                for e in errors {
                    eprintln!("error   {e}");
                }
                bail!("{} is invalid", path.display());
            }
        }
    }
    Ok(out)
}

/// `tlcap-tui resume`: continues a run folder headless.
pub fn resume(
    run_dir: &std::path::Path,
    json: bool,
    max_epochs: Option<u32>,
) -> anyhow::Result<()> {
    let exp = crate::train::run_dir::read_config(run_dir)?;
    let options = crate::train::Options {
        resume: Some(run_dir.to_path_buf()),
        max_epochs,
        ..Default::default()
    };
    crate::headless::run(exp, options, json, None).map(|_| ())
}

#[cfg(test)]
mod tests {
    /// A mixed epoch says which batches ran frozen, at which rate.
    #[test]
    fn a_mixed_epoch_line_says_what_ran_frozen() {
        let m: crate::train::EpochMetrics = serde_json::from_value(serde_json::json!({
            "epoch": 1, "phase": "finetune", "loss": 0.5, "accuracy": 0.5,
            "val_loss": 0.5, "val_accuracy": 0.5,
            "val_precision": null, "val_recall": null, "val_f1": null, "val_auc": null,
            "confusion": {"n": 2, "counts": [0, 0, 0, 0]}, "lr": 1e-5,
            "seconds": 1.0, "images_per_sec": 1.0, "val_images_per_sec": 1.0,
            "stalled": false,
            "mixed": {"finetune_from_batch": 12, "batches": 33, "frozen_lr": 0.001},
        }))
        .unwrap();
        let line = super::epoch_line(&m, 4);
        assert!(
            line.ends_with("mixed epoch: batches 1-11 of 33 ran frozen at lr 1e-3"),
            "{line}"
        );
    }
}
