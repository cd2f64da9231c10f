//! How typed trainer events read for people: one wording for the dashboard and the
//! headless output, so the trainer sends facts and never formats them.

use crate::config::{Monitor, Precision};
use crate::train::cache::human_bytes;
use crate::train::events::{CacheUse, Compute, FrozenPart, StallAction, Suggestion};
use crate::train::{EpochMetrics, Phase};

/// `bf16` or `fp32`.
pub fn precision(p: Precision) -> &'static str {
    match p {
        Precision::Bf16 => "bf16",
        Precision::Fp32 | Precision::Auto => "fp32",
    }
}

/// `learning rate 1e-5 -> 1e-6 from batch 13 of epoch 6 (r)`.
pub fn lr_lowered(from: f64, to: f64, epoch: u32, batch: Option<usize>, by: &str) -> String {
    let when = match batch {
        Some(b) => format!("from batch {b} of epoch {epoch}"),
        None => format!("from epoch {epoch}"),
    };
    format!(
        "learning rate {} -> {} {when} ({by})",
        short_float(from),
        short_float(to)
    )
}

/// The name of a monitored metric as the experiment file writes it.
pub fn monitor(m: Monitor) -> &'static str {
    match m {
        Monitor::ValAccuracy => "val_accuracy",
        Monitor::ValBalancedAccuracy => "val_balanced_accuracy",
        Monitor::ValLoss => "val_loss",
        Monitor::Accuracy => "accuracy",
        Monitor::Loss => "loss",
        Monitor::ValMeanAuc => "val_mean_auc",
    }
}

/// A setting's value as the experiment file writes it (`adam`, `val_accuracy`,
/// `unfreeze`, `imagenet`), never Rust's debug names.
pub fn word<T: serde::Serialize>(value: &T) -> String {
    serde_yaml::to_string(value)
        .map(|s| s.trim().trim_matches('\'').to_string())
        .unwrap_or_default()
}

/// Why a run ended, in words: `completed`, `stopped`, `stopped on stall`.
pub fn end_reason(reason: crate::train::EndReason) -> &'static str {
    match reason {
        crate::train::EndReason::Completed => "completed",
        crate::train::EndReason::Stopped => "stopped",
        crate::train::EndReason::Stalled => "stopped on stall",
    }
}

/// `1 epoch`, `4 epochs`.
pub fn epochs(n: u32) -> String {
    if n == 1 {
        "1 epoch".into()
    } else {
        format!("{n} epochs")
    }
}

/// A float in scientific notation with at most 4 significant digits: `1e-6`, not
/// `1.0000000000000002e-6`.
pub fn short_float(x: f64) -> String {
    let text = format!("{x:.3e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if mantissa.contains('.') => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        _ => text,
    }
}

/// How an epoch computes, e.g. `bf16 frozen part, features cached (13 MB)`.
pub fn compute(c: &Compute) -> String {
    let Some(p) = c.precision else {
        return "fp32, no frozen part (the first segment trains)".into();
    };
    let p = precision(p);
    let part = match &c.frozen {
        FrozenPart::Nothing => return "fp32, no frozen part (the first segment trains)".into(),
        FrozenPart::Features => "features".to_string(),
        FrozenPart::PrefixUpTo(name) => format!("prefix up to {name}"),
    };
    let state = |complete: bool| if complete { "cached" } else { "caching" };
    let what = match c.cache {
        CacheUse::Off => {
            return with_batch(format!("{p} frozen part, no cache"), c.from_batch);
        }
        CacheUse::Training { complete } => format!("{part} {}", state(complete)),
        CacheUse::View { view, of, complete } => {
            format!("{part} of view {}/{of} {}", view + 1, state(complete))
        }
        CacheUse::ValidationOnly => format!("validation {part} cached (training is augmented)"),
    };
    let text = if c.cache_bytes == 0 {
        format!("{p} frozen part, {what}")
    } else {
        format!("{p} frozen part, {what} ({})", human_bytes(c.cache_bytes))
    };
    with_batch(text, c.from_batch)
}

fn with_batch(text: String, from_batch: Option<usize>) -> String {
    match from_batch {
        Some(b) => format!("{text} from batch {b}"),
        None => text,
    }
}

/// A stall and what to do, e.g. `val_accuracy 0.7900, no gain > 0.005 for 2 epochs:
/// unfreeze the last 14 layers at lr 1e-5`.
pub fn suggestion(s: &Suggestion) -> String {
    let (seen, action) = suggestion_parts(s);
    format!("{seen}: {action}")
}

/// A stall's two halves: what was seen (`val_accuracy 0.7900, no gain > 0.005 for 2
/// epochs`) and what to do (`unfreeze the last 14 layers at lr 1e-5`), for places that
/// put the action first.
pub fn suggestion_parts(s: &Suggestion) -> (String, String) {
    let seen = format!(
        "{} {:.4}, no gain > {} for {}",
        monitor(s.monitor),
        s.value,
        s.min_delta,
        epochs(s.patience)
    );
    let action = match s.action {
        StallAction::Stopping => "stopping".to_string(),
        StallAction::Unfreeze {
            layers,
            lr,
            automatic: true,
        } => format!("unfreezing the last {layers} layers at lr {lr:e} from the next epoch"),
        StallAction::Unfreeze { layers, lr, .. } => {
            format!("unfreeze the last {layers} layers at lr {lr:e}")
        }
        StallAction::UnfreezeMore {
            ref group,
            layers,
            automatic: true,
        } => format!("unfreezing {group} from the next epoch (the last {layers} layers train)"),
        StallAction::UnfreezeMore {
            ref group, layers, ..
        } => format!("unfreeze {group} too (the last {layers} layers)"),
        StallAction::LowerLr { from, to } => format!(
            "lowering the learning rate {} -> {} from the next epoch",
            short_float(from),
            short_float(to)
        ),
        StallAction::StopOrLowerLr { to } => format!(
            "stop, or lower the learning rate (e.g. to {})",
            short_float(to)
        ),
    };
    (seen, action)
}

/// An epoch's phase in tables: `frozen`, `finetune`, `mixed` (an unfreeze part-way),
/// or `ft+N` for a fine-tune epoch N block groups deeper than the phase began
/// (progressive unfreezing).
pub fn phase_label(m: &EpochMetrics) -> String {
    match (m.phase, &m.mixed) {
        (_, Some(_)) => "mixed".into(),
        (Phase::Finetune, None) if m.deepened > 0 => format!("ft+{}", m.deepened),
        (phase, None) => phase.name().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_floats() {
        assert_eq!(short_float(1e-5 / 10.0), "1e-6");
        assert_eq!(short_float(2.5e-4), "2.5e-4");
    }

    #[test]
    fn compute_reads_as_before() {
        let mut c = Compute {
            precision: Some(Precision::Bf16),
            frozen: FrozenPart::Features,
            cache: CacheUse::Training { complete: true },
            cache_bytes: 13_000_000,
            from_batch: None,
        };
        assert_eq!(compute(&c), "bf16 frozen part, features cached (13 MB)");
        c.frozen = FrozenPart::PrefixUpTo("features.16.conv.3".into());
        c.cache = CacheUse::View {
            view: 0,
            of: 3,
            complete: false,
        };
        c.from_batch = Some(4);
        assert_eq!(
            compute(&c),
            "bf16 frozen part, prefix up to features.16.conv.3 of view 1/3 caching (13 MB) from batch 4"
        );
        assert_eq!(
            compute(&Compute::default()),
            "fp32, no frozen part (the first segment trains)"
        );
    }

    #[test]
    fn suggestions_read_as_before() {
        let mut s = Suggestion {
            monitor: Monitor::ValAccuracy,
            value: 0.79,
            min_delta: 0.005,
            patience: 2,
            action: StallAction::Unfreeze {
                layers: 14,
                lr: 1e-5,
                automatic: false,
            },
        };
        assert_eq!(
            suggestion(&s),
            "val_accuracy 0.7900, no gain > 0.005 for 2 epochs: unfreeze the last 14 layers at lr 1e-5"
        );
        s.action = StallAction::StopOrLowerLr { to: 1e-6 };
        assert!(suggestion(&s).ends_with("lower the learning rate (e.g. to 1e-6)"));
    }
}
