//! Helpers shared by the integration test modules (`use crate::util;`).

#![allow(dead_code)]

use std::path::Path;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use tlcap::config::{parse_str, Experiment};

/// Noisy images where the class is where a bright blob sits: left / right (/ top).
pub fn make_images(root: &Path, classes: &[&str], per_class: usize, size: u32) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (c, name) in classes.iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let (cx, cy) = match c {
                0 => (size / 4, size / 2),
                1 => (3 * size / 4, size / 2),
                _ => (size / 2, size / 5),
            };
            let jx = rng.gen_range(0..size / 6) as i64 - (size / 12) as i64;
            let jy = rng.gen_range(0..size / 6) as i64 - (size / 12) as i64;
            let r = (size / 6) as i64;
            let mut img = RgbImage::new(size, size);
            for (x, y, px) in img.enumerate_pixels_mut() {
                let dx = x as i64 - (cx as i64 + jx);
                let dy = y as i64 - (cy as i64 + jy);
                let blob = dx * dx + dy * dy <= r * r;
                let noise: u8 = rng.gen_range(0..60);
                let v = if blob { 190 } else { 40 } + noise;
                *px = Rgb([v, v, v.saturating_sub(20)]);
            }
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

pub fn experiment(root: &Path, body: &str) -> Experiment {
    let text = format!("data: {{ dir: {} }}\n{body}", root.display());
    parse_str(&text, &root.join("exp.yaml")).unwrap()
}

/// A finished command's stdout, after asserting it succeeded (its stderr otherwise).
pub fn stdout_of_success(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the `tlcap-tui` binary: (success, stdout, stderr).
pub fn tlcap(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlcap-tui"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
