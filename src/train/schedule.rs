//! Learning-rate schedules: the factor of a phase's `lr` and Adam's beta1 at each
//! training step of the phase. A pure function of the step, the phase's length and its
//! settings, so a live edit of `epochs` or `lr` recomputes the rest of the schedule
//! from the current step, a lowered rate scales it from there, and a resumed run picks
//! it up where it was.

use std::f64::consts::PI;

use crate::config::{FinetunePhase, FrozenPhase, Schedule};

/// one_cycle starts at lr / 25 (fastai's `div`, PyTorch's `div_factor`) ...
const ONE_CYCLE_DIV: f64 = 25.0;
/// ... and ends at lr / (25 x 1e4) (fastai's `div_final`, PyTorch's
/// `final_div_factor`).
const ONE_CYCLE_FINAL_DIV: f64 = 1e4;
/// one_cycle warms up over this share of the phase unless told otherwise (`pct_start`).
const ONE_CYCLE_WARMUP: f64 = 0.25;
/// Adam's beta1 in one_cycle: high, low at the peak rate, high again (fastai's `moms`).
const ONE_CYCLE_BETA1: (f64, f64) = (0.95, 0.85);

/// A phase's schedule over its steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseSchedule {
    kind: Schedule,
    /// Steps of warm-up.
    warmup: u64,
    /// Steps in the phase.
    total: u64,
}

/// The schedule settings of one phase, whichever it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleSettings {
    /// The curve.
    pub kind: Schedule,
    /// Warm-up in epochs, if given.
    pub warmup_epochs: Option<f64>,
    /// Warm-up in steps, if given.
    pub warmup_steps: Option<u64>,
    /// The phase's epochs.
    pub epochs: u32,
}

impl From<&FrozenPhase> for ScheduleSettings {
    fn from(p: &FrozenPhase) -> ScheduleSettings {
        ScheduleSettings {
            kind: p.schedule,
            warmup_epochs: p.warmup_epochs,
            warmup_steps: p.warmup_steps,
            epochs: p.epochs,
        }
    }
}

impl From<&FinetunePhase> for ScheduleSettings {
    fn from(p: &FinetunePhase) -> ScheduleSettings {
        ScheduleSettings {
            kind: p.schedule,
            warmup_epochs: p.warmup_epochs,
            warmup_steps: p.warmup_steps,
            epochs: p.epochs,
        }
    }
}

impl PhaseSchedule {
    /// The schedule of a phase with `settings` and `steps_per_epoch` training steps in
    /// each epoch.
    pub fn new(settings: ScheduleSettings, steps_per_epoch: usize) -> PhaseSchedule {
        let per_epoch = steps_per_epoch as f64;
        let total = u64::from(settings.epochs) * steps_per_epoch as u64;
        let warmup = match (settings.warmup_steps, settings.warmup_epochs) {
            (Some(steps), _) => steps,
            (None, Some(epochs)) => (epochs * per_epoch).round() as u64,
            (None, None) if settings.kind == Schedule::OneCycle => {
                (ONE_CYCLE_WARMUP * total as f64).round() as u64
            }
            (None, None) => 0,
        };
        PhaseSchedule {
            kind: settings.kind,
            warmup: warmup.min(total),
            total,
        }
    }

    /// Whether every step runs at `lr` itself (constant, no warm-up): then nothing
    /// needs setting per step.
    pub fn is_flat(&self) -> bool {
        self.kind == Schedule::Constant && self.warmup == 0
    }

    /// Where step `t` (0-based) is: in the warm-up with its share done, or after it
    /// with the share of the rest done (1 past the phase's end).
    fn position(&self, t: u64) -> (bool, f64) {
        if t < self.warmup {
            return (true, t as f64 / self.warmup as f64);
        }
        let rest = self.total.saturating_sub(self.warmup).max(1);
        (false, ((t - self.warmup) as f64 / rest as f64).min(1.0))
    }

    /// The factor of `lr` at step `t` of the phase (0-based).
    pub fn factor(&self, t: u64) -> f64 {
        let (warming, p) = self.position(t);
        let half_cosine_down = |from: f64, to: f64| to + (from - to) * (1.0 + (PI * p).cos()) / 2.0;
        match (self.kind, warming) {
            // A linear climb that reaches lr at the warm-up's last step.
            (Schedule::Constant | Schedule::Cosine, true) => (t + 1) as f64 / self.warmup as f64,
            (Schedule::Constant, false) => 1.0,
            (Schedule::Cosine, false) => half_cosine_down(1.0, 0.0),
            (Schedule::OneCycle, true) => half_cosine_down(1.0 / ONE_CYCLE_DIV, 1.0),
            (Schedule::OneCycle, false) => {
                half_cosine_down(1.0, 1.0 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV))
            }
        }
    }

    /// Adam's beta1 at step `t`, for schedules that move it (one_cycle); None: keep
    /// the optimizer's own (0.9).
    pub fn beta1(&self, t: u64) -> Option<f64> {
        if self.kind != Schedule::OneCycle {
            return None;
        }
        let (high, low) = ONE_CYCLE_BETA1;
        let (warming, p) = self.position(t);
        let down = (1.0 - (PI * p).cos()) / 2.0;
        Some(if warming {
            high + (low - high) * down
        } else {
            low + (high - low) * down
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: Schedule, warmup_epochs: Option<f64>, epochs: u32) -> PhaseSchedule {
        PhaseSchedule::new(
            ScheduleSettings {
                kind,
                warmup_epochs,
                warmup_steps: None,
                epochs,
            },
            10,
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn constant_without_warmup_is_flat_and_with_it_climbs_linearly() {
        let flat = schedule(Schedule::Constant, None, 4);
        assert!(flat.is_flat());
        assert!((0..40).all(|t| flat.factor(t) == 1.0));
        assert_eq!(flat.beta1(3), None);
        // Half an epoch of 10 steps: 5 steps at 1/5, 2/5, ... 5/5, then 1.
        let warm = schedule(Schedule::Constant, Some(0.5), 4);
        assert!(!warm.is_flat());
        let rates: Vec<f64> = (0..7).map(|t| warm.factor(t)).collect();
        assert_eq!(rates, [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn cosine_peaks_after_warmup_halves_midway_and_ends_near_zero() {
        // 1 epoch of warm-up, 4 epochs in all: 10 warm-up steps, 30 after.
        let s = schedule(Schedule::Cosine, Some(1.0), 4);
        assert!(close(s.factor(9), 1.0));
        assert!(close(s.factor(10), 1.0));
        assert!(close(s.factor(25), 0.5));
        let last = s.factor(39);
        assert!(last > 0.0 && last < 0.003, "{last}");
        // Past the end (epochs edited down): the floor, not a new cycle.
        assert!(close(s.factor(400), 0.0));
        // Without warm-up it starts at the peak.
        assert!(close(schedule(Schedule::Cosine, None, 4).factor(0), 1.0));
    }

    #[test]
    fn one_cycle_follows_fastai_rates_and_momentum() {
        // 4 epochs of 10 steps: a quarter (10 steps) up, 30 down.
        let s = schedule(Schedule::OneCycle, None, 4);
        assert!(close(s.factor(0), 1.0 / 25.0));
        assert!(close(s.factor(5), (1.0 / 25.0 + 1.0) / 2.0));
        assert!(close(s.factor(10), 1.0));
        assert!(close(s.factor(25), (1.0 + 1.0 / 25e4) / 2.0));
        assert!(s.factor(39) < 0.003);
        assert_eq!(s.beta1(0), Some(0.95));
        assert!(close(s.beta1(10).unwrap(), 0.85));
        assert!(close(s.beta1(25).unwrap(), 0.90));
        // Rates rise to the peak then fall: never above lr.
        let rates: Vec<f64> = (0..40).map(|t| s.factor(t)).collect();
        assert!(rates.windows(2).take(9).all(|w| w[0] < w[1]));
        assert!(rates.windows(2).skip(10).all(|w| w[0] > w[1]));
        assert!(rates.iter().all(|&r| r <= 1.0));
    }

    #[test]
    fn warmup_in_steps_and_longer_than_the_phase() {
        let s = PhaseSchedule::new(
            ScheduleSettings {
                kind: Schedule::Cosine,
                warmup_epochs: None,
                warmup_steps: Some(4),
                epochs: 1,
            },
            10,
        );
        assert!(close(s.factor(3), 1.0));
        assert!(close(s.factor(1), 0.5));
        // A warm-up longer than the phase is cut to the phase.
        let long = schedule(Schedule::Constant, Some(9.0), 1);
        assert!(close(long.factor(9), 1.0));
        assert!(close(long.factor(0), 0.1));
    }

    #[test]
    fn more_epochs_stretch_the_rest_of_the_schedule_from_the_same_step() {
        // A live edit from 4 to 8 epochs at step 20: the rate there goes up again
        // (more of the curve is left) and still falls to ~0 at the new end.
        let before = schedule(Schedule::Cosine, None, 4);
        let after = schedule(Schedule::Cosine, None, 8);
        assert!(after.factor(20) > before.factor(20));
        assert!(after.factor(79) < 0.001);
    }
}
