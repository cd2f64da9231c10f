//! Crash-safe file writes (what is on disk is either the old file or the new one),
//! the user's cache folder, and byte counts for people.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename
/// over `path`, then fsync of the folder so the rename itself survives a crash.
///
/// The file gets the mode a plain `std::fs::write` would give it: a new file
/// `0o666 & !umask` (a temp file alone would be `0o600`, unreadable to a teammate on
/// shared storage), an existing one keeps its own.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tlcap-tmp-");
    // Created with mode 0o666, which open(2) narrows by the umask exactly as it does
    // for `File::create`; no umask to read (and no race with other threads).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    // Overwriting: the mode the file has now, as an overwrite in place would keep it.
    if let Some(meta) = std::fs::metadata(path).ok().filter(|m| m.is_file()) {
        tmp.as_file()
            .set_permissions(meta.permissions())
            .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    }
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot rename into {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `parent/name` (and `parent`), or `parent/name-2`, `-3`... if taken; returns
/// the folder made. Two callers never get the same folder.
pub fn create_unique_dir(parent: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let mut dir = parent.join(name);
    let mut n = 2;
    loop {
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                dir = parent.join(format!("{name}-{n}"));
                n += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
}

/// The user's cache folder: `${XDG_CACHE_HOME:-~/.cache}`.
pub fn cache_base() -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
}

/// Bytes for people: `640 kB`, `82 MB`, `3.1 GB`.
pub fn human_bytes(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb < 1.0 {
        format!("{:.0} kB", bytes as f64 / 1e3)
    } else if mb >= 1000.0 {
        format!("{:.1} GB", mb / 1000.0)
    } else {
        format!("{mb:.0} MB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The process's umask, from `/proc/self/status` (Linux), without changing it.
    #[cfg(unix)]
    fn umask() -> Option<u32> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(value.trim(), 8).ok()
    }

    #[cfg(unix)]
    #[test]
    fn atomic_writes_get_the_mode_a_plain_write_would() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = tempfile::tempdir().unwrap();
        // A new file: as `std::fs::write` makes one (0o644 under umask 022), not 0o600.
        let atomic = dir.path().join("card.json");
        let plain = dir.path().join("plain.json");
        write_atomic(&atomic, b"{}").unwrap();
        std::fs::write(&plain, b"{}").unwrap();
        assert_eq!(mode(&atomic), mode(&plain), "{:o}", mode(&atomic));
        if let Some(umask) = umask() {
            assert_eq!(mode(&atomic), 0o666 & !umask, "umask {umask:o}");
        }
        // An existing file keeps its mode, narrower or wider than the umask's.
        for kept in [0o640, 0o664, 0o600] {
            std::fs::set_permissions(&atomic, std::fs::Permissions::from_mode(kept)).unwrap();
            write_atomic(&atomic, b"{\"a\": 1}").unwrap();
            assert_eq!(mode(&atomic), kept, "{:o}", mode(&atomic));
            assert_eq!(std::fs::read(&atomic).unwrap(), b"{\"a\": 1}");
        }
    }

    #[test]
    fn unique_dirs_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let a = create_unique_dir(&dir.path().join("x"), "run").unwrap();
        let b = create_unique_dir(&dir.path().join("x"), "run").unwrap();
        assert_ne!(a, b);
        assert!(b.ends_with("run-2"));
    }
}
