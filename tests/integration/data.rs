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
    // Within the side limit, over the 512 MB a decode may allocate (768 MB).
    std::fs::write(bad.join("wide.bmp"), bmp_header(16_000, 16_000)).unwrap();
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
        reason_of("wide.bmp").contains("too large to decode safely"),
        "{}",
        reason_of("wide.bmp")
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
    assert_eq!(ds.skipped.len(), 8, "{reasons:?}");
    // Decoding saw every image-named file: 41 good + 6 broken (notes.txt and the dangling
    // link were already skipped by the scan).
    assert_eq!(progress.lock().unwrap().last(), Some(&(47, 47)));

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
        text.contains("skipped              8") && text.contains("40x30 (40)"),
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
    use tlcap::config::Sampling;
    let order = |epoch, sampling| ds.train_batches(4, 42, epoch, sampling);
    assert_ne!(order(0, Sampling::Shuffle), order(1, Sampling::Shuffle));
    assert_eq!(order(1, Sampling::Shuffle), order(1, Sampling::Shuffle));
    // Balanced: as many images, drawn again the same way for the same seed and epoch.
    let flat = |b: Vec<Vec<usize>>| b.concat();
    assert_eq!(flat(order(1, Sampling::Balanced)).len(), ds.train.len());
    assert_eq!(order(1, Sampling::Balanced), order(1, Sampling::Balanced));
    assert!(flat(order(1, Sampling::Balanced))
        .iter()
        .all(|i| ds.train.contains(i)));
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

/// Decodes one file at its own size into 3 x h x w bytes.
fn decode_whole(path: &Path, w: u32, h: u32) -> Vec<u8> {
    decode_at(path, w, h, tlcap::config::Intensity::Full)
}

fn decode_at(path: &Path, w: u32, h: u32, intensity: tlcap::config::Intensity) -> Vec<u8> {
    let mut out = vec![0u8; (3 * w * h) as usize];
    let decoding = tlcap::data::Decoding {
        size: tlcap::config::ImageSize {
            width: w,
            height: h,
        },
        interpolation: tlcap::config::Interpolation::Bilinear,
        intensity,
    };
    let got = tlcap::data::decode_into(path, &decoding, &mut out).unwrap();
    assert_eq!(got, (w, h), "{}", path.display());
    out
}

/// `data.intensity: stretch`: a 12-bit X-ray in a 16-bit PNG (values 0..4095) decodes
/// to nearly black at full range and to 0..255 stretched; an 8-bit low-contrast RGB
/// image the same over its channels; a flat image keeps its level.
#[test]
fn stretch_maps_each_image_over_its_own_range() {
    use tlcap::config::Intensity;
    let dir = tempfile::tempdir().unwrap();
    let values = [0u16, 1024, 2048, 4095];
    let xray =
        image::ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(4, 1, |x, _| Luma([values[x as usize]]));
    let path = dir.path().join("xray12.png");
    xray.save(&path).unwrap();
    assert_eq!(
        &decode_at(&path, 4, 1, Intensity::Full)[..4],
        &[0, 4, 8, 16]
    );
    let out = decode_at(&path, 4, 1, Intensity::Stretch);
    for c in 0..3 {
        assert_eq!(&out[c * 4..(c + 1) * 4], &[0, 64, 128, 255], "channel {c}");
    }
    let dull = RgbImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgb([100, 110, 120])
        } else {
            Rgb([140, 130, 120])
        }
    });
    let path = dir.path().join("dull.png");
    dull.save(&path).unwrap();
    let out = decode_at(&path, 2, 1, Intensity::Stretch);
    // Red 100, 140; green 110, 130; blue 120, 120 over 100..140.
    assert_eq!(out, vec![0, 255, 64, 191, 128, 128]);
    let flat = GrayImage::from_pixel(3, 2, Luma([77]));
    let path = dir.path().join("flat.png");
    flat.save(&path).unwrap();
    assert!(decode_at(&path, 3, 2, Intensity::Stretch)
        .iter()
        .all(|&v| v == 77));
}

/// X-ray formats: 16-bit grayscale PNG and TIFF keep their range (a value is scaled by
/// 255/65535, not cut to its low byte) and become three equal channels; a 16-bit RGB
/// PNG the same per channel.
#[test]
fn sixteen_bit_images_are_scaled_over_their_range() {
    let dir = tempfile::tempdir().unwrap();
    // Values whose low byte says the opposite of their level: 0x00FF (dark, low byte
    // 255), 0x8000 (mid, low byte 0), 0xFF00 (bright, low byte 0), 0xFFFF.
    let values = [0x00FFu16, 0x8000, 0xFF00, 0xFFFF];
    let expect: Vec<u8> = values
        .iter()
        .map(|&v| ((v as u32 * 255 + 32767) / 65535) as u8)
        .collect();
    assert_eq!(expect, vec![1, 128, 254, 255]);
    let gray =
        image::ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(4, 1, |x, _| Luma([values[x as usize]]));
    for ext in ["png", "tif"] {
        let path = dir.path().join(format!("xray.{ext}"));
        gray.save(&path).unwrap();
        let out = decode_whole(&path, 4, 1);
        for c in 0..3 {
            assert_eq!(&out[c * 4..(c + 1) * 4], &expect[..], "{ext} channel {c}");
        }
    }
    let rgb = image::ImageBuffer::<Rgb<u16>, Vec<u16>>::from_fn(4, 1, |x, _| {
        let v = values[x as usize];
        Rgb([v, v / 2, 0xFFFF - v])
    });
    let path = dir.path().join("rgb16.png");
    rgb.save(&path).unwrap();
    let out = decode_whole(&path, 4, 1);
    assert_eq!(&out[..4], &expect[..]);
    assert_eq!(&out[8..], &[254, 127, 1, 0]);
}

/// A JPEG with an EXIF orientation of 6 (the camera held turned 90° clockwise) is
/// decoded upright: a 32x16 stored picture, dark on its left half, becomes 16x32
/// with the dark half on top.
#[test]
fn camera_jpegs_are_turned_upright_by_their_exif_orientation() {
    let dir = tempfile::tempdir().unwrap();
    let stored = RgbImage::from_fn(32, 16, |x, _| {
        if x < 16 {
            Rgb([20, 20, 20])
        } else {
            Rgb([230, 230, 230])
        }
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&stored)
        .unwrap();
    // APP1 "Exif": a little-endian TIFF header with one IFD entry, Orientation (0x0112)
    // = 6, inserted right after the JPEG's start marker.
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // one value
    tiff.extend_from_slice(&6u16.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    segment.extend_from_slice(&app1);
    let mut file = jpeg[..2].to_vec();
    file.extend_from_slice(&segment);
    file.extend_from_slice(&jpeg[2..]);
    let path = dir.path().join("photo.jpg");
    std::fs::write(&path, &file).unwrap();
    let out = decode_whole(&path, 16, 32);
    let at = |x: u32, y: u32| out[(y * 16 + x) as usize];
    assert!(at(8, 4) < 60, "top should be dark: {}", at(8, 4));
    assert!(at(8, 28) > 190, "bottom should be bright: {}", at(8, 28));
    // Without the tag, the same picture decodes as stored.
    std::fs::write(&path, &jpeg).unwrap();
    let out = decode_whole(&path, 32, 16);
    assert!(out[4] < 60 && out[28] > 190);
}

/// `train/` and `val/` folders under `data.dir` fix the split: every file where the
/// folders put it (the seed and validation_split change nothing), a broken file
/// skipped on its side, `test/` left unread; a validation class train/ does not have
/// is an error naming it, and so are both val/ and validation/.
#[test]
fn train_and_val_folders_are_used_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make_folder(&root.join("train"), 6);
    make_folder(&root.join("val"), 2);
    std::fs::write(root.join("val/b/broken.png"), b"not a png").unwrap();
    make_folder(&root.join("test"), 1);
    let load = |extra: &str| Dataset::load(&experiment(root, extra), &no_progress);
    let ds = load("seed: 1").unwrap();
    assert_eq!(ds.classes, vec!["a", "b"]);
    // make_folder writes n per class plus one gray image in a/.
    assert_eq!((ds.train.len(), ds.val.len()), (13, 5));
    for &i in &ds.train {
        assert!(
            ds.files[i].starts_with(root.join("train")),
            "{:?}",
            ds.files[i]
        );
    }
    for &i in &ds.val {
        assert!(
            ds.files[i].starts_with(root.join("val")),
            "{:?}",
            ds.files[i]
        );
    }
    assert!(!ds.files.iter().any(|f| f.starts_with(root.join("test"))));
    assert_eq!(ds.skipped.len(), 1);
    assert!(ds.split.contains("as the folders say"), "{}", ds.split);
    assert!(ds.split.contains("not read"), "{}", ds.split);
    let report = ds.to_string();
    assert!(
        report.contains("split                as the folders say"),
        "{report}"
    );
    // Another seed: the same split.
    let other = load("seed: 9\n").unwrap();
    assert_eq!((other.train.clone(), other.val.clone()), (ds.train, ds.val));

    // A class only in val/.
    make_folder(&root.join("val/c"), 1);
    let err = load("")
        .err()
        .expect("an unknown validation class")
        .to_string();
    assert!(
        err.contains("val/c") && err.contains("must be a training class"),
        "{err}"
    );
    std::fs::remove_dir_all(root.join("val/c")).unwrap();
    // Both spellings.
    std::fs::create_dir_all(root.join("validation/a")).unwrap();
    let err = load("").err().expect("two validation folders").to_string();
    assert!(err.contains("more than one of val/, validation/"), "{err}");
    std::fs::remove_dir_all(root.join("validation")).unwrap();
    // train/ and test/ without a validation folder: refused, not taken as classes.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(root.join("val"), elsewhere.path().join("val")).unwrap();
    let err = load("").err().expect("no validation folder").to_string();
    assert!(err.contains("holds train/ but no val/"), "{err}");
    std::fs::rename(elsewhere.path().join("val"), root.join("valid")).unwrap();
    let ds = load("").unwrap();
    assert!(ds.split.contains("valid/ validates"), "{}", ds.split);
    // Another folder beside them: they are classes again, as before.
    std::fs::create_dir_all(root.join("extra")).unwrap();
    make_folder(&root.join("extra"), 1);
    let ds = load("").unwrap();
    assert_eq!(ds.classes, vec!["extra", "test", "train", "valid"]);
    assert!(ds.split.starts_with("drawn"), "{}", ds.split);
}

/// `data.labels`: a CSV of paths (relative to data.dir) and classes, as Keras's
/// flow_from_dataframe takes. Columns named by data.columns; a split column fixes the
/// split (test rows held out), a group column keeps each group on one side of a drawn
/// split; every bad row is named with its line, and check lists them all.
#[test]
fn label_files_give_classes_splits_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut rows = String::from("file,finding,patient,subset\n");
    for i in 0..40 {
        let class = if i % 2 == 0 { "normal" } else { "nodule" };
        let v = if i % 2 == 0 { 40 } else { 200 };
        GrayImage::from_pixel(20, 20, Luma([v]))
            .save(images.join(format!("x{i}.png")))
            .unwrap();
        let subset = match i % 10 {
            0 | 1 => "val",
            2 => "test",
            _ => "train",
        };
        rows.push_str(&format!("x{i}.png,{class},patient{},{subset}\n", i / 4));
    }
    let csv = root.join("labels.csv");
    std::fs::write(&csv, &rows).unwrap();
    let exp = |columns: &str| {
        let text = format!(
            "data: {{ dir: images, labels: labels.csv, image_size: 32, \
             columns: {{ path: file, label: finding{columns} }} }}\n\
             model: {{ backbone: small_cnn }}\nseed: 3\n"
        );
        parse_str(&text, &root.join("e.yaml")).unwrap()
    };
    // The split column: as given, test rows not read.
    let ds = Dataset::load(&exp(", split: subset"), &no_progress).unwrap();
    assert_eq!(ds.classes, vec!["nodule", "normal"]);
    assert_eq!((ds.train.len(), ds.val.len()), (28, 8));
    assert!(ds.split.contains("4 test rows not read"), "{}", ds.split);
    for &i in &ds.val {
        let n: usize = ds.files[i].file_stem().unwrap().to_str().unwrap()[1..]
            .parse()
            .unwrap();
        assert!(n % 10 < 2, "{:?} validates", ds.files[i]);
        assert_eq!(
            ds.classes[ds.labels[i]],
            if n.is_multiple_of(2) {
                "normal"
            } else {
                "nodule"
            }
        );
    }
    // The group column (and no split column): a drawn split that cuts no patient.
    let ds = Dataset::load(&exp(", group: patient"), &no_progress).unwrap();
    assert_eq!(ds.train.len() + ds.val.len(), 40);
    let patient = |i: usize| {
        let n: usize = ds.files[i].file_stem().unwrap().to_str().unwrap()[1..]
            .parse()
            .unwrap();
        n / 4
    };
    for &v in &ds.val {
        assert!(ds.train.iter().all(|&t| patient(t) != patient(v)));
    }
    assert!(
        ds.split.contains("drawn by group (patient)"),
        "{}",
        ds.split
    );
    assert!(ds.outside_dir.is_empty() && ds.outside_words().is_none());

    // Rows that leave data.dir (a `..`, a symbolic link out) are read and reported.
    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    GrayImage::from_pixel(20, 20, Luma([200]))
        .save(shared.join("far.png"))
        .unwrap();
    std::os::unix::fs::symlink(shared.join("far.png"), images.join("link.png")).unwrap();
    let mut out = rows.clone();
    out.push_str(
        "../shared/far.png,nodule,patient90,train
",
    );
    out.push_str(
        "link.png,nodule,patient91,train
",
    );
    std::fs::write(&csv, &out).unwrap();
    let ds = Dataset::load(&exp(", split: subset"), &no_progress).unwrap();
    assert_eq!(ds.train.len(), 30, "both rows read");
    assert_eq!(ds.outside_dir.len(), 2, "{:?}", ds.outside_dir);
    let words = ds.outside_words().unwrap();
    assert!(
        words.starts_with("2 label rows point outside data.dir (e.g. ")
            && words.contains("far.png")
            && words.ends_with("read as given"),
        "{words}"
    );
    assert!(ds.to_string().contains("outside data.dir     2 label rows"));
    std::fs::remove_file(images.join("link.png")).unwrap();

    // Every kind of bad row, each named with its line.
    let mut bad = rows.clone();
    bad.push_str("x1.png,nodule,p,train\n"); // line 42: x1.png again
    bad.push_str("missing.png,nodule,p,train\n"); // line 43
    bad.push_str("x3.png,,p,train\n"); // 44: empty label (and x3 not repeated)
    bad.push_str(",normal,p,train\n"); // 45: empty path
    bad.push_str("x5.png,normal,p\n"); // 46: too few fields
    bad.push_str("new.png,normal,p,later\n"); // 47: unknown split
    bad.push_str("x7.png,nodule,p,test\n"); // 48: x7.png trains (line 9) and tests
    std::fs::write(&csv, &bad).unwrap();
    let exp = exp(", split: subset");
    let err = Dataset::load(&exp, &no_progress).err().unwrap().to_string();
    for expected in [
        "line 42: x1.png is also on line 3",
        "line 43: ",
        "missing.png not found",
        "line 44: empty label",
        "line 45: empty path",
        "line 46: 3 fields where the header has 4",
        "line 47: split `later`",
        "line 48: x7.png is also on line 9",
    ] {
        assert!(err.contains(expected), "{expected} missing: {err}");
    }
    let problems = tlcap::check::preflight(&exp, &root.join("e.yaml"));
    let csv_problems: Vec<_> = problems
        .iter()
        .filter(|p| p.message.starts_with("data.labels:"))
        .collect();
    assert_eq!(csv_problems.len(), 7, "{problems:?}");

    // A million rows of junk: the first problems named, the rest counted.
    let mut junk = String::from("file,finding\n");
    for i in 0..1_000_000 {
        junk.push_str(&format!("junk{i}\n"));
    }
    std::fs::write(&csv, &junk).unwrap();
    let start = std::time::Instant::now();
    let err = Dataset::load(&exp, &no_progress).err().unwrap().to_string();
    eprintln!("10^6 junk rows refused in {:?}", start.elapsed());
    assert!(
        err.contains("line 2: 1 fields where the header has 2"),
        "{}",
        &err[..200]
    );
    assert!(
        err.contains("and 999900 more problems"),
        "{}",
        &err[err.len() - 200..]
    );
    // A header without the named columns.
    std::fs::write(&csv, "a,b\nx0.png,normal\n").unwrap();
    let err = Dataset::load(&exp, &no_progress).err().unwrap().to_string();
    assert!(
        err.contains("needs the columns `file` and `finding`"),
        "{err}"
    );
}

/// Writes a 16-bit MONOCHROME2 DICOM file (Explicit VR Little Endian) of `values` in
/// one row, 12 bits stored, with a VOI window when given.
fn write_dicom(path: &Path, values: &[u16], window: Option<(f64, f64)>, rows: u16) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    let us = |v: u16| PrimitiveValue::from(v);
    let mut obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        ),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234567890"),
        DataElement::new(tags::MODALITY, VR::CS, "DX"),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, us(1)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(tags::ROWS, VR::US, us(rows)),
        DataElement::new(tags::COLUMNS, VR::US, us(values.len() as u16)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, us(16)),
        DataElement::new(tags::BITS_STORED, VR::US, us(12)),
        DataElement::new(tags::HIGH_BIT, VR::US, us(11)),
        DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, us(0)),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(values.iter().copied().collect()),
        ),
    ]);
    if let Some((center, width)) = window {
        obj.put(DataElement::new(
            tags::WINDOW_CENTER,
            VR::DS,
            center.to_string(),
        ));
        obj.put(DataElement::new(
            tags::WINDOW_WIDTH,
            VR::DS,
            width.to_string(),
        ));
    }
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .write_to_file(path)
        .unwrap();
}

/// DICOM X-rays (`.dcm`, generated here): decoded with dicom-pixeldata, the file's own
/// VOI window applied where it has one (a narrow window saturates), min-max
/// normalised where it has none; a declared size over the limit refused before any
/// pixel is decoded; a truncated file a clear error.
#[test]
fn dicom_files_decode_with_their_own_window() {
    let dir = tempfile::tempdir().unwrap();
    let values = [0u16, 1024, 2048, 4095];
    let near = |got: &[u8], want: &[u8]| {
        got.iter()
            .zip(want)
            .all(|(&g, &w)| (g as i32 - w as i32).abs() <= 1)
    };
    // No window: the values' own range.
    let plain = dir.path().join("plain.dcm");
    write_dicom(&plain, &values, None, 1);
    let out = decode_whole(&plain, 4, 1);
    assert!(near(&out[..4], &[0, 64, 128, 255]), "{out:?}");
    assert_eq!(&out[..4], &out[4..8], "three equal channels");
    // A window centred on 1024, 512 wide: 0 black, 1024 mid-grey, 2048 and up white.
    let windowed = dir.path().join("windowed.dcm");
    write_dicom(&windowed, &values, Some((1024.0, 512.0)), 1);
    let out = decode_whole(&windowed, 4, 1);
    eprintln!("windowed DICOM row: {:?}", &out[..4]);
    assert!(near(&out[..4], &[0, 128, 255, 255]), "{out:?}");
    // A header claiming 65535 rows (with four pixels of data): refused up front.
    let huge = dir.path().join("huge.dcm");
    write_dicom(&huge, &values, None, 65535);
    let mut buf = vec![0u8; 3 * 4];
    let decoding = tlcap::data::Decoding {
        size: tlcap::config::ImageSize {
            width: 4,
            height: 1,
        },
        interpolation: tlcap::config::Interpolation::Bilinear,
        intensity: tlcap::config::Intensity::Full,
    };
    let err = tlcap::data::decode_into(&huge, &decoding, &mut buf)
        .unwrap_err()
        .to_string();
    assert!(err.contains("declares 4x65535 pixels"), "{err}");
    // Truncated: an error in words, not a panic.
    let bytes = std::fs::read(&plain).unwrap();
    let cut = dir.path().join("cut.dcm");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let err = tlcap::data::decode_into(&cut, &decoding, &mut buf)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("DICOM: "), "{err}");
}
