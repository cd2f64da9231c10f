//! The on-disk decoded-image cache: every image decoded and resized once, kept as
//! uint8 `3 x H x W` records in cache files that later runs, resumes and other
//! experiments on the same data read instead of decoding again.
//!
//! One *store* per decoding (size, interpolation, intensity) under the cache root.
//! A store holds *parts*, each written once and never changed: `ID.pixels` (the
//! records, back to back) and `ID.index` (JSON: for each file its path, byte size and
//! modification time, and its record or why it could not be decoded). A load looks
//! every file up by (path, size, modification time); the misses (new or changed
//! files) are decoded, alone, into a new part. The index is written last, atomically,
//! after the pixels are on disk, so a part that was cut short (a crash, a full disk)
//! has no index and is never read; a part whose pixel file is shorter than its index
//! says is ignored, deleted and its images decoded again. Parts are never rewritten,
//! so runs sharing a store need no lock: two runs decoding the same new files both
//! write a part, and either one serves later loads.
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

use super::decode::{decode_into, Decoding};
use super::Skipped;
use crate::config::{Intensity, Interpolation};

/// Version of the part format; parts of another version are ignored.
const FORMAT: u32 = 1;
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
}

/// A file as the cache knows it: a changed size or modification time is a new file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct FileKey {
    path: PathBuf,
    len: u64,
    mtime_ns: u64,
}

impl FileKey {
    /// The key of `path` now; None when it cannot be stat'ed (decoding will say why).
    fn of(path: &Path) -> Option<FileKey> {
        let meta = std::fs::metadata(path).ok()?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Some(FileKey {
            path: std::path::absolute(path).ok()?,
            len: meta.len(),
            mtime_ns,
        })
    }
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

/// A part read back from disk: its pixel file and index.
struct Part {
    pixels: File,
    index: Index,
}

/// Reads the parts of a store. A part whose index cannot be parsed, is of another
/// format or record size, or whose pixel file is shorter than the index says is
/// deleted (its images are decoded again); returns the good parts and the number
/// deleted.
fn read_parts(store: &Path, record_bytes: u64) -> (Vec<Part>, usize) {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(store) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "index"))
            .collect(),
        Err(_) => return (Vec::new(), 0),
    };
    names.sort();
    let mut parts = Vec::new();
    let mut damaged = 0;
    for index_path in names {
        let pixels_path = index_path.with_extension("pixels");
        let good = std::fs::read(&index_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
            .filter(|ix| ix.format == FORMAT && ix.record_bytes == record_bytes)
            .and_then(|index| {
                let pixels = File::open(&pixels_path).ok()?;
                let len = pixels.metadata().ok()?.len();
                (len >= index.records * index.record_bytes).then_some(Part { pixels, index })
            });
        match good {
            Some(part) => parts.push(part),
            None => {
                damaged += 1;
                let _ = std::fs::remove_file(&index_path);
                let _ = std::fs::remove_file(&pixels_path);
            }
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
                    r
                })
                .collect();
            for (j, (&i, r)) in chunk.iter().zip(results).enumerate() {
                // Files that could not be stat'ed are not remembered: no key.
                let Some(key) = keys[i].clone() else { continue };
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
        crate::fsutil::write_atomic(&index_path, &json).map_err(std::io::Error::other)?;
        Ok(index)
    })();
    match result.and_then(|index| Ok((File::open(&pixels_path)?, index))) {
        Ok((pixels, index)) => Ok(Part { pixels, index }),
        Err(e) => {
            let _ = std::fs::remove_file(&index_path);
            let _ = std::fs::remove_file(&pixels_path);
            Err(CacheError::Write(pixels_path, e))
        }
    }
}

/// Loads `files` through the store for `decoding` under `root`: reused records are
/// looked up, new or changed files decoded (on all cores) into a new part.
/// `progress(done, total)` counts found and decoded files. Unreadable files are
/// skipped with their reason, as [`super::decode_all`] does, and remembered.
pub fn load(
    root: &Path,
    files: &[PathBuf],
    decoding: &Decoding,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<CachedLoad, CacheError> {
    let store = root.join(store_name(decoding));
    std::fs::create_dir_all(&store).map_err(|e| CacheError::Folder(store.clone(), e))?;
    let record_bytes = 3 * (decoding.size.width * decoding.size.height) as usize;
    let (mut parts, damaged_parts) = read_parts(&store, record_bytes as u64);
    // The newest part wins when two know a file (two runs decoded it at once).
    let mut known: HashMap<&FileKey, (u32, &Entry)> = HashMap::new();
    for (p, part) in parts.iter().enumerate() {
        for e in &part.index.entries {
            known.insert(&e.key, (p as u32, e));
        }
    }
    let keys: Vec<Option<FileKey>> = files.par_iter().map(|f| FileKey::of(f)).collect();
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
    // Mark the store used now (for `tlcap-tui cache` and `clean --unused-days`).
    let _ = std::fs::write(
        store.join("last-used"),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );

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
    Ok(CachedLoad {
        pixels: CachedPixels {
            parts: parts.into_iter().map(|p| p.pixels).collect(),
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
    /// When a load last used it (RFC 3339), if known.
    pub last_used: Option<String>,
}

/// The stores under `root`, by name.
pub fn list(root: &Path) -> std::io::Result<Vec<StoreInfo>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd.filter_map(Result::ok) {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let mut info = StoreInfo {
            name: e.file_name().to_string_lossy().into_owned(),
            dir: dir.clone(),
            parts: 0,
            images: 0,
            bytes: 0,
            last_used: std::fs::read_to_string(dir.join("last-used"))
                .ok()
                .map(|s| s.trim().to_string()),
        };
        for f in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
            let path = f.path();
            info.bytes += f.metadata().map_or(0, |m| m.len());
            if path.extension().is_some_and(|x| x == "index") {
                if let Some(ix) = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
                {
                    info.parts += 1;
                    info.images += ix.records;
                }
            }
        }
        out.push(info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes the stores under `root` (those not used for `unused_days` days, when
/// given); returns the stores deleted and the bytes freed.
pub fn clean(root: &Path, unused_days: Option<u64>) -> std::io::Result<(Vec<StoreInfo>, u64)> {
    let now = chrono::Utc::now();
    let mut removed = Vec::new();
    let mut freed = 0;
    for store in list(root)? {
        let old_enough = match unused_days {
            None => true,
            Some(days) => store
                .last_used
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_none_or(|t| (now - t.with_timezone(&chrono::Utc)).num_days() >= days as i64),
        };
        if old_enough {
            std::fs::remove_dir_all(&store.dir)?;
            freed += store.bytes;
            removed.push(store);
        }
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
        crate::stdout::line(format!(
            "{:<28} {:>6} {:>9} {:>10}  {}",
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
