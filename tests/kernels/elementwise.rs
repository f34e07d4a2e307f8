//! Activations, SwiGLU and the simple elementwise ops vs the reference.

use kiln::Tensor;
use kiln::kernels::elementwise::{self as ew, Activation};
use kiln::reference::elementwise as r;

use crate::common::*;

// Activations: f32 evaluation of exp/tanh/erf, ~1e-6 relative.
const ATOL: f64 = 2e-6;
const RTOL: f64 = 2e-5;

/// Sizes: 1, a product of primes, just past a workgroup, and one that makes each invocation
/// loop (larger strides: `grid_stride_covers_large_tensors`; the folded grid:
/// `grid_folds_past_the_dimension_limit`).
const SIZES: [usize; 4] = [1, 7 * 13, 257, 100_003];

#[test]
fn activations_forward_and_backward() {
    let gpu = gpu();
    let mut rng = Rng::new(20);
    type Case = (Activation, fn(f64) -> f64, fn(f64) -> f64);
    let cases: [Case; 6] = [
        (Activation::GeluErf, r::gelu_erf, r::gelu_erf_grad),
        (Activation::GeluTanh, r::gelu_tanh, r::gelu_tanh_grad),
        (Activation::Silu, r::silu, r::silu_grad),
        (Activation::Relu, r::relu, r::relu_grad),
        (Activation::Relu6, r::relu6, r::relu6_grad),
        (Activation::Tanh, r::tanh, r::tanh_grad),
    ];
    for n in SIZES {
        // Spread inputs over [-12, 12] to reach the saturated tails.
        let x: Vec<f32> = rng.vec(n).iter().map(|v| v * 12.0).collect();
        let dy = rng.vec(n);
        let (xt, dyt) = (upload(&x, &[n]), upload(&dy, &[n]));
        for (act, f, df) in cases {
            let y = ew::activation(gpu, act, &xt).unwrap();
            let want: Vec<f64> = x.iter().map(|&v| f(v as f64)).collect();
            assert_close(&format!("{act:?} n={n}"), &download(&y), &want, ATOL, RTOL);
            // Backward, accumulating onto a non-zero buffer.
            let base = rng.vec(n);
            let dx = upload(&base, &[n]);
            ew::activation_backward(gpu, act, &xt, &dyt, &dx, true).unwrap();
            let want: Vec<f64> = (0..n).map(|i| base[i] as f64 + dy[i] as f64 * df(x[i] as f64)).collect();
            assert_close(&format!("{act:?} backward n={n}"), &download(&dx), &want, ATOL, RTOL);
        }
    }
}

#[test]
fn swiglu_forward_and_backward() {
    let gpu = gpu();
    let mut rng = Rng::new(21);
    for n in SIZES {
        let (gate, up, dy) = (rng.vec(n), rng.vec(n), rng.vec(n));
        let (gt, ut, dyt) = (upload(&gate, &[n]), upload(&up, &[n]), upload(&dy, &[n]));
        let y = ew::gated(gpu, ew::GatedUnit::SwiGlu, &gt, &ut).unwrap();
        assert_close("swiglu", &download(&y), &r::swiglu(&f64s(&gate), &f64s(&up)), ATOL, RTOL);
        let (dg, du) = (Tensor::zeros(gpu, &[n]).unwrap(), Tensor::zeros(gpu, &[n]).unwrap());
        ew::gated_backward(gpu, ew::GatedUnit::SwiGlu, &gt, &ut, &dyt, &dg, &du, false).unwrap();
        let (wg, wu) = r::swiglu_backward(&f64s(&gate), &f64s(&up), &f64s(&dy));
        assert_close("swiglu dgate", &download(&dg), &wg, ATOL, RTOL);
        assert_close("swiglu dup", &download(&du), &wu, ATOL, RTOL);
    }
}

#[test]
fn geglu_forward_and_backward() {
    let gpu = gpu();
    let mut rng = Rng::new(23);
    for n in SIZES {
        let (gate, up, dy) = (rng.vec(n), rng.vec(n), rng.vec(n));
        let (gt, ut, dyt) = (upload(&gate, &[n]), upload(&up, &[n]), upload(&dy, &[n]));
        let y = ew::gated(gpu, ew::GatedUnit::GeGlu, &gt, &ut).unwrap();
        assert_close("geglu", &download(&y), &r::geglu(&f64s(&gate), &f64s(&up)), ATOL, RTOL);
        let (dg, du) = (Tensor::zeros(gpu, &[n]).unwrap(), Tensor::zeros(gpu, &[n]).unwrap());
        ew::gated_backward(gpu, ew::GatedUnit::GeGlu, &gt, &ut, &dyt, &dg, &du, false).unwrap();
        let (wg, wu) = r::geglu_backward(&f64s(&gate), &f64s(&up), &f64s(&dy));
        assert_close("geglu dgate", &download(&dg), &wg, ATOL, RTOL);
        assert_close("geglu dup", &download(&du), &wu, ATOL, RTOL);
        // Accumulating adds into what is there.
        ew::gated_backward(gpu, ew::GatedUnit::GeGlu, &gt, &ut, &dyt, &dg, &du, true).unwrap();
        let twice: Vec<f64> = wg.iter().map(|v| 2.0 * v).collect();
        assert_close("geglu dgate accumulated", &download(&dg), &twice, ATOL, RTOL);
    }
}

#[test]
fn add_scale_mul_bias_axpy() {
    let gpu = gpu();
    let mut rng = Rng::new(22);
    let (rows, cols) = (37, 129);
    let n = rows * cols;
    let (x, y, bias) = (rng.vec(n), rng.vec(n), rng.vec(cols));
    let (xt, yt, bt) = (upload(&x, &[rows, cols]), upload(&y, &[rows, cols]), upload(&bias, &[cols]));
    let exact = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
    assert_close(
        "add",
        &download(&ew::add(gpu, &xt, &yt).unwrap()),
        &exact(&|i| x[i] as f64 + y[i] as f64),
        1e-6,
        1e-6,
    );
    assert_close("scale", &download(&ew::scale(gpu, &xt, -0.5).unwrap()), &exact(&|i| -0.5 * x[i] as f64), 1e-6, 1e-6);
    let out = Tensor::zeros(gpu, &[rows, cols]).unwrap();
    ew::mul_into(gpu, &xt, &yt, &out, false).unwrap();
    assert_close("mul", &download(&out), &exact(&|i| x[i] as f64 * y[i] as f64), 1e-6, 1e-6);
    assert_close(
        "add_bias",
        &download(&ew::add_bias(gpu, &xt, &bt).unwrap()),
        &r::add_bias(&f64s(&x), &f64s(&bias)),
        1e-6,
        1e-6,
    );
    let acc = upload(&y, &[rows, cols]);
    ew::axpy(gpu, 2.0, &xt, &acc).unwrap();
    assert_close("axpy", &download(&acc), &exact(&|i| y[i] as f64 + 2.0 * x[i] as f64), 1e-6, 1e-6);
    let err = ew::add(gpu, &xt, &bt).unwrap_err().to_string();
    assert!(err.contains("tensor `y`"), "{err}");
}

#[test]
fn grid_stride_covers_large_tensors() {
    // Far more elements than invocations launched: each invocation loops, and every element
    // must be written exactly once.
    let gpu = gpu();
    let n = 65_536 * 256 + 777;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let y = ew::scale(gpu, &upload(&x, &[n]), 2.0).unwrap();
    let got = download(&y);
    let bad = (0..n).find(|&i| got[i] != 2.0 * x[i]);
    assert_eq!(bad, None, "first wrong element");
}

#[test]
fn grid_folds_past_the_dimension_limit() {
    // Cross-entropy's backward launches one workgroup per 256 logits: 340 × 50257 logits
    // need more than 65535 workgroups, so the grid folds into y. With all-zero logits,
    // dlogits = (1/V − onehot) / rows everywhere.
    let gpu = gpu();
    let (rows, vocab) = (340usize, 50_257usize);
    let logits = Tensor::zeros(gpu, &[rows, vocab]).unwrap();
    let targets: Vec<i32> = (0..rows as i32).collect();
    let tt = Tensor::from_i32(gpu, &targets, &[rows]).unwrap();
    let fwd = kiln::kernels::softmax_xent::forward(gpu, &logits, &tt, -100).unwrap();
    let d = Tensor::empty(gpu, &[rows, vocab], kiln::DType::F32).unwrap();
    kiln::kernels::softmax_xent::backward(gpu, &logits, &tt, &fwd, 1.0, &d, -100, false).unwrap();
    let got = download(&d);
    let want = |i: usize| {
        let (r, v) = (i / vocab, i % vocab);
        (1.0 / vocab as f64 - if v == r { 1.0 } else { 0.0 }) / rows as f64
    };
    let bad = (0..rows * vocab).find(|&i| (got[i] as f64 - want(i)).abs() > 1e-9);
    assert_eq!(bad, None, "first wrong element");
}

#[test]
fn copy_cols_splits_and_merges_column_blocks() {
    let gpu = gpu();
    let mut rng = Rng::new(23);
    // Rows: 1 and an odd count; GPT-2's fused q|k|v of odd width 3·7.
    for rows in [1, 37] {
        let (cols, width) = (21, 7);
        let x = rng.vec(rows * cols);
        let xt = upload(&x, &[rows, cols]);
        for part in 0..3 {
            let out = Tensor::zeros(gpu, &[rows, width]).unwrap();
            let block = ew::ColumnBlock { width, src_off: part * width, dst_off: 0 };
            ew::copy_cols(gpu, &xt, &out, block, false).unwrap();
            let mut want = vec![0.0; rows * width];
            r::copy_cols(&f64s(&x), cols, &mut want, width, width, part * width, 0, false);
            assert_close("copy_cols split", &download(&out), &want, 0.0, 0.0);
        }
        // Merge back with accumulate: the backward of the split.
        let base = rng.vec(rows * cols);
        let merged = upload(&base, &[rows, cols]);
        let part = upload(&x[..rows * width], &[rows, width]);
        ew::copy_cols(gpu, &part, &merged, ew::ColumnBlock { width, src_off: 0, dst_off: 2 * width }, true).unwrap();
        let mut want = f64s(&base);
        r::copy_cols(&f64s(&x[..rows * width]), width, &mut want, cols, width, 0, 2 * width, true);
        assert_close("copy_cols merge", &download(&merged), &want, 1e-7, 1e-7);
    }
    let out = Tensor::zeros(gpu, &[37, 7]).unwrap();
    let bad = ew::ColumnBlock { width: 7, src_off: 15, dst_off: 0 };
    let err = ew::copy_cols(gpu, &upload(&rng.vec(37 * 21), &[37, 21]), &out, bad, false).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
}
