//! Decode + resize throughput on an ELPV-like folder: 2,624 generated 300x300 grayscale
//! PNGs (target: >= 500 images/s on 2 cores). Run with `make bench` or
//! `cargo bench --bench decode`. Prints figures; asserts nothing about time.

use std::time::Instant;

use image::{GrayImage, Luma};
use rand::{Rng, SeedableRng};
use tlcap::config::{ImageSize, Interpolation};
use tlcap::data::decode_all;

fn main() {
    let n: usize = std::env::var("TLCAP_BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2624);
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let files: Vec<std::path::PathBuf> = (0..n)
        .map(|i| {
            // Smooth shading plus noise and a "crack": compresses like a real EL image.
            let crack = rng.gen_range(0..300);
            let img = GrayImage::from_fn(300, 300, |x, y| {
                let base = 90 + ((x / 20 + y / 20) % 2) as i32 * 40;
                let noise = rng.gen_range(-12..=12);
                let v = if x == crack { 20 } else { base + noise };
                Luma([v.clamp(0, 255) as u8])
            });
            let path = dir.path().join(format!("cell{i:04}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    println!(
        "generated {n} grayscale 300x300 PNGs ({} MB) in {:.1} s; rayon threads: {}",
        bytes >> 20,
        start.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    println!(
        "{:<34} {:>9} {:>12}",
        "decode + resize to", "seconds", "images/s"
    );
    for (size, interp) in [
        (224, Interpolation::Nearest),
        (224, Interpolation::Bilinear),
        (160, Interpolation::Bilinear),
        (96, Interpolation::Bilinear),
    ] {
        let start = Instant::now();
        let decoding = tlcap::data::Decoding {
            size: ImageSize {
                height: size,
                width: size,
            },
            interpolation: interp,
            intensity: tlcap::config::Intensity::Full,
        };
        let decoded = decode_all(&files, &decoding, &|_, _| {});
        let secs = start.elapsed().as_secs_f64();
        assert!(decoded.skipped.is_empty());
        println!(
            "{:<34} {secs:>9.2} {:>12.0}",
            format!("{size}x{size} {interp:?}"),
            n as f64 / secs
        );
    }
}
