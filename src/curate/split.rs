//! `kiln data split`: train/valid/test, seeded and stratified by label, and group-aware: a
//! cluster of duplicates (exact or near) goes to one split whole, so no test row has a copy in
//! training. Without grouping each row is its own unit, which is the usual (leaky) split.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::util::SplitMix64;

#[derive(Clone, Debug, Serialize)]
pub struct SplitConfig {
    pub valid: f64,
    pub test: f64,
    pub seed: u64,
    pub group_aware: bool,
}

/// Which split each row goes to: 0 train, 1 valid, 2 test.
///
/// `labels[i]` is row i's label (None: unlabelled, stratified as one more class) and
/// `cluster[i]` its duplicate cluster (any id shared by the cluster's rows). Units (clusters, or
/// rows) are stratified by their majority label: per label, shuffled with the seed, units fill
/// test up to `round(n · test)` rows, then valid up to `round(n · valid)`, then train. A unit
/// larger than what is left still goes whole, so a split can overshoot by less than one unit.
pub fn assign(labels: &[Option<&str>], cluster: &[usize], cfg: &SplitConfig) -> Vec<u8> {
    let n = labels.len();
    let mut units: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &c) in cluster.iter().enumerate().take(n) {
        let key = if cfg.group_aware { c } else { i };
        units.entry(key).or_default().push(i);
    }
    // Units per majority label (ties to the label that sorts first).
    let mut by_label: BTreeMap<Option<&str>, Vec<Vec<usize>>> = BTreeMap::new();
    for members in units.into_values() {
        let mut votes: BTreeMap<Option<&str>, usize> = BTreeMap::new();
        for &i in &members {
            *votes.entry(labels[i]).or_insert(0) += 1;
        }
        let top = votes.values().copied().max().unwrap_or(0);
        let label = votes.iter().find(|(_, c)| **c == top).map(|(l, _)| *l).unwrap_or(None);
        by_label.entry(label).or_default().push(members);
    }
    let mut split = vec![0u8; n];
    let mut rng = SplitMix64::new(cfg.seed);
    let clamp = |f: f64| if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
    for units in by_label.values_mut() {
        rng.shuffle(units);
        let rows: usize = units.iter().map(Vec::len).sum();
        let want_test = (rows as f64 * clamp(cfg.test)).round() as usize;
        let want_valid = (rows as f64 * clamp(cfg.valid)).round() as usize;
        let (mut test, mut valid) = (0, 0);
        for unit in units.iter() {
            let to = if test < want_test {
                test += unit.len();
                2
            } else if valid < want_valid {
                valid += unit.len();
                1
            } else {
                0
            };
            for &i in unit {
                split[i] = to;
            }
        }
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_stay_whole_and_labels_keep_their_share() {
        // 100 rows, 20 of label b; rows 0..10 are one cluster (label a).
        let labels: Vec<Option<&str>> = (0..100).map(|i| Some(if i % 5 == 4 { "b" } else { "a" })).collect();
        let cluster: Vec<usize> = (0..100).map(|i| if i < 10 && i % 5 != 4 { 0 } else { i }).collect();
        let cfg = SplitConfig { valid: 0.1, test: 0.2, seed: 1, group_aware: true };
        let s = assign(&labels, &cluster, &cfg);
        assert_eq!(s, assign(&labels, &cluster, &cfg), "seeded");
        let members: Vec<u8> = (0..100).filter(|&i| cluster[i] == 0).map(|i| s[i]).collect();
        assert!(members.iter().all(|&x| x == members[0]), "the cluster is split: {members:?}");
        let count = |label: &str, split: u8| (0..100).filter(|&i| labels[i] == Some(label) && s[i] == split).count();
        assert_eq!((count("b", 2), count("b", 1), count("b", 0)), (4, 2, 14));
        // Label a: 80 rows, test 16 and valid 8 wanted; the cluster of 8 may overshoot one of them.
        assert!((16..16 + 8).contains(&count("a", 2)), "{}", count("a", 2));
        assert!((8..8 + 8).contains(&count("a", 1)), "{}", count("a", 1));

        // Not group-aware: rows are units, and the split is exact.
        let s = assign(&labels, &cluster, &SplitConfig { group_aware: false, ..cfg });
        assert_eq!((0..100).filter(|&i| s[i] == 2).count(), 20);
    }
}
