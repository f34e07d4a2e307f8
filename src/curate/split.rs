//! `kiln data split`: train/valid/test, seeded and stratified by label, and group-aware: a
//! cluster of duplicates (exact or near) goes to one split whole, so no test row has a copy in
//! training. Without grouping each row is its own unit, which is the usual (leaky) split.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::util::SplitMix64;

#[derive(Clone, Debug, Serialize)]
pub struct SplitConfig {
    pub valid: f64,
    pub test: f64,
    pub seed: u64,
    pub group_aware: bool,
}

/// The splits in the order [`assign`] numbers them.
pub const SPLIT_NAMES: [&str; 3] = ["train", "valid", "test"];

impl SplitConfig {
    /// The fractions checked: each finite and in [0, 1), and together under 1 so training keeps
    /// some rows (`--valid 0.9 --test 0.9` would otherwise write an empty train file).
    pub fn check(&self) -> Result<()> {
        for (flag, v) in [("--valid", self.valid), ("--test", self.test)] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(Error::invalid(flag, format!("{v}; expected a fraction in [0, 1)")));
            }
        }
        if self.valid + self.test >= 1.0 {
            return Err(Error::invalid(
                "--valid",
                format!(
                    "--valid {} and --test {} add up to {} and leave nothing to train on; their sum must be under 1",
                    self.valid,
                    self.test,
                    self.valid + self.test
                ),
            ));
        }
        Ok(())
    }

    /// [`assign`]'s result checked: train, and each split asked for (fraction above 0), holds
    /// at least one row; `file` names the input in the message.
    pub fn check_assigned(&self, split: &[u8], file: &str) -> Result<()> {
        if split.is_empty() {
            return Err(Error::invalid("data split", format!("{file} has no rows to split")));
        }
        for (s, (name, asked)) in SPLIT_NAMES.iter().zip([1.0, self.valid, self.test]).enumerate() {
            if asked > 0.0 && !split.iter().any(|&x| x as usize == s) {
                let why = if s == 0 {
                    "every row went to valid or test; lower --valid/--test".to_string()
                } else {
                    format!(
                        "--{name} {asked} of {} rows rounds to none; raise --{name} or pass --{name} 0",
                        split.len()
                    )
                };
                return Err(Error::invalid("data split", format!("{file}: the {name} split would be empty: {why}")));
            }
        }
        Ok(())
    }
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
    fn fractions_are_checked_and_no_asked_split_is_left_empty() {
        let cfg = |valid, test| SplitConfig { valid, test, seed: 0, group_aware: false };
        for (v, t, flag) in [
            (-0.1, 0.2, "--valid"),
            (f64::NAN, 0.2, "--valid"),
            (0.1, 1.0, "--test"),
            (0.9, 0.9, "sum must be under 1"),
        ] {
            let e = cfg(v, t).check().unwrap_err().to_string();
            assert!(e.contains(flag), "valid {v} test {t}: {e}");
        }
        cfg(0.0, 0.5).check().unwrap();
        // 5 rows: 0.05 of them rounds to none; a split not asked for (0) may stay empty.
        let labels = vec![None; 5];
        let cluster: Vec<usize> = (0..5).collect();
        let e = cfg(0.05, 0.2).check_assigned(&assign(&labels, &cluster, &cfg(0.05, 0.2)), "f.jsonl").unwrap_err();
        assert!(e.to_string().contains("f.jsonl: the valid split would be empty"), "{e}");
        cfg(0.0, 0.2).check_assigned(&assign(&labels, &cluster, &cfg(0.0, 0.2)), "f.jsonl").unwrap();
        let e = cfg(0.1, 0.2).check_assigned(&[], "f.jsonl").unwrap_err();
        assert!(e.to_string().contains("no rows"), "{e}");
    }

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
