//! Calibration: does a classifier's confidence match how often it is right?
//!
//! Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
//! the predictions are put in equal-width bins by their confidence (the probability of the
//! predicted class); in each bin b the mean confidence conf(b) is compared with the accuracy
//! acc(b), and ECE = Σ_b (n_b / N) · |acc(b) − conf(b)|. 15 bins is the usual choice.

use serde::Serialize;

/// One bin of the reliability diagram.
#[derive(Clone, Debug, Serialize)]
pub struct ReliabilityBin {
    /// The bin covers confidences in `(lo, hi]` (the first also takes 0).
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean confidence and accuracy of its predictions (0 when empty).
    pub confidence: f64,
    pub accuracy: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    pub ece: f64,
    pub bins: Vec<ReliabilityBin>,
}

/// ECE over `n_bins` equal-width bins of `confidence` (each in [0, 1]); `correct[i]` says whether
/// prediction i was right. No predictions give ECE 0.
pub fn expected_calibration_error(confidence: &[f64], correct: &[bool], n_bins: usize) -> Calibration {
    let n_bins = n_bins.max(1);
    let mut count = vec![0usize; n_bins];
    let mut conf_sum = vec![0.0f64; n_bins];
    let mut right = vec![0usize; n_bins];
    for (&c, &ok) in confidence.iter().zip(correct) {
        // Bin i holds (i/n, (i+1)/n]: ceil(c·n) − 1, with 0 in the first bin.
        let b = ((c * n_bins as f64).ceil() as usize).saturating_sub(1).min(n_bins - 1);
        count[b] += 1;
        conf_sum[b] += c;
        right[b] += ok as usize;
    }
    let total = confidence.len().min(correct.len()).max(1) as f64;
    let mut ece = 0.0;
    let bins = (0..n_bins)
        .map(|b| {
            let (conf, acc) = if count[b] == 0 {
                (0.0, 0.0)
            } else {
                (conf_sum[b] / count[b] as f64, right[b] as f64 / count[b] as f64)
            };
            ece += count[b] as f64 / total * (acc - conf).abs();
            ReliabilityBin {
                lo: b as f64 / n_bins as f64,
                hi: (b + 1) as f64 / n_bins as f64,
                count: count[b],
                confidence: conf,
                accuracy: acc,
            }
        })
        .collect();
    Calibration { ece, bins }
}

/// Softmax of one row of logits, in f64 (max subtracted so large logits do not overflow).
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_by_hand() {
        // Two bins. (0, .5]: confidences .3 and .5, one right: |0.5 − 0.4| = 0.1, weight 2/4.
        // (.5, 1]: .9 and .7, both right: |1 − 0.8| = 0.2, weight 2/4. ECE = 0.05 + 0.1 = 0.15.
        let c = expected_calibration_error(&[0.3, 0.5, 0.9, 0.7], &[true, false, true, true], 2);
        assert!((c.ece - 0.15).abs() < 1e-12, "{c:?}");
        assert_eq!(c.bins[0].count, 2);
        assert!((c.bins[1].confidence - 0.8).abs() < 1e-12);
        assert_eq!(c.bins[1].accuracy, 1.0);
        // A perfectly calibrated set, and none at all.
        let c = expected_calibration_error(&[1.0, 1.0], &[true, true], 15);
        assert_eq!(c.ece, 0.0);
        assert_eq!(c.bins[14].count, 2);
        assert_eq!(expected_calibration_error(&[], &[], 15).ece, 0.0);
    }

    #[test]
    fn softmax_is_stable() {
        // exp(1000) overflows; with the max subtracted it does not. (f32 spacing near 1000 is
        // 6e-5, so ln 2 is added at 50, where it is 4e-6.)
        let p = softmax(&[1000.0, 1000.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        let p = softmax(&[50.0, 50.0 + 2f32.ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-5 && (p[1] - 2.0 / 3.0).abs() < 1e-5, "{p:?}");
    }
}
