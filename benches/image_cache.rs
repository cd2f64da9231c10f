//! The on-disk decoded-image cache: a cold load (decode + write), a warm start (time
//! until the first batch is ready), and the input pipeline's images/s reading from
//! memory against reading from the cache per batch, with the process's peak resident
//! memory after each. Prints figures; asserts nothing about time.
//!
//! `cargo bench --bench image_cache` (4,000 images at 224 px). Environment:
//! `TLCAP_BENCH_IMAGES=100000` for the data-larger-than-memory figures,
//! `TLCAP_BENCH_DIR=DIR` to generate the images there (kept, and reused by a later
//! run, e.g. for `tlcap-tui run` on the same folder), `TLCAP_BENCH_SIZE` (224).
//! The cache goes to `DIR/../image-cache` (or a temporary folder).

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use tlcap::config::parse_str;
use tlcap::data::Dataset;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident memory of this process so far (VmHWM), in MB.
fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb >> 10)
}

/// `n` 64x64 PNGs in classes `a` and `b` (a bright stripe left or right, noise), made
/// on all cores; nothing is done when the folder already holds them.
fn generate(root: &Path, n: usize) {
    let stamp = root.join(format!(".generated-{n}"));
    if stamp.exists() {
        println!("reusing {n} generated images in {}", root.display());
        return;
    }
    let start = Instant::now();
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
    }
    (0..n).into_par_iter().for_each(|i| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
        let left = i % 2 == 0;
        let img = RgbImage::from_fn(64, 64, |x, _| {
            let stripe = (x < 32) == left;
            let v = if stripe { 170 } else { 60 } + rng.gen_range(0..40);
            Rgb([v, v, v / 2])
        });
        let class = if left { "a" } else { "b" };
        // 1,000 files per sub-folder, as large datasets are usually laid out.
        let dir = root.join(class).join(format!("{:03}", i / 1000));
        std::fs::create_dir_all(&dir).unwrap();
        img.save(dir.join(format!("{i:06}.png"))).unwrap();
    });
    std::fs::write(&stamp, b"").unwrap();
    println!(
        "generated {n} 64x64 PNGs in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Images/s of the input pipeline over one epoch's training batches: the raw batches
/// (pixels read and made float) and augmented ones.
fn input_rate(ds: &Dataset, augment: &tlcap::config::AugmentConfig, limit: usize) -> (f64, f64) {
    let batches: Vec<Vec<usize>> = ds
        .train_batches(32, 1, 1, tlcap::config::Sampling::Shuffle)
        .into_iter()
        .take(limit)
        .collect();
    let images: usize = batches.iter().map(Vec::len).sum();
    let start = Instant::now();
    for b in &batches {
        let _ = ds.val_batch(b);
    }
    let raw = images as f64 / start.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let start = Instant::now();
    for b in batches.iter().take(limit / 4 + 1) {
        let _ = ds.train_batch(b, augment, &mut rng);
    }
    let counted: usize = batches.iter().take(limit / 4 + 1).map(Vec::len).sum();
    let augmented = counted as f64 / start.elapsed().as_secs_f64();
    (raw, augmented)
}

fn main() {
    // One libtorch thread, as the trainer's input thread has.
    tch::set_num_threads(1);
    let n: usize = env_or("TLCAP_BENCH_IMAGES", 4000);
    let size: u32 = env_or("TLCAP_BENCH_SIZE", 224);
    let tmp = tempfile::tempdir().unwrap();
    let (data, cache): (PathBuf, PathBuf) = match std::env::var_os("TLCAP_BENCH_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            let cache = d.parent().unwrap_or(Path::new(".")).join("image-cache");
            (d, cache)
        }
        None => (tmp.path().join("data"), tmp.path().join("image-cache")),
    };
    generate(&data, n);
    println!(
        "cpu: {}; {} rayon threads; cache in {}",
        tlcap::runtime::cpu_model(),
        rayon::current_num_threads(),
        cache.display()
    );
    let text = |mode: &str| {
        format!(
            "data: {{ dir: {}, image_size: {size}, image_cache: {mode}, augment: {{ rotation_range: 20, width_shift_range: 0.1, height_shift_range: 0.1, horizontal_flip: true }} }}\nmodel: {{ backbone: small_cnn }}\n",
            data.display()
        )
    };
    let exp = |mode: &str| parse_str(&text(mode), &data.join("bench.yaml")).unwrap();
    let decoded_mb = (3 * size as u64 * size as u64 * n as u64) >> 20;
    println!(
        "{n} images at {size}x{size}: {decoded_mb} MB decoded; memory budget (half of \
         MemAvailable) {} MB",
        tlcap::data::memory_budget_bytes() >> 20
    );
    println!(
        "{:<46} {:>9} {:>10} {:>12}",
        "step", "seconds", "images/s", "peak RSS MB"
    );
    let row = |what: &str, secs: f64, rate: f64| {
        let show = |v: f64, digits: usize| {
            if v.is_finite() {
                format!("{v:.digits$}")
            } else {
                "-".into()
            }
        };
        println!(
            "{what:<46} {:>9} {:>10} {:>12}",
            show(secs, 2),
            show(rate, 0),
            peak_rss_mb()
        );
    };

    let start = Instant::now();
    let cold = Dataset::load_cached_in(&exp("disk"), &cache, &|_, _| {}).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let report = cold.image_cache.as_ref().unwrap().report.clone();
    let what = if report.decoded > 0 {
        format!("load through the cache ({} decoded)", report.decoded)
    } else {
        "load through the cache (already warm)".to_string()
    };
    row(&what, secs, n as f64 / secs);
    drop(cold);

    // A warm start, as the trainer makes it: the load, then the first batch.
    let start = Instant::now();
    let warm = Dataset::load_cached_in(&exp("disk"), &cache, &|_, _| {}).unwrap();
    let loaded = start.elapsed().as_secs_f64();
    let first = &warm.train_batches(32, 1, 1, tlcap::config::Sampling::Shuffle)[0];
    let augment = exp("disk").data.augment.clone();
    let _ = warm.train_batch(
        first,
        &augment,
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
    );
    let first_batch = start.elapsed().as_secs_f64();
    row("warm start: dataset ready", loaded, n as f64 / loaded);
    row(
        "warm start: first augmented batch ready",
        first_batch,
        f64::NAN,
    );

    let limit = env_or("TLCAP_BENCH_BATCHES", 200);
    let (raw, aug) = input_rate(&warm, &augment, limit);
    row("input from the cache per batch: raw", f64::NAN, raw);
    row("input from the cache per batch: augmented", f64::NAN, aug);
    drop(warm);

    let fits = decoded_mb << 20 <= tlcap::data::memory_budget_bytes();
    if fits {
        let start = Instant::now();
        let mem = Dataset::load_cached_in(&exp("auto"), &cache, &|_, _| {}).unwrap();
        let secs = start.elapsed().as_secs_f64();
        row("load from the cache into memory", secs, n as f64 / secs);
        let (mraw, maug) = input_rate(&mem, &augment, limit);
        row("input from memory: raw", f64::NAN, mraw);
        row("input from memory: augmented", f64::NAN, maug);
        println!(
            "cache per batch / memory: raw {:.2}x, augmented {:.2}x",
            raw / mraw,
            aug / maug
        );
    } else {
        println!("(the decoded images do not fit in the memory budget: no in-memory rows)");
    }
}
