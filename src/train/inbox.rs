//! The trainer's one inbox: commands from whoever holds the trainer's handle (the
//! dashboard's keys and edits, a headless run's signals and edits) and lines of the run
//! folder's control file arrive here as one [`Request`] type, which the trainer
//! handles in one place.

use std::time::Duration;

use super::control::{ControlLine, ControlReader};
use super::events::Command;

/// Where a request came from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Source {
    /// The trainer's handle (the dashboard, or the headless runner).
    Handle,
    /// A line of the control file (1-based).
    ControlFile(usize),
}

impl Source {
    /// How the source is named in events and notes (`control.jsonl line 3`).
    pub(super) fn name(&self) -> String {
        match self {
            Source::Handle => "the dashboard".into(),
            Source::ControlFile(line) => format!("{} line {line}", super::control::FILE),
        }
    }
}

/// One thing that arrived for the trainer.
#[derive(Debug)]
pub(super) struct Request {
    /// The command, or why a control line could not be read as one.
    pub(super) command: Result<Command, super::control::LineError>,
    /// Where it came from.
    pub(super) source: Source,
}

/// What the inbox had.
pub(super) enum Next {
    /// A request.
    Request(Request),
    /// Nothing now.
    Empty,
    /// The handle is gone (the dashboard quit, the headless runner ended): nobody to
    /// train for.
    Gone,
}

/// The handle's channel and, once the run folder is open, its control file.
pub(super) struct Inbox {
    handle: flume::Receiver<Command>,
    control: Option<(ControlReader, flume::Receiver<ControlLine>)>,
}

impl Inbox {
    /// An inbox reading the handle's channel.
    pub(super) fn new(handle: flume::Receiver<Command>) -> Inbox {
        Inbox {
            handle,
            control: None,
        }
    }

    /// Starts reading the control file of the run folder `run_dir` too.
    pub(super) fn listen_to_control_file(
        &mut self,
        run_dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        self.control = Some(ControlReader::start(run_dir)?);
        Ok(())
    }

    /// Stops reading the control file.
    pub(super) fn close_control_file(&mut self) {
        self.control = None;
    }

    /// The next request: a control line first, then the handle's channel; with
    /// `wait`, blocks up to that long for either.
    pub(super) fn next(&mut self, wait: Option<Duration>) -> Next {
        if let Some(line) = self.control.as_ref().and_then(|(_, l)| l.try_recv().ok()) {
            return Next::Request(from_line(line));
        }
        match self.handle.try_recv() {
            Ok(command) => return Next::Request(from_handle(command)),
            Err(flume::TryRecvError::Disconnected) => return Next::Gone,
            Err(flume::TryRecvError::Empty) => {}
        }
        let Some(wait) = wait else {
            return Next::Empty;
        };
        let selector = flume::Selector::new().recv(&self.handle, |r| match r {
            Ok(command) => Next::Request(from_handle(command)),
            Err(_) => Next::Gone,
        });
        let selector = match &self.control {
            Some((_, lines)) => selector.recv(lines, |r| match r {
                Ok(line) => Next::Request(from_line(line)),
                // The reader ended (it only does when dropped): nothing to hear.
                Err(_) => Next::Empty,
            }),
            None => selector,
        };
        selector.wait_timeout(wait).unwrap_or(Next::Empty)
    }
}

fn from_handle(command: Command) -> Request {
    Request {
        command: Ok(command),
        source: Source::Handle,
    }
}

fn from_line(line: ControlLine) -> Request {
    Request {
        command: line.command,
        source: Source::ControlFile(line.line),
    }
}

/// Merges `patch` into `base`: objects key by key, anything else replaced (a `set`
/// line's settings into the running ones).
pub(super) fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
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
    use super::*;

    #[test]
    fn merging_replaces_leaves_and_keeps_the_rest() {
        let mut base = serde_json::json!({"finetune": {"lr": 1e-5, "epochs": 4}, "seed": 1});
        merge(&mut base, &serde_json::json!({"finetune": {"lr": 5e-6}}));
        assert_eq!(
            base,
            serde_json::json!({"finetune": {"lr": 5e-6, "epochs": 4}, "seed": 1})
        );
    }

    /// Control lines and the handle's commands arrive through one inbox, a line first;
    /// a dropped handle reads as gone.
    #[test]
    fn lines_and_commands_arrive_as_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = flume::unbounded();
        let mut inbox = Inbox::new(rx);
        inbox.listen_to_control_file(dir.path()).unwrap();
        assert!(matches!(inbox.next(None), Next::Empty));
        tx.send(Command::Pause).unwrap();
        super::super::control::append(dir.path(), &Command::Unfreeze).unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            match inbox.next(Some(Duration::from_secs(3))) {
                Next::Request(r) => got.push((r.command, r.source)),
                _ => panic!("only {got:?} arrived"),
            }
        }
        assert!(
            got.contains(&(Ok(Command::Pause), Source::Handle)),
            "{got:?}"
        );
        assert!(
            got.contains(&(Ok(Command::Unfreeze), Source::ControlFile(1))),
            "{got:?}"
        );
        drop(tx);
        assert!(matches!(
            inbox.next(Some(Duration::from_millis(50))),
            Next::Gone
        ));
    }
}
