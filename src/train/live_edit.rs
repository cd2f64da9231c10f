//! Live edits: a saved experiment file applied at the next epoch boundary.

use super::controller::{build_optimizer, State, Trainer};
use super::events::{Event, Phase};
use crate::config::{Experiment, LiveEdit};
use crate::runtime::resolve_precision;

impl Trainer {
    /// Takes an edit waiting since the last epoch: live settings apply now.
    pub(super) fn apply_pending(&mut self, s: &mut State) -> anyhow::Result<()> {
        let Some(new) = self.pending.take() else {
            return Ok(());
        };
        // Restart-only settings (data, model, device, seed) keep their running values.
        let LiveEdit { changes, next } = LiveEdit::new(&self.exp, &new);
        let old = std::mem::replace(&mut self.exp, next);
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
        if cache_settings(&old) != cache_settings(&self.exp) {
            s.cache = None;
            let kind = resolve_precision(self.exp.precision, s.net.device());
            if kind != s.net.precision() {
                s.net.set_precision(Some(kind));
            }
        }
        s.stall.set_config(self.exp.stall.clone());
        if (old.stall.monitor, old.stall.mode) != (self.exp.stall.monitor, self.exp.stall.mode) {
            // A different metric or direction: the old best means nothing now.
            s.stall.reset();
        }
        match s.phase {
            Phase::Frozen => {
                if optimizer_of(&old.frozen) != optimizer_of(&self.exp.frozen) {
                    s.opt = build_optimizer(
                        &s.net,
                        self.exp.frozen.optimizer,
                        self.exp.frozen.lr,
                        self.exp.frozen.momentum,
                    )?;
                }
                s.lr = self.exp.frozen.lr;
            }
            Phase::Finetune => {
                let ft = &self.exp.finetune;
                if ft.unfreeze_last != old.finetune.unfreeze_last
                    || ft.train_bn != old.finetune.train_bn
                {
                    let n = ft.unfreeze_last;
                    self.set_finetune_layers(s, n)?;
                    self.phase_event(s);
                } else if ft_optimizer_of(&old.finetune) != ft_optimizer_of(ft) {
                    s.opt = build_optimizer(&s.net, ft.optimizer, ft.lr, ft.momentum)?;
                }
                s.lr = self.exp.finetune.lr;
            }
        }
        s.opt.set_lr(s.lr);
        if let Some(run) = &mut self.run {
            run.record_config(s.epoch + 1, &self.exp, &changes)?;
        }
        self.emit(Event::ConfigApplied(changes));
        Ok(())
    }
}
