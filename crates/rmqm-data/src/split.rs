//! Seeded, stratified train/test splits for datasets that have no publisher split.

use crate::DataError;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Indices of the two parts of a split, each sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitIndices {
    /// Indices in the train part.
    pub train: Vec<usize>,
    /// Indices in the test part.
    pub test: Vec<usize>,
}

/// Splits `labels` per class: a fraction `train_fraction` of each class (rounded, at least one item
/// in each part when the class has two or more) goes to train, the rest to test; seeded shuffle.
pub fn stratified_split(
    labels: &[i32],
    train_fraction: f64,
    seed: u64,
) -> Result<SplitIndices, DataError> {
    if !(train_fraction > 0.0 && train_fraction < 1.0) {
        return Err(DataError::Request(format!(
            "split fraction must be in (0, 1), got {train_fraction}"
        )));
    }
    let mut by_class: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (class, mut members) in by_class {
        // One stream per class, so a class's split does not depend on the other classes.
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        members.shuffle(&mut rng);
        let n = members.len();
        let mut n_train = (n as f64 * train_fraction).round() as usize;
        if n >= 2 {
            n_train = n_train.clamp(1, n - 1);
        }
        train.extend_from_slice(&members[..n_train]);
        test.extend_from_slice(&members[n_train..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok(SplitIndices { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_seeded_and_disjoint() {
        let labels: Vec<i32> = (0..200).map(|i| i % 4).collect();
        let a = stratified_split(&labels, 0.8, 7).unwrap();
        let b = stratified_split(&labels, 0.8, 7).unwrap();
        let c = stratified_split(&labels, 0.8, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.train.len(), 160);
        assert_eq!(a.test.len(), 40);
        for class in 0..4 {
            assert_eq!(a.test.iter().filter(|&&i| labels[i] == class).count(), 10);
        }
        let mut all: Vec<usize> = a.train.iter().chain(&a.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn omniglot_like_twenty_per_class_gives_sixteen_four() {
        let labels: Vec<i32> = (0..100).map(|i| i / 20).collect();
        let s = stratified_split(&labels, 0.8, 0).unwrap();
        assert_eq!(s.train.len(), 80);
        assert!(stratified_split(&labels, 1.0, 0).is_err());
    }
}
