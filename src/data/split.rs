//! The stratified, seeded train/validation split.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Splits item indices into (train, validation), per class: each class's items are
/// shuffled with a generator seeded by `seed` and the class, and `round(n * fraction)`
/// of them (at least 1 and at most n-1 when n >= 2) validate. The same seed always
/// gives the same split. Both lists come back sorted.
pub fn stratified_split(
    labels: &[usize],
    n_classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in 0..n_classes {
        let mut items: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        items.shuffle(&mut rng);
        let n = items.len();
        let mut n_val = (n as f64 * fraction).round() as usize;
        // A class keeps at least one image on each side; a lone image trains.
        n_val = if n >= 2 { n_val.clamp(1, n - 1) } else { 0 };
        val.extend_from_slice(&items[..n_val.min(n)]);
        train.extend_from_slice(&items[n_val.min(n)..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Splits item indices into (train, validation) by group: no group has items on both
/// sides. Groups are shuffled with a generator seeded by `seed`, then each goes to
/// validation while that keeps the validation items within `round(n * fraction)`
/// (at least one group on each side when there are two or more). Not stratified by
/// class. Both lists come back sorted.
pub fn grouped_split(groups: &[String], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut members: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g.as_str()).or_default().push(i);
    }
    let mut order: Vec<Vec<usize>> = members.into_values().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    let target = (groups.len() as f64 * fraction).round() as usize;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let last = order.len().saturating_sub(1);
    // With two or more groups one must validate: the first that fits the target, else
    // the smallest (never a group that holds most of the images by chance of order).
    let forced = (last > 0).then(|| {
        order[..last]
            .iter()
            .position(|g| g.len() <= target)
            .unwrap_or_else(|| {
                (0..last)
                    .min_by_key(|&k| order[k].len())
                    .expect("two or more groups")
            })
    });
    for (k, items) in order.into_iter().enumerate() {
        let room = val.len() + items.len() <= target;
        // The last group trains when there are two or more.
        let validates = Some(k) == forced || (k < last && room && forced.is_some());
        if validates {
            val.extend(items);
        } else {
            train.extend(items);
        }
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_grouped_split_never_cuts_a_group() {
        // 30 patients with 1-5 images each.
        let groups: Vec<String> = (0..90)
            .map(|i| format!("p{}", (i * 7) % 30 + i % 3))
            .collect();
        let (train, val) = grouped_split(&groups, 0.2, 3);
        assert_eq!(train.len() + val.len(), 90);
        for &v in &val {
            assert!(
                train.iter().all(|&t| groups[t] != groups[v]),
                "{} on both sides",
                groups[v]
            );
        }
        let n = val.len() as f64 / 90.0;
        assert!((0.1..=0.2).contains(&n), "{n}");
        assert_eq!(grouped_split(&groups, 0.2, 3), (train, val.clone()));
        assert_ne!(grouped_split(&groups, 0.2, 4).1, val);
        // Two groups: one each side, whatever the fraction.
        let two: Vec<String> = ["a", "a", "b"].iter().map(|s| s.to_string()).collect();
        let (t, v) = grouped_split(&two, 0.01, 1);
        assert!(!t.is_empty() && !v.is_empty());
        // One group of most images: it trains, whatever the shuffle puts first.
        let mut big: Vec<String> = vec!["blank".to_string(); 60];
        big.extend((0..40).map(|i| format!("p{i}")));
        for seed in 0..20 {
            let (_, v) = grouped_split(&big, 0.2, seed);
            assert!(v.len() <= 20, "seed {seed}: {} validate", v.len());
        }
    }

    use super::*;

    #[test]
    fn split_is_stratified_deterministic_and_seed_dependent() {
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i >= 70)).collect();
        let (train, val) = stratified_split(&labels, 2, 0.2, 42);
        assert_eq!(val.iter().filter(|&&i| labels[i] == 0).count(), 14);
        assert_eq!(val.iter().filter(|&&i| labels[i] == 1).count(), 6);
        assert_eq!(train.len() + val.len(), 100);
        assert!(train.iter().all(|i| !val.contains(i)));
        assert_eq!(stratified_split(&labels, 2, 0.2, 42), (train, val.clone()));
        assert_ne!(stratified_split(&labels, 2, 0.2, 7).1, val);
    }

    #[test]
    fn tiny_classes_keep_one_image_on_each_side() {
        let labels = vec![0, 0, 1, 1, 1];
        let (train, val) = stratified_split(&labels, 2, 0.01, 1);
        assert_eq!((train.len(), val.len()), (3, 2));
        let (train, val) = stratified_split(&[0, 1, 1], 2, 0.9, 1);
        assert_eq!(
            (train.len(), val.len()),
            (2, 1),
            "the lone image of class 0 trains"
        );
    }
}
