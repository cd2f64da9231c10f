//! Cache planning: what to keep of the frozen part's outputs for the current phase
//! and layer states, and how an epoch computes.

use super::cache::{Cache, FeatureTable, TrainSource};
use super::events::{CacheUse, Compute, FrozenPart, Phase};
use super::state::State;
use crate::config::{Experiment, FeatureCache};
use crate::data::Dataset;

/// What to keep for the current phase and layer states (see [`Cache`]): nothing
/// when no leading part of the backbone is frozen, the phase's cache setting is
/// `off`, or a cache was refused for memory earlier in this phase.
pub(super) fn plan_cache(exp: &Experiment, s: &State, data: &Dataset) -> Option<Cache> {
    let split = s.net.frozen_segments();
    let setting = match s.phase {
        Phase::Frozen => exp.frozen.feature_cache,
        Phase::Finetune => exp.finetune.prefix_cache,
    };
    if split == 0 || setting == FeatureCache::Off || s.cache_refused {
        return None;
    }
    let random = exp.data.augment.is_random();
    let views = match s.phase {
        Phase::Frozen if random => exp.frozen.augment_views as usize,
        _ => 0,
    };
    let budget = (exp.finetune.prefix_cache_mb << 20).min(crate::data::memory_budget_bytes())
        / (1 + views as u64);
    let all: Vec<usize> = (0..data.len()).collect();
    let plain = if random { &data.val } else { &all };
    Some(Cache {
        split,
        plain: FeatureTable::new(plain, data.len(), budget),
        train_plain: !random,
        views: (0..views)
            .map(|_| FeatureTable::new(&data.train, data.len(), budget))
            .collect(),
    })
}

/// How this epoch computes: the precision of the frozen part and what is cached
/// (shown by the dashboard, kept in `metrics.jsonl`).
pub(super) fn describe_compute(
    exp: &Experiment,
    s: &mut State,
    data: &Dataset,
    source: TrainSource,
) -> Compute {
    let split = s.net.frozen_segments();
    let segments = s.net.backbone.segments();
    if split == 0 {
        // Nothing is frozen: everything runs in float32 on the model itself.
        return Compute::default();
    }
    let precision = Some(crate::runtime::precision_of(s.net.precision()));
    let frozen = if split == segments {
        FrozenPart::Features
    } else {
        let last = s.net.backbone.segment_layers(split - 1);
        let name = s
            .net
            .table()
            .layers()
            .nth(last.end - 1)
            .map_or(String::new(), |l| l.name.clone());
        FrozenPart::PrefixUpTo(name)
    };
    let Some(cache) = s.cache.as_mut() else {
        return Compute {
            precision,
            frozen,
            ..Compute::default()
        };
    };
    let cache_bytes = cache.bytes();
    let table = cache.train_table(source);
    let complete = |t: &FeatureTable| t.has(&data.train);
    let cache = match (source, table) {
        (TrainSource::View(v), Some(t)) => CacheUse::View {
            view: v,
            of: exp.frozen.augment_views,
            complete: complete(t),
        },
        (_, Some(t)) => CacheUse::Training {
            complete: complete(t),
        },
        (_, None) => CacheUse::ValidationOnly,
    };
    Compute {
        precision,
        frozen,
        cache,
        cache_bytes,
        from_batch: None,
    }
}
