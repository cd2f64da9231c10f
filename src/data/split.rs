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

#[cfg(test)]
mod tests {
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
