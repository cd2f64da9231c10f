//! Image data: `flow_from_directory` folders, the seeded stratified split, decoding once
//! into memory, batched augmentation, and the input normalisation of each backbone.

pub mod augment;
pub mod cache;
mod decode;
pub mod labels;
mod scan;
mod split;

pub use augment::{apply as augment_batch, Transform};
pub use decode::{
    decode_all, decode_center_crop, decode_into, open_image, stretch, DecodeError, Decoded,
    Decoding, MAX_DECODE_BYTES, MAX_SIDE,
};
pub use scan::{fixed_validation_folder, scan, scan_classes, Scan, IMAGE_EXTENSIONS};
pub use split::{grouped_split, stratified_split};

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::config::{AugmentConfig, Backbone, Experiment, ImageCache, ImageSize, Sampling};

/// A file left out of the dataset, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Problems that stop a dataset from loading (broken single files never do).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read data folder {0}: {1}")]
    Folder(PathBuf, String),
    #[error("{0} needs at least two class sub-folders, found {1:?}")]
    TooFewClasses(PathBuf, Vec<String>),
    #[error("class folder {0} has no images (png, jpg, jpeg, bmp, gif, webp, tif, tiff, dcm)")]
    EmptyClass(PathBuf),
    #[error("class `{0}` has no readable images (all were skipped)")]
    NoReadableImages(String),
    #[error(
        "{0} is a validation class that train/ does not have (its classes: {1:?}); \
         every validation class must be a training class"
    )]
    UnknownValidationClass(PathBuf, Vec<String>),
    #[error("{0} has more than one of val/, validation/ and valid/: keep one")]
    TwoValidationFolders(PathBuf),
    #[error(
        "{0} holds train/ but no val/ (or validation/, valid/) beside it: add one, or put \
         the class folders directly in the data folder to have the split drawn"
    )]
    NoValidationFolder(PathBuf),
    #[error("the split leaves no {0} images: {1}")]
    EmptySide(&'static str, String),
    #[error("{}: {}", .0.display(), .1.join("; "))]
    Labels(PathBuf, Vec<String>),
    #[error(
        "the decoded images need {needed_mb} MB but the memory budget is {budget_mb} MB \
         (half of the available memory); lower data.image_size or use fewer images"
    )]
    TooBig { needed_mb: u64, budget_mb: u64 },
    #[error(
        "{0}; the decoded images ({needed_mb} MB) do not fit in memory either (budget \
         {budget_mb} MB)",
        needed_mb = .1 >> 20,
        budget_mb = .2 >> 20
    )]
    CacheAndMemory(cache::CacheError, u64, u64),
}

/// Where a dataset's decoded pixels are.
enum Pixels {
    /// In memory, uint8 `[N, 3, H, W]`.
    Memory(Vec<u8>),
    /// In the image cache's files, read per batch.
    Cached(cache::CachedPixels),
}

/// How a load used the on-disk image cache (see [`cache`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUse {
    /// What the cache held and what was decoded now.
    pub report: cache::CacheReport,
    /// Whether the images were read into memory (else read per batch).
    pub in_memory: bool,
}

/// The images of one experiment, decoded and resized once, with their split.
pub struct Dataset {
    pub classes: Vec<String>,
    pub size: ImageSize,
    /// uint8 `[N, 3, H, W]` records, in memory or in the image cache.
    pixels: Pixels,
    /// Class index of each image (multi-label: its rarest label, or `classes.len()`
    /// when it has none: what the split stratifies by).
    pub labels: Vec<usize>,
    /// Multi-label: each image's labels, 0/1, flat `[N, classes]`; None for one class
    /// per image (then `classes` are classes, else labels).
    pub multi_hot: Option<Vec<u8>>,
    /// The file each image came from.
    pub files: Vec<PathBuf>,
    /// Image indices of the training and validation sets.
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub skipped: Vec<Skipped>,
    /// Label-file rows whose file lies outside `data.dir` (read as given).
    pub outside_dir: Vec<PathBuf>,
    pub sizes_seen: Vec<((u32, u32), usize)>,
    pub load_seconds: f64,
    /// How the on-disk image cache served this load (None with `image_cache: off`).
    pub image_cache: Option<CacheUse>,
    /// Why the image cache was not used although it was asked for (the images were
    /// decoded into memory instead), in words.
    pub cache_fallback: Option<String>,
    /// How the split was made, in words (drawn, or as `train/` and `val/` say).
    pub split: String,
}

/// The images and classes an experiment's `data:` names: its label file when it has
/// one, else its folder (of class folders, or of `train/` and `val/`).
pub fn find(exp: &Experiment) -> Result<Scan, DataError> {
    match &exp.data.labels {
        Some(csv) => labels::read(csv, exp, labels::Rows::Training),
        None => scan(&exp.data.dir),
    }
}

/// The settings that do not fit the data, once its classes (or labels) are known:
/// `(setting, what is wrong)`. Multi-label data (a task inferred from the label file
/// included) refuses `data.class_weight` and `data.sampling: balanced` and names
/// unknown labels in `multilabel.thresholds` and `multilabel.pos_weight`; one class
/// per image refuses `stall.monitor: val_mean_auc` over more than two classes and
/// names unknown classes in `data.class_weight`. `check` lists them; a run refuses to
/// start on them.
pub fn task_problems(
    exp: &Experiment,
    classes: &[String],
    multilabel: bool,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if multilabel {
        if exp.data.class_weight.is_some() {
            out.push((
                "data.class_weight",
                "data.class_weight weighs the classes of a single-label task; this label file \
                 is multi-label: weigh each label's positives with multilabel.pos_weight"
                    .to_string(),
            ));
        }
        if exp.data.sampling == Sampling::Balanced {
            out.push((
                "data.sampling",
                "data.sampling: balanced draws the classes of a single-label task; this label \
                 file is multi-label: weigh rare labels with multilabel.pos_weight"
                    .to_string(),
            ));
        }
        if let Err(e) = exp.multilabel.thresholds_of(classes) {
            out.push(("multilabel.thresholds", e));
        }
        let counts = vec![(1, 1); classes.len()];
        if let Err(e) = exp.multilabel.pos_weight.resolve(classes, &counts) {
            out.push(("multilabel.pos_weight", e));
        }
    } else {
        if exp.stall.monitor == crate::config::Monitor::ValMeanAuc && classes.len() > 2 {
            out.push((
                "stall.monitor",
                format!(
                    "stall.monitor val_mean_auc needs a multi-label task or two classes; this \
                     data has {} classes (watch val_accuracy or val_balanced_accuracy)",
                    classes.len()
                ),
            ));
        }
        if let Some(Err(e)) = exp
            .data
            .class_weight
            .as_ref()
            .map(|w| w.check_classes(classes))
        {
            out.push(("data.class_weight", e));
        }
    }
    out
}

/// An epoch of balanced sampling (PyTorch's `WeightedRandomSampler` with class-balanced
/// weights, with replacement): `train.len()` draws, each a class chosen uniformly among
/// those with training images, then one of its images uniformly. Rare classes' images
/// come up several times an epoch, common ones' not every epoch.
pub fn balanced_order(
    train: &[usize],
    labels: &[usize],
    classes: usize,
    rng: &mut impl rand::Rng,
) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for &i in train {
        // (A stratum past the classes, a multi-label image without labels, is never
        // drawn: balanced sampling is refused for multi-label data.)
        if let Some(class) = by_class.get_mut(labels[i]) {
            class.push(i);
        }
    }
    by_class.retain(|c| !c.is_empty());
    if by_class.is_empty() {
        return Vec::new();
    }
    (0..train.len())
        .map(|_| {
            let class = &by_class[rng.gen_range(0..by_class.len())];
            class[rng.gen_range(0..class.len())]
        })
        .collect()
}

fn held_out_words(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!("; {n} test rows not read (held out)"),
    }
}

/// Memory that decoded images may take: half of `MemAvailable`.
pub fn memory_budget_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(4 << 20);
    kb * 1024 / 2
}

/// Decoded pixels of a file list, wherever they are kept.
struct Loaded {
    pixels: Pixels,
    index: Vec<Option<usize>>,
    skipped: Vec<Skipped>,
    sizes_seen: Vec<((u32, u32), usize)>,
    cache_use: Option<CacheUse>,
    fallback: Option<String>,
}

/// Decodes `paths` as `data.image_cache` says: through the on-disk cache (into memory
/// when the images fit in the memory budget and the setting is `auto`, else read per
/// batch), or straight into memory. When the cache cannot be used (a full disk, a
/// folder that cannot be written) the images are decoded into memory if they fit,
/// with the reason kept for the report; else the error says both.
fn decode_or_reuse(
    paths: &[PathBuf],
    data: &crate::config::DataConfig,
    cache_root: &std::path::Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Loaded, DataError> {
    let decoding = Decoding::of(data);
    let per_image = 3 * data.image_size.height as u64 * data.image_size.width as u64;
    let needed = per_image * paths.len() as u64;
    let budget = memory_budget_bytes();
    let into_memory = |fallback: Option<String>| {
        let d = decode_all(paths, &decoding, progress);
        Loaded {
            pixels: Pixels::Memory(d.pixels),
            index: d.index,
            skipped: d.skipped,
            sizes_seen: d.sizes_seen,
            cache_use: None,
            fallback,
        }
    };
    if data.image_cache == ImageCache::Off {
        if needed > budget {
            return Err(DataError::TooBig {
                needed_mb: needed >> 20,
                budget_mb: budget >> 20,
            });
        }
        return Ok(into_memory(None));
    }
    match cache::load(cache_root, paths, &decoding, progress) {
        Ok(c) => {
            let kept = c.pixels.len() as u64 * per_image;
            let in_memory = data.image_cache == ImageCache::Auto && kept <= budget;
            let pixels = if in_memory {
                Pixels::Memory(c.pixels.read_all())
            } else {
                Pixels::Cached(c.pixels)
            };
            Ok(Loaded {
                pixels,
                index: c.index,
                skipped: c.skipped,
                sizes_seen: c.sizes_seen,
                cache_use: Some(CacheUse {
                    report: c.report,
                    in_memory,
                }),
                fallback: None,
            })
        }
        Err(e) if needed <= budget => Ok(into_memory(Some(e.to_string()))),
        Err(e) => Err(DataError::CacheAndMemory(e, needed, budget)),
    }
}

impl Dataset {
    /// Scans, splits and decodes the experiment's data, through the image cache in
    /// [`cache::cache_root`]. `progress(done, total)` reports decoding progress.
    pub fn load(
        exp: &Experiment,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Dataset, DataError> {
        Self::load_cached_in(exp, &cache::cache_root(), progress)
    }

    /// As [`Dataset::load`], with the image cache under `cache_root`.
    pub fn load_cached_in(
        exp: &Experiment,
        cache_root: &std::path::Path,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Dataset, DataError> {
        let start = Instant::now();
        let found = find(exp)?;
        let size = exp.data.image_size;
        let paths: Vec<PathBuf> = found.files.iter().map(|(p, _)| p.clone()).collect();
        let decoded = decode_or_reuse(&paths, &exp.data, cache_root, progress)?;
        let kept: Vec<usize> = (0..found.files.len())
            .filter(|&i| decoded.index[i].is_some())
            .collect();
        let files: Vec<PathBuf> = kept.iter().map(|&i| found.files[i].0.clone()).collect();
        let labels: Vec<usize> = kept.iter().map(|&i| found.files[i].1).collect();
        let multi_hot: Option<Vec<u8>> = found.multi_hot.as_ref().map(|hot| {
            kept.iter()
                .flat_map(|&i| hot[i].iter().map(|&h| u8::from(h)))
                .collect()
        });
        let n_classes = found.classes.len();
        for (class, name) in found.classes.iter().enumerate() {
            let has = match &multi_hot {
                None => labels.contains(&class),
                Some(hot) => hot.iter().skip(class).step_by(n_classes).any(|&h| h == 1),
            };
            if !has {
                return Err(DataError::NoReadableImages(name.clone()));
            }
        }
        // The split stratifies by class; multi-label images by their rarest label, and
        // those without any label as one more stratum.
        let strata = n_classes + usize::from(multi_hot.is_some());
        let (train, val, split) = match (&found.fixed_val, &found.groups) {
            (None, Some(groups)) => {
                let kept_groups: Vec<String> = kept.iter().map(|&i| groups[i].clone()).collect();
                let (train, val) = grouped_split(
                    &kept_groups,
                    &labels,
                    strata,
                    exp.data.validation_split,
                    exp.seed,
                );
                let count = |side: &[usize]| {
                    let mut g: Vec<&str> = side.iter().map(|&j| kept_groups[j].as_str()).collect();
                    g.sort_unstable();
                    g.dedup();
                    g.len()
                };
                let words = format!(
                    "drawn by group ({}): {} groups train, {} validate, none on both sides, \
                     each class's share near {:.0}% (seed {}){}",
                    exp.data.columns.group,
                    count(&train),
                    count(&val),
                    exp.data.validation_split * 100.0,
                    exp.seed,
                    held_out_words(found.held_out)
                );
                (train, val, words)
            }
            (None, None) => {
                let (train, val) =
                    stratified_split(&labels, strata, exp.data.validation_split, exp.seed);
                let each = if multi_hot.is_some() {
                    "of the images whose rarest label is each label (and of those without \
                     any)"
                } else {
                    "of each class"
                };
                let words = format!(
                    "drawn: {:.0}% {each} validates (seed {}){}",
                    exp.data.validation_split * 100.0,
                    exp.seed,
                    held_out_words(found.held_out)
                );
                (train, val, words)
            }
            (Some(flags), _) if exp.data.labels.is_some() => {
                let (val, train): (Vec<usize>, Vec<usize>) =
                    (0..kept.len()).partition(|&j| flags[kept[j]]);
                let words = format!(
                    "as the label file's {} column says (data.validation_split not used){}",
                    exp.data.columns.split,
                    held_out_words(found.held_out)
                );
                (train, val, words)
            }
            (Some(flags), _) => {
                let (val, train): (Vec<usize>, Vec<usize>) =
                    (0..kept.len()).partition(|&j| flags[kept[j]]);
                let test = match &found.test_dir {
                    Some(t) => format!("; {} not read (held out)", t.display()),
                    None => String::new(),
                };
                let val_name = found
                    .val_dir
                    .as_deref()
                    .and_then(|d| d.file_name())
                    .map_or("val".into(), |n| n.to_string_lossy());
                let words = format!(
                    "as the folders say: train/ trains, {val_name}/ validates \
                     (data.validation_split not used){test}"
                );
                (train, val, words)
            }
        };
        // A split the user fixed (folders, a split column) or grouped can leave a side
        // empty: training without validation measures nothing.
        let chosen = found.fixed_val.is_some() || found.groups.is_some();
        for (side, items) in [("training", &train), ("validation", &val)] {
            if chosen && items.is_empty() {
                return Err(DataError::EmptySide(side, split.clone()));
            }
        }
        let mut skipped = found.skipped;
        skipped.extend(decoded.skipped);
        Ok(Dataset {
            classes: found.classes,
            size,
            pixels: decoded.pixels,
            image_cache: decoded.cache_use,
            cache_fallback: decoded.fallback,
            labels,
            multi_hot,
            files,
            train,
            val,
            skipped,
            outside_dir: found.outside,
            sizes_seen: decoded.sizes_seen,
            load_seconds: start.elapsed().as_secs_f64(),
            split,
        })
    }

    /// `3 label rows (e.g. ../shared/x.png): read as given`, when the label file
    /// points outside `data.dir`.
    pub fn outside_words(&self) -> Option<String> {
        let first = self.outside_dir.first()?;
        let n = self.outside_dir.len();
        Some(format!(
            "{n} label row{} point{} outside data.dir (e.g. {}): read as given",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" },
            first.display()
        ))
    }

    /// `2,600 images reused, 24 decoded now, in ~/.cache/tlcap/images/224x224-...`:
    /// what the on-disk image cache did, or why it was not used; None with
    /// `image_cache: off`.
    pub fn cache_words(&self) -> Option<String> {
        if let Some(why) = &self.cache_fallback {
            return Some(format!("not used ({why}); decoded into memory"));
        }
        let c = self.image_cache.as_ref()?;
        let r = &c.report;
        let damaged = match r.damaged_parts {
            0 => String::new(),
            n => format!(", {n} damaged part(s) deleted and decoded again"),
        };
        Some(format!(
            "{} files reused, {} decoded now{damaged}, in {}",
            r.reused,
            r.decoded,
            r.store.display()
        ))
    }

    /// Number of decoded images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when no image was decoded.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes the decoded images take in memory (0 when read from the image cache).
    pub fn memory_bytes(&self) -> usize {
        match &self.pixels {
            Pixels::Memory(p) => p.len(),
            Pixels::Cached(_) => 0,
        }
    }

    /// Bytes of the decoded images, wherever they are.
    pub fn decoded_bytes(&self) -> usize {
        3 * (self.size.height * self.size.width) as usize * self.len()
    }

    /// The raw pixels of the given images: uint8 `[B, 3, H, W]`.
    pub fn pixels(&self, images: &[usize]) -> Tensor {
        let per = 3 * (self.size.height * self.size.width) as usize;
        let mut buf = vec![0u8; per * images.len()];
        for (&i, out) in images.iter().zip(buf.chunks_mut(per.max(1))) {
            match &self.pixels {
                Pixels::Memory(p) => out.copy_from_slice(&p[i * per..(i + 1) * per]),
                Pixels::Cached(c) => c.read_into(i, out),
            }
        }
        Tensor::from_slice(&buf).view([
            images.len() as i64,
            3,
            self.size.height as i64,
            self.size.width as i64,
        ])
    }

    /// Class indices of the given images, int64 `[B]`; multi-label: their labels,
    /// float 0/1 `[B, labels]`.
    pub fn label_tensor(&self, images: &[usize]) -> Tensor {
        if self.is_multilabel() {
            let flat: Vec<f32> = images
                .iter()
                .flat_map(|&i| self.hot_row(i).iter().map(|&h| f32::from(h)))
                .collect();
            return Tensor::from_slice(&flat)
                .view([images.len() as i64, self.classes.len() as i64]);
        }
        let labels: Vec<i64> = images.iter().map(|&i| self.labels[i] as i64).collect();
        Tensor::from_slice(&labels)
    }

    /// Whether each image has any number of labels (multi-label task).
    pub fn is_multilabel(&self) -> bool {
        self.multi_hot.is_some()
    }

    /// Multi-label: image `i`'s row of the 0/1 label matrix (empty for one class per
    /// image).
    pub fn hot_row(&self, i: usize) -> &[u8] {
        let n = self.classes.len();
        self.multi_hot
            .as_deref()
            .map_or(&[], |hot| &hot[i * n..(i + 1) * n])
    }

    /// Multi-label: whether image `i` has label `l`.
    pub fn has_label(&self, i: usize, l: usize) -> bool {
        self.hot_row(i).get(l) == Some(&1)
    }

    /// Multi-label: the indices of image `i`'s labels, in label order.
    pub fn label_indices(&self, i: usize) -> Vec<usize> {
        (0..self.classes.len())
            .filter(|&l| self.has_label(i, l))
            .collect()
    }

    /// Multi-label: each label's (positives, negatives) among the training images.
    pub fn train_label_counts(&self) -> Vec<(usize, usize)> {
        (0..self.classes.len())
            .map(|l| {
                let pos = self.train.iter().filter(|&&i| self.has_label(i, l)).count();
                (pos, self.train.len() - pos)
            })
            .collect()
    }

    /// Multi-label: the names of image `i`'s labels.
    pub fn label_names(&self, i: usize) -> Vec<String> {
        self.label_indices(i)
            .into_iter()
            .map(|l| self.classes[l].clone())
            .collect()
    }

    /// The training set in batches, shuffled differently (and reproducibly) each epoch;
    /// with [`Sampling::Balanced`], as many images drawn with every class equally
    /// likely (see [`balanced_order`]).
    pub fn train_batches(
        &self,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        sampling: Sampling,
    ) -> Vec<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
        let order = match sampling {
            Sampling::Shuffle => {
                let mut order = self.train.clone();
                order.shuffle(&mut rng);
                order
            }
            Sampling::Balanced => {
                balanced_order(&self.train, &self.labels, self.classes.len(), &mut rng)
            }
        };
        order
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The validation set in fixed batches.
    pub fn val_batches(&self, batch_size: usize) -> Vec<Vec<usize>> {
        self.val
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// A training batch: augmented float32 pixels (0..255) and labels. `rng` draws the
    /// augmentation; seed it from (seed, epoch, batch) for reproducible runs.
    pub fn train_batch(
        &self,
        images: &[usize],
        augment: &AugmentConfig,
        rng: &mut impl rand::Rng,
    ) -> (Tensor, Tensor) {
        let (h, w) = (self.size.height as i64, self.size.width as i64);
        let transforms: Vec<Transform> = images
            .iter()
            .map(|_| Transform::draw(augment, w, h, rng))
            .collect();
        let x = augment_batch(
            &self.pixels(images),
            &transforms,
            augment.fill_mode,
            augment.cval,
        );
        (x, self.label_tensor(images))
    }

    /// A validation batch: float32 pixels (0..255), never augmented, and labels.
    pub fn val_batch(&self, images: &[usize]) -> (Tensor, Tensor) {
        (
            self.pixels(images).to_kind(Kind::Float),
            self.label_tensor(images),
        )
    }

    /// Images per class in (train, validation); multi-label: images with each label.
    pub fn split_counts(&self) -> Vec<(usize, usize)> {
        if self.is_multilabel() {
            let on = |side: &[usize], l| side.iter().filter(|&&i| self.has_label(i, l)).count();
            return (0..self.classes.len())
                .map(|l| (on(&self.train, l), on(&self.val, l)))
                .collect();
        }
        let mut counts = vec![(0, 0); self.classes.len()];
        for &i in &self.train {
            counts[self.labels[i]].0 += 1;
        }
        for &i in &self.val {
            counts[self.labels[i]].1 += 1;
        }
        counts
    }
}

/// How pixels (float, 0..255, after augmentation) become model input.
///
/// Pretrained backbones get exactly the normalisation they were trained with, applied to
/// pixel/255, whatever `rescale` says, so `rescale: 1/255` plus ImageNet mean/std can never
/// scale twice. Backbones without their own normalisation (small_cnn) get `pixel * rescale`
/// (Keras: rescale unset means raw 0..255 values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalisation {
    /// torchvision: (pixel/255 - mean) / std with the ImageNet mean and std.
    ImageNet,
    /// EfficientNet-Lite: (pixel - 127) / 128, as in its TensorFlow builder
    /// (`MEAN_RGB = 127`, `STDDEV_RGB = 128`): about [-1, 1].
    MinusOneToOne,
    /// pixel * factor.
    Rescale(f64),
}

const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

impl Normalisation {
    /// The normalisation for a backbone, given the file's `rescale`.
    pub fn for_model(backbone: Backbone, rescale: Option<f64>) -> Normalisation {
        match backbone {
            Backbone::SmallCnn => Normalisation::Rescale(rescale.unwrap_or(1.0)),
            Backbone::EfficientnetLite0
            | Backbone::EfficientnetLite1
            | Backbone::EfficientnetLite2
            | Backbone::EfficientnetLite3
            | Backbone::EfficientnetLite4 => Normalisation::MinusOneToOne,
            _ => Normalisation::ImageNet,
        }
    }

    /// The ImageNet mean and std as `[1, 3, 1, 1]` float tensors on `device`, made once
    /// by the model that normalises (None for the other normalisations). Made outside
    /// any computation: a tensor built from Rust data inside a TorchScript trace would
    /// be recorded as zeros.
    pub fn constants(&self, device: tch::Device) -> Option<(Tensor, Tensor)> {
        let make = |v: &[f64; 3]| {
            Tensor::from_slice(v)
                .view([1, 3, 1, 1])
                .to_kind(Kind::Float)
                .to_device(device)
        };
        matches!(self, Normalisation::ImageNet).then(|| (make(&IMAGENET_MEAN), make(&IMAGENET_STD)))
    }

    /// Applies it to a float batch `[B, 3, H, W]` on the 0..255 scale, with the
    /// [`Normalisation::constants`] made for it.
    pub fn apply(&self, x: &Tensor, constants: Option<&(Tensor, Tensor)>) -> Tensor {
        match (*self, constants) {
            (Normalisation::ImageNet, Some((mean, std))) => (x / 255.0 - mean) / std,
            (Normalisation::ImageNet, None) => {
                panic!("ImageNet normalisation without its constants (make them once)")
            }
            (Normalisation::MinusOneToOne, _) => (x - 127.0) / 128.0,
            (Normalisation::Rescale(f), _) => x * f,
        }
    }
}

impl fmt::Display for Dataset {
    /// The dataset report printed by `tlcap-tui data`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let multilabel = self.is_multilabel();
        writeln!(
            f,
            "{:<20} {:>7} {:>7} {:>7}",
            if multilabel { "label" } else { "class" },
            "train",
            "val",
            "total"
        )?;
        let counts = self.split_counts();
        for (name, (t, v)) in self.classes.iter().zip(&counts) {
            writeln!(f, "{name:<20} {t:>7} {v:>7} {:>7}", t + v)?;
        }
        if multilabel {
            let none = |side: &[usize]| {
                side.iter()
                    .filter(|&&i| !self.hot_row(i).contains(&1))
                    .count()
            };
            let (t, v) = (none(&self.train), none(&self.val));
            writeln!(f, "{:<20} {t:>7} {v:>7} {:>7}", "(no label)", t + v)?;
        }
        let (t, v) = (self.train.len(), self.val.len());
        writeln!(
            f,
            "{:<20} {t:>7} {v:>7} {:>7}",
            if multilabel { "images" } else { "all" },
            t + v
        )?;
        if multilabel {
            writeln!(
                f,
                "task                 multi-label: any number of labels per image"
            )?;
        }
        writeln!(f, "split                {}", self.split)?;
        if let Some(words) = self.outside_words() {
            writeln!(f, "outside data.dir     {words}")?;
        }
        let sizes: Vec<String> = self
            .sizes_seen
            .iter()
            .map(|((w, h), n)| format!("{w}x{h} ({n})"))
            .collect();
        writeln!(f, "image sizes seen     {}", sizes.join(", "))?;
        let held = match self.memory_bytes() {
            0 => "read from the image cache per batch".to_string(),
            n => format!("in memory ({} MB)", n >> 20),
        };
        writeln!(
            f,
            "resized to           {}x{} (width x height), {} MB as uint8, {held}",
            self.size.width,
            self.size.height,
            self.decoded_bytes() >> 20,
        )?;
        if let Some(words) = self.cache_words() {
            writeln!(f, "image cache          {words}")?;
        }
        writeln!(
            f,
            "load time            {:.2} s ({:.0} images/s)",
            self.load_seconds,
            self.len() as f64 / self.load_seconds.max(1e-9)
        )?;
        write!(f, "skipped              {}", self.skipped.len())?;
        for s in self.skipped.iter().take(10) {
            write!(f, "\n  {}: {}", s.path.display(), s.reason)?;
        }
        if self.skipped.len() > 10 {
            write!(f, "\n  ... and {} more", self.skipped.len() - 10)?;
        }
        Ok(())
    }
}

/// `tlcap-tui data`: loads the images with a progress line on stderr, prints the report.
pub fn report(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let exp = crate::config::load_file(file)?;
    let tty = std::io::stderr().is_terminal();
    let progress = |done: usize, total: usize| {
        if tty {
            eprint!("\rdecoding {done}/{total} images");
            let _ = std::io::stderr().flush();
        }
    };
    let dataset = Dataset::load(&exp, &progress)?;
    if tty {
        eprintln!();
    }
    crate::stdout::line(format!(
        "experiment           {} ({})",
        exp.name,
        file.display()
    ))?;
    crate::stdout::line(format!("data folder          {}", exp.data.dir.display()))?;
    crate::stdout::line(&dataset)?;
    Ok(())
}

#[cfg(test)]
mod sampling_tests {
    use super::*;

    #[test]
    fn balanced_sampling_draws_every_class_about_equally() {
        // 90 images of class 0, 10 of class 1, 0 of class 2.
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i >= 90)).collect();
        let train: Vec<usize> = (0..100).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut ones = 0;
        for _ in 0..100 {
            let order = balanced_order(&train, &labels, 3, &mut rng);
            assert_eq!(order.len(), 100);
            ones += order.iter().filter(|&&i| labels[i] == 1).count();
        }
        let share = ones as f64 / 10_000.0;
        assert!((share - 0.5).abs() < 0.02, "{share}");
        let again = |seed| balanced_order(&train, &labels, 3, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(again(7), again(7));
        assert!(balanced_order(&[], &labels, 3, &mut rng).is_empty());
    }
}
