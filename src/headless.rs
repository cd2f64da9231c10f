//! Headless mode (`tlcap-tui run`, `tlcap-tui resume`): drives the same trainer as the
//! dashboard and prints one line per epoch to stdout (plain or JSON), with a progress
//! line on stderr when stderr is a terminal.

use std::io::{IsTerminal, Write};

use anyhow::bail;

use crate::config::{ChangeKind, Experiment};
use crate::train::{self, EndReason, EpochMetrics, Event, Options, Phase, Phases};
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
    })
}

/// One epoch as a human-readable line.
pub fn epoch_line(m: &EpochMetrics, total: u32) -> String {
    let mut line = format!(
        "epoch {:>3}/{total} {:<8} loss {:.4} acc {:.4} val_loss {:.4} val_acc {:.4}",
        m.epoch,
        m.phase.name(),
        m.loss,
        m.accuracy,
        m.val_loss,
        m.val_accuracy
    );
    if let Some(auc) = m.val_auc {
        line.push_str(&format!(" val_auc {auc:.4}"));
    }
    line.push_str(&format!(
        " lr {:.0e} {:.1}s {:.0} img/s",
        m.lr, m.seconds, m.images_per_sec
    ));
    if let Some(s) = m.suggestion.as_ref().filter(|_| m.stalled) {
        line.push_str(&format!("\n  stalled: {}", crate::text::suggestion(s)));
    }
    line
}

/// Runs `exp` to the end, printing epochs; an error if the trainer failed. With
/// `watch`, edits of that file are applied while the run goes on (live settings from
/// the next epoch; a broken save is reported and the last good settings stay).
pub fn run(
    exp: Experiment,
    options: Options,
    json: bool,
    watch: Option<&std::path::Path>,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let total = match options.phases {
        Phases::Both => exp.planned_epochs(None),
        Phases::Frozen => exp.frozen.epochs,
        Phases::Finetune => exp.planned_epochs(Some(0)),
    };
    let total = options.max_epochs.map_or(total, |m| m.min(total));
    let tty = std::io::stderr().is_terminal();
    let progress = |text: String| {
        if tty {
            eprint!("\r\x1b[2K{text}");
            let _ = std::io::stderr().flush();
        }
    };
    let handle = train::spawn(
        exp,
        Options {
            autostart: true,
            ..options
        },
    );
    let _watcher = match watch {
        Some(file) => Some(forward_edits(file, handle.commands.clone())?),
        None => None,
    };
    let mut stdout = std::io::stdout().lock();
    let mut failure = None;
    let mut run_dir = None;
    for event in handle.events.iter() {
        match event {
            Event::Loading { done, total } => progress(format!("decoding {done}/{total} images")),
            Event::Compute(c) => {
                progress(String::new());
                let text = crate::text::compute(&c);
                eprintln!("{}compute: {text}", if tty { "\r" } else { "" });
            }
            Event::Note(text) => {
                progress(String::new());
                eprintln!("{}{text}", if tty { "\r" } else { "" });
            }
            Event::DataReady {
                classes,
                train,
                val,
                skipped,
            } => {
                progress(String::new());
                eprintln!(
                    "{}data: {} classes ({}), {train} train, {val} validation, {skipped} skipped",
                    if tty { "\r" } else { "" },
                    classes.len(),
                    classes.join(", ")
                );
            }
            Event::ModelReady {
                device,
                weights,
                layers,
            } => {
                eprintln!(
                    "model: {} layers, weights {weights}, device {device}",
                    layers.len()
                )
            }
            Event::RunDir(dir) => {
                eprintln!("run folder: {}", dir.display());
                run_dir = Some(dir);
            }
            Event::PhaseChanged {
                phase,
                epoch,
                trainable_layers,
                trainable_params,
                ..
            } => {
                progress(String::new());
                let what = match phase {
                    Phase::Frozen => "frozen backbone, training the head".to_string(),
                    Phase::Finetune => format!(
                        "fine-tuning {trainable_layers} backbone layers ({trainable_params} parameters)"
                    ),
                };
                eprintln!(
                    "{}phase {} from epoch {epoch}: {what}",
                    if tty { "\r" } else { "" },
                    phase.name()
                );
            }
            Event::Batch {
                epoch,
                batch,
                of,
                loss,
                images_per_sec,
            } => progress(format!(
                "epoch {epoch} batch {batch}/{of} loss {loss:.4} {images_per_sec:.0} img/s"
            )),
            Event::EpochEnd(m) => {
                progress(String::new());
                if tty {
                    eprint!("\r");
                }
                if json {
                    writeln!(stdout, "{}", epoch_json(&m))?;
                } else {
                    writeln!(stdout, "{}", epoch_line(&m, total))?;
                }
                stdout.flush()?;
            }
            Event::ConfigApplied(changes) => {
                for c in changes {
                    match c.kind {
                        ChangeKind::Live => eprintln!("config: {c} (from this epoch)"),
                        ChangeKind::Restart => {
                            eprintln!("config: {c} needs a restart: the run keeps the old value")
                        }
                    }
                }
            }
            Event::Finished { reason, best } => {
                progress(String::new());
                let why = match reason {
                    EndReason::Completed => "completed",
                    EndReason::Stopped => "stopped",
                    EndReason::Stalled => "stopped on stall",
                };
                match best {
                    Some(b) => eprintln!(
                        "{}{why}; best epoch {} ({}) val_accuracy {:.4} val_loss {:.4}",
                        if tty { "\r" } else { "" },
                        b.epoch,
                        b.phase.name(),
                        b.val_accuracy,
                        b.val_loss
                    ),
                    None => eprintln!("{why}; no epoch finished"),
                }
            }
            Event::Error(e) => failure = Some(e),
            Event::Stalled { .. } | Event::Paused | Event::Resumed | Event::Checkpoint(_) => {}
        }
    }
    handle.join();
    if let Some(e) = failure {
        bail!(e);
    }
    Ok(run_dir)
}

/// Watches `file` and sends each valid save to the trainer; reports broken saves
/// (with their positions) and deletions on stderr. Dropping the watcher ends it.
fn forward_edits(
    file: &std::path::Path,
    commands: std::sync::mpsc::Sender<train::Command>,
) -> anyhow::Result<crate::watch::Watcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = crate::watch::watch(file, tx)?;
    std::thread::spawn(move || {
        while let Some(event) = rx.blocking_recv() {
            match event {
                FileEvent::Changed(_, Ok(exp)) => {
                    // The trainer is gone: nothing left to apply edits to.
                    let sent = commands.send(train::Command::ApplyConfig(exp));
                    if sent.is_err() {
                        return;
                    }
                }
                FileEvent::Changed(_, Err(errors)) => {
                    for e in errors {
                        eprintln!("error   {e}");
                    }
                    eprintln!("config: the last good settings stay in force");
                }
                FileEvent::Removed(path) => {
                    eprintln!("config: {} was deleted; the run goes on", path.display())
                }
                FileEvent::Problem(text) => eprintln!("{text}"),
            }
        }
    });
    Ok(watcher)
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
