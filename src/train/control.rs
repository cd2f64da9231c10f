//! The run folder's control channel, `control.jsonl`: anyone who can write to the run
//! folder (a script, the dashboard attached from another machine) appends one JSON
//! object per line, e.g. `{"command": "pause"}`; the trainer takes each new line at
//! its next batch boundary and answers in `events.log` and the event stream.
//!
//! Commands ([`Command`], the type the dashboard's keys send too): `pause`, `resume`,
//! `unfreeze`, `lower_lr`, `stop`, and `set` with `settings` (a part of an experiment
//! file, e.g. `{"command": "set", "settings": {"finetune": {"lr": 5e-6}}}`), merged
//! into the running settings and applied like a saved edit.
//! Malformed or unknown lines are reported and ignored. No line can name a file to
//! write: settings that name paths are restart-only and keep their running values.
//!
//! The file is watched with `notify` and polled as well (a shared file system such as
//! NFS sends no events for other machines' writes).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde_json::Value;

use super::events::Command;

/// The control file's name in a run folder.
pub const FILE: &str = "control.jsonl";
/// How often the file is read even without a file-system event.
pub const POLL: Duration = Duration::from_millis(500);
/// Longest line taken; longer ones are reported and skipped.
pub const MAX_LINE: usize = 64 * 1024;

/// A line of the control file, read: its number and its command, or why it was not
/// taken.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// The command, or the problem.
    pub command: Result<Command, LineError>,
}

/// Why a control line was not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// No `"command"` string.
    #[error("no \"command\" string")]
    NoCommand,
    /// A field other than `command` and `settings`.
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// `set` without an object of settings.
    #[error("`set` needs \"settings\": an object")]
    SetNeedsSettings,
    /// Settings given to a command that takes none.
    #[error("`{0}` takes no settings")]
    TakesNoSettings(String),
    /// A command a control line cannot give.
    #[error("unknown command `{0}` (pause, resume, unfreeze, lower_lr, stop, set)")]
    UnknownCommand(String),
    /// Longer than [`MAX_LINE`].
    #[error("longer than {MAX_LINE} bytes")]
    TooLong,
    /// More bad lines in a row than are said one by one ([`BAD_LINES_SAID`]).
    #[error("and {count} more bad lines up to line {last}, not taken")]
    More {
        /// How many.
        count: usize,
        /// The last of them.
        last: usize,
    },
}

/// Bad lines in a row said one by one; the rest of the row is said as a count (one
/// per read of the file), so a file of junk cannot flood the run's log.
pub const BAD_LINES_SAID: usize = 3;
/// The most read at once: a huge file is taken in pieces of this size.
const CHUNK: u64 = 1 << 20;

/// Reads one line of the control file.
pub fn parse_line(text: &str) -> Result<Command, LineError> {
    let v: Value = serde_json::from_str(text).map_err(|e| LineError::NotJson(e.to_string()))?;
    let Some(obj) = v.as_object() else {
        return Err(LineError::NotAnObject);
    };
    let command = obj
        .get("command")
        .and_then(Value::as_str)
        .ok_or(LineError::NoCommand)?;
    let known = ["command", "settings"];
    if let Some(extra) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(LineError::UnknownField(extra.clone()));
    }
    match (command, obj.get("settings")) {
        ("set", s) if !s.is_some_and(Value::is_object) => return Err(LineError::SetNeedsSettings),
        ("set", _) => {}
        (_, Some(_)) if FILE_COMMANDS.contains(&command) => {
            return Err(LineError::TakesNoSettings(command.into()))
        }
        _ => {}
    }
    if !FILE_COMMANDS.contains(&command) {
        return Err(LineError::UnknownCommand(command.into()));
    }
    // Every check above passed: the tag and fields are the type's own.
    serde_json::from_value(v).map_err(|e| LineError::NotJson(e.to_string()))
}

/// The commands a control line may give.
pub const FILE_COMMANDS: [&str; 6] = ["pause", "resume", "unfreeze", "lower_lr", "stop", "set"];

/// The line to append to a control file for `command`; None for a command a control
/// line cannot give (see [`Command::for_control_file`]).
pub fn to_line(command: &Command) -> Option<String> {
    serde_json::to_string(command).ok()
}

/// Appends a command to a run folder's control file (what `attach` and scripts do).
pub fn append(run_dir: &Path, command: &Command) -> std::io::Result<()> {
    use std::io::Write;
    let line = to_line(command).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{}` is not a control-file command", command.name()),
        )
    })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(FILE))?;
    // One write per line, so concurrent writers do not interleave within a line.
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

/// Reads new complete lines as they are appended; dropping it stops the reader.
pub struct ControlReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlReader {
    /// Creates `control.jsonl` in `run_dir` if it is not there and starts reading it
    /// from its current end (lines written before this run are history).
    pub fn start(run_dir: &Path) -> anyhow::Result<(ControlReader, flume::Receiver<ControlLine>)> {
        let path = run_dir.join(FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let start = file.metadata()?.len();
        let lines_before = std::fs::read(&path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        let (tx, rx) = flume::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tlcap control".into())
            .spawn(move || read_loop(path, start, lines_before, tx, flag))?;
        Ok((
            ControlReader {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }
}

impl Drop for ControlReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(
    path: PathBuf,
    mut offset: u64,
    mut line_no: usize,
    out: flume::Sender<ControlLine>,
    stop: Arc<AtomicBool>,
) {
    // File-system events wake the loop at once; without them it polls.
    let (wake_tx, wake) = flume::unbounded();
    let name = path.file_name().map(|n| n.to_os_string());
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only writes to the control file: reading it (which this loop does) makes
        // access events, which must not wake the loop again.
        let wanted = event.is_ok_and(|e| {
            !matches!(e.kind, notify::EventKind::Access(_))
                && e.paths.iter().any(|p| p.file_name() == name.as_deref())
        });
        if wanted {
            let _ = wake_tx.send(());
        }
    })
    .and_then(|mut w| {
        let dir = path.parent().unwrap_or(Path::new("."));
        w.watch(dir, RecursiveMode::NonRecursive).map(|_| w)
    });
    let _watcher = watcher.ok();
    let mut partial: Vec<u8> = Vec::new();
    // Bad lines in a row so far (a good line ends the row).
    let mut bad_in_a_row = 0;
    while !stop.load(Ordering::SeqCst) {
        match wake.recv_timeout(POLL) {
            Ok(()) | Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
        }
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Truncated or replaced: start over from its beginning.
            offset = 0;
            line_no = 0;
            partial.clear();
        }
        if f.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        while offset < len {
            let mut bytes = Vec::new();
            match (&mut f)
                .take((len - offset).min(CHUNK))
                .read_to_end(&mut bytes)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            offset += bytes.len() as u64;
            partial.extend_from_slice(&bytes);
            let mut start = 0;
            // Bad lines past the ones said: (first line, count, last line).
            let mut more: Option<(usize, usize, usize)> = None;
            while let Some(rel) = partial[start..].iter().position(|&b| b == b'\n') {
                let raw = &partial[start..start + rel];
                start += rel + 1;
                line_no += 1;
                let text = String::from_utf8_lossy(raw);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let command = if raw.len() > MAX_LINE {
                    Err(LineError::TooLong)
                } else {
                    parse_line(text)
                };
                if command.is_err() {
                    bad_in_a_row += 1;
                    if bad_in_a_row > BAD_LINES_SAID {
                        let m = more.get_or_insert((line_no, 0, line_no));
                        m.1 += 1;
                        m.2 = line_no;
                        continue;
                    }
                } else {
                    bad_in_a_row = 0;
                    if !flush_more(&out, &mut more) {
                        return;
                    }
                }
                if out
                    .send(ControlLine {
                        line: line_no,
                        command,
                    })
                    .is_err()
                {
                    return;
                }
            }
            partial.drain(..start);
            if !flush_more(&out, &mut more) {
                return;
            }
            if partial.len() > MAX_LINE {
                // A line that never ends: drop what came so far.
                partial.clear();
            }
        }
    }
}

/// Sends the count of bad lines not said one by one, if any; false once the
/// receiver is gone.
fn flush_more(out: &flume::Sender<ControlLine>, more: &mut Option<(usize, usize, usize)>) -> bool {
    match more.take() {
        Some((line, count, last)) => out
            .send(ControlLine {
                line,
                command: Err(LineError::More { count, last }),
            })
            .is_ok(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_commands_or_say_why_not() {
        assert_eq!(parse_line(r#"{"command":"pause"}"#), Ok(Command::Pause));
        assert_eq!(parse_line(r#"{"command":"stop"}"#), Ok(Command::STOP));
        let set = parse_line(r#"{"command":"set","settings":{"finetune":{"lr":5e-6}}}"#);
        assert!(matches!(set, Ok(Command::Set { .. })));
        for (bad, why) in [
            ("pause", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"cmd":"pause"}"#, "no \"command\""),
            (r#"{"command":"jump"}"#, "unknown command `jump`"),
            (r#"{"command":"set"}"#, "needs \"settings\""),
            (r#"{"command":"stop","settings":{}}"#, "takes no settings"),
            (
                r#"{"command":"stop","path":"/etc"}"#,
                "unknown field `path`",
            ),
        ] {
            let err = parse_line(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        for c in [
            Command::Unfreeze,
            Command::LowerLr,
            Command::Set {
                settings: serde_json::json!({"seed": 1}),
            },
        ] {
            assert_eq!(parse_line(&to_line(&c).unwrap()), Ok(c));
        }
    }

    /// One vocabulary: the keys' commands are the lines' commands. A stop says who
    /// asked only inside the process; `start` and full settings are no lines (the
    /// dashboard sends them as `resume` and `set`).
    #[test]
    fn commands_are_the_lines_of_the_file() {
        let signal = Command::Stop {
            by: Some("SIGTERM".into()),
        };
        assert_eq!(to_line(&signal).unwrap(), r#"{"command":"stop"}"#);
        assert_eq!(
            to_line(&Command::LowerLr).unwrap(),
            r#"{"command":"lower_lr"}"#
        );
        assert_eq!(to_line(&Command::Start), None);
        let exp = crate::config::parse_str(
            "name: x\ndata: {dir: d}\nmodel: {backbone: mobilenet_v2, weights: none}\n",
            std::path::Path::new("x.yaml"),
        )
        .unwrap();
        let apply = Command::Apply(Box::new(exp));
        assert_eq!(to_line(&apply), None);
        let set = apply.for_control_file().unwrap();
        assert!(matches!(&set, Command::Set { settings } if settings["name"] == "x"));
        assert_eq!(parse_line(&to_line(&set).unwrap()), Ok(set));
        assert_eq!(Command::Start.for_control_file(), Some(Command::Resume));
        assert_eq!(signal.for_control_file(), Some(Command::STOP));
        assert!(append(std::path::Path::new("/nonexistent"), &Command::Start).is_err());
    }

    /// Lines appended after the start arrive, in order, with their numbers; earlier
    /// ones and a torn last line do not.
    #[test]
    fn the_reader_takes_new_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{\"command\":\"stop\"}\n").unwrap();
        let (reader, rx) = ControlReader::start(dir.path()).unwrap();
        append(dir.path(), &Command::Pause).unwrap();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join(FILE))
                .unwrap();
            f.write_all(b"nonsense\n{\"command\":\"res").unwrap();
        }
        let first = rx.recv_timeout(Duration::from_secs(3)).unwrap();
        assert_eq!(first.line, 2);
        assert_eq!(first.command, Ok(Command::Pause));
        let second = rx.recv_timeout(Duration::from_secs(3)).unwrap();
        assert_eq!(second.line, 3);
        assert!(second.command.is_err());
        assert!(rx.recv_timeout(Duration::from_millis(700)).is_err());
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join(FILE))
                .unwrap();
            f.write_all(b"ume\"}\n").unwrap();
        }
        let third = rx.recv_timeout(Duration::from_secs(3)).unwrap();
        assert_eq!((third.line, third.command), (4, Ok(Command::Resume)));
        drop(reader);
    }

    /// 10^5 junk lines (2.5 MB) then a command: three said, the rest as counts, the
    /// command taken (the time it took is printed; the issue's target is 1 s).
    #[test]
    fn a_flood_of_junk_is_said_once_and_the_next_command_still_acts() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, rx) = ControlReader::start(dir.path()).unwrap();
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("junk line {i} {{not json\n"));
        }
        text.push_str("{\"command\":\"pause\"}\n");
        let written = std::time::Instant::now();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join(FILE))
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }
        let mut got = Vec::new();
        while got.last().map(|l: &ControlLine| &l.command) != Some(&Ok(Command::Pause)) {
            got.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        let took = written.elapsed();
        // Three said, then counts only (one per read of the file), then the command.
        let (said, rest) = got.split_at(BAD_LINES_SAID);
        assert!(said
            .iter()
            .all(|l| matches!(l.command, Err(LineError::NotJson(_)))));
        let (command, counts) = rest.split_last().unwrap();
        assert_eq!(
            (command.line, &command.command),
            (100_001, &Ok(Command::Pause))
        );
        let mut counted = 0;
        for c in counts {
            let Err(LineError::More { count, last }) = c.command else {
                panic!("{c:?}")
            };
            assert_eq!(c.line, BAD_LINES_SAID + counted + 1);
            counted += count;
            assert_eq!(last, BAD_LINES_SAID + counted);
        }
        assert_eq!(counted, 100_000 - BAD_LINES_SAID);
        assert!(counts.len() <= 4, "{counts:?}");
        eprintln!("10^5 junk lines then a command: taken in {took:?}");
        drop(reader);
    }
}
