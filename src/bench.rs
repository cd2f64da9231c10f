//! `tlcap-tui bench`: what each part of the recipe costs on this machine, measured in
//! one run so that the ratios hold even on a noisy machine. It generates images, gives
//! each backbone random weights (speed does not depend on the values), runs the real
//! trainer in each mode and prints images/s, achieved GFLOP/s and the share of a
//! matrix-multiply peak measured in the same run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use tch::{nn, Kind, Tensor};

use crate::config::{Backbone as BackboneKind, Experiment, Weights};
use crate::model::classifier::{Classifier, TrainPath, CPU_PASS_PIXELS};
use crate::model::Backbone;
use crate::train::{self, EpochMetrics, Event, Options, Phases};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Backbones, in order.
    pub backbones: Vec<BackboneKind>,
    /// Generated images in all (two classes; a fifth is held out for validation).
    pub images: usize,
    /// Square input size.
    pub size: u32,
    /// Images per batch.
    pub batch_size: usize,
    /// The experiment's `device:` (cpu, cuda, cuda:N, mps, auto).
    pub device: String,
    /// Which groups of rows to measure (all when empty).
    pub parts: Vec<Part>,
}

/// A group of bench rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The frozen phase through the trainer: uncached, bf16, cached, augmented.
    Frozen,
    /// The fine-tune phase with the last block trainable, without and with the prefix
    /// cache.
    Finetune,
    /// The frozen backbone's forward pass alone, one setting at a time.
    Forward,
    /// Whole-network fine-tuning: every layer trainable, BatchNorm in inference mode.
    Whole,
}

impl BenchOptions {
    fn wants(&self, part: Part) -> bool {
        self.parts.is_empty() || self.parts.contains(&part)
    }
}

/// The augmentation of the augmented rows.
const AUGMENT: &str = "{ rotation_range: 20, width_shift_range: 0.1, height_shift_range: 0.1, horizontal_flip: true }";

/// The ratios the speed targets are about, for the rows that were measured.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Ratios {
    cached: Option<f64>,
    bf16: Option<f64>,
    prefix: Option<f64>,
}

/// One measured row.
struct Row {
    what: String,
    images_per_sec: f64,
    /// Floating-point operations per training image, when the row computes any.
    flops_per_image: Option<f64>,
    /// The peak this row is compared with (GFLOP/s).
    peak: f64,
    note: String,
}

/// Measures and prints the table.
pub fn run(options: &BenchOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let say = |line: String| println!("{line}");
    let images = options.images.max(10);
    let data = dir.path().join("data");
    eprint!("generating {images} images ...");
    make_images(&data, images);
    eprintln!(" done");
    let device = crate::runtime::select_device(&options.device)?;
    // Emulated bf16 (no AVX512-BF16/AMX, or kernels limited to AVX2) has no peak worth
    // comparing with: its rows say n/a instead of a meaningless percentage, and its
    // peak is measured on a smaller matrix (a 2048 one takes a minute there).
    let bf16_native = device.is_cuda() || crate::runtime::native_bf16_here();
    let fp32_peak = matmul_peak(Kind::Float, device, 2048);
    let bf16_peak = matmul_peak(Kind::BFloat16, device, if bf16_native { 2048 } else { 256 });
    say(format!(
        "tlcap bench: {images} generated 320x320 PNGs resized to {s}x{s}, batch {}, \
         {} libtorch threads, 1 input thread, on {}",
        options.batch_size,
        tch::get_num_threads(),
        crate::runtime::device_name(device),
        s = options.size
    ));
    say(format!("cpu: {}", crate::runtime::cpu_model()));
    if device.is_cuda() {
        for gpu in crate::runtime::gpu_descriptions() {
            say(format!("gpu: {gpu}"));
        }
    }
    let bf16_words = if bf16_native {
        format!("bf16 {bf16_peak:.0} GFLOP/s")
    } else {
        format!("bf16 {bf16_peak:.1} GFLOP/s (256x256; emulated: no native bf16 kernels here)")
    };
    say(format!(
        "matmul peak (2048x2048, measured now): fp32 {fp32_peak:.0} GFLOP/s, {bf16_words}"
    ));
    let bf16_peak = if bf16_native { bf16_peak } else { f64::NAN };
    let probe = experiment(dir.path(), options, BackboneKind::MobilenetV2, "")?;
    let loaded = crate::data::Dataset::load(&probe, &|_, _| {})?;
    say(format!(
        "data load (decode + resize, {} threads): {:.0} img/s",
        rayon::current_num_threads(),
        loaded.len() as f64 / loaded.load_seconds.max(1e-9)
    ));
    drop(loaded);
    say(String::new());
    say(format!(
        "{:<13} {:<44} {:>8} {:>8} {:>5}  {}",
        "backbone", "mode", "img/s", "GFLOP/s", "eff", "note"
    ));
    let mut ratios = Vec::new();
    for &kind in &options.backbones {
        let mut ratio = Ratios::default();
        eprintln!("measuring {} ...", kind.name());
        let weights = random_weights(dir.path(), kind)?;
        // Forward work of the whole backbone, training work when the last stage
        // trains (without and with the frozen prefix cached), and when every layer does.
        let unfreeze = last_stage_layers(kind);
        let (all, finetune_flops, cached_flops, whole_flops) = {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let mut b = Backbone::new(&vs.root(), kind, false);
            let flops = b.layer_flops(options.size as i64, options.size as i64);
            b.table_mut().unfreeze_last(unfreeze);
            let split = b.frozen_segments();
            let last_stage = (
                b.training_flops(&flops, 0) as f64,
                b.training_flops(&flops, split) as f64,
            );
            b.table_mut().unfreeze_all();
            (
                flops.iter().sum::<u64>() as f64,
                last_stage.0,
                last_stage.1,
                b.training_flops(&flops, 0) as f64,
            )
        };
        let run = |extra: &str, phases: Phases| -> anyhow::Result<Vec<EpochMetrics>> {
            let mut exp = experiment(dir.path(), options, kind, extra)?;
            exp.model.weights = Weights::File(weights.clone());
            train_rows(exp, phases, &dir.path().join("runs"))
        };
        let mut rows = Vec::new();
        let frozen = |precision: &str| {
            run(
                &format!("frozen: {{ epochs: 2 }}\nprecision: {precision}\n"),
                Phases::Frozen,
            )
        };
        if options.wants(Part::Frozen) {
            let fp32 = frozen("fp32")?;
            let bf16 = frozen("bf16")?;
            let augmented = {
                let mut exp = experiment(dir.path(), options, kind, "frozen: { epochs: 1 }\n")?;
                exp.model.weights = Weights::File(weights.clone());
                exp.precision = crate::config::Precision::Fp32;
                exp.data.augment = serde_yaml::from_str(AUGMENT)?;
                train_rows(exp, Phases::Frozen, &dir.path().join("runs"))?
            };
            for (label, rows_of, peak) in [("fp32", &fp32, fp32_peak), ("bf16", &bf16, bf16_peak)] {
                rows.push(Row {
                    what: format!("frozen {label}, no cache (epoch 1)"),
                    images_per_sec: rows_of[0].images_per_sec,
                    flops_per_image: Some(all),
                    peak,
                    note: String::new(),
                });
            }
            rows.push(Row {
                what: "frozen fp32, features cached (epoch 2)".into(),
                images_per_sec: fp32[1].images_per_sec,
                flops_per_image: None,
                peak: fp32_peak,
                note: format!(
                    "{:.0}x epoch 1",
                    fp32[1].images_per_sec / fp32[0].images_per_sec
                ),
            });
            let wait = &augmented[0];
            rows.push(Row {
                what: "frozen fp32, augmented, input thread".into(),
                images_per_sec: wait.images_per_sec,
                flops_per_image: Some(all),
                peak: fp32_peak,
                note: format!(
                    "input wait {:.1}% of training time",
                    100.0 * wait.input_wait_seconds * wait.images_per_sec
                        / train_images(images) as f64
                ),
            });
            ratio.cached = Some(fp32[1].images_per_sec / fp32[0].images_per_sec);
            ratio.bf16 = Some(bf16[0].images_per_sec / fp32[0].images_per_sec);
        }
        let finetune = |cache: &str, epochs: u32| {
            run(
                &format!(
                    "frozen: {{ epochs: 0 }}\nfinetune: {{ epochs: {epochs}, unfreeze_last: {unfreeze}, prefix_cache: {cache} }}\nprecision: fp32\n"
                ),
                Phases::Finetune,
            )
        };
        if options.wants(Part::Finetune) {
            let uncached = finetune("off", 1)?;
            let cached = finetune("auto", 2)?;
            rows.push(Row {
                what: format!("fine-tune last {unfreeze} layers fp32, no cache"),
                images_per_sec: uncached[0].images_per_sec,
                flops_per_image: Some(finetune_flops),
                peak: fp32_peak,
                note: String::new(),
            });
            rows.push(Row {
                what: format!("fine-tune last {unfreeze} layers fp32, prefix cached"),
                images_per_sec: cached[1].images_per_sec,
                flops_per_image: Some(cached_flops),
                peak: fp32_peak,
                note: format!(
                    "{:.1}x no cache",
                    cached[1].images_per_sec / uncached[0].images_per_sec
                ),
            });
            ratio.prefix = Some(cached[1].images_per_sec / uncached[0].images_per_sec);
        }
        if options.wants(Part::Forward) {
            rows.extend(forward_rows(
                dir.path(),
                options,
                kind,
                &weights,
                all,
                fp32_peak,
            )?);
        }
        if options.wants(Part::Whole) {
            let (step_rows, best) = whole_network_rows(
                dir.path(),
                options,
                kind,
                &weights,
                whole_flops,
                all,
                fp32_peak,
            )?;
            rows.extend(step_rows);
            let trainer = {
                let mut exp = experiment(
                    dir.path(),
                    options,
                    kind,
                    "frozen: { epochs: 0 }\nfinetune: { epochs: 1, unfreeze_last: 100000, lr: 1e-4 }\nprecision: fp32\n",
                )?;
                exp.model.weights = Weights::File(weights.clone());
                exp.data.augment = serde_yaml::from_str(AUGMENT)?;
                train_rows(exp, Phases::Finetune, &dir.path().join("runs"))?
            };
            let epoch = &trainer[0];
            rows.push(Row {
                what: "whole, trainer, augmented".into(),
                images_per_sec: epoch.images_per_sec,
                flops_per_image: Some(whole_flops),
                peak: fp32_peak,
                note: format!(
                    "{:.2}x the bare step; input wait {:.1}% of training time; validation {:.1} img/s",
                    epoch.images_per_sec / best,
                    100.0 * epoch.input_wait_seconds * epoch.images_per_sec
                        / train_images(images) as f64,
                    epoch.val_images_per_sec
                ),
            });
        }
        for (i, row) in rows.iter().enumerate() {
            let gflops = row.flops_per_image.map(|f| f * row.images_per_sec / 1e9);
            say(format!(
                "{:<13} {:<44} {:>8.1} {:>8} {:>5}  {}",
                if i == 0 { kind.name() } else { "" },
                row.what,
                row.images_per_sec,
                gflops.map_or("-".into(), |g| format!("{g:.1}")),
                match gflops {
                    None => "-".into(),
                    Some(_) if row.peak.is_nan() || row.peak <= 0.0 => "n/a".into(),
                    Some(g) => format!("{:.0}%", 100.0 * g / row.peak),
                },
                row.note
            ));
        }
        ratios.push((kind.name(), ratio));
    }
    if ratios.iter().all(|(_, r)| *r == Ratios::default()) {
        return Ok(());
    }
    say(String::new());
    say(format!(
        "{:<13} {:>22} {:>16} {:>22}",
        "ratios", "cached/uncached (>=20)", "bf16/fp32 (>=1.5)", "prefix/no cache (>=2)"
    ));
    let show = |v: Option<f64>, digits: usize, width: usize| {
        v.map_or(format!("{:>width$}", "-"), |v| {
            format!("{v:>w$.digits$}x", w = width - 1)
        })
    };
    for (name, r) in ratios {
        say(format!(
            "{name:<13} {} {} {}",
            show(r.cached, 0, 22),
            show(r.bf16, 2, 16),
            show(r.prefix, 2, 22)
        ));
    }
    Ok(())
}

/// The frozen backbone's forward pass alone (no input thread, no head, no optimiser),
/// fp32, one variable at a time: BatchNorm as its own pass or folded into the
/// convolutions, the batch in one pass or in smaller passes (the CPU default is
/// [`CPU_PASS_PIXELS`]), one libtorch thread instead of all.
fn forward_rows(
    root: &Path,
    options: &BenchOptions,
    kind: BackboneKind,
    weights: &Path,
    flops: f64,
    peak: f64,
) -> anyhow::Result<Vec<Row>> {
    let mut exp = experiment(root, options, kind, "")?;
    exp.model.weights = Weights::File(weights.to_path_buf());
    let device = crate::runtime::select_device(&options.device)?;
    let mut net = Classifier::new(&exp, 2, device)?;
    net.set_frozen_phase();
    net.set_precision(Some(Kind::Float));
    let k = net.frozen_segments();
    let batch = options.batch_size as i64;
    let size = options.size as i64;
    let threads = tch::get_num_threads();
    let pixels = Tensor::rand([batch, 3, size, size], (Kind::Float, tch::Device::Cpu)) * 255.0;
    // Images per second of the frozen forward pass on one batch, best of three timings
    // of at least 2 s each.
    let measure = |net: &Classifier| {
        let _ = net.run_prefix(&pixels, k);
        best_rate(batch, 2.0, || {
            let _ = net
                .run_prefix(&pixels, k)
                .sum(Kind::Float)
                .double_value(&[]);
        })
    };
    net.set_pass_pixels(None);
    net.set_fold_batchnorm(false);
    let separate = measure(&net);
    net.set_fold_batchnorm(true);
    let folded = measure(&net);
    let mut by_chunk = Vec::new();
    for chunk in [1, 2, 4, 8, 16] {
        if chunk < batch {
            net.set_pass_pixels(Some(chunk * size * size));
            by_chunk.push((chunk, measure(&net)));
        }
    }
    net.set_pass_pixels(Some(CPU_PASS_PIXELS));
    let chunk = net.images_per_pass(&pixels).min(batch);
    let chunked = by_chunk
        .iter()
        .find(|(c, _)| *c == chunk)
        .map_or(folded, |(_, v)| *v);
    tch::set_num_threads(1);
    let one_thread = measure(&net);
    tch::set_num_threads(threads);
    let row = flops_row(flops, peak);
    let sweep = sweep(&by_chunk, 0);
    Ok(vec![
        row(
            format!("forward only fp32, BatchNorm separate, b{batch}"),
            separate,
            String::new(),
        ),
        row(
            format!("forward only fp32, BatchNorm folded, b{batch}"),
            folded,
            format!("{:.2}x separate", folded / separate),
        ),
        row(
            format!("forward only fp32, folded, passes of {chunk}"),
            chunked,
            format!(
                "{:.2}x b{batch} (img/s by pass size {})",
                chunked / folded,
                sweep
            ),
        ),
        row(
            format!("forward only fp32, passes of {chunk}, 1 thread"),
            one_thread,
            format!("{:.2}x {threads} threads", one_thread / chunked),
        ),
    ])
}

/// Whole-network fine-tuning, one training step on a fixed batch (no input thread, no
/// augmentation, like `scripts/dev/finetune_step.py` does in PyTorch eager): every
/// layer trainable, BatchNorm in inference mode, Adam, float32; first the plain path
/// (BatchNorm as its own layer, contiguous layout, the batch in one pass), then each
/// setting of [`TrainPath`] added in turn, then the pass sizes. Returns the rows and
/// the best images/s.
fn whole_network_rows(
    root: &Path,
    options: &BenchOptions,
    kind: BackboneKind,
    weights: &Path,
    flops: f64,
    forward_flops: f64,
    peak: f64,
) -> anyhow::Result<(Vec<Row>, f64)> {
    let mut exp = experiment(root, options, kind, "")?;
    exp.model.weights = Weights::File(weights.to_path_buf());
    exp.model.dropout = 0.0;
    let device = crate::runtime::select_device(&options.device)?;
    let mut net = Classifier::new(&exp, 2, device)?;
    let layers = net.table().len();
    net.set_finetune_phase(layers, false);
    net.set_precision(Some(Kind::Float));
    let mut opt = nn::OptimizerConfig::build(nn::Adam::default(), &net.vs, 1e-4)?;
    let batch = options.batch_size as i64;
    let size = options.size as i64;
    let pixels = Tensor::rand([batch, 3, size, size], (Kind::Float, tch::Device::Cpu)) * 255.0;
    let labels = Tensor::arange(batch, (Kind::Int64, tch::Device::Cpu)).remainder(2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    // Images per second of a whole training step, best of three timings of at least
    // 3 s each after two warm-up steps.
    let mut measure = |net: &Classifier| {
        let mut step = |net: &Classifier| {
            opt.zero_grad();
            let prefix = net.run_prefix(&pixels, 0);
            let _ = net.backward_train_from(&prefix, 0, &labels, &mut rng);
            opt.step();
        };
        step(net);
        step(net);
        best_rate(batch, 3.0, || step(net))
    };
    let defaults = net.train_path();
    let plain = TrainPath {
        fold_batchnorm: false,
        channels_last: false,
        pass_pixels: None,
    };
    net.set_train_path(plain);
    let before = measure(&net);
    let folded_path = TrainPath {
        fold_batchnorm: true,
        ..plain
    };
    net.set_train_path(folded_path);
    let folded = measure(&net);
    let last_path = TrainPath {
        channels_last: defaults.channels_last,
        ..folded_path
    };
    net.set_train_path(last_path);
    let last = measure(&net);
    let mut by_pass = Vec::new();
    for pass in [1, 2, 4, 8, 16] {
        if pass < batch {
            net.set_train_path(TrainPath {
                pass_pixels: Some(pass * size * size),
                ..last_path
            });
            by_pass.push((pass, measure(&net)));
        }
    }
    // Validation of the same network (inference mode, no graph, as in
    // `with_inference_copy`): the whole batch in one pass against the default passes,
    // best of three timings of at least 2 s.
    let infer = |net: &Classifier| {
        tch::no_grad(|| {
            let _ = net.forward(&pixels);
            best_rate(batch, 2.0, || {
                let _ = net.forward(&pixels).sum(Kind::Float).double_value(&[]);
            })
        })
    };
    net.set_train_path(TrainPath {
        pass_pixels: None,
        ..defaults
    });
    let infer_one = infer(&net);
    net.set_train_path(defaults);
    let infer_passes = infer(&net);
    let infer_copy = net.with_inference_copy(|| infer(&net));
    let chosen = defaults
        .pass_pixels
        .map_or(batch, |p| (p / (size * size)).clamp(1, batch));
    let best_default = by_pass
        .iter()
        .find(|(p, _)| *p == chosen)
        .map_or(last, |(_, v)| *v);
    let row = flops_row(flops, peak);
    let sweep = sweep(&by_pass, 1);
    let layout = if defaults.channels_last {
        "channels-last"
    } else {
        "contiguous"
    };
    let rows = vec![
        row(
            format!("whole, BN separate, NCHW, one pass, b{batch}"),
            before,
            "the plain path (as PyTorch eager runs it)".into(),
        ),
        row(
            "whole, BN folded in the graph".into(),
            folded,
            format!("{:.2}x plain", folded / before),
        ),
        row(
            format!("whole, folded, {layout}"),
            last,
            format!("{:.2}x plain", last / before),
        ),
        row(
            format!("whole, folded, {layout}, passes of {chosen}"),
            best_default,
            format!(
                "{:.2}x plain (img/s by pass size {})",
                best_default / before,
                sweep
            ),
        ),
        Row {
            what: format!("whole, validation, {layout}, one pass, b{batch}"),
            images_per_sec: infer_one,
            flops_per_image: Some(forward_flops),
            peak,
            note: "inference mode, no graph".into(),
        },
        Row {
            what: format!("whole, validation, {layout}, passes of {chosen}"),
            images_per_sec: infer_passes,
            flops_per_image: Some(forward_flops),
            peak,
            note: format!("{:.2}x one pass", infer_passes / infer_one),
        },
        Row {
            what: format!("whole, validation, folded copy, passes of {chosen}"),
            images_per_sec: infer_copy,
            flops_per_image: Some(forward_flops),
            peak,
            note: format!(
                "{:.2}x one pass (what validation runs: BatchNorm folded into a copy)",
                infer_copy / infer_one
            ),
        },
    ];
    Ok((rows, best_default.max(last)))
}

/// Images per second of `step`, which runs one batch of `batch` images: the best of
/// three timings of at least `seconds` each (the caller warms up first).
fn best_rate(batch: i64, seconds: f64, mut step: impl FnMut()) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..3 {
        let (start, mut done) = (Instant::now(), 0);
        while start.elapsed().as_secs_f64() < seconds {
            step();
            done += batch;
        }
        best = best.max(done as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// A row maker for rows that all compute `flops` per image against `peak`.
fn flops_row(flops: f64, peak: f64) -> impl Fn(String, f64, String) -> Row {
    move |what, images_per_sec, note| Row {
        what,
        images_per_sec,
        flops_per_image: Some(flops),
        peak,
        note,
    }
}

/// A sweep's points as `size: img/s, ...` with `digits` decimals.
fn sweep(points: &[(i64, f64)], digits: usize) -> String {
    let shown: Vec<String> = points
        .iter()
        .map(|(size, v)| format!("{size}: {v:.digits$}"))
        .collect();
    shown.join(", ")
}

/// The training images of `images` with a 0.2 validation split per class.
fn train_images(images: usize) -> usize {
    let per_class = images / 2;
    let val = ((per_class as f64) * 0.2).round() as usize;
    2 * (per_class - val)
}

/// GFLOP/s of an `n` x `n` matrix multiply in `kind` on `device`, best of repeated
/// timings (a GPU is synchronised before each timing ends).
fn matmul_peak(kind: Kind, device: tch::Device, n: i64) -> f64 {
    let a = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
    let b = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let _ = a.matmul(&b);
    sync();
    let mut best = 0.0f64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 1.0 {
        let t = Instant::now();
        let _ = a.matmul(&b);
        sync();
        let flops = 2.0 * (n as f64).powi(3);
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// How many layers "inside the last stage" means for each backbone: the last block
/// and whatever follows it.
fn last_stage_layers(kind: BackboneKind) -> usize {
    match kind {
        BackboneKind::Resnet18 | BackboneKind::Resnet34 => 4,
        BackboneKind::Resnet50 | BackboneKind::Resnet101 | BackboneKind::Resnet152 => 6,
        BackboneKind::SmallCnn => 2,
        _ => 6,
    }
}

/// An experiment on the generated data with `extra` YAML lines.
fn experiment(
    root: &Path,
    options: &BenchOptions,
    kind: BackboneKind,
    extra: &str,
) -> anyhow::Result<Experiment> {
    let text = format!(
        "data: {{ dir: data, image_size: {}, batch_size: {}, interpolation: bilinear }}\n\
         model: {{ backbone: {}, weights: none }}\ndevice: {}\n{extra}",
        options.size,
        options.batch_size,
        kind.name(),
        options.device
    );
    crate::config::parse_str(&text, &root.join("bench.yaml")).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Random weights for `kind` in a safetensors file (the caches need a pretrained
/// backbone; the speed does not depend on the values).
fn random_weights(root: &Path, kind: BackboneKind) -> anyhow::Result<PathBuf> {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    tch::manual_seed(0);
    let _backbone = Backbone::new(&vs.root(), kind, false);
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let path = root.join(format!("{}.safetensors", kind.name()));
    crate::weights::write_safetensors(&path, &tensors, None)?;
    Ok(path)
}

/// Runs the trainer to the end and returns its epoch rows.
fn train_rows(exp: Experiment, phases: Phases, runs: &Path) -> anyhow::Result<Vec<EpochMetrics>> {
    let handle = train::spawn(
        exp,
        Options {
            runs_root: runs.to_path_buf(),
            phases,
            autostart: true,
            ..Default::default()
        },
    );
    let mut rows = Vec::new();
    for event in handle.events.iter() {
        match event {
            Event::EpochEnd(m) => rows.push(m),
            Event::Error(e) => bail!("{e}"),
            _ => {}
        }
    }
    handle.join();
    Ok(rows)
}

/// Two classes of noisy 320x320 images (a bright blob left or right).
fn make_images(root: &Path, images: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for i in 0..images {
        let class = i % 2;
        let dir = root.join(["left", "right"][class]);
        std::fs::create_dir_all(&dir).expect("cannot create the bench data folder");
        let cx = if class == 0 { 90 } else { 230 };
        let img = RgbImage::from_fn(320, 320, |x, y| {
            let (dx, dy) = (x as i64 - cx, y as i64 - 160);
            let base = if dx * dx + dy * dy < 60 * 60 { 190 } else { 50 };
            let v = base + rng.gen_range(0..50u8);
            Rgb([v, v, v / 2])
        });
        img.save(dir.join(format!("{i}.png")))
            .expect("cannot write a bench image");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_stage_is_inside_the_last_block() {
        // ResNet-18: layer4.1's two convs and BatchNorms train; layer4.0 and before are
        // the cached prefix (the stem + 7 blocks).
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut b = Backbone::new(&vs.root(), BackboneKind::Resnet18, false);
        b.table_mut()
            .unfreeze_last(last_stage_layers(BackboneKind::Resnet18));
        assert_eq!(b.frozen_segments(), 8);
        assert_eq!(train_images(96), 76);
    }
}
