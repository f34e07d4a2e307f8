//! Fused softmax + cross-entropy with ignore index vs the reference, up to a 50k vocabulary.

use kiln::Tensor;
use kiln::kernels::softmax_xent::{self as xent, IGNORE_INDEX};
use kiln::reference::softmax_xent as r;

use crate::common::*;

#[test]
fn cross_entropy_forward_backward() {
    let gpu = gpu();
    let mut rng = Rng::new(50);
    for (rows, vocab) in [(1, 1), (1, 7), (9, 257), (5, 50_257)] {
        let logits: Vec<f32> = rng.vec(rows * vocab).iter().map(|v| v * 8.0).collect();
        let targets: Vec<i32> =
            (0..rows).map(|i| if i % 4 == 1 { IGNORE_INDEX } else { rng.below(vocab as u32) as i32 }).collect();
        let lt = upload(&logits, &[rows, vocab]);
        let tt = Tensor::from_i32(gpu, &targets, &[rows]).unwrap();
        let fwd = xent::forward(gpu, &lt, &tt, IGNORE_INDEX).unwrap();
        let (loss, lse, count) = r::forward(&f64s(&logits), &targets, vocab, IGNORE_INDEX);
        let what = format!("xent {rows}x{vocab}");
        assert_close(&format!("{what} stats"), &download(&fwd.stats), &[loss, count as f64], 1e-4, 1e-5);
        assert_close(&format!("{what} lse"), &download(&fwd.lse), &lse, 1e-4, 1e-5);
        let dloss = upload(&[0.5], &[1]);
        let d = Tensor::zeros(gpu, &[rows, vocab]).unwrap();
        xent::backward(gpu, &lt, &tt, &fwd, &dloss, &d, IGNORE_INDEX, false).unwrap();
        let want = r::backward(&f64s(&logits), &targets, vocab, IGNORE_INDEX, &lse, count, 0.5);
        assert_close(&format!("{what} dlogits"), &download(&d), &want, 1e-6, 1e-4);
    }
}

#[test]
fn cross_entropy_all_ignored_is_zero_not_nan() {
    let gpu = gpu();
    let lt = upload(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let tt = Tensor::from_i32(gpu, &[IGNORE_INDEX, IGNORE_INDEX], &[2]).unwrap();
    let fwd = xent::forward(gpu, &lt, &tt, IGNORE_INDEX).unwrap();
    assert_eq!(download(&fwd.stats), vec![0.0, 0.0]);
}

#[test]
fn cross_entropy_rejects_bad_targets() {
    let err = xent::check_targets(&[0, 5, -100], 5, IGNORE_INDEX).unwrap_err().to_string();
    assert!(err.contains("target 5 at row 1"), "{err}");
}
