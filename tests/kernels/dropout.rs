//! Dropout's mask matches the reference bit for bit, forward and backward.

use kiln::kernels::dropout::{self, DropoutMask};
use kiln::reference::dropout as r;

use crate::common::*;

#[test]
fn dropout_matches_reference_and_is_reproducible() {
    let gpu = gpu();
    let mut rng = Rng::new(70);
    for (n, p) in [(1, 0.5), (1000, 0.1), (100_003, 0.3), (777, 0.0)] {
        let x = rng.vec(n);
        let mask = DropoutMask { p, seed: 1234, step: 9 };
        let xt = upload(&x, &[n]);
        let y = download(&dropout::apply(gpu, mask, &xt).unwrap());
        let want = r::apply(&f64s(&x), p as f64, 1234, 9);
        assert_close(&format!("dropout n={n} p={p}"), &y, &want, 1e-6, 1e-6);
        // Same seed and step: same mask. Another step: another mask.
        assert_eq!(y, download(&dropout::apply(gpu, mask, &xt).unwrap()));
        if n > 100 && p > 0.0 {
            let other = download(&dropout::apply(gpu, DropoutMask { step: 10, ..mask }, &xt).unwrap());
            assert_ne!(y, other, "a new step must draw a new mask");
            let kept = y.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
            assert!((kept - (1.0 - p as f64)).abs() < 0.05, "kept fraction {kept} for p={p}");
        }
    }
    assert!(dropout::apply(gpu, DropoutMask { p: 1.0, seed: 0, step: 0 }, &upload(&[1.0], &[1])).is_err());
}
