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
/// sides, and each class's share of validation images is kept as near `fraction` as
/// the groups allow (in the spirit of sklearn's `StratifiedGroupKFold`, for one
/// split). Groups are shuffled with a generator seeded by `seed` and taken largest
/// first (ties in the shuffled order); each goes to validation when that brings the
/// classes' validation shares nearer to `fraction` (the sum of squared differences),
/// else it trains. With two or more groups, at least one is on each side, and a
/// class found in two or more groups has images on both sides. Both lists come back
/// sorted.
pub fn grouped_split(
    groups: &[String],
    labels: &[usize],
    n_classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut members: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g.as_str()).or_default().push(i);
    }
    let mut order: Vec<Vec<usize>> = members.into_values().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    order.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut per_class = vec![0usize; n_classes];
    for &l in labels {
        per_class[l] += 1;
    }
    // How far the classes' validation shares are from the fraction.
    let distance = |val: &[usize]| -> f64 {
        val.iter()
            .zip(&per_class)
            .filter(|(_, &n)| n > 0)
            .map(|(&v, &n)| (v as f64 / n as f64 - fraction).powi(2))
            .sum()
    };
    let counts = |items: &[usize]| {
        let mut c = vec![0usize; n_classes];
        for &i in items {
            c[labels[i]] += 1;
        }
        c
    };
    let added = |val: &[usize], group: &[usize]| -> Vec<usize> {
        val.iter().zip(counts(group)).map(|(a, b)| a + b).collect()
    };
    let mut val_counts = vec![0usize; n_classes];
    let mut sides: Vec<bool> = Vec::with_capacity(order.len());
    for items in &order {
        let with = added(&val_counts, items);
        // Strictly nearer (a tie, up to rounding, trains).
        let validates = distance(&with) < distance(&val_counts) - 1e-12;
        if validates {
            val_counts = with;
        }
        sides.push(validates);
    }
    if order.len() >= 2 {
        // Nothing validates: the group that brings the shares nearest does (the
        // smallest of equals). Nothing trains: the largest validating group trains.
        if sides.iter().all(|&v| !v) {
            let k = (0..order.len())
                .min_by(|&a, &b| {
                    let da = distance(&added(&val_counts, &order[a]));
                    let db = distance(&added(&val_counts, &order[b]));
                    da.total_cmp(&db).then(order[a].len().cmp(&order[b].len()))
                })
                .expect("two or more groups");
            sides[k] = true;
        } else if sides.iter().all(|&v| v) {
            sides[0] = false;
        }
    }
    // A class in two or more groups keeps images on both sides, as the stratified
    // split's classes do: its smallest group crosses over when one side has none
    // (if that leaves the other side a group).
    for class in 0..n_classes {
        let with: Vec<usize> = (0..order.len())
            .filter(|&k| order[k].iter().any(|&i| labels[i] == class))
            .collect();
        if with.len() < 2 {
            continue;
        }
        for from_val in [true, false] {
            if with.iter().any(|&k| sides[k] != from_val) {
                continue; // the class has images on the other side already
            }
            let left_on_side = sides.iter().filter(|&&v| v == from_val).count();
            if left_on_side < 2 {
                continue;
            }
            if let Some(&k) = with.iter().min_by_key(|&&k| order[k].len()) {
                sides[k] = !from_val;
            }
        }
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (items, validates) in order.into_iter().zip(sides) {
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
    fn a_grouped_split_never_cuts_a_group_and_keeps_classes_in_proportion() {
        // 60 patients with 1-5 images each; a third of the patients are ill (class 1),
        // all their images with it.
        let mut groups = Vec::new();
        let mut labels = Vec::new();
        for p in 0..60usize {
            for _ in 0..(p * 7 % 5 + 1) {
                groups.push(format!("p{p}"));
                labels.push(usize::from(p % 3 == 0));
            }
        }
        let n = groups.len();
        let mut shares = [0.0f64; 2];
        for seed in 0..10 {
            let (train, val) = grouped_split(&groups, &labels, 2, 0.2, seed);
            assert_eq!(train.len() + val.len(), n);
            for &v in &val {
                assert!(
                    train.iter().all(|&t| groups[t] != groups[v]),
                    "{} on both sides",
                    groups[v]
                );
            }
            for (class, mean) in shares.iter_mut().enumerate() {
                let all = labels.iter().filter(|&&l| l == class).count() as f64;
                let in_val = val.iter().filter(|&&i| labels[i] == class).count() as f64;
                let share = in_val / all;
                // A patient is up to 5 of a class's ~60 images (0.08 of it).
                assert!(
                    (0.15..=0.25).contains(&share),
                    "seed {seed} class {class}: {share}"
                );
                *mean += share / 10.0;
            }
            assert_eq!(grouped_split(&groups, &labels, 2, 0.2, seed), (train, val));
        }
        for share in shares {
            assert!((share - 0.2).abs() < 0.02, "mean share over seeds {share}");
        }
        assert_ne!(
            grouped_split(&groups, &labels, 2, 0.2, 3).1,
            grouped_split(&groups, &labels, 2, 0.2, 4).1
        );
        // Two groups: one each side, whatever the fraction.
        let two: Vec<String> = ["a", "a", "b"].iter().map(|s| s.to_string()).collect();
        let (t, v) = grouped_split(&two, &[0, 0, 1], 2, 0.01, 1);
        assert!(!t.is_empty() && !v.is_empty());
        let (t, v) = grouped_split(&two, &[0, 0, 1], 2, 0.99, 1);
        assert!(!t.is_empty() && !v.is_empty());
        // One group of most images: it trains, whatever the shuffle puts first.
        let mut big: Vec<String> = vec!["blank".to_string(); 60];
        big.extend((0..40).map(|i| format!("p{i}")));
        let big_labels: Vec<usize> = (0..100).map(|i| i % 2).collect();
        for seed in 0..20 {
            let (_, v) = grouped_split(&big, &big_labels, 2, 0.2, seed);
            assert!(v.len() <= 25, "seed {seed}: {} validate", v.len());
        }
    }

    #[test]
    fn a_class_in_two_groups_has_images_on_both_sides() {
        // Class 1 is in two groups of one image each; class 0 in eight of two. With a
        // tiny fraction nothing of class 1 would validate; with a large one, nothing
        // would train.
        let mut groups: Vec<String> = (0..16).map(|i| format!("w{}", i / 2)).collect();
        let mut labels = vec![0usize; 16];
        groups.extend(["ill1".to_string(), "ill2".to_string()]);
        labels.extend([1, 1]);
        for fraction in [0.05, 0.2, 0.5, 0.95] {
            for seed in 0..5 {
                let (train, val) = grouped_split(&groups, &labels, 2, fraction, seed);
                for class in 0..2 {
                    assert!(
                        train.iter().any(|&i| labels[i] == class)
                            && val.iter().any(|&i| labels[i] == class),
                        "fraction {fraction} seed {seed}: class {class} on one side"
                    );
                }
            }
        }
    }

    #[test]
    fn stratifying_groups_beats_filling_by_count() {
        // Class 1 lives in few, large groups: filling validation by count alone can
        // miss it; the stratified split gives it its share.
        let mut groups = Vec::new();
        let mut labels = Vec::new();
        for p in 0..40usize {
            let (size, class) = if p < 5 { (8, 1) } else { (2, 0) };
            for _ in 0..size {
                groups.push(format!("p{p}"));
                labels.push(class);
            }
        }
        for seed in 0..10 {
            let (_, val) = grouped_split(&groups, &labels, 2, 0.2, seed);
            let ill = val.iter().filter(|&&i| labels[i] == 1).count();
            assert_eq!(
                ill, 8,
                "seed {seed}: one of the five ill patients validates"
            );
            let well = val.len() - ill;
            assert!((12..=16).contains(&well), "seed {seed}: {well}");
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
