//! Printing results to stdout, where a closed pipe (`tlcap-tui schema | head`) means
//! the reader has finished: not a panic, not a failure.

use std::fmt::Display;
use std::io::Write;

/// The reader of stdout went away. Commands end quietly with status 0 on it.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct ReaderGone;

/// Writes `text` and a newline to stdout and flushes; a closed pipe is [`ReaderGone`].
pub fn line(text: impl Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|_| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ReaderGone.into()),
        Err(e) => Err(anyhow::Error::from(e).context("cannot write to stdout")),
    }
}

/// Whether an error (or its cause) is [`ReaderGone`].
pub fn reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<ReaderGone>())
}
