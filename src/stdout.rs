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

/// Watches stdout for its reader going away when stdout is a pipe or a socket: polls
/// the descriptor for hang-up or error (which a pipe reports as soon as its reader
/// closes it, before anything is written) and calls `gone` once. Dropping the watch
/// stops it. None when stdout is a terminal or a file (no reader to lose).
pub fn watch_reader(gone: impl FnOnce() + Send + 'static) -> Option<ReaderWatch> {
    let fd = libc::STDOUT_FILENO;
    // SAFETY: fstat writes into the zeroed struct it is given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return None;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("tlcap stdout".into())
        .spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let mut pfd = libc::pollfd {
                    fd,
                    events: 0,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for 200 ms.
                let n = unsafe { libc::poll(&mut pfd, 1, 200) };
                if n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    gone();
                    return;
                }
            }
        })
        .ok()?;
    Some(ReaderWatch {
        stop,
        thread: Some(thread),
    })
}

/// A running [`watch_reader`]; dropping it stops and joins the thread.
pub struct ReaderWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ReaderWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
