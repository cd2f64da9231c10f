//! The run as seen from outside its process: lines of the control file turned into
//! commands (answered in `events.log` and the event stream), and the heartbeat in
//! `status.json`.

use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::Duration;

use super::control::{ControlCommand, ControlLine, ControlReader};
use super::controller::{State, Trainer};
use super::events::{Command, Event, Phase};
use super::status::{Heartbeat, RunState, Status};

/// What the next command is, from the UI's channel or the control file.
pub(super) enum Next {
    /// A command.
    Command(Command),
    /// None now.
    Empty,
    /// The UI's end is gone and there is no control file to listen to.
    Gone,
}

/// The parts of the trainer that face outside: the control reader and the heartbeat.
#[derive(Default)]
pub(super) struct Steering {
    reader: Option<ControlReader>,
    lines: Option<std::sync::mpsc::Receiver<ControlLine>>,
    heartbeat: Option<Heartbeat>,
    last: Option<Status>,
}

impl Trainer {
    /// Starts reading the run folder's control file and writing its heartbeat.
    pub(super) fn open_steering(&mut self) -> anyhow::Result<()> {
        let Some(run) = &self.run else {
            return Ok(());
        };
        let (reader, lines) = ControlReader::start(&run.path)?;
        self.steering = Steering {
            reader: Some(reader),
            lines: Some(lines),
            heartbeat: Some(Heartbeat::new(&run.path)),
            last: None,
        };
        Ok(())
    }

    /// The next command: a control-file line first (translated, and answered with a
    /// `Control` event or a note), then the UI's channel; with `wait`, blocks up to
    /// that long.
    pub(super) fn next_command(&mut self, wait: Option<Duration>) -> Next {
        loop {
            let line = self.steering.lines.as_ref().map(|r| r.try_recv());
            if let Some(Ok(line)) = line {
                match self.translate(line) {
                    Some(c) => return Next::Command(c),
                    None => continue,
                }
            }
            let polled = match wait {
                None => self.commands.try_recv().map_err(|e| match e {
                    TryRecvError::Empty => RecvTimeoutError::Timeout,
                    TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                }),
                // Short waits, so control lines and heartbeats are not held up.
                Some(d) => self
                    .commands
                    .recv_timeout(d.min(Duration::from_millis(200))),
            };
            return match polled {
                Ok(c) => Next::Command(c),
                Err(RecvTimeoutError::Timeout) => Next::Empty,
                // A headless process has no UI but its run is still steered through
                // the control file; a dashboard that quit stopped its runs first.
                Err(RecvTimeoutError::Disconnected) => Next::Gone,
            };
        }
    }

    /// A control-file line as a command; problems become notes, and nothing else.
    fn translate(&mut self, line: ControlLine) -> Option<Command> {
        let source = format!("{} line {}", super::control::FILE, line.line);
        let command = match line.command {
            Err(why) => {
                self.emit(Event::Note(format!("{source}: {why}; ignored")));
                return None;
            }
            Ok(c) => c,
        };
        let translated = match &command {
            ControlCommand::Pause => Ok(Command::Pause),
            ControlCommand::Resume => Ok(Command::Resume),
            ControlCommand::Unfreeze => Ok(Command::Unfreeze),
            ControlCommand::LowerLr => Ok(Command::LowerLr),
            ControlCommand::Stop => Ok(Command::StopBecause(super::control::FILE.into())),
            ControlCommand::Set(settings) => self.merged(settings).map(Command::ApplyConfig),
        };
        match translated {
            Ok(c) => {
                self.emit(Event::Control {
                    command: command.name().into(),
                    source,
                });
                Some(c)
            }
            Err(why) => {
                self.emit(Event::Note(format!(
                    "{source}: {}: {why}; ignored",
                    command.name()
                )));
                None
            }
        }
    }

    /// The settings in force (or waiting) with `settings` merged in, validated as an
    /// experiment file is.
    fn merged(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<crate::config::Experiment>, String> {
        let base = self.pending.as_ref().unwrap_or(&self.exp);
        let mut value = serde_json::to_value(base).map_err(|e| e.to_string())?;
        merge(&mut value, settings);
        let text = serde_yaml::to_string(&value).map_err(|e| e.to_string())?;
        let at = self
            .run
            .as_ref()
            .map(|r| r.path.join(super::control::FILE))
            .unwrap_or_default();
        crate::config::parse_str(&text, &at)
            .map(Box::new)
            .map_err(|e| e.to_string().replace('\n', "; "))
    }

    /// Writes the heartbeat if due (or `force`), with what the run is doing now.
    pub(super) fn beat(
        &mut self,
        s: &State,
        state: RunState,
        batch: (usize, usize),
        images_per_sec: f64,
        force: bool,
    ) {
        let due = self.steering.heartbeat.as_ref().is_some_and(|h| h.due());
        if !(force || due) {
            return;
        }
        let epochs = match s.phase {
            Phase::Frozen => self.exp.planned_epochs(None),
            Phase::Finetune => self
                .exp
                .planned_epochs(Some(s.epoch.saturating_sub(s.phase_epochs))),
        };
        let epoch = match state {
            RunState::Finished | RunState::Failed => s.epoch,
            _ => s.epoch + 1,
        };
        let status = Status {
            experiment: self.exp.name.clone(),
            pid: std::process::id(),
            host: super::status::host_name(),
            state,
            phase: s.phase,
            epoch,
            epochs: self.options.max_epochs.map_or(epochs, |m| m.min(epochs)),
            batch,
            images_per_sec,
            updated_at: String::new(),
        };
        self.steering.last = Some(status.clone());
        if let Some(h) = self.steering.heartbeat.as_mut() {
            h.write(status);
        }
    }

    /// The heartbeat of a run that failed: its last status, marked failed.
    pub(super) fn beat_failed(&mut self) {
        if let (Some(mut last), Some(h)) =
            (self.steering.last.take(), self.steering.heartbeat.as_mut())
        {
            last.state = RunState::Failed;
            h.write(last);
        }
        self.steering.reader.take();
    }
}

/// Merges `patch` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn merging_replaces_leaves_and_keeps_the_rest() {
        let mut base = serde_json::json!({"finetune": {"lr": 1e-5, "epochs": 4}, "seed": 1});
        super::merge(&mut base, &serde_json::json!({"finetune": {"lr": 5e-6}}));
        assert_eq!(
            base,
            serde_json::json!({"finetune": {"lr": 5e-6, "epochs": 4}, "seed": 1})
        );
    }
}
