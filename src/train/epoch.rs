//! One epoch: the input thread that augments the next batches, the training batches,
//! then validation, into one [`EpochMetrics`] row; a Stop mid-epoch saves
//! `stopped.safetensors` instead.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::cache::{human_bytes, Cache, TrainSource};
use super::events::{Compute, EpochMetrics, Event, LrLoweredAt, MixedEpoch};
use super::plan::{describe_compute, plan_cache};
use super::state::{panic_message, State};
use super::validate::validate;
use crate::config::Experiment;
use crate::data::Dataset;

/// What the trainer decided at a batch boundary.
pub(super) enum Control {
    /// Go on with the next batch; `paused`: how long the run was held there.
    Continue {
        /// Time spent paused, left out of epoch seconds and images/s.
        paused: Duration,
    },
    /// Stop now.
    Stop,
}

/// Where an epoch's training stands at a batch boundary.
#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    /// Batches done, of the epoch's batches.
    pub(super) batches: (usize, usize),
    /// Training images per second so far.
    pub(super) images_per_sec: f64,
}

/// Asked at every batch boundary, before the batch: the trainer's requests are
/// handled there (a pause holds inside it).
pub(super) type Boundary<'a> = dyn FnMut(&mut State, Progress) -> anyhow::Result<Control> + 'a;

/// A training batch made ready ahead of time by the input thread: the batch's random
/// generator (after the augmentation draws) and its augmented pixels, unless the
/// batch's backbone outputs are cached.
pub(super) struct Prepared {
    rng: ChaCha8Rng,
    pixels: Option<Tensor>,
}

/// The input thread panicked preparing a batch: its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct InputPanicked(String);

/// What the training batches of an epoch add up to.
pub(super) struct Trained {
    loss_sum: f64,
    correct: i64,
    /// Decisions made: one per image, one per (image, label) for multi-label.
    decided: i64,
    seen: usize,
    /// Seconds spent waiting for the input thread.
    input_wait: f64,
    /// Where the fine-tune phase began, if part-way through.
    mixed: Option<MixedEpoch>,
    /// Where the learning rate was lowered, if part-way through.
    lr_lowered: Option<LrLoweredAt>,
    /// Time held paused at batch boundaries.
    paused: Duration,
}

/// The random generator of batch `b` of 1-based epoch `epoch`.
pub(super) fn batch_rng(seed: u64, epoch: u32, b: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64) << 32 ^ (b as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
}

/// One epoch under the settings `exp`: training batches, then validation. None if
/// stopped mid-epoch (after saving `stopped.safetensors`). An input thread augments
/// the next batches while this one computes.
pub(super) fn run(
    s: &mut State,
    data: &Dataset,
    exp: &Experiment,
    boundary: &mut Boundary,
) -> anyhow::Result<Option<EpochMetrics>> {
    let number = s.epoch + 1;
    let start = Instant::now();
    let seed = exp.seed;
    if s.cache.is_none() {
        s.cache = plan_cache(exp, s, data);
    }
    let source = s
        .cache
        .as_ref()
        .map_or(TrainSource::Images, |c| c.train_source(number));
    let mut compute = describe_compute(exp, s, data, source);
    s.emit(Event::Compute(compute.clone()));
    let batches = data.train_batches(exp.data.batch_size, seed, number as u64, exp.data.sampling);
    let need_pixels: Vec<bool> = {
        let table = s.cache.as_mut().and_then(|c| c.train_table(source));
        batches
            .iter()
            .map(|b| !table.as_ref().is_some_and(|t| t.has(b)))
            .collect()
    };
    let augment = exp.data.augment.clone();
    let device = s.net.device();
    let train_start = Instant::now();
    let trained = std::thread::scope(|scope| {
        let (tx, rx) = flume::bounded::<Result<Prepared, InputPanicked>>(2);
        let (batches, need_pixels, augment) = (&batches, &need_pixels, &augment);
        std::thread::Builder::new()
            .name("tlcap input".into())
            .spawn_scoped(scope, move || {
                // One libtorch thread here: the trainer's threads keep the cores.
                let _ = tch::get_num_threads();
                tch::set_num_threads(1);
                for (b, images) in batches.iter().enumerate() {
                    let mut rng = batch_rng(seed, number, b);
                    // A panic here becomes the trainer's error, with its message.
                    let pixels = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        need_pixels[b].then(|| {
                            let x = data.train_batch(images, augment, &mut rng).0;
                            // Pinned host memory: the copy to a GPU does not block.
                            if device.is_cuda() {
                                x.pin_memory(device)
                            } else {
                                x
                            }
                        })
                    }));
                    let ready = match pixels {
                        Ok(pixels) => Ok(Prepared { rng, pixels }),
                        Err(panic) => Err(InputPanicked(panic_message(panic.as_ref()))),
                    };
                    let failed = ready.is_err();
                    if tx.send(ready).is_err() || failed {
                        return; // the epoch ended early, or input failed
                    }
                }
            })
            .expect("cannot start the input thread");
        let epoch = (number, source, &mut compute);
        train_batches(s, data, exp, batches, rx, epoch, boundary)
    })?;
    let Some(Trained {
        loss_sum,
        correct,
        decided,
        seen,
        input_wait,
        mixed,
        lr_lowered,
        paused,
    }) = trained
    else {
        return stopped(s, data);
    };
    let train_seconds = active_seconds(train_start, paused);
    let val_start = Instant::now();
    let k = s.net.frozen_segments();
    let plain = s
        .cache
        .as_mut()
        .filter(|c| c.split == k)
        .map(|c| &mut c.plain);
    let events = &s.events;
    let mut v = validate(&s.net, data, exp, plain, |done, total| {
        let _ = events.send(Event::Validating {
            epoch: number,
            done,
            total,
        });
    });
    let val_seconds = val_start.elapsed().as_secs_f64().max(1e-9);
    s.val_probabilities = std::mem::take(&mut v.probabilities);
    if let Some((needed, budget)) = s.cache.as_ref().and_then(Cache::too_big) {
        s.emit(Event::Note(format!(
            "cache off: it would need {}, over the cache budget of {} (finetune.prefix_cache_mb, \
                 at most half the available memory)",
            human_bytes(needed),
            human_bytes(budget)
        )));
        s.cache = None;
        s.cache_refused = true;
    }
    let seen = seen.max(1);
    // The headline figures: over labels for multi-label data, over classes otherwise.
    let (val_accuracy, val_f1, val_auc, val_balanced_accuracy, val_class_recall) =
        match &v.multilabel {
            Some(m) => (
                m.label_accuracy,
                Some(m.macro_f1),
                m.mean_auc,
                m.balanced_accuracy(),
                m.labels.iter().map(|l| l.recall).collect(),
            ),
            None => (
                v.confusion.accuracy(),
                v.binary.map(|b| b.f1),
                v.binary.and_then(|b| b.auc),
                v.confusion.balanced_accuracy(),
                v.confusion.recalls(),
            ),
        };
    Ok(Some(EpochMetrics {
        epoch: number,
        phase: s.phase,
        loss: loss_sum / seen as f64,
        accuracy: correct as f64 / decided.max(1) as f64,
        val_loss: v.loss,
        val_accuracy,
        val_precision: v.binary.map(|b| b.precision),
        val_recall: v.binary.map(|b| b.recall),
        val_f1,
        val_auc,
        val_balanced_accuracy: Some(val_balanced_accuracy),
        val_class_recall,
        multilabel: v.multilabel,
        confusion: v.confusion,
        lr: s.lr_used,
        deepened: s.deepened,
        seconds: active_seconds(start, paused),
        images_per_sec: seen as f64 / train_seconds,
        val_images_per_sec: data.val.len() as f64 / val_seconds,
        compute,
        input_wait_seconds: input_wait,
        stalled: false,
        suggestion: None,
        mixed,
        lr_lowered,
    }))
}

/// The training batches of an epoch, fed by the input thread through `prepared`;
/// None if told to stop.
fn train_batches(
    s: &mut State,
    data: &Dataset,
    exp: &Experiment,
    batches: &[Vec<usize>],
    prepared: flume::Receiver<Result<Prepared, InputPanicked>>,
    (number, source, compute): (u32, TrainSource, &mut Compute),
    boundary: &mut Boundary,
) -> anyhow::Result<Option<Trained>> {
    let train_start = Instant::now();
    let (mut loss_sum, mut correct, mut decided, mut seen) = (0.0, 0i64, 0i64, 0usize);
    let mut input_wait = 0.0;
    let mut split = s.net.frozen_segments();
    let mut paused = Duration::ZERO;
    let mut mixed = None;
    let mut lr_lowered = None;
    let mut progress = Progress {
        batches: (0, batches.len()),
        images_per_sec: 0.0,
    };
    // The phase and rate the epoch's first batch runs at: set after the first
    // boundary, where an unfreeze or a lowering may already take effect.
    let (mut start_phase, mut frozen_lr) = (s.phase, s.lr);
    for (b, images) in batches.iter().enumerate() {
        match boundary(s, progress)? {
            Control::Stop => return Ok(None),
            Control::Continue { paused: held } => paused += held,
        }
        if b == 0 {
            (start_phase, frozen_lr) = (s.phase, s.lr);
        }
        if b > 0 && lr_lowered.is_none() && s.phase == start_phase && s.lr < frozen_lr {
            lr_lowered = Some(LrLoweredAt {
                from_batch: b + 1,
                lr_before: frozen_lr,
            });
        }
        if b > 0 && mixed.is_none() && s.phase != start_phase {
            mixed = Some(MixedEpoch {
                finetune_from_batch: b + 1,
                batches: batches.len(),
                frozen_lr,
            });
        }
        let waiting = Instant::now();
        let ready = prepared
            .recv()
            .context("the input thread ended early")?
            .map_err(|e| anyhow!("preparing batch {}: {e}", b + 1))?;
        input_wait += waiting.elapsed().as_secs_f64();
        let Prepared { mut rng, pixels } = ready;
        // An Unfreeze or an edit between batches may change what is frozen.
        let k = s.net.frozen_segments();
        if s.cache.as_ref().is_some_and(|c| c.split != k) {
            s.cache = None;
        }
        if k != split {
            split = k;
            *compute = Compute {
                from_batch: Some(b + 1),
                ..describe_compute(exp, s, data, source)
            };
            s.emit(Event::Compute(compute.clone()));
        }
        let mut table = s.cache.as_mut().and_then(|c| c.train_table(source));
        let prefix = match table.as_ref().and_then(|t| t.get(images)) {
            Some(stored) => stored,
            None => {
                let x = match pixels {
                    Some(x) => x,
                    None => {
                        // Cached when the epoch began, not any more: augment here.
                        rng = batch_rng(exp.seed, number, b);
                        data.train_batch(images, &exp.data.augment, &mut rng).0
                    }
                };
                let out = s.net.run_prefix(&x, k);
                if let Some(t) = table.as_mut() {
                    t.put(images, &out);
                }
                out
            }
        };
        let y = data.label_tensor(images);
        let step = u64::from(s.phase_epochs) * batches.len() as u64 + b as u64;
        s.set_step_rates(exp, step, batches.len());
        s.opt.zero_grad();
        let (logits, loss) = s.net.backward_train_from(&prefix, k, &y, &mut rng);
        s.opt.step();
        let n = images.len();
        let batch_loss = loss.double_value(&[]);
        loss_sum += batch_loss * n as f64;
        let (right, made) = s.net.right_decisions(&logits, &y);
        correct += right;
        decided += made;
        seen += n;
        let elapsed = active_seconds(train_start, paused);
        s.emit(Event::Batch {
            epoch: number,
            batch: b + 1,
            of: batches.len(),
            loss: loss_sum / seen as f64,
            batch_loss,
            images_per_sec: seen as f64 / elapsed,
        });
        progress = Progress {
            batches: (b + 1, batches.len()),
            images_per_sec: seen as f64 / elapsed,
        };
    }
    Ok(Some(Trained {
        loss_sum,
        correct,
        decided,
        seen,
        input_wait,
        mixed,
        lr_lowered,
        paused,
    }))
}

/// Seconds since `since`, less `paused`.
fn active_seconds(since: Instant, paused: Duration) -> f64 {
    since
        .elapsed()
        .saturating_sub(paused)
        .as_secs_f64()
        .max(1e-9)
}

/// A Stop mid-epoch: saves `stopped.safetensors` and ends the epoch without a row.
fn stopped(s: &mut State, data: &Dataset) -> anyhow::Result<Option<EpochMetrics>> {
    // Multi-label: the best epoch's thresholds (none yet: the settings', read by
    // whoever loads it).
    let thresholds = s
        .best
        .as_ref()
        .and_then(|b| b.multilabel.as_ref())
        .map(|ml| ml.thresholds());
    let info = s.checkpoint_info(&data.classes, thresholds);
    let tensors = s.net.checkpoint_tensors();
    let path = s.run.write_checkpoint("stopped", &tensors, &info)?;
    s.emit(Event::Checkpoint(path));
    Ok(None)
}
