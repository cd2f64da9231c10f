//! The on-disk decoded-image cache: reuse, invalidation of a changed file, a damaged
//! part ignored and rebuilt, concurrent loads, an unusable cache folder, images read
//! per batch equal to images in memory, and `tlcap-tui cache`.

use std::path::Path;

use image::{Rgb, RgbImage};
use tch::Tensor;
use tlcap::config::{parse_str, Experiment};
use tlcap::data::Dataset;

use crate::util;

fn no_progress(_: usize, _: usize) {}

/// `n` images per class `a` and `b` (40 x 30, each a little different), and two
/// files that are not images.
fn make_data(root: &Path, n: usize) {
    for (c, class) in ["a", "b"].iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            let img = RgbImage::from_fn(40, 30, |x, y| {
                let v = ((x * 5 + y * 3) as usize + i * 11 + c * 97) % 256;
                Rgb([v as u8, (255 - v) as u8, (i * 20 % 256) as u8])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(root.join("a/broken.png"), b"not a png").unwrap();
    std::fs::write(root.join("b/empty.png"), b"").unwrap();
}

fn experiment(root: &Path, cache: &str) -> Experiment {
    let text = format!(
        "data: {{ dir: {}, image_size: [32, 40], validation_split: 0.25, image_cache: {cache} }}\n\
         model: {{ backbone: small_cnn }}\n",
        root.display()
    );
    parse_str(&text, &root.join("e.yaml")).unwrap()
}

/// Every image's pixels, in dataset order.
fn all_pixels(ds: &Dataset) -> Tensor {
    let all: Vec<usize> = (0..ds.len()).collect();
    ds.pixels(&all)
}

/// The same images decoded without any cache.
fn uncached(root: &Path) -> Dataset {
    Dataset::load(&experiment(root, "off"), &no_progress).unwrap()
}

#[test]
fn a_second_load_reuses_every_image_and_gives_the_same_pixels() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_data(data.path(), 6);
    let plain = uncached(data.path());
    assert!(plain.image_cache.is_none());
    let exp = experiment(data.path(), "auto");

    let progress = std::sync::Mutex::new(Vec::new());
    let report = |done: usize, total: usize| progress.lock().unwrap().push((done, total));
    let first = Dataset::load_cached_in(&exp, cache.path(), &report).unwrap();
    let c = first.image_cache.as_ref().unwrap();
    assert_eq!((c.report.reused, c.report.decoded), (0, 14));
    assert!(c.in_memory);
    assert_eq!(progress.lock().unwrap().last(), Some(&(14, 14)));
    assert!(c.report.store.ends_with("40x32-nearest-full"), "{c:?}");

    let second = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    let c = second.image_cache.as_ref().unwrap();
    // The two files that are not images are remembered as such, with their reasons.
    assert_eq!((c.report.reused, c.report.decoded), (14, 0));
    for ds in [&first, &second] {
        assert_eq!(ds.len(), 12);
        assert_eq!(ds.files, plain.files);
        assert_eq!(ds.labels, plain.labels);
        assert_eq!((&ds.train, &ds.val), (&plain.train, &plain.val));
        assert_eq!(ds.skipped, plain.skipped);
        assert_eq!(ds.sizes_seen, plain.sizes_seen);
        assert!(all_pixels(ds).equal(&all_pixels(&plain)));
    }
    let words = second.cache_words().unwrap();
    assert!(
        words.starts_with("14 files reused, 0 decoded now, in "),
        "{words}"
    );
    assert!(second
        .to_string()
        .contains("image cache          14 files reused"));
}

#[test]
fn read_per_batch_from_disk_equals_memory() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_data(data.path(), 5);
    let plain = uncached(data.path());
    let ds = Dataset::load_cached_in(&experiment(data.path(), "disk"), cache.path(), &no_progress)
        .unwrap();
    assert!(!ds.image_cache.as_ref().unwrap().in_memory);
    assert_eq!(ds.memory_bytes(), 0);
    assert_eq!(ds.decoded_bytes(), plain.memory_bytes());
    assert!(ds
        .to_string()
        .contains("read from the image cache per batch"));
    // Any order, repeats included, as training batches ask.
    let order = [3usize, 0, 9, 3, 7];
    assert!(ds.pixels(&order).equal(&plain.pixels(&order)));
    let (x, y) = ds.val_batch(&ds.val);
    let (px, py) = plain.val_batch(&plain.val);
    assert!(x.equal(&px) && y.equal(&py));
}

#[test]
fn a_changed_or_new_file_is_decoded_alone() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_data(data.path(), 4);
    let exp = experiment(data.path(), "auto");
    Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();

    // Same name, new content (and so a new size or modification time).
    let changed = data.path().join("a/1.png");
    RgbImage::from_pixel(50, 20, Rgb([9, 99, 199]))
        .save(&changed)
        .unwrap();
    RgbImage::from_pixel(40, 30, Rgb([1, 2, 3]))
        .save(data.path().join("b/new.png"))
        .unwrap();
    let ds = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    let c = ds.image_cache.as_ref().unwrap();
    assert_eq!((c.report.reused, c.report.decoded), (9, 2));
    let plain = uncached(data.path());
    assert_eq!(ds.files, plain.files);
    assert!(all_pixels(&ds).equal(&all_pixels(&plain)));
    let i = ds.files.iter().position(|f| f == &changed).unwrap();
    let px = ds.pixels(&[i]);
    assert_eq!(
        Vec::<u8>::try_from(px.view([-1]).narrow(0, 0, 1)).unwrap(),
        vec![9]
    );
    // A third load finds both in the second part.
    let again = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    assert_eq!(again.image_cache.unwrap().report.decoded, 0);

    // Only the modification time changes (same size, same bytes, as a restore from a
    // backup would leave it): decoded again, as the key says.
    let len = std::fs::metadata(&changed).unwrap().len();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&changed)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(std::fs::metadata(&changed).unwrap().len(), len);
    let touched = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    let c = touched.image_cache.as_ref().unwrap();
    assert_eq!((c.report.reused, c.report.decoded), (10, 1));
    assert!(all_pixels(&touched).equal(&all_pixels(&uncached(data.path()))));
}

/// A file replaced by another image of the same byte size, its modification time then
/// set back (what `cp -p` or `rsync -t` of a different image leaves): the size and
/// modification time are the old ones, the status-change time is not.
#[test]
fn a_replacement_with_the_same_size_and_modification_time_is_decoded_again() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_data(data.path(), 3);
    let replaced = data.path().join("a/same.bmp");
    RgbImage::from_pixel(40, 30, Rgb([10, 20, 30]))
        .save(&replaced)
        .unwrap();
    let exp = experiment(data.path(), "auto");
    let first = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    assert_eq!(first.image_cache.unwrap().report.decoded, 9);
    let before = std::fs::metadata(&replaced).unwrap();

    // Another image, written elsewhere and renamed over it, as rsync does; then its
    // modification time set to the old file's, as `-t` does.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let elsewhere = data.path().join("other.bmp");
    RgbImage::from_pixel(40, 30, Rgb([200, 100, 50]))
        .save(&elsewhere)
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&elsewhere)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    std::fs::rename(&elsewhere, &replaced).unwrap();
    let after = std::fs::metadata(&replaced).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());

    let ds = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    let c = ds.image_cache.as_ref().unwrap();
    assert_eq!((c.report.reused, c.report.decoded), (8, 1));
    assert!(all_pixels(&ds).equal(&all_pixels(&uncached(data.path()))));
    let i = ds.files.iter().position(|f| f == &replaced).unwrap();
    assert_eq!(
        Vec::<u8>::try_from(ds.pixels(&[i]).view([-1]).narrow(0, 0, 1)).unwrap(),
        vec![200]
    );
}

#[test]
fn the_same_folder_by_two_spellings_shares_its_records() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let images = data.path().join("images");
    make_data(&images, 3);
    std::fs::create_dir_all(data.path().join("exp")).unwrap();
    Dataset::load_cached_in(&experiment(&images, "auto"), cache.path(), &no_progress).unwrap();
    let roundabout = data.path().join("exp/../images");
    let ds = Dataset::load_cached_in(&experiment(&roundabout, "auto"), cache.path(), &no_progress)
        .unwrap();
    assert_eq!(ds.image_cache.unwrap().report.decoded, 0);
}

#[test]
fn a_damaged_part_is_ignored_and_rebuilt_and_a_cut_short_one_never_read() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_data(data.path(), 4);
    let exp = experiment(data.path(), "auto");
    let first = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    let store = first.image_cache.unwrap().report.store;
    let pixels: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pixels"))
        .collect();
    assert_eq!(pixels.len(), 1);
    // Cut the part's pixel file short (as a disk error would).
    let len = std::fs::metadata(&pixels[0]).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pixels[0])
        .unwrap();
    f.set_len(len / 2).unwrap();
    // A part cut short before its index was written (a crash while decoding): a
    // pixel file alone, full of junk.
    std::fs::write(
        store.join("00000000000000000001-1-0.pixels"),
        vec![7u8; 5000],
    )
    .unwrap();
    // And an index that is not JSON.
    std::fs::write(store.join("00000000000000000002-1-0.index"), b"{ junk").unwrap();

    let ds = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    let c = ds.image_cache.as_ref().unwrap();
    assert_eq!((c.report.reused, c.report.decoded), (0, 10));
    assert_eq!(c.report.damaged_parts, 2);
    assert!(ds
        .cache_words()
        .unwrap()
        .contains("2 damaged part(s) deleted"));
    assert!(all_pixels(&ds).equal(&all_pixels(&uncached(data.path()))));
    assert!(!pixels[0].exists(), "the damaged part is deleted");
    let again = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    let c = again.image_cache.unwrap();
    assert_eq!((c.report.reused, c.report.damaged_parts), (10, 0));
}

#[test]
fn concurrent_loads_share_one_cache() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_data(data.path(), 8);
    let exp = experiment(data.path(), "auto");
    let plain = all_pixels(&uncached(data.path()));
    let loads: Vec<Dataset> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| Dataset::load_cached_in(&exp, cache.path(), &no_progress)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    for ds in &loads {
        assert!(all_pixels(ds).equal(&plain));
    }
    let after = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    assert_eq!(after.image_cache.as_ref().unwrap().report.decoded, 0);
    assert!(all_pixels(&after).equal(&plain));
}

/// Separate processes (four `tlcap-tui data` started together) on one cache: each
/// loads the same pixels, none reads another's part half-written, and a later load
/// decodes nothing.
#[test]
fn concurrent_processes_share_one_cache() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_data(data.path(), 60);
    let file = data.path().join("e.yaml");
    std::fs::write(
        &file,
        "data: { dir: ., image_size: [32, 40], validation_split: 0.25, image_cache: disk }\n\
         model: { backbone: small_cnn }\n",
    )
    .unwrap();
    let children: Vec<std::process::Child> = (0..4)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
                .args(["data", file.to_str().unwrap()])
                .env("TLCAP_IMAGE_CACHE", cache.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = util::stdout_of_success(&out);
        assert!(
            text.contains("image cache")
                && text
                    .lines()
                    .any(|l| l.starts_with("all") && l.ends_with(" 120")),
            "{text}"
        );
    }
    let exp = experiment(data.path(), "auto");
    let after = Dataset::load_cached_in(&exp, cache.path(), &no_progress).unwrap();
    assert_eq!(after.image_cache.as_ref().unwrap().report.decoded, 0);
    assert!(all_pixels(&after).equal(&all_pixels(&uncached(data.path()))));
}

#[test]
fn an_unusable_cache_folder_falls_back_to_memory_and_says_why() {
    let data = tempfile::tempdir().unwrap();
    make_data(data.path(), 3);
    let not_a_folder = data.path().join("cache-is-a-file");
    std::fs::write(&not_a_folder, b"").unwrap();
    let ds = Dataset::load_cached_in(
        &experiment(data.path(), "auto"),
        &not_a_folder,
        &no_progress,
    )
    .unwrap();
    assert!(ds.image_cache.is_none());
    let words = ds.cache_words().unwrap();
    assert!(
        words.starts_with("not used (cannot use the image cache folder")
            && words.ends_with("decoded into memory"),
        "{words}"
    );
    assert!(all_pixels(&ds).equal(&all_pixels(&uncached(data.path()))));
}

#[test]
fn cache_command_lists_and_cleans_stores() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    make_data(data.path(), 3);
    let file = data.path().join("e.yaml");
    std::fs::write(
        &file,
        format!(
            "data: {{ dir: {}, image_size: 32 }}\nmodel: {{ backbone: small_cnn }}\n",
            data.path().display()
        ),
    )
    .unwrap();
    let tlcap = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
            .args(args)
            .env("TLCAP_IMAGE_CACHE", cache.path())
            .output()
            .unwrap();
        util::stdout_of_success(&out)
    };
    assert!(tlcap(&["cache"]).contains("empty: runs fill it"));
    let report = tlcap(&["data", file.to_str().unwrap()]);
    assert!(report.contains("0 files reused, 8 decoded now"), "{report}");
    let listed = tlcap(&["cache", "list"]);
    assert!(listed.contains("32x32-nearest-full"), "{listed}");
    assert!(listed.contains("1 store(s)"), "{listed}");
    // Used just now: not unused for a day.
    assert!(tlcap(&["cache", "clean", "--unused-days", "1"]).contains("0 store(s) deleted"));
    // A store last used 40 days ago goes with --unused-days 30; a folder that is not
    // a store (someone's files beside the cache) is neither listed nor touched.
    let old = cache.path().join("64x64-bicubic-stretch");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("last-used"), "2026-01-01T00:00:00Z").unwrap();
    std::fs::write(old.join("1-2-3.pixels"), vec![0u8; 100]).unwrap();
    let mine = cache.path().join("my-photos");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("keep.png"), b"mine").unwrap();
    let listed = tlcap(&["cache"]);
    assert!(
        listed.contains("64x64-bicubic-stretch") && !listed.contains("my-photos"),
        "{listed}"
    );
    assert!(
        listed.contains("in pixel files without an index"),
        "{listed}"
    );
    let cleaned = tlcap(&["cache", "clean", "--unused-days", "30"]);
    assert!(cleaned.contains("1 store(s) deleted"), "{cleaned}");
    assert!(!old.exists() && cache.path().join("32x32-nearest-full").exists());
    let cleaned = tlcap(&["cache", "clean"]);
    assert!(cleaned.contains("1 store(s) deleted"), "{cleaned}");
    assert!(tlcap(&["cache"]).contains("empty"));
    assert!(mine.join("keep.png").exists());
}

#[test]
fn a_run_reading_images_from_the_cache_per_batch_trains_as_one_in_memory() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let images = data.path().join("images");
    util::make_images(&images, &["left", "right"], 24, 32);
    let notes = std::sync::Mutex::new(Vec::new());
    let run = |image_cache: &str| {
        let file = data.path().join(format!("{image_cache}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {image_cache}\ndata: {{ dir: {}, image_size: 32, batch_size: 8, image_cache: {image_cache} }}\n\
                 model: {{ backbone: small_cnn }}\nfrozen: {{ epochs: 2 }}\nfinetune: {{ epochs: 0 }}\nseed: 3\n",
                images.display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
            .args(["run", "--json", "--runs"])
            .arg(data.path().join("runs"))
            .arg(&file)
            .env("TLCAP_IMAGE_CACHE", cache.path())
            .output()
            .unwrap();
        let text = util::stdout_of_success(&out);
        let note = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| {
                v["text"]
                    .as_str()
                    .filter(|t| t.starts_with("image cache: "))
                    .map(String::from)
            });
        notes.lock().unwrap().push(note);
        let epochs: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("val_accuracy").is_some())
            .map(|v| (v["loss"].to_string(), v["val_loss"].to_string()))
            .collect();
        assert_eq!(epochs.len(), 2, "{text}");
        epochs
    };
    assert_eq!(run("disk"), run("off"));
    // The run says what the cache did; with the cache off it says nothing.
    let notes = notes.lock().unwrap();
    assert!(
        notes[0]
            .as_deref()
            .is_some_and(|n| n.starts_with("image cache: 0 files reused, 48 decoded now, in ")),
        "{notes:?}"
    );
    assert_eq!(notes[1], None);
}

/// A small tmpfs mounted for a test, unmounted when dropped (the suite runs as root,
/// as its Slurm test does).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "this test mounts a tmpfs: it needs root");
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_leaves_no_part_and_the_images_are_decoded_into_memory() {
    let data = tempfile::tempdir().unwrap();
    make_data(data.path(), 4);
    let disk = SmallDisk::mount("1m");
    let exp = experiment(data.path(), "auto");
    let ds = Dataset::load_cached_in(&exp, disk.dir.path(), &no_progress).unwrap();
    let words = ds.cache_words().unwrap();
    assert!(
        words.contains("the image cache needs 38 kB more in")
            && words.contains("free (and keeps 64 MB spare)")
            && words.ends_with("decoded into memory"),
        "{words}"
    );
    assert!(all_pixels(&ds).equal(&all_pixels(&uncached(data.path()))));
    // Nothing was written but the store's `last-used` stamp: no part, no leftovers.
    let store = disk.dir.path().join("40x32-nearest-full");
    let left: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["last-used"]);
    // `disk` cannot read per batch from a cache it could not write: memory too.
    let ds = Dataset::load_cached_in(
        &experiment(data.path(), "disk"),
        disk.dir.path(),
        &no_progress,
    )
    .unwrap();
    assert!(ds.image_cache.is_none() && ds.cache_fallback.is_some());
}
