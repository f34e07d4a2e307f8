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

/// LoRA's dropout is fused into its matmuls (`autograd::linear` with a `Lora` branch): the
/// output and the gradients of x, A and B equal those of the same layer written out with the
/// dropout op (the same mask: the first dropout stream of a tape seeded alike), with s = 2
/// folded into B there, and W frozen, as under LoRA. (Were the fused path to skip the mask, the
/// written-out layer's dropout would tell them apart.)
#[test]
fn lora_dropout_fused_equals_the_dropout_op() {
    use kiln::Tensor;
    use kiln::autograd::{Lora, Param, Tape, WeightLayout, add, cross_entropy, linear};
    let g = gpu();
    let mut rng = Rng::new(71);
    let (rows, d_in, d_out, r) = (37, 24, 19, 4);
    let (x, w, a, b) = (rng.vec(rows * d_in), rng.vec(d_out * d_in), rng.vec(r * d_in), rng.vec(d_out * r));
    let targets: Vec<i32> = (0..rows).map(|i| (i * 7 % d_out) as i32).collect();
    let param = |name: &str, v: &[f32], shape: &[usize], trainable: bool| {
        let mut p = Param::new(name, Tensor::from_f32(g, v, shape).unwrap());
        p.set_trainable(g, trainable).unwrap();
        p
    };
    let grads = |fused: bool| {
        let xp = param("x", &x, &[rows, d_in], true);
        let wp = param("w", &w, &[d_out, d_in], false);
        let ap = param("a", &a, &[r, d_in], true);
        let b2: Vec<f32> = b.iter().map(|v| if fused { *v } else { 2.0 * v }).collect();
        let bp = param("b", &b2, &[d_out, r], true);
        let tape = Tape::train(g, 9, 4);
        let (xv, wv, av, bv) = (tape.param(&xp), tape.param(&wp), tape.param(&ap), tape.param(&bp));
        let y = if fused {
            let lora = Lora { a: &av, b: &bv, scale: 2.0, dropout: 0.25 };
            linear(&tape, &xv, &wv, WeightLayout::OutIn, None, Some(lora)).unwrap()
        } else {
            let xd = kiln::autograd::dropout(&tape, &xv, 0.25).unwrap();
            let h = linear(&tape, &xd, &av, WeightLayout::OutIn, None, None).unwrap();
            let up = linear(&tape, &h, &bv, WeightLayout::OutIn, None, None).unwrap();
            add(&tape, &linear(&tape, &xv, &wv, WeightLayout::OutIn, None, None).unwrap(), &up).unwrap()
        };
        let out = y.value.to_f32_vec(g).unwrap();
        let loss = cross_entropy(&tape, &y, &targets).unwrap();
        tape.backward(&loss, 1.0).unwrap();
        let grad = |p: &Param| p.grad.as_ref().expect("a gradient").to_f32_vec(g).unwrap();
        let db: Vec<f32> = grad(&bp).iter().map(|v| if fused { *v } else { 2.0 * v }).collect();
        (out, grad(&xp), grad(&ap), db)
    };
    let (fused, plain) = (grads(true), grads(false));
    for (what, f, p) in
        [("y", &fused.0, &plain.0), ("dx", &fused.1, &plain.1), ("dA", &fused.2, &plain.2), ("dB", &fused.3, &plain.3)]
    {
        assert_close(&format!("fused LoRA dropout {what}"), f, &f64s(p), 1e-5, 1e-5);
    }
}
