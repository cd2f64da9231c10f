//! The data pipeline on generated folders, broken files included.

use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use tlcap::config::{parse_str, Experiment};
use tlcap::data::{Dataset, Normalisation};

/// Writes `n` images per class: class `a` has a bright left half, class `b` a bright right half.
fn make_folder(root: &Path, n: usize) {
    for (class, left) in [("a", true), ("b", false)] {
        let dir = root.join(class);
        std::fs::create_dir_all(dir.join("nested")).unwrap();
        for i in 0..n {
            let img = RgbImage::from_fn(40, 30, |x, _| {
                let bright = (x < 20) == left;
                let v = if bright { 200 } else { 30 } + (i % 7) as u8;
                Rgb([v, v / 2, 255 - v])
            });
            // Some in a nested folder, some as JPEG: found recursively, all formats.
            let path = match i % 3 {
                0 => dir.join("nested").join(format!("{i}.png")),
                1 => dir.join(format!("{i}.jpg")),
                _ => dir.join(format!("{i}.png")),
            };
            img.save(&path).unwrap();
        }
    }
    // A grayscale image with alpha goes through the same path.
    let gray = GrayImage::from_pixel(50, 50, Luma([128]));
    gray.save(root.join("a/gray.png")).unwrap();
}

fn experiment(root: &Path, extra: &str) -> Experiment {
    let text = format!(
        "data: {{ dir: {}, image_size: [32, 48], validation_split: 0.25 }}\nmodel: {{ backbone: small_cnn }}\n{extra}",
        root.display()
    );
    parse_str(&text, &root.join("e.yaml")).unwrap()
}

fn no_progress(_: usize, _: usize) {}

#[test]
fn counts_split_and_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make_folder(root, 20);
    let bad = root.join("b");
    std::fs::write(bad.join("empty.png"), b"").unwrap();
    std::fs::write(bad.join("text.png"), b"this is not an image\n").unwrap();
    std::fs::write(bad.join("notes.txt"), b"unsupported").unwrap();
    let png = std::fs::read(root.join("a/2.png")).unwrap();
    std::fs::write(bad.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    let jpg = std::fs::read(root.join("a/1.jpg")).unwrap();
    std::fs::write(bad.join("truncated.jpg"), &jpg[..jpg.len() / 2]).unwrap();
    std::fs::write(bad.join("bomb.bmp"), bmp_header(100_000, 100_000)).unwrap();
    std::os::unix::fs::symlink(root.join("missing.png"), bad.join("dangling.png")).unwrap();
    // Hidden folders are not data: neither loaded nor reported.
    std::fs::create_dir_all(root.join("a/.ipynb_checkpoints")).unwrap();
    std::fs::copy(
        root.join("a/2.png"),
        root.join("a/.ipynb_checkpoints/2.png"),
    )
    .unwrap();

    let progress = std::sync::Mutex::new(Vec::new());
    let report = |done: usize, total: usize| progress.lock().unwrap().push((done, total));
    let ds = Dataset::load(&experiment(root, ""), &report).unwrap();
    assert_eq!(ds.classes, vec!["a", "b"]);
    assert_eq!(ds.len(), 41, "20 + gray in a, 20 in b");
    let reasons: Vec<(String, String)> = ds
        .skipped
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into(),
                s.reason.clone(),
            )
        })
        .collect();
    let reason_of = |name: &str| {
        reasons
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{name} not skipped: {reasons:?}"))
    };
    assert!(reason_of("empty.png").contains("empty file"));
    assert!(reason_of("text.png").contains("not an image"));
    assert!(reason_of("notes.txt").contains("unsupported format"));
    assert!(
        reason_of("truncated.png").contains("corrupt or truncated"),
        "{}",
        reason_of("truncated.png")
    );
    assert!(
        reason_of("truncated.jpg").contains("corrupt or truncated"),
        "{}",
        reason_of("truncated.jpg")
    );
    assert!(
        reason_of("bomb.bmp").contains("too large"),
        "{}",
        reason_of("bomb.bmp")
    );
    assert!(
        reason_of("dangling.png").contains("unreadable"),
        "{}",
        reason_of("dangling.png")
    );
    assert_eq!(ds.skipped.len(), 7, "{reasons:?}");
    // Decoding saw every image-named file: 41 good + 5 broken (notes.txt and the dangling
    // link were already skipped by the scan).
    assert_eq!(progress.lock().unwrap().last(), Some(&(46, 46)));

    // Stratified: a quarter of each class validates.
    assert_eq!(ds.split_counts(), vec![(16, 5), (15, 5)]);
    let again = Dataset::load(&experiment(root, ""), &no_progress).unwrap();
    assert_eq!(
        (again.train.clone(), again.val.clone()),
        (ds.train.clone(), ds.val.clone())
    );
    let other_seed = Dataset::load(&experiment(root, "seed: 7\n"), &no_progress).unwrap();
    assert_ne!(other_seed.val, ds.val);
    let text = ds.to_string();
    assert!(
        text.contains("skipped              7") && text.contains("40x30 (40)"),
        "{text}"
    );
}

#[test]
fn decoding_resizes_and_makes_three_channels() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path(), 3);
    let ds = Dataset::load(&experiment(dir.path(), ""), &no_progress).unwrap();
    let all: Vec<usize> = (0..ds.len()).collect();
    let x = ds.pixels(&all);
    assert_eq!(x.size(), vec![7, 3, 32, 48]);
    assert_eq!(x.kind(), tch::Kind::Uint8);
    // The grayscale image: three equal channels of 128.
    let flat = x.to_kind(tch::Kind::Float);
    let is_gray = |i: i64| {
        let img = flat.get(i);
        img.min().double_value(&[]) == 128.0 && img.max().double_value(&[]) == 128.0
    };
    assert!((0..7).any(is_gray));
}

#[test]
fn validation_batches_are_never_augmented_and_training_batches_are() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path(), 8);
    let exp = experiment(dir.path(), "");
    let ds = Dataset::load(&exp, &no_progress).unwrap();
    let mut aug = exp.data.augment.clone();
    aug.rotation_range = 30.0;
    aug.horizontal_flip = true;
    aug.width_shift_range = 0.2;
    let (vx, vy) = ds.val_batch(&ds.val);
    assert!(vx.equal(&ds.pixels(&ds.val).to_kind(tch::Kind::Float)));
    assert_eq!(vy.size(), vec![ds.val.len() as i64]);
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (tx, _) = ds.train_batch(&ds.train, &aug, &mut rng);
    assert!(!tx.equal(&ds.pixels(&ds.train).to_kind(tch::Kind::Float)));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (tx2, _) = ds.train_batch(&ds.train, &aug, &mut rng);
    assert!(tx.equal(&tx2), "same seed, same augmentation");
    // Without augmentation a training batch is the raw pixels.
    let (plain, _) = ds.train_batch(&ds.train, &exp.data.augment, &mut rng);
    assert!(plain.equal(&ds.pixels(&ds.train).to_kind(tch::Kind::Float)));
    // Epoch order differs per epoch and repeats per seed.
    assert_ne!(ds.train_batches(4, 42, 0), ds.train_batches(4, 42, 1));
    assert_eq!(ds.train_batches(4, 42, 1), ds.train_batches(4, 42, 1));
}

#[test]
fn rescale_never_double_scales_a_pretrained_backbone() {
    let x = tch::Tensor::from_slice(&[0f32, 255.0, 127.5]).view([1, 3, 1, 1]);
    let imagenet =
        Normalisation::for_model(tlcap::config::Backbone::MobilenetV2, Some(1.0 / 255.0));
    assert_eq!(imagenet, Normalisation::ImageNet);
    let y = Vec::<f32>::try_from(
        imagenet
            .apply(&x, imagenet.constants(tch::Device::Cpu).as_ref())
            .flatten(0, -1),
    )
    .unwrap();
    assert!((y[0] - (0.0 - 0.485) / 0.229).abs() < 1e-5);
    assert!((y[1] - (1.0 - 0.456) / 0.224).abs() < 1e-5);
    // EfficientNet-Lite: (pixel - 127) / 128, the constants of its TF builder.
    let lite = Normalisation::for_model(tlcap::config::Backbone::EfficientnetLite0, None);
    let y = Vec::<f32>::try_from(lite.apply(&x, None).flatten(0, -1)).unwrap();
    assert_eq!(y, vec![-127.0 / 128.0, 1.0, 0.5 / 128.0]);
    let cnn = Normalisation::for_model(tlcap::config::Backbone::SmallCnn, Some(1.0 / 255.0));
    let y = Vec::<f32>::try_from(cnn.apply(&x, None).flatten(0, -1)).unwrap();
    assert_eq!(y, vec![0.0, 1.0, 0.5]);
}

#[test]
fn folder_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("only")).unwrap();
    std::fs::write(dir.path().join("only/x.png"), b"").unwrap();
    let err = Dataset::load(&experiment(dir.path(), ""), &no_progress)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("needs at least two class sub-folders"),
        "{err}"
    );
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let err = Dataset::load(&experiment(dir.path(), ""), &no_progress)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("has no images"), "{err}");
}

/// A BMP header claiming `w` x `h` pixels with no pixel data: a decompression bomb.
fn bmp_header(w: i32, h: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(54u32 + 16).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    b.extend_from_slice(&[0u8; 16]);
    b
}
