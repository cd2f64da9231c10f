//! One epoch: the input thread that augments the next batches, the training batches,
//! then validation, into one [`EpochMetrics`] row; a Stop mid-epoch saves
//! `stopped.safetensors` instead.

use std::time::Instant;

use anyhow::{anyhow, Context};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::cache::{human_bytes, Cache, TrainSource};
use super::controller::{panic_message, Control, State, Trainer};
use super::events::{Compute, EpochMetrics, Event, MixedEpoch};
use super::run_dir::CheckpointInfo;
use super::validate::{predictions, validate};
use crate::data::Dataset;

/// A training batch made ready ahead of time by the input thread: the batch's random
/// generator (after the augmentation draws) and its augmented pixels, unless the
/// batch's backbone outputs are cached.
pub(super) struct Prepared {
    rng: ChaCha8Rng,
    pixels: Option<Tensor>,
}

/// What the training batches of an epoch add up to.
pub(super) struct Trained {
    loss_sum: f64,
    correct: i64,
    seen: usize,
    /// Seconds spent waiting for the input thread.
    input_wait: f64,
    /// Where the fine-tune phase began, if part-way through.
    mixed: Option<MixedEpoch>,
}

/// The random generator of batch `b` of 1-based epoch `epoch`.
pub(super) fn batch_rng(seed: u64, epoch: u32, b: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64) << 32 ^ (b as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
}

impl Trainer {
    /// One epoch: training batches, then validation. None if stopped mid-epoch (after
    /// saving `stopped.safetensors`). An input thread augments the next batches while
    /// this one computes.
    pub(super) fn epoch(
        &mut self,
        s: &mut State,
        data: &Dataset,
    ) -> anyhow::Result<Option<EpochMetrics>> {
        let number = s.epoch + 1;
        let start = Instant::now();
        let paused_before = self.paused;
        let seed = self.exp.seed;
        if s.cache.is_none() {
            s.cache = self.plan_cache(s, data);
        }
        let source = s
            .cache
            .as_ref()
            .map_or(TrainSource::Images, |c| c.train_source(number));
        let mut compute = self.describe_compute(s, data, source);
        self.emit(Event::Compute(compute.clone()));
        let batches = data.train_batches(self.exp.data.batch_size, seed, number as u64);
        let need_pixels: Vec<bool> = {
            let table = s.cache.as_mut().and_then(|c| c.train_table(source));
            batches
                .iter()
                .map(|b| !table.as_ref().is_some_and(|t| t.has(b)))
                .collect()
        };
        let augment = self.exp.data.augment.clone();
        let device = s.net.device();
        let train_start = Instant::now();
        let paused_before_training = self.paused;
        let trained = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared, String>>(2);
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
                            Err(panic) => Err(panic_message(panic.as_ref())),
                        };
                        let failed = ready.is_err();
                        if tx.send(ready).is_err() || failed {
                            return; // the epoch ended early, or input failed
                        }
                    }
                })
                .expect("cannot start the input thread");
            let epoch = (number, source, &mut compute);
            self.train_batches(s, data, batches, rx, epoch, train_start)
        })?;
        let Some(Trained {
            loss_sum,
            correct,
            seen,
            input_wait,
            mixed,
        }) = trained
        else {
            return self.stopped(s, data);
        };
        let train_seconds = self.active_seconds(train_start, paused_before_training);
        let val_start = Instant::now();
        let k = s.net.frozen_segments();
        let plain = s
            .cache
            .as_mut()
            .filter(|c| c.split == k)
            .map(|c| &mut c.plain);
        let events = &self.events;
        let mut v = validate(
            &s.net,
            data,
            self.exp.data.batch_size,
            plain,
            |done, total| {
                let _ = events.send(Event::Validating {
                    epoch: number,
                    done,
                    total,
                });
            },
        );
        let val_seconds = val_start.elapsed().as_secs_f64().max(1e-9);
        s.val_probabilities = std::mem::take(&mut v.probabilities);
        if let Some((needed, budget)) = s.cache.as_ref().and_then(Cache::too_big) {
            self.emit(Event::Note(format!(
                "cache off: it would need {}, over the cache budget of {} (finetune.prefix_cache_mb, \
                 at most half the available memory)",
                human_bytes(needed),
                human_bytes(budget)
            )));
            s.cache = None;
            s.cache_refused = true;
        }
        let seen = seen.max(1);
        Ok(Some(EpochMetrics {
            epoch: number,
            phase: s.phase,
            loss: loss_sum / seen as f64,
            accuracy: correct as f64 / seen as f64,
            val_loss: v.loss,
            val_accuracy: v.confusion.accuracy(),
            val_precision: v.binary.map(|b| b.precision),
            val_recall: v.binary.map(|b| b.recall),
            val_f1: v.binary.map(|b| b.f1),
            val_auc: v.binary.and_then(|b| b.auc),
            confusion: v.confusion,
            lr: s.lr,
            seconds: self.active_seconds(start, paused_before),
            images_per_sec: seen as f64 / train_seconds,
            val_images_per_sec: data.val.len() as f64 / val_seconds,
            compute,
            input_wait_seconds: input_wait,
            stalled: false,
            suggestion: None,
            mixed,
        }))
    }

    /// The training batches of an epoch, fed by the input thread through `prepared`;
    /// None if told to stop.
    pub(super) fn train_batches(
        &mut self,
        s: &mut State,
        data: &Dataset,
        batches: &[Vec<usize>],
        prepared: std::sync::mpsc::Receiver<Result<Prepared, String>>,
        (number, source, compute): (u32, TrainSource, &mut Compute),
        train_start: Instant,
    ) -> anyhow::Result<Option<Trained>> {
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        let mut input_wait = 0.0;
        let mut split = s.net.frozen_segments();
        let paused_before = self.paused;
        let (start_phase, frozen_lr) = (s.phase, s.lr);
        let mut mixed = None;
        for (b, images) in batches.iter().enumerate() {
            if let Control::Stop = self.control(s)? {
                return Ok(None);
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
                    ..self.describe_compute(s, data, source)
                };
                self.emit(Event::Compute(compute.clone()));
            }
            let mut table = s.cache.as_mut().and_then(|c| c.train_table(source));
            let prefix = match table.as_ref().and_then(|t| t.get(images)) {
                Some(stored) => stored,
                None => {
                    let x = match pixels {
                        Some(x) => x,
                        None => {
                            // Cached when the epoch began, not any more: augment here.
                            rng = batch_rng(self.exp.seed, number, b);
                            data.train_batch(images, &self.exp.data.augment, &mut rng).0
                        }
                    };
                    let out = s.net.run_prefix(&x, k);
                    if let Some(t) = table.as_mut() {
                        t.put(images, &out);
                    }
                    out
                }
            };
            let logits = s.net.forward_train_from(&prefix, k, &mut rng);
            let y = data.label_tensor(images);
            let loss = s.net.loss(&logits, &y);
            s.opt.backward_step(&loss);
            let n = images.len();
            let batch_loss = loss.double_value(&[]);
            loss_sum += batch_loss * n as f64;
            correct += predictions(&s.net, &logits)
                .eq_tensor(&y.to_device(logits.device()))
                .sum(Kind::Int64)
                .int64_value(&[]);
            seen += n;
            let elapsed = self.active_seconds(train_start, paused_before);
            self.emit(Event::Batch {
                epoch: number,
                batch: b + 1,
                of: batches.len(),
                loss: loss_sum / seen as f64,
                batch_loss,
                images_per_sec: seen as f64 / elapsed,
            });
            self.progress = ((b + 1, batches.len()), seen as f64 / elapsed);
            self.beat(
                s,
                super::status::RunState::Running,
                (b + 1, batches.len()),
                seen as f64 / elapsed,
                false,
            );
        }
        Ok(Some(Trained {
            loss_sum,
            correct,
            seen,
            input_wait,
            mixed,
        }))
    }

    /// Seconds since `since`, less the time paused since then (`paused_then` is
    /// [`Trainer::paused`] at `since`).
    fn active_seconds(&self, since: Instant, paused_then: std::time::Duration) -> f64 {
        let paused = self.paused.saturating_sub(paused_then);
        since
            .elapsed()
            .saturating_sub(paused)
            .as_secs_f64()
            .max(1e-9)
    }

    /// A Stop mid-epoch: saves `stopped.safetensors` and ends the epoch without a row.
    pub(super) fn stopped(
        &mut self,
        s: &State,
        data: &Dataset,
    ) -> anyhow::Result<Option<EpochMetrics>> {
        let info = checkpoint_info(s, data);
        let tensors = s.net.checkpoint_tensors();
        let run = self.run.as_mut().expect("run folder open");
        let path = run.write_checkpoint("stopped", &tensors, &info)?;
        self.emit(Event::Checkpoint(path));
        Ok(None)
    }
}

/// What a checkpoint written now records: the last finished epoch and its phase.
pub(super) fn checkpoint_info(s: &State, data: &Dataset) -> CheckpointInfo {
    CheckpointInfo {
        epoch: s.epoch,
        phase: s.phase,
        unfrozen: s.unfrozen,
        classes: data.classes.clone(),
        precision: Some(crate::runtime::precision_of(s.net.precision())),
    }
}
