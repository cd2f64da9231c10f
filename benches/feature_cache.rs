//! What the frozen-phase feature cache buys: seconds per frozen epoch of MobileNetV2
//! (real ImageNet weights) on generated 96 px images without augmentation, with
//! `feature_cache: auto` and `off`, in one run.
//!
//! Run: `cargo bench --bench feature_cache` (or `make bench`; needs `make setup`).

use std::path::Path;

use image::{Rgb, RgbImage};
use tlcap::train::{self, Event, Options};

const IMAGES_PER_CLASS: u32 = 300;
const EPOCHS: u32 = 3;

fn make_data(root: &Path) {
    for (c, name) in ["a", "b"].iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..IMAGES_PER_CLASS {
            let img = RgbImage::from_fn(96, 96, |x, y| {
                let on = if c == 0 { x < 48 } else { x >= 48 };
                let v = if on { 190 } else { 50 } + ((x * 7 + y * 13 + i * 5) % 40) as u8;
                Rgb([v, v / 2, 255 - v])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

fn run(dir: &Path, cache: &str) -> Vec<f64> {
    let file = dir.join(format!("cache-{cache}.yaml"));
    std::fs::write(
        &file,
        format!(
            "data: {{ dir: data, image_size: 96, batch_size: 32 }}\nmodel: {{ backbone: mobilenet_v2 }}\n\
             frozen: {{ epochs: {EPOCHS}, feature_cache: {cache} }}\nfinetune: {{ epochs: 0 }}\ndevice: cpu\n"
        ),
    )
    .unwrap();
    let exp = tlcap::config::load_file(&file).unwrap();
    let handle = train::spawn(
        exp,
        Options {
            runs_root: dir.join("runs"),
            autostart: true,
            ..Default::default()
        },
    );
    let mut seconds = Vec::new();
    for e in handle.events.iter() {
        match e {
            Event::EpochEnd(m) => seconds.push(m.seconds),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    seconds
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    make_data(&dir.path().join("data"));
    let off = run(dir.path(), "off");
    let auto = run(dir.path(), "auto");
    let show = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "MobileNetV2 96 px, {} images (80% train), {EPOCHS} frozen epochs, no augmentation",
        2 * IMAGES_PER_CLASS
    );
    println!("feature_cache: off   seconds per epoch: {}", show(&off));
    println!(
        "feature_cache: auto  seconds per epoch: {} (the first computes the cache)",
        show(&auto)
    );
    let later = |v: &[f64]| v[1..].iter().sum::<f64>() / (v.len() - 1) as f64;
    println!(
        "later epochs: {:.2} s -> {:.3} s ({:.0}x faster); whole phase {:.1} s -> {:.1} s",
        later(&off),
        later(&auto),
        later(&off) / later(&auto),
        off.iter().sum::<f64>(),
        auto.iter().sum::<f64>()
    );
}
