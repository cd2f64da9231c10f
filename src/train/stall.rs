//! Plateau detection with Keras `ReduceLROnPlateau` / `EarlyStopping` semantics:
//! `monitor`, `mode` (auto/min/max), `patience`, `min_delta`, `cooldown`,
//! `start_from_epoch`.

use super::events::EpochMetrics;
use crate::config::{Experiment, Monitor, StallConfig, StallMode};

/// Whether a larger or a smaller value of the monitored metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Larger is better (accuracies).
    Max,
    /// Smaller is better (losses).
    Min,
}

/// The direction for a monitor and mode; `auto` is max for accuracies, min for losses
/// (Keras: "acc" in the name means max).
pub fn direction(monitor: Monitor, mode: StallMode) -> Direction {
    match mode {
        StallMode::Max => Direction::Max,
        StallMode::Min => Direction::Min,
        StallMode::Auto => match monitor {
            Monitor::ValAccuracy
            | Monitor::ValBalancedAccuracy
            | Monitor::Accuracy
            | Monitor::ValMeanAuc => Direction::Max,
            Monitor::ValLoss | Monitor::Loss => Direction::Min,
        },
    }
}

/// Watches one metric epoch by epoch and says when it has stopped improving.
#[derive(Debug, Clone)]
pub struct StallDetector {
    config: StallConfig,
    best: Option<f64>,
    /// Epochs since the last improvement (outside cooldown).
    wait: u32,
    /// Epochs of cooldown left after a stall.
    cooldown_left: u32,
}

impl StallDetector {
    /// A detector with nothing seen yet.
    pub fn new(config: StallConfig) -> Self {
        StallDetector {
            config,
            best: None,
            wait: 0,
            cooldown_left: 0,
        }
    }

    /// Takes new settings (a live edit) and keeps what has been seen.
    pub fn set_config(&mut self, config: StallConfig) {
        self.config = config;
    }

    /// Forgets the history (a new phase starts from a fresh baseline).
    pub fn reset(&mut self) {
        *self = StallDetector::new(self.config.clone());
    }

    /// The best value seen so far.
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    /// Epochs without improvement so far.
    pub fn wait(&self) -> u32 {
        self.wait
    }

    fn improved(&self, value: f64) -> bool {
        let Some(best) = self.best else {
            return true;
        };
        match direction(self.config.monitor, self.config.mode) {
            Direction::Max => value - self.config.min_delta > best,
            Direction::Min => value + self.config.min_delta < best,
        }
    }

    /// Records the monitored value after `epoch` (0-based, counted across phases);
    /// returns true when the run has stalled: `patience` epochs in a row without an
    /// improvement larger than `min_delta`. After a stall the count restarts, and
    /// nothing is counted during `cooldown` epochs or before `start_from_epoch`.
    /// NaN never counts as an improvement.
    pub fn observe(&mut self, epoch: u32, value: f64) -> bool {
        if epoch < self.config.start_from_epoch {
            return false;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.wait = 0;
        }
        if !value.is_nan() && self.improved(value) {
            self.best = Some(value);
            self.wait = 0;
            return false;
        }
        if self.cooldown_left > 0 {
            return false;
        }
        self.wait += 1;
        if self.wait >= self.config.patience.max(1) {
            self.wait = 0;
            self.cooldown_left = self.config.cooldown;
            return true;
        }
        false
    }
}

/// The value of the monitored metric in an epoch row.
pub fn monitored(monitor: Monitor, m: &EpochMetrics) -> f64 {
    match monitor {
        Monitor::ValAccuracy => m.val_accuracy,
        Monitor::ValBalancedAccuracy => m.balanced_accuracy(),
        Monitor::ValMeanAuc => m.mean_auc().unwrap_or(f64::NAN),
        Monitor::ValLoss => m.val_loss,
        Monitor::Accuracy => m.accuracy,
        Monitor::Loss => m.loss,
    }
}

/// Which epoch counts as the best of a run: the stall monitor, in its direction.
/// The one rule for `best.safetensors`, resume, the summary and the dashboard's best
/// row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BestRule {
    /// The monitored metric.
    pub monitor: Monitor,
    /// Its direction (`auto`: max for accuracies, min for losses).
    pub mode: StallMode,
}

impl BestRule {
    /// The rule of an experiment's `stall` settings.
    pub fn of(exp: &Experiment) -> BestRule {
        BestRule {
            monitor: exp.stall.monitor,
            mode: exp.stall.mode,
        }
    }

    /// Whether `m` beats `best` (strictly: the earliest best stays on a tie; NaN is the
    /// worst value, anything real beats it, it beats nothing).
    pub fn is_better(self, m: &EpochMetrics, best: &EpochMetrics) -> bool {
        let (a, b) = (monitored(self.monitor, m), monitored(self.monitor, best));
        if a.is_nan() || b.is_nan() {
            return !a.is_nan() && b.is_nan();
        }
        match direction(self.monitor, self.mode) {
            Direction::Max => a > b,
            Direction::Min => a < b,
        }
    }

    /// The better of the best so far and `m`.
    pub fn better(self, best: Option<EpochMetrics>, m: &EpochMetrics) -> Option<EpochMetrics> {
        match best {
            Some(b) if !self.is_better(m, &b) => Some(b),
            _ => Some(m.clone()),
        }
    }

    /// The index of the best row.
    pub fn best_index(self, rows: &[EpochMetrics]) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, m) in rows.iter().enumerate() {
            if best.is_none_or(|b| self.is_better(m, &rows[b])) {
                best = Some(i);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnStall;

    fn row(epoch: u32, val_accuracy: f64, val_loss: f64) -> EpochMetrics {
        serde_json::from_value(serde_json::json!({
            "epoch": epoch, "phase": "frozen", "loss": 0.5, "accuracy": 0.5,
            "val_loss": val_loss, "val_accuracy": val_accuracy,
            "val_precision": null, "val_recall": null, "val_f1": null, "val_auc": null,
            "confusion": {"n": 2, "counts": [0, 0, 0, 0]}, "lr": 0.001,
            "seconds": 1.0, "images_per_sec": 1.0, "val_images_per_sec": 1.0,
            "stalled": false,
        }))
        .unwrap()
    }

    /// The best row follows the monitor and its direction; ties keep the earliest;
    /// NaN never wins.
    #[test]
    fn the_best_epoch_follows_the_monitor() {
        let rows = [
            row(1, 0.80, 0.40),
            row(2, 0.85, 0.45),
            row(3, 0.85, 0.35),
            row(4, f64::NAN, f64::NAN),
        ];
        let acc = BestRule::default();
        assert_eq!(acc.best_index(&rows), Some(1));
        let loss = BestRule {
            monitor: Monitor::ValLoss,
            mode: StallMode::Auto,
        };
        assert_eq!(loss.best_index(&rows), Some(2));
        let worst_loss = BestRule {
            monitor: Monitor::ValLoss,
            mode: StallMode::Max,
        };
        assert_eq!(worst_loss.best_index(&rows), Some(1));
        assert_eq!(acc.best_index(&[]), None);
    }

    fn config(patience: u32, min_delta: f64, cooldown: u32, start: u32) -> StallConfig {
        StallConfig {
            monitor: Monitor::ValAccuracy,
            mode: StallMode::Auto,
            patience,
            min_delta,
            cooldown,
            start_from_epoch: start,
            on_stall: OnStall::Suggest,
            ..StallConfig::default()
        }
    }

    fn stalls(d: &mut StallDetector, curve: &[f64]) -> Vec<u32> {
        (0..curve.len() as u32)
            .filter(|&e| d.observe(e, curve[e as usize]))
            .collect()
    }

    /// A curve that rises and then plateaus: the stall is flagged exactly `patience`
    /// epochs after the last real improvement.
    #[test]
    fn flags_a_plateauing_curve_after_patience() {
        let curve = [
            0.60, 0.70, 0.78, 0.82, 0.845, 0.846, 0.844, 0.847, 0.845, 0.846,
        ];
        let mut d = StallDetector::new(config(3, 0.005, 0, 0));
        // Improvements > 0.005 end at epoch 4 (0.845); epochs 5, 6, 7 do not count.
        assert_eq!(stalls(&mut d, &curve), vec![7]);
        assert_eq!(d.best(), Some(0.845));
        // Without min_delta, 0.846 (epoch 5) and 0.847 (epoch 7) count as improvements.
        let mut d = StallDetector::new(config(3, 0.0, 0, 0));
        assert_eq!(stalls(&mut d, &curve), Vec::<u32>::new());
    }

    #[test]
    fn restarts_after_a_stall_and_honours_cooldown_and_start() {
        let flat = [0.5; 12];
        // patience 2: epoch 0 sets the baseline, stalls at 2, 4, 6, ...
        let mut d = StallDetector::new(config(2, 0.0, 0, 0));
        assert_eq!(stalls(&mut d, &flat), vec![2, 4, 6, 8, 10]);
        // cooldown 2, as Keras ReduceLROnPlateau counts it: the cooldown ticks down on
        // epochs 3 and 4, and epoch 4 (cooldown just over) already counts: 5, 8, 11.
        let mut d = StallDetector::new(config(2, 0.0, 2, 0));
        assert_eq!(stalls(&mut d, &flat), vec![2, 5, 8, 11]);
        // start_from_epoch 5: nothing happens before epoch 5.
        let mut d = StallDetector::new(config(2, 0.0, 0, 5));
        assert_eq!(stalls(&mut d, &flat), vec![7, 9, 11]);
    }

    #[test]
    fn losses_improve_downwards_and_nan_never_improves() {
        let mut c = config(2, 0.01, 0, 0);
        c.monitor = Monitor::ValLoss;
        let mut d = StallDetector::new(c.clone());
        assert_eq!(stalls(&mut d, &[1.0, 0.8, 0.795, 0.799, 0.5]), vec![3]);
        let mut d = StallDetector::new(c.clone());
        assert_eq!(stalls(&mut d, &[1.0, f64::NAN, f64::NAN]), vec![2]);
        // mode: max on a loss is taken literally.
        c.mode = StallMode::Max;
        let mut d = StallDetector::new(c);
        assert_eq!(stalls(&mut d, &[1.0, 0.8, 0.6]), vec![2]);
    }
}
