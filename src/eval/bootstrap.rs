//! The largest gap between groups of examples, with a bootstrap confidence interval.
//!
//! A group's metric is a ratio of sums over its examples, Σ num / Σ den: accuracy (num = 1 when
//! right, den = 1), exact match, or a token-weighted mean loss (num = the example's summed loss,
//! den = its tokens). The gap is metric(best group) − metric(worst group), written so it is ≥ 0
//! whether higher or lower is better.
//!
//! The interval: the best and worst groups are fixed on the data, then each is resampled with
//! replacement within itself (its size kept), `resamples` times, seeded; the 2.5th and 97.5th
//! percentiles of the resampled gaps are the 95% interval. Fixing the pair keeps the interval
//! about one named difference (re-picking the extremes in every resample would bias it upward).

use serde::Serialize;

use super::latency::percentile;
use crate::util::SplitMix64;

/// One group's share of the examples and its metric.
#[derive(Clone, Debug, Serialize)]
pub struct GroupValue {
    pub group: String,
    pub examples: usize,
    pub value: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    pub metric: String,
    pub higher_is_better: bool,
    pub best: String,
    pub worst: String,
    /// metric(best) − metric(worst), or the reverse when lower is better: ≥ 0.
    pub gap: f64,
    /// Percentile 95% interval of the gap over the resamples.
    pub ci_low: f64,
    pub ci_high: f64,
    pub resamples: usize,
    pub seed: u64,
    pub threshold: f64,
    /// The gap is larger than the threshold.
    pub flagged: bool,
}

/// Per-example contributions to a group metric.
pub struct Contributions<'a> {
    /// Group index of each example (into `names`).
    pub group: &'a [usize],
    pub num: &'a [f64],
    pub den: &'a [f64],
    pub names: &'a [String],
}

impl Contributions<'_> {
    /// Each group's metric (groups without examples are left out), in the order of `names`.
    pub fn values(&self) -> Vec<GroupValue> {
        let k = self.names.len();
        let (mut num, mut den, mut n) = (vec![0.0; k], vec![0.0; k], vec![0usize; k]);
        for ((&g, &a), &b) in self.group.iter().zip(self.num).zip(self.den) {
            num[g] += a;
            den[g] += b;
            n[g] += 1;
        }
        (0..k)
            .filter(|&g| n[g] > 0)
            .map(|g| GroupValue { group: self.names[g].clone(), examples: n[g], value: ratio(num[g], den[g]) })
            .collect()
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// The gap between the best and the worst group and its bootstrap interval; None with fewer
/// than two groups.
pub fn group_gap(
    c: &Contributions,
    metric: &str,
    higher_is_better: bool,
    resamples: usize,
    seed: u64,
    threshold: f64,
) -> Option<Gap> {
    let values = c.values();
    if values.len() < 2 {
        return None;
    }
    let better = |a: f64, b: f64| if higher_is_better { a > b } else { a < b };
    let mut best = &values[0];
    let mut worst = &values[0];
    for v in &values {
        if better(v.value, best.value) {
            best = v;
        }
        // Ties: the first of the best and the last of the worst, so equal groups still name two.
        if !better(v.value, worst.value) {
            worst = v;
        }
    }
    let signed = |b: f64, w: f64| if higher_is_better { b - w } else { w - b };
    let gap = signed(best.value, worst.value);
    let members = |name: &str| -> Vec<usize> {
        let g = c.names.iter().position(|n| n == name).expect("a group of the data");
        (0..c.group.len()).filter(|&i| c.group[i] == g).collect()
    };
    let (best_idx, worst_idx) = (members(&best.group), members(&worst.group));
    let mut rng = SplitMix64::new(seed);
    let mut resample = |idx: &[usize]| -> f64 {
        let (mut a, mut b) = (0.0, 0.0);
        for _ in 0..idx.len() {
            let i = idx[rng.below(idx.len())];
            a += c.num[i];
            b += c.den[i];
        }
        ratio(a, b)
    };
    let mut gaps: Vec<f64> = (0..resamples)
        .map(|_| {
            let b = resample(&best_idx);
            let w = resample(&worst_idx);
            signed(b, w)
        })
        .collect();
    gaps.sort_by(f64::total_cmp);
    let (ci_low, ci_high) =
        if gaps.is_empty() { (gap, gap) } else { (percentile(&gaps, 2.5), percentile(&gaps, 97.5)) };
    Some(Gap {
        metric: metric.to_string(),
        higher_is_better,
        best: best.group.clone(),
        worst: worst.group.clone(),
        gap,
        ci_low,
        ci_high,
        resamples,
        seed,
        threshold,
        flagged: gap > threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_between_best_and_worst_with_an_interval() {
        // Group a: 9 of 10 right; b: 5 of 10; c: 7 of 10. Gap a − b = 0.4.
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut group = Vec::new();
        let mut num = Vec::new();
        for (g, right) in [(0, 9), (1, 5), (2, 7)] {
            for i in 0..10 {
                group.push(g);
                num.push(if i < right { 1.0 } else { 0.0 });
            }
        }
        let den = vec![1.0; 30];
        let c = Contributions { group: &group, num: &num, den: &den, names: &names };
        let g = group_gap(&c, "accuracy", true, 1000, 7, 0.05).unwrap();
        assert_eq!((g.best.as_str(), g.worst.as_str()), ("a", "b"));
        assert!((g.gap - 0.4).abs() < 1e-12);
        assert!(g.ci_low < 0.4 && g.ci_high > 0.4 && g.ci_low > -0.1 && g.ci_high <= 0.9, "{g:?}");
        assert!(g.flagged);
        // Seeded: the same interval again.
        let again = group_gap(&c, "accuracy", true, 1000, 7, 0.05).unwrap();
        assert_eq!((g.ci_low, g.ci_high), (again.ci_low, again.ci_high));
        // Lower is better (a loss): the gap is still positive, best is the lowest.
        let l = group_gap(&c, "loss", false, 100, 7, 0.5).unwrap();
        assert_eq!((l.best.as_str(), l.worst.as_str()), ("b", "a"));
        assert!((l.gap - 0.4).abs() < 1e-12 && !l.flagged);
        // One group: no gap.
        let one = Contributions { group: &group[..10], num: &num[..10], den: &den[..10], names: &names };
        assert!(group_gap(&one, "accuracy", true, 10, 0, 0.05).is_none());
    }
}
