//! Data curation on planted cases: flipped labels found by out-of-fold head fits.

mod common;

use common::*;
use kiln::curate::suspicious::{HeadFit, find_suspects, out_of_fold_probabilities};

/// Three well-separated classes of 60 points in 16 dimensions, with 6 labels flipped: the
/// flipped rows are the top suspects, and few clean rows are flagged.
#[test]
fn flipped_labels_are_the_top_suspects() {
    let (n, dim, k) = (180, 16, 3);
    let mut rng = Rng::new(11);
    let mut features = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % k;
        for d in 0..dim {
            let centre = if d % k == class { 2.0 } else { 0.0 };
            // Noise in [-0.5, 0.5): the classes are apart, as a good encoder's would be.
            features.push(centre + 0.5 * rng.uniform());
        }
        labels.push(class);
    }
    let flipped = [5, 31, 64, 100, 133, 170];
    for &i in &flipped {
        labels[i] = (labels[i] + 1) % k;
    }
    let fit = HeadFit::default();
    let probs = out_of_fold_probabilities(gpu(), &features, dim, &labels, k, &fit).unwrap();
    assert_eq!(probs.len(), n * k);
    let suspects = find_suspects(&probs, &labels, k);
    let top: Vec<usize> = suspects.iter().take(flipped.len()).map(|s| s.index).collect();
    let mut sorted = top.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        flipped,
        "top suspects {top:?}; all: {:?}",
        suspects.iter().map(|s| (s.index, s.self_confidence)).collect::<Vec<_>>()
    );
    for s in suspects.iter().take(flipped.len()) {
        assert_eq!(s.suggested, (s.label + k - 1) % k, "row {} should go back to its true class", s.index);
        assert!(s.self_confidence < 0.5 && s.suggested_probability > 0.5, "{s:?}");
    }
    assert!(suspects.len() <= flipped.len() + 3, "{} rows flagged", suspects.len());
}

#[test]
fn bad_shapes_are_errors() {
    let fit = HeadFit::default();
    let e = out_of_fold_probabilities(gpu(), &[0.0; 10], 3, &[0, 1, 0], 2, &fit).unwrap_err();
    assert!(e.to_string().contains("feature values"), "{e}");
    let e = out_of_fold_probabilities(gpu(), &[0.0; 9], 3, &[0, 1, 0], 2, &fit).unwrap_err();
    assert!(e.to_string().contains("folds"), "{e}");
}
