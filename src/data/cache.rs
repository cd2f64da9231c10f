//! The on-disk decoded-image cache: every image decoded and resized once, kept as
//! uint8 `3 x H x W` records in cache files that later runs, resumes and other
//! experiments on the same data read instead of decoding again.
//!
//! One *store* per decoding (size, interpolation, intensity) under the cache root.
//! A store holds *parts*, each written once and never changed: `ID.pixels` (the
//! records, back to back) and `ID.index` (JSON: for each file its canonical path, byte
//! size, modification and status-change times, and its record or why its content could
//! not be decoded). A load looks every file up by (path, size, modification time,
//! status-change time); the misses (new or changed files) are decoded, alone, into a
//! new part. The status-change time (`ctime`) is what no copy can set: a file replaced
//! by another of the same size and modification time (`cp -p`, `rsync -t`) has a new
//! one, while reading a file never changes it. The index is written last, atomically,
//! after the pixels are on disk, so a part that was cut short (a crash, a full disk)
//! has no index and is never read; a part whose pixel file is shorter than its index
//! says (or whose index is not JSON) is deleted and its images decoded again; a part
//! of another format (another tlcap version) is left alone. Parts are never
//! rewritten, so runs sharing a store need no lock: two runs decoding the same new
//! files both write a part, and either one serves later loads.
//!
//! Records are read with positioned reads, not mapped: the pages stay in the
//! kernel's page cache (shared, evictable) and out of the process's resident memory,
//! so a dataset larger than memory trains with bounded memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::UNIX_EPOCH;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::decode::{decode_into, DecodeError, Decoding};
use super::Skipped;
use crate::config::{Intensity, Interpolation};

/// Version of the part format, and of what decoding makes of a file: bump it when
/// either changes (parts of another version are ignored, not deleted). 2: keys have
/// the status-change time.
const FORMAT: u32 = 2;
/// A pixel file without its index (a load that was killed) or a temp file is
/// deleted once it is this old: no load takes a day to write its part.
const LEFTOVER_SECONDS: u64 = 24 * 3600;
/// Images decoded (in parallel) and written per step while filling a part: bounds
/// the memory a cold load takes whatever the dataset's size.
const CHUNK: usize = 256;

/// The cache root: `$TLCAP_IMAGE_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/tlcap/images`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TLCAP_IMAGE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    crate::fsutil::cache_base().join("tlcap").join("images")
}

/// The store folder name for a decoding, e.g. `224x224-bilinear-full`.
pub fn store_name(decoding: &Decoding) -> String {
    let interp = match decoding.interpolation {
        Interpolation::Nearest => "nearest",
        Interpolation::Bilinear => "bilinear",
        Interpolation::Bicubic => "bicubic",
    };
    let intensity = match decoding.intensity {
        Intensity::Full => "full",
        Intensity::Stretch => "stretch",
    };
    format!(
        "{}x{}-{interp}-{intensity}",
        decoding.size.width, decoding.size.height
    )
}

/// Whether a folder name is one [`store_name`] makes (`224x224-bilinear-full`): only
/// such folders are listed and cleaned, whatever else the cache root holds.
pub fn is_store_name(name: &str) -> bool {
    let mut parts = name.splitn(3, '-');
    let (Some(size), Some(interp), Some(intensity)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let size_ok = size
        .split_once('x')
        .is_some_and(|(w, h)| w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok());
    size_ok
        && ["nearest", "bilinear", "bicubic"].contains(&interp)
        && ["full", "stretch"].contains(&intensity)
}

/// Why the cache could not be used (the caller decodes into memory instead, or says so).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use the image cache folder {0}: {1}")]
    Folder(PathBuf, std::io::Error),
    #[error(
        "the image cache needs {} more in {} but the disk has {} free (and keeps 64 MB \
         spare); free some space, point TLCAP_IMAGE_CACHE at a larger disk, or clean it \
         with `tlcap-tui cache clean`",
        crate::fsutil::human_bytes(*.needed),
        .dir.display(),
        crate::fsutil::human_bytes(*.free)
    )]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("cannot write the image cache part {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("cannot read the image cache part {0}: {1}")]
    Read(PathBuf, std::io::Error),
}

/// A file as the cache knows it: a changed size, modification time or status-change
/// time is a new file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct FileKey {
    path: PathBuf,
    stamp: Stamp,
}

/// What `stat` says of a file's content having changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    mtime_ns: u64,
    /// The inode's status-change time in ns: set by the kernel whenever the file is
    /// written, replaced or has its times set, and by nothing a user can ask for.
    ctime_ns: u64,
}

/// A file's stamp now; None when it cannot be stat'ed.
fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let ctime_ns = (meta.ctime().max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.ctime_nsec().max(0) as u64);
    Some(Stamp {
        len: meta.len(),
        mtime_ns,
        ctime_ns,
    })
}

/// The keys of `files` now (None for a file that cannot be stat'ed: decoding will say
/// why). Paths are made canonical by folder (one `realpath` per folder, not per file),
/// so `data/x` and `exp/../data/x` share their records.
fn keys_of(files: &[PathBuf]) -> Vec<Option<FileKey>> {
    let mut folders: HashMap<&Path, PathBuf> = HashMap::new();
    for f in files {
        let parent = f.parent().unwrap_or(Path::new("."));
        folders.entry(parent).or_insert_with(|| {
            std::fs::canonicalize(parent)
                .or_else(|_| std::path::absolute(parent))
                .unwrap_or_else(|_| parent.to_path_buf())
        });
    }
    files
        .par_iter()
        .map(|f| {
            let stamp = stamp(f)?;
            let folder = &folders[f.parent().unwrap_or(Path::new("."))];
            Some(FileKey {
                path: folder.join(f.file_name()?),
                stamp,
            })
        })
        .collect()
}

/// One file of a part's index.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: FileKey,
    /// Its record in the part's pixel file, or None when it could not be decoded.
    record: Option<u64>,
    /// The original (width, height), for decoded files.
    #[serde(default)]
    original: (u32, u32),
    /// Why it could not be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

/// A part's index file.
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    format: u32,
    /// Bytes per record (3 x height x width).
    record_bytes: u64,
    /// Records in the pixel file.
    records: u64,
    entries: Vec<Entry>,
}

/// Where one image's pixels are: a part and a byte offset in it.
#[derive(Debug, Clone, Copy)]
struct At {
    part: u32,
    offset: u64,
}

/// Decoded images read from a store's part files, image `i` at `at[i]`.
pub struct CachedPixels {
    parts: Vec<File>,
    at: Vec<At>,
    record_bytes: usize,
}

impl CachedPixels {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Reads image `i` into `out` (one record). Panics, with the part's words, if its
    /// file can no longer be read (it was cut short while the run was using it).
    pub fn read_into(&self, i: usize, out: &mut [u8]) {
        let at = self.at[i];
        self.parts[at.part as usize]
            .read_exact_at(&mut out[..self.record_bytes], at.offset)
            .unwrap_or_else(|e| panic!("the image cache can no longer be read (image {i}): {e}"));
    }

    /// Every image, in order, in one buffer (for datasets that fit in memory).
    pub fn read_all(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.record_bytes * self.at.len()];
        out.par_chunks_mut(self.record_bytes.max(1))
            .enumerate()
            .for_each(|(i, chunk)| self.read_into(i, chunk));
        out
    }
}

/// What a cached load found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheReport {
    /// The store folder.
    pub store: PathBuf,
    /// Files found in the cache (decoded earlier, or known to be unreadable).
    pub reused: usize,
    /// Files decoded now (new or changed), written to a new part.
    pub decoded: usize,
    /// Parts ignored and deleted because they were damaged (shorter than their index).
    pub damaged_parts: usize,
}

/// The result of a cached load: as [`super::Decoded`], with the pixels in cache files.
pub struct CachedLoad {
    pub pixels: CachedPixels,
    /// For each input file, its image index, or None when it was skipped.
    pub index: Vec<Option<usize>>,
    pub skipped: Vec<Skipped>,
    pub sizes_seen: Vec<((u32, u32), usize)>,
    pub report: CacheReport,
}

/// A part read back from disk: its pixel file's path and its index.
struct Part {
    pixels: PathBuf,
    index: Index,
}

/// Seconds since `path` was last modified (0 when unknown).
fn age_seconds(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or(0, |d| d.as_secs())
}

/// Reads the parts of a store. A part is deleted (its images are decoded again) when
/// its index is not JSON (cut short or garbled), or is of this format but its pixel
/// file is missing or shorter than the index says, or the index names a record the
/// file cannot hold. A part of another format, or one that cannot be read now (open
/// files, permissions), is skipped and left alone. Pixel and temp files left by a
/// load that was killed are deleted once a day old. Returns the good parts and the
/// number deleted.
fn read_parts(store: &Path, record_bytes: u64) -> (Vec<Part>, usize) {
    let paths: Vec<PathBuf> = match std::fs::read_dir(store) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return (Vec::new(), 0),
    };
    let ext = |p: &Path, x: &str| p.extension().is_some_and(|e| e == x);
    for p in &paths {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let temp = name
            .as_deref()
            .is_some_and(|n| n.starts_with(".tlcap-tmp-"));
        let orphan = ext(p, "pixels") && !p.with_extension("index").exists();
        if (temp || orphan) && age_seconds(p) >= LEFTOVER_SECONDS {
            let _ = std::fs::remove_file(p);
        }
    }
    let mut names: Vec<&PathBuf> = paths.iter().filter(|p| ext(p, "index")).collect();
    names.sort();
    let mut parts = Vec::new();
    let mut damaged = 0;
    for index_path in names {
        let pixels_path = index_path.with_extension("pixels");
        let Ok(bytes) = std::fs::read(index_path) else {
            continue;
        };
        let index = match serde_json::from_slice::<Index>(&bytes) {
            Ok(index) if index.format == FORMAT => index,
            Ok(_) => continue,
            Err(_) => {
                let json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                let other_format = json
                    .as_ref()
                    .and_then(|v| v.get("format"))
                    .is_some_and(|f| f.as_u64() != Some(FORMAT as u64));
                if !other_format {
                    damaged += 1;
                    let _ = std::fs::remove_file(index_path);
                    let _ = std::fs::remove_file(&pixels_path);
                }
                continue;
            }
        };
        let consistent = index.record_bytes == record_bytes
            && index
                .entries
                .iter()
                .all(|e| e.record.is_none_or(|r| r < index.records));
        let whole = match std::fs::metadata(&pixels_path) {
            Ok(m) => m.len() >= index.records * index.record_bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => continue,
        };
        if consistent && whole {
            parts.push(Part {
                pixels: pixels_path,
                index,
            });
        } else {
            damaged += 1;
            let _ = std::fs::remove_file(index_path);
            let _ = std::fs::remove_file(&pixels_path);
        }
    }
    (parts, damaged)
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// A name no other process or thread picks: time, process id and a counter.
fn part_id() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!(
        "{now:020}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Decodes `misses` (indices into `files`) into a new part of `store`, `CHUNK` images
/// at a time; returns the part's pixel file and index. Nothing is left behind on an
/// error: the pixel file is removed, and the index is only written once the pixels
/// are on disk.
fn write_part(
    store: &Path,
    files: &[PathBuf],
    keys: &[Option<FileKey>],
    misses: &[usize],
    decoding: &Decoding,
    record_bytes: usize,
    tick: &(dyn Fn() + Sync),
) -> Result<Part, CacheError> {
    let id = part_id();
    let pixels_path = store.join(format!("{id}.pixels"));
    let index_path = store.join(format!("{id}.index"));
    let result = (|| -> std::io::Result<Index> {
        let mut out = std::io::BufWriter::with_capacity(8 << 20, File::create(&pixels_path)?);
        let mut entries = Vec::with_capacity(misses.len());
        let mut records = 0u64;
        let mut buf = vec![0u8; record_bytes * CHUNK.min(misses.len())];
        for chunk in misses.chunks(CHUNK) {
            let results: Vec<_> = buf
                .par_chunks_mut(record_bytes.max(1))
                .zip(chunk.par_iter())
                .map(|(rec, &i)| {
                    let r = decode_into(&files[i], decoding, rec);
                    tick();
                    // A file changed while it was decoded is not remembered under
                    // the key it had before.
                    let unchanged = keys[i]
                        .as_ref()
                        .is_some_and(|k| stamp(&files[i]) == Some(k.stamp));
                    (r, unchanged)
                })
                .collect();
            for (j, (&i, (r, unchanged))) in chunk.iter().zip(results).enumerate() {
                // Not remembered: files that could not be stat'ed (no key), that
                // changed meanwhile, or that could not be read now (permissions, I/O:
                // not a property of the file's content).
                let Some(key) = keys[i].clone().filter(|_| unchanged) else {
                    continue;
                };
                if matches!(r, Err(DecodeError::Unreadable(_))) {
                    continue;
                }
                match r {
                    Ok(original) => {
                        out.write_all(&buf[j * record_bytes..(j + 1) * record_bytes])?;
                        entries.push(Entry {
                            key,
                            record: Some(records),
                            original,
                            skipped: None,
                        });
                        records += 1;
                    }
                    Err(why) => entries.push(Entry {
                        key,
                        record: None,
                        original: (0, 0),
                        skipped: Some(why.to_string()),
                    }),
                }
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let index = Index {
            format: FORMAT,
            record_bytes: record_bytes as u64,
            records,
            entries,
        };
        let json = serde_json::to_vec(&index).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&index_path, &json)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        Ok(index)
    })();
    match result {
        Ok(index) => Ok(Part {
            pixels: pixels_path,
            index,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&index_path);
            let _ = std::fs::remove_file(&pixels_path);
            Err(CacheError::Write(pixels_path, e))
        }
    }
}

/// Loads `files` through the store for `decoding` under `root`: reused records are
/// looked up, new or changed files decoded (on all cores) into a new part.
/// `progress(done, total)` counts found and decoded files. Files that cannot be used
/// are skipped with their reason, as [`super::decode_all`] does; broken content is
/// remembered, a file that could not be read now (permissions, I/O) is not.
pub fn load(
    root: &Path,
    files: &[PathBuf],
    decoding: &Decoding,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<CachedLoad, CacheError> {
    let store = root.join(store_name(decoding));
    std::fs::create_dir_all(&store).map_err(|e| CacheError::Folder(store.clone(), e))?;
    // Marked used before anything else, so `clean --unused-days` leaves a store being
    // filled alone.
    touch_last_used(&store);
    let record_bytes = 3 * (decoding.size.width * decoding.size.height) as usize;
    let (mut parts, damaged_parts) = read_parts(&store, record_bytes as u64);
    // The newest part wins when two know a file (two runs decoded it at once).
    let mut known: HashMap<&FileKey, (u32, &Entry)> = HashMap::new();
    for (p, part) in parts.iter().enumerate() {
        for e in &part.index.entries {
            known.insert(&e.key, (p as u32, e));
        }
    }
    let keys = keys_of(files);
    let found: Vec<Option<(u32, Entry)>> = keys
        .iter()
        .map(|k| {
            k.as_ref()
                .and_then(|k| known.get(k))
                .map(|&(p, e)| (p, e.clone()))
        })
        .collect();
    drop(known);
    let misses: Vec<usize> = (0..files.len()).filter(|&i| found[i].is_none()).collect();
    let total = files.len();
    let reused = total - misses.len();
    progress(reused, total);
    let mut new_entries: HashMap<usize, (u32, Entry)> = HashMap::new();
    if !misses.is_empty() {
        let needed = (misses.len() * record_bytes) as u64;
        if let Some(free) = free_bytes(&store) {
            // Leave the disk 64 MB (and a 1% margin) beyond what the part takes.
            if free < needed + needed / 100 + (64 << 20) {
                return Err(CacheError::NoSpace {
                    dir: store,
                    needed,
                    free,
                });
            }
        }
        let done = AtomicUsize::new(reused);
        let tick = || {
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n == total || n.is_multiple_of(64) {
                progress(n, total);
            }
        };
        let part = write_part(&store, files, &keys, &misses, decoding, record_bytes, &tick)?;
        let p = parts.len() as u32;
        let by_key: HashMap<&FileKey, &Entry> =
            part.index.entries.iter().map(|e| (&e.key, e)).collect();
        for &i in &misses {
            if let Some(e) = keys[i].as_ref().and_then(|k| by_key.get(k)) {
                new_entries.insert(i, (p, (*e).clone()));
            }
        }
        drop(by_key);
        parts.push(part);
    }

    let mut index = Vec::with_capacity(total);
    let mut at = Vec::new();
    let mut skipped = Vec::new();
    let mut sizes: std::collections::BTreeMap<(u32, u32), usize> = Default::default();
    for (i, f) in found.into_iter().enumerate() {
        let entry = f.or_else(|| new_entries.remove(&i));
        match entry {
            Some((
                p,
                Entry {
                    record: Some(r),
                    original,
                    ..
                },
            )) => {
                *sizes.entry(original).or_default() += 1;
                index.push(Some(at.len()));
                at.push(At {
                    part: p,
                    offset: r * record_bytes as u64,
                });
            }
            Some((_, e)) => {
                index.push(None);
                skipped.push(Skipped {
                    path: files[i].clone(),
                    reason: e.skipped.unwrap_or_else(|| "could not be decoded".into()),
                });
            }
            None => {
                // Not stat-able, so not remembered: decode it here to say why.
                let mut rec = vec![0u8; record_bytes];
                let reason = match decode_into(&files[i], decoding, &mut rec) {
                    Err(e) => e.to_string(),
                    Ok(_) => "changed while it was being read".into(),
                };
                index.push(None);
                skipped.push(Skipped {
                    path: files[i].clone(),
                    reason,
                });
            }
        }
    }
    // Only the parts this dataset uses stay open, renumbered in order.
    let mut opened: Vec<File> = Vec::new();
    let mut number: HashMap<u32, u32> = HashMap::new();
    for a in &mut at {
        let n = match number.get(&a.part) {
            Some(&n) => n,
            None => {
                let path = &parts[a.part as usize].pixels;
                let file = File::open(path).map_err(|e| CacheError::Read(path.clone(), e))?;
                opened.push(file);
                number.insert(a.part, opened.len() as u32 - 1);
                opened.len() as u32 - 1
            }
        };
        a.part = n;
    }
    Ok(CachedLoad {
        pixels: CachedPixels {
            parts: opened,
            at,
            record_bytes,
        },
        index,
        skipped,
        sizes_seen: sizes.into_iter().collect(),
        report: CacheReport {
            store,
            reused,
            decoded: misses.len(),
            damaged_parts,
        },
    })
}

/// Writes the time now into the store's `last-used` file (atomically).
fn touch_last_used(store: &Path) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let _ = crate::fsutil::write_atomic(&store.join("last-used"), now.as_bytes());
}

/// One store, as `tlcap-tui cache` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreInfo {
    pub name: String,
    pub dir: PathBuf,
    /// Good parts.
    pub parts: usize,
    /// Records (decoded images) over all parts.
    pub images: u64,
    /// Bytes of every file in the folder (leftovers of cut-short parts included).
    pub bytes: u64,
    /// Bytes of pixel files without an index (a load cut short, or one writing now).
    pub leftover: u64,
    /// When a load last used it (RFC 3339), if known.
    pub last_used: Option<String>,
    /// Days since then (from `last-used`, else the newest file in the store).
    pub unused_days: i64,
}

/// The stores under `root` (folders named as [`store_name`] names them; anything
/// else there is not the cache's), by name.
pub fn list(root: &Path) -> std::io::Result<Vec<StoreInfo>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let now = chrono::Utc::now();
    for e in rd.filter_map(Result::ok) {
        let dir = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !dir.is_dir() || !is_store_name(&name) {
            continue;
        }
        let last_used = std::fs::read_to_string(dir.join("last-used"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok());
        let mut info = StoreInfo {
            name,
            dir: dir.clone(),
            parts: 0,
            images: 0,
            bytes: 0,
            leftover: 0,
            unused_days: 0,
            last_used: last_used.clone(),
        };
        let mut newest = u64::MAX;
        for f in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
            let path = f.path();
            let len = f.metadata().map_or(0, |m| m.len());
            info.bytes += len;
            newest = newest.min(age_seconds(&path));
            if path.extension().is_some_and(|x| x == "index") {
                if let Some(ix) = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
                {
                    info.parts += 1;
                    info.images += ix.records;
                }
            } else if path.extension().is_some_and(|x| x == "pixels")
                && !path.with_extension("index").exists()
            {
                info.leftover += len;
            }
        }
        info.unused_days = match last_used
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            Some(t) => (now - t.with_timezone(&chrono::Utc)).num_days(),
            None if newest == u64::MAX => i64::MAX,
            None => (newest / 86_400) as i64,
        };
        out.push(info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes the stores under `root` (those not used for `unused_days` days, when
/// given): their parts, `last-used` and temp files, then the folder if that leaves it
/// empty (a file the cache did not make stays, with its folder). Returns the stores
/// deleted and the bytes freed.
pub fn clean(root: &Path, unused_days: Option<u64>) -> std::io::Result<(Vec<StoreInfo>, u64)> {
    let mut removed = Vec::new();
    let mut freed = 0;
    for store in list(root)? {
        if unused_days.is_some_and(|days| store.unused_days < days as i64) {
            continue;
        }
        let mut bytes = 0;
        for f in std::fs::read_dir(&store.dir)?.filter_map(Result::ok) {
            let path = f.path();
            let name = f.file_name().to_string_lossy().into_owned();
            let ours = name == "last-used"
                || name.starts_with(".tlcap-tmp-")
                || path
                    .extension()
                    .is_some_and(|x| x == "index" || x == "pixels");
            if ours && f.file_type().is_ok_and(|t| t.is_file()) {
                bytes += f.metadata().map_or(0, |m| m.len());
                std::fs::remove_file(&path)?;
            }
        }
        let _ = std::fs::remove_dir(&store.dir);
        freed += bytes;
        removed.push(StoreInfo { bytes, ..store });
    }
    Ok((removed, freed))
}

/// `tlcap-tui cache`: the stores with their images and sizes, and the total.
pub fn print_list() -> anyhow::Result<()> {
    let root = cache_root();
    let stores = list(&root)?;
    crate::stdout::line(format!("image cache {}", root.display()))?;
    if stores.is_empty() {
        return crate::stdout::line("empty: runs fill it as they decode their images");
    }
    crate::stdout::line(format!(
        "{:<28} {:>6} {:>9} {:>10}  last used",
        "store", "parts", "images", "size"
    ))?;
    for s in &stores {
        let leftover = match s.leftover {
            0 => String::new(),
            n => format!(
                " ({} in pixel files without an index: a load cut short, or writing now)",
                crate::fsutil::human_bytes(n)
            ),
        };
        crate::stdout::line(format!(
            "{:<28} {:>6} {:>9} {:>10}  {}{leftover}",
            s.name,
            s.parts,
            s.images,
            crate::fsutil::human_bytes(s.bytes),
            s.last_used.as_deref().unwrap_or("never")
        ))?;
    }
    let total: u64 = stores.iter().map(|s| s.bytes).sum();
    crate::stdout::line(format!(
        "{} store(s), {} in all; `tlcap-tui cache clean [--unused-days N]` deletes them",
        stores.len(),
        crate::fsutil::human_bytes(total)
    ))
}

/// `tlcap-tui cache clean`: deletes stores, says which and what it freed.
pub fn print_clean(unused_days: Option<u64>) -> anyhow::Result<()> {
    let root = cache_root();
    let (removed, freed) = clean(&root, unused_days)?;
    for s in &removed {
        crate::stdout::line(format!(
            "deleted {} ({})",
            s.dir.display(),
            crate::fsutil::human_bytes(s.bytes)
        ))?;
    }
    crate::stdout::line(format!(
        "{} store(s) deleted, {} freed",
        removed.len(),
        crate::fsutil::human_bytes(freed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImageSize;

    fn decoding() -> Decoding {
        Decoding {
            size: ImageSize {
                width: 8,
                height: 6,
            },
            interpolation: Interpolation::Bilinear,
            intensity: Intensity::Full,
        }
    }

    #[test]
    fn store_names_say_the_decoding() {
        assert_eq!(store_name(&decoding()), "8x6-bilinear-full");
        assert!(is_store_name(&store_name(&decoding())));
        for other in [
            "photos",
            "8x6-bilinear",
            "8x-bilinear-full",
            "8x6-lanczos-full",
            "8x6-nearest-full-x",
        ] {
            assert!(!is_store_name(other), "{other}");
        }
    }

    #[test]
    fn part_ids_are_unique_and_sort_by_time() {
        let a = part_id();
        let b = part_id();
        assert_ne!(a, b);
        assert!(a.len() > 20);
    }

    #[test]
    fn free_space_is_known_for_a_real_folder() {
        assert!(free_bytes(Path::new("/")).is_some_and(|b| b > 0));
        assert!(free_bytes(Path::new("/no/such/folder")).is_none());
    }
}
