//! Outputs of the frozen part of the backbone, kept between epochs: pooled features in
//! the frozen phase (of the plain images, or of K augmented views), the frozen
//! prefix's feature maps in the fine-tune phase. Tables fill as batches run, so the
//! first epoch costs what an uncached epoch costs and later epochs skip the frozen part.

use tch::Tensor;

/// Backbone outputs by image index, for a fixed set of images, filled batch by batch.
pub struct FeatureTable {
    /// Row of each dataset image in `values` (None: not a member).
    slot: Vec<Option<usize>>,
    members: usize,
    values: Option<Tensor>,
    filled: Vec<bool>,
    budget: u64,
    /// Bytes the table would need, once a first batch showed it exceeds the budget.
    too_big: Option<u64>,
}

impl FeatureTable {
    /// A table for the dataset images `members` (of `images` in all) that may take at
    /// most `budget` bytes.
    pub fn new(members: &[usize], images: usize, budget: u64) -> FeatureTable {
        let mut slot = vec![None; images];
        for (row, &i) in members.iter().enumerate() {
            slot[i] = Some(row);
        }
        FeatureTable {
            slot,
            members: members.len(),
            values: None,
            filled: vec![false; members.len()],
            budget,
            too_big: None,
        }
    }

    fn rows(&self, images: &[usize]) -> Option<Vec<i64>> {
        images
            .iter()
            .map(|&i| self.slot.get(i).copied().flatten().map(|r| r as i64))
            .collect()
    }

    /// Whether every one of `images` is stored.
    pub fn has(&self, images: &[usize]) -> bool {
        self.values.is_some()
            && self
                .rows(images)
                .is_some_and(|rows| rows.iter().all(|&r| self.filled[r as usize]))
    }

    /// The stored outputs of `images`, if every one is stored.
    pub fn get(&self, images: &[usize]) -> Option<Tensor> {
        if !self.has(images) {
            return None;
        }
        let rows = self.rows(images)?;
        let values = self.values.as_ref()?;
        Some(values.index_select(0, &Tensor::from_slice(&rows).to_device(values.device())))
    }

    /// Stores the outputs of `images` (non-members are ignored). The first call sizes
    /// the table; if it would exceed the budget the table stays empty for good.
    pub fn put(&mut self, images: &[usize], outputs: &Tensor) {
        if self.too_big.is_some() {
            return;
        }
        let Some(rows) = self.rows(images) else {
            return;
        };
        if self.values.is_none() {
            let mut shape = outputs.size();
            let per_row: i64 = shape[1..].iter().product();
            let bytes = (per_row as u64)
                .saturating_mul(self.members as u64)
                .saturating_mul(outputs.kind().elt_size_in_bytes() as u64);
            if bytes > self.budget {
                self.too_big = Some(bytes);
                return;
            }
            shape[0] = self.members as i64;
            self.values = Some(Tensor::zeros(shape, (outputs.kind(), outputs.device())));
        }
        let values = self.values.as_mut().expect("sized above");
        let index = Tensor::from_slice(&rows).to_device(values.device());
        let _ = values.index_copy_(0, &index, &outputs.to_kind(values.kind()));
        for r in rows {
            self.filled[r as usize] = true;
        }
    }

    /// Bytes the stored values take (0 until the first batch).
    pub fn bytes(&self) -> u64 {
        self.values.as_ref().map_or(0, |v| {
            v.numel() as u64 * v.kind().elt_size_in_bytes() as u64
        })
    }

    /// The bytes the table would need, if that is over its budget.
    pub fn too_big(&self) -> Option<u64> {
        self.too_big
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }
}

/// What is kept for the current phase and layer states.
pub struct Cache {
    /// How many leading backbone segments the stored outputs cover.
    pub split: usize,
    /// Outputs of unaugmented images: validation always, training when nothing random.
    pub plain: FeatureTable,
    /// Whether training batches come from `plain` (no random augmentation).
    pub train_plain: bool,
    /// K augmented views of the training images, one per epoch in turn.
    pub views: Vec<FeatureTable>,
}

/// Which table an epoch's training batches use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainSource {
    /// None: the frozen part runs on every batch.
    Images,
    /// The unaugmented outputs.
    Plain,
    /// Augmented view `v` (0-based).
    View(usize),
}

impl Cache {
    /// The training source of 1-based epoch `epoch`.
    pub fn train_source(&self, epoch: u32) -> TrainSource {
        if self.train_plain {
            TrainSource::Plain
        } else if self.views.is_empty() {
            TrainSource::Images
        } else {
            TrainSource::View((epoch.saturating_sub(1) as usize) % self.views.len())
        }
    }

    /// The table a training source reads and fills.
    pub fn train_table(&mut self, source: TrainSource) -> Option<&mut FeatureTable> {
        match source {
            TrainSource::Images => None,
            TrainSource::Plain => Some(&mut self.plain),
            TrainSource::View(v) => self.views.get_mut(v),
        }
    }

    /// Bytes stored in all tables.
    pub fn bytes(&self) -> u64 {
        self.plain.bytes() + self.views.iter().map(FeatureTable::bytes).sum::<u64>()
    }

    /// The first table found over its budget: (bytes needed, budget).
    pub fn too_big(&self) -> Option<(u64, u64)> {
        std::iter::once(&self.plain)
            .chain(&self.views)
            .find_map(|t| t.too_big().map(|b| (b, t.budget())))
    }
}

pub use crate::fsutil::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn a_table_fills_by_rows_and_answers_only_when_complete() {
        let mut t = FeatureTable::new(&[1, 3, 4], 5, 1 << 20);
        assert!(!t.has(&[1]));
        let out = Tensor::from_slice(&[10f32, 11., 30., 31.]).view([2, 2]);
        t.put(&[3, 1], &out);
        assert!(t.has(&[1, 3]));
        assert!(!t.has(&[1, 4]), "4 is not filled");
        assert!(!t.has(&[0]), "0 is not a member");
        let got = t.get(&[1, 3]).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(got.flatten(0, -1)).unwrap(),
            [30., 31., 10., 11.]
        );
        assert_eq!(t.bytes(), 3 * 2 * 4);
    }

    #[test]
    fn a_table_over_budget_stays_empty_and_says_what_it_needed() {
        let mut t = FeatureTable::new(&[0, 1, 2, 3], 4, 100);
        t.put(
            &[0],
            &Tensor::zeros([1, 8], (Kind::Float, tch::Device::Cpu)),
        );
        assert_eq!(t.too_big(), Some(4 * 8 * 4));
        assert!(!t.has(&[0]));
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn views_are_used_in_turn() {
        let table = || FeatureTable::new(&[0], 1, 1000);
        let cache = Cache {
            split: 3,
            plain: table(),
            train_plain: false,
            views: vec![table(), table()],
        };
        let sources: Vec<_> = (1..=5).map(|e| cache.train_source(e)).collect();
        use TrainSource::View;
        assert_eq!(sources, [View(0), View(1), View(0), View(1), View(0)]);
        assert_eq!(human_bytes(82_000_000), "82 MB");
        assert_eq!(human_bytes(640_000), "640 kB");
        assert_eq!(human_bytes(3_100_000_000), "3.1 GB");
    }
}
