//! Live edits: a saved experiment file applied to a run in progress at an epoch
//! boundary.

use super::events::Phase;
use super::state::{build_optimizer, State};
use crate::config::{Change, Experiment, LiveEdit};
use crate::runtime::resolve_precision;

/// What applying an edit did.
pub(super) struct Applied {
    /// The settings now in force.
    pub(super) next: Experiment,
    /// What changed.
    pub(super) changes: Vec<Change>,
    /// The trainable layers changed (a new `unfreeze_last` or `train_bn` while
    /// fine-tuning).
    pub(super) layers_changed: bool,
}

/// Applies `edited` to a run in progress under `running`: live settings take effect in
/// `s` now, restart-only ones (data, model, device, seed) keep their running values.
pub(super) fn apply(
    s: &mut State,
    running: &Experiment,
    edited: &Experiment,
) -> anyhow::Result<Applied> {
    let LiveEdit { changes, next } = LiveEdit::new(running, edited);
    let old = running;
    let optimizer_of = |p: &crate::config::FrozenPhase| (p.optimizer, p.momentum);
    let ft_optimizer_of = |p: &crate::config::FinetunePhase| (p.optimizer, p.momentum);
    let cache_settings = |e: &Experiment| {
        (
            e.precision,
            e.data.augment.clone(),
            e.frozen.feature_cache,
            e.frozen.augment_views,
            e.finetune.prefix_cache,
            e.finetune.prefix_cache_mb,
        )
    };
    if cache_settings(old) != cache_settings(&next) {
        s.cache = None;
        let kind = resolve_precision(next.precision, s.net.device());
        if kind != s.net.precision() {
            s.net.set_precision(Some(kind));
        }
    }
    s.net.set_dropout(next.model.dropout);
    s.net.set_label_smoothing(next.model.label_smoothing);
    s.stall.set_config(next.stall.clone());
    if (old.stall.monitor, old.stall.mode) != (next.stall.monitor, next.stall.mode) {
        // A different metric or direction: the old best means nothing now.
        s.stall.reset();
    }
    let mut layers_changed = false;
    match s.phase {
        Phase::Frozen => {
            if optimizer_of(&old.frozen) != optimizer_of(&next.frozen) {
                (s.opt, s.lr_groups) = build_optimizer(
                    &s.net,
                    next.frozen.optimizer,
                    next.frozen.lr,
                    next.frozen.momentum,
                )?;
            }
            s.lr = next.frozen.lr;
        }
        Phase::Finetune => {
            let ft = &next.finetune;
            if ft.unfreeze_last != old.finetune.unfreeze_last
                || ft.train_bn != old.finetune.train_bn
            {
                s.set_finetune_layers(ft, ft.unfreeze_last)?;
                layers_changed = true;
            } else if ft_optimizer_of(&old.finetune) != ft_optimizer_of(ft) {
                (s.opt, s.lr_groups) = build_optimizer(&s.net, ft.optimizer, ft.lr, ft.momentum)?;
            }
            s.lr = next.finetune.lr;
        }
    }
    s.opt.set_lr(s.lr);
    s.lr_used = s.lr;
    Ok(Applied {
        next,
        changes,
        layers_changed,
    })
}
