//! Locality-sensitive hashing of MinHash signatures: the signature is cut into `bands` bands of
//! `rows` values; two texts become a candidate pair when all rows of at least one band agree.
//! For texts of Jaccard similarity `s` that happens with probability `1 - (1 - s^rows)^bands`,
//! an S-curve whose step sits near the threshold.

use crate::curate::hash::mix64;

/// Weights of the two error areas when choosing bands × rows. datasketch weighs them equally,
/// which puts the S-curve's midpoint on the threshold: at threshold 0.8 with 128 permutations it
/// picks 9 × 13 and finds only 40% of pairs whose similarity is exactly 0.8. Every candidate here
/// is checked against the exact Jaccard, so a false positive costs one set comparison while a
/// false negative leaves a duplicate in the data: weighing misses 9:1 gives 14 × 9 at 0.8, which
/// finds 87% of pairs at 0.8 and 97% at 0.85, for a few percent of pairs at 0.5 as candidates.
const FALSE_POSITIVE_WEIGHT: f64 = 0.1;
const FALSE_NEGATIVE_WEIGHT: f64 = 0.9;

/// Intervals of the composite Simpson rule for the error areas. The integrands are smooth
/// polynomials; 256 intervals reproduce scipy's `quad` choices for 128 permutations (tested).
const SIMPSON_INTERVALS: usize = 256;

/// The bands × rows (`bands * rows <= num_perm`) that minimise the weighted area of false
/// positives (similarity below `threshold` yet a candidate) and false negatives (above it yet
/// not a candidate), as datasketch's `_optimal_param` does but with misses weighted 9:1 (see
/// `FALSE_NEGATIVE_WEIGHT`). Expects `0 < threshold <= 1` and `num_perm >= 1`
/// ([`NearDupConfig::validate`](crate::curate::NearDupConfig::validate) checks both).
pub fn lsh_params(threshold: f64, num_perm: usize) -> (usize, usize) {
    optimal_bands_rows(threshold, num_perm, FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT)
}

fn optimal_bands_rows(threshold: f64, num_perm: usize, fp_weight: f64, fn_weight: f64) -> (usize, usize) {
    let mut best = (f64::INFINITY, 1, num_perm.max(1));
    for bands in 1..=num_perm {
        for rows in 1..=num_perm / bands {
            let p = |s: f64| candidate_probability(s, bands, rows);
            let fp = simpson(p, 0.0, threshold);
            let fn_ = simpson(|s| 1.0 - p(s), threshold, 1.0);
            let err = fp_weight * fp + fn_weight * fn_;
            // Strictly smaller, so ties keep the first (fewest bands) as datasketch does.
            if err < best.0 {
                best = (err, bands, rows);
            }
        }
    }
    (best.1, best.2)
}

/// Probability that two texts of Jaccard similarity `s` share at least one band.
pub(crate) fn candidate_probability(s: f64, bands: usize, rows: usize) -> f64 {
    1.0 - (1.0 - s.powi(rows as i32)).powi(bands as i32)
}

fn simpson(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        return 0.0;
    }
    let n = SIMPSON_INTERVALS;
    let h = (hi - lo) / n as f64;
    let inner: f64 = (1..n).map(|i| f(lo + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
    (f(lo) + inner + f(hi)) * h / 3.0
}

/// The bucket key of one band: an order-sensitive 64-bit hash of its rows. Two different bands
/// colliding only adds a candidate, which the exact check then rejects.
pub(crate) fn band_key(rows: &[u32]) -> u64 {
    const BAND_SEED: u64 = 0x6b69_6c6e_6c73_6801; // any fixed value; "kilnlsh\x01"
    rows.iter().fold(BAND_SEED, |h, &v| mix64(h ^ v as u64))
}

/// Candidate pairs `(i, j)`, `i < j`, sorted and without repeats, from the band keys of the
/// texts: `keys[t][k]` is band `k` of text `t`; a `None` text takes part in no band.
/// Each band is sorted by key and every run of equal keys yields all its pairs.
///
/// Memory is n entries per band plus the pairs. A bucket of m texts yields m(m-1)/2 pairs, so
/// callers remove exact duplicates first (10k copies of one text would be 50M pairs). A family of
/// near-identical texts shares buckets in most bands, so the pairs are deduplicated as they grow,
/// keeping them within about three times the distinct pairs rather than `bands` times.
pub(crate) fn candidate_pairs(keys: &[Option<&[u64]>], bands: usize) -> Vec<(u32, u32)> {
    /// Below this many pairs, deduplicating once at the end is cheapest.
    const DEDUP_FROM: usize = 1 << 20;
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let mut dedup_at = DEDUP_FROM;
    let mut bucket: Vec<(u64, u32)> = Vec::with_capacity(keys.len());
    for band in 0..bands {
        if pairs.len() > dedup_at {
            // Doubling the trigger keeps the repeated sorts to O(P log P) in all.
            pairs.sort_unstable();
            pairs.dedup();
            dedup_at = DEDUP_FROM.max(2 * pairs.len());
        }
        bucket.clear();
        bucket.extend(keys.iter().enumerate().filter_map(|(t, k)| k.as_ref().map(|k| (k[band], t as u32))));
        bucket.sort_unstable();
        for run in bucket.chunk_by(|x, y| x.0 == y.0) {
            for (x, &(_, i)) in run.iter().enumerate() {
                for &(_, j) in &run[x + 1..] {
                    pairs.push((i, j)); // i < j: the run is sorted by index after key
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_reproduce_datasketch() {
        // What datasketch's _optimal_param (scipy quad, weights 0.5/0.5) picks for 128
        // permutations: computed with
        //   for b in 1..n: for r in 1..n//b: fp = quad(lambda s: 1-(1-s**r)**b, 0, t)[0]
        //   fn = quad(lambda s: (1-s**r)**b, t, 1)[0]; keep the smallest 0.5*fp + 0.5*fn
        assert_eq!(optimal_bands_rows(0.5, 128, 0.5, 0.5), (25, 5));
        assert_eq!(optimal_bands_rows(0.8, 128, 0.5, 0.5), (9, 13));
        assert_eq!(optimal_bands_rows(0.9, 128, 0.5, 0.5), (5, 25));
    }

    #[test]
    fn miss_weighted_params_find_pairs_at_the_threshold() {
        // Same scipy script with weights 0.1/0.9.
        assert_eq!(lsh_params(0.5, 128), (32, 4));
        assert_eq!(lsh_params(0.8, 128), (14, 9));
        assert_eq!(lsh_params(0.9, 128), (8, 16));
        for t in [0.3, 0.5, 0.7, 0.8, 0.9, 0.95] {
            let (b, r) = lsh_params(t, 128);
            assert!(b * r <= 128);
            let at = candidate_probability(t, b, r);
            let above = candidate_probability((t + 0.05).min(1.0), b, r);
            println!("threshold {t}: {b} bands x {r} rows, P(candidate) {at:.3} at t, {above:.3} at t+0.05");
            assert!(at > 0.75, "threshold {t}: only {at:.3} of pairs at the threshold become candidates");
            assert!(above > 0.9, "threshold {t}: only {above:.3} at threshold + 0.05");
        }
        // Threshold 1 asks for identical signatures: one band of every row.
        assert_eq!(lsh_params(1.0, 64), (1, 64));
    }

    #[test]
    fn candidates_come_from_shared_buckets_only() {
        // Two bands. Texts 0 and 2 share band 0, texts 1 and 3 share band 1, text 4 shares none,
        // text 5 has no signature.
        let keys: [Option<&[u64]>; 6] =
            [Some(&[10, 20]), Some(&[11, 21]), Some(&[10, 22]), Some(&[13, 21]), Some(&[14, 24]), None];
        assert_eq!(candidate_pairs(&keys, 2), vec![(0, 2), (1, 3)]);
        // Sharing both bands gives the pair once.
        let keys: [Option<&[u64]>; 2] = [Some(&[1, 2]), Some(&[1, 2])];
        assert_eq!(candidate_pairs(&keys, 2), vec![(0, 1)]);
    }

    #[test]
    fn a_family_sharing_every_band_gives_each_pair_once() {
        // 2000 texts in one bucket in each of 3 bands: 2M pairs per band, past the point where
        // pairs are deduplicated between bands.
        let same: [u64; 3] = [7, 8, 9];
        let keys: Vec<Option<&[u64]>> = vec![Some(&same); 2000];
        let pairs = candidate_pairs(&keys, 3);
        assert_eq!(pairs.len(), 2000 * 1999 / 2);
        assert!(pairs.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        assert!(pairs.iter().all(|&(i, j)| i < j && j < 2000));
    }
}
