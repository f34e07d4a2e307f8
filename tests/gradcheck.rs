//! Finite-difference checks of every backward in `kiln::reference`, in f64. The GPU kernels
//! are then tested against these references (tests/kernels.rs), so a wrong derivative cannot
//! hide in both places.
//!
//! Each check: pick a random upstream gradient w, let L(x) = Σ w·f(x); the central difference
//! (L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h must match the analytic vector–Jacobian product.

mod common;

use common::{Rng, f64s};
use kiln::reference::*;

const H: f64 = 1e-6;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compares analytic dL/dx with central differences of `loss` at x; tolerance 1e-6 abs + rel.
fn check(what: &str, x: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut worst = 0.0f64;
    for i in 0..x.len() {
        let mut xp = x.to_vec();
        xp[i] += H;
        let mut xm = x.to_vec();
        xm[i] -= H;
        let numeric = (loss(&xp) - loss(&xm)) / (2.0 * H);
        let err = (numeric - analytic[i]).abs();
        worst = worst.max(err / (1.0 + numeric.abs()));
        assert!(err <= 1e-6 * (1.0 + numeric.abs()), "{what}: d/dx[{i}] analytic {} vs numeric {numeric}", analytic[i]);
    }
    eprintln!("{what}: {} partials, worst scaled error {worst:.2e}", x.len());
}

fn randv(rng: &mut Rng, n: usize) -> Vec<f64> {
    f64s(&rng.vec(n))
}

#[test]
fn matmul_backward_by_transpose_flags() {
    // C = A·B  ⇒  dA = dC·Bᵀ (trans_b), dB = Aᵀ·dC (trans_a): the recipe autograd uses.
    let mut rng = Rng::new(10);
    let (m, n, k) = (3, 4, 5);
    let (a, b, w) = (randv(&mut rng, m * k), randv(&mut rng, k * n), randv(&mut rng, m * n));
    let fwd = |a: &[f64], b: &[f64]| {
        let mut c = vec![0.0; m * n];
        matmul::matmul(a, b, None, &mut c, (1, m, n, k), false, false, 1.0, false);
        c
    };
    let mut da = vec![0.0; m * k];
    matmul::matmul(&w, &b, None, &mut da, (1, m, k, n), false, true, 1.0, false);
    let mut db = vec![0.0; k * n];
    matmul::matmul(&a, &w, None, &mut db, (1, k, n, m), true, false, 1.0, false);
    check("matmul dA", &a, &da, |x| dot(&w, &fwd(x, &b)));
    check("matmul dB", &b, &db, |x| dot(&w, &fwd(&a, x)));
}

#[test]
fn layer_norm_and_rms_norm_backward() {
    let mut rng = Rng::new(11);
    let (rows, cols) = (3, 7);
    let (x, w) = (randv(&mut rng, rows * cols), randv(&mut rng, rows * cols));
    let (gamma, beta) = (randv(&mut rng, cols), randv(&mut rng, cols));
    for rms in [false, true] {
        let name = if rms { "rms_norm" } else { "layer_norm" };
        let beta_opt = (!rms).then_some(&beta[..]);
        let (_, mean, rstd) = layer_norm::forward(&x, &gamma, beta_opt, 1e-5);
        let (dx, dgamma, dbeta) = layer_norm::backward(&x, &gamma, &mean, &rstd, &w, rms);
        check(&format!("{name} dx"), &x, &dx, |x| dot(&w, &layer_norm::forward(x, &gamma, beta_opt, 1e-5).0));
        check(&format!("{name} dgamma"), &gamma, &dgamma, |g| dot(&w, &layer_norm::forward(&x, g, beta_opt, 1e-5).0));
        if !rms {
            check("layer_norm dbeta", &beta, &dbeta, |b| dot(&w, &layer_norm::forward(&x, &gamma, Some(b), 1e-5).0));
        }
        // add_norm: y = norm(x + r). Its backward is the norm's at the sum, passed to x and to r.
        let r = randv(&mut rng, rows * cols);
        let sum = |x: &[f64], r: &[f64]| -> Vec<f64> { x.iter().zip(r).map(|(a, b)| a + b).collect() };
        let s = sum(&x, &r);
        let (_, mean, rstd) = layer_norm::forward(&s, &gamma, beta_opt, 1e-5);
        let (ds, _, _) = layer_norm::backward(&s, &gamma, &mean, &rstd, &w, rms);
        let normed = |x: &[f64], r: &[f64]| dot(&w, &layer_norm::forward(&sum(x, r), &gamma, beta_opt, 1e-5).0);
        check(&format!("add + {name} dx"), &x, &ds, |x| normed(x, &r));
        check(&format!("add + {name} dr"), &r, &ds, |r| normed(&x, r));
    }
}

#[test]
fn activations_backward() {
    let mut rng = Rng::new(12);
    let x: Vec<f64> = randv(&mut rng, 20).iter().map(|v| v * 4.0).collect();
    let w = randv(&mut rng, 20);
    type Pair = (&'static str, fn(f64) -> f64, fn(f64) -> f64);
    let pairs: [Pair; 3] = [
        ("gelu_erf", elementwise::gelu_erf, elementwise::gelu_erf_grad),
        ("gelu_tanh", elementwise::gelu_tanh, elementwise::gelu_tanh_grad),
        ("silu", elementwise::silu, elementwise::silu_grad),
    ];
    for (name, f, df) in pairs {
        let analytic: Vec<f64> = x.iter().zip(&w).map(|(&x, &w)| w * df(x)).collect();
        check(name, &x, &analytic, |x| x.iter().zip(&w).map(|(&x, &w)| w * f(x)).sum());
    }
    let up = randv(&mut rng, 20);
    let (dgate, dup) = elementwise::swiglu_backward(&x, &up, &w);
    check("swiglu dgate", &x, &dgate, |g| dot(&w, &elementwise::swiglu(g, &up)));
    check("swiglu dup", &up, &dup, |u| dot(&w, &elementwise::swiglu(&x, u)));
    let (dgate, dup) = elementwise::geglu_backward(&x, &up, &w);
    check("geglu dgate", &x, &dgate, |g| dot(&w, &elementwise::geglu(g, &up)));
    check("geglu dup", &up, &dup, |u| dot(&w, &elementwise::geglu(&x, u)));
}

#[test]
fn softmax_cross_entropy_backward() {
    let mut rng = Rng::new(13);
    let (rows, vocab) = (5, 11);
    let logits: Vec<f64> = randv(&mut rng, rows * vocab).iter().map(|v| v * 3.0).collect();
    let targets = [3, -100, 0, 10, 7];
    let (_, lse, count) = softmax_xent::forward(&logits, &targets, vocab, -100);
    assert_eq!(count, 4);
    let d = softmax_xent::backward(&logits, &targets, vocab, -100, &lse, count, 0.7);
    check("cross_entropy dlogits", &logits, &d, |l| 0.7 * softmax_xent::forward(l, &targets, vocab, -100).0);
}

#[test]
fn softmax_cross_entropy_weighted_backward() {
    // L = Σᵣ w[tᵣ]·(lseᵣ − xᵣ[tᵣ]) / Σᵣ w[tᵣ] over counted rows  ⇒
    // dL/dxᵣᵥ = w[tᵣ]·(softmax(xᵣ)ᵥ − [v = tᵣ]) / Σ w  (the weights are constants).
    let mut rng = Rng::new(19);
    let (rows, vocab) = (6, 4);
    let logits: Vec<f64> = randv(&mut rng, rows * vocab).iter().map(|v| v * 3.0).collect();
    let targets = [3, -100, 0, 1, 2, 1];
    // Class 2 weighted 0; the ignored row would carry weight 1.5 were it counted.
    let weights = [0.3, 1.5, 0.0, 2.0];
    let (_, lse, wsum) = softmax_xent::forward_weighted(&logits, &targets, &weights, vocab, -100);
    assert!((wsum - (2.0 + 0.3 + 1.5 + 0.0 + 1.5)).abs() < 1e-12, "weight sum {wsum}");
    let d = softmax_xent::backward_weighted(&logits, &targets, &weights, vocab, -100, &lse, wsum, 0.7);
    check("cross_entropy_weighted dlogits", &logits, &d, |l| {
        0.7 * softmax_xent::forward_weighted(l, &targets, &weights, vocab, -100).0
    });
    // Row 4's class weighs 0: no gradient reaches it.
    assert!(d[4 * vocab..5 * vocab].iter().all(|&g| g == 0.0));
}

/// The weighted reference against PyTorch (float64), with an ignored row and a zero weight:
///
/// ```python
/// x = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
/// loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(WEIGHTS, dtype=torch.float64))(x, torch.tensor(TARGETS))
/// loss.backward(); print(loss.item(), x.grad.flatten().tolist())
/// ```
#[test]
fn softmax_cross_entropy_weighted_matches_pytorch() {
    const LOGITS: [f64; 16] = [0.5, -1.0, 2.0, 0.0, 1.0, 1.0, -0.5, 3.0, -2.0, 0.25, 0.75, 1.5, 0.1, 0.2, 0.3, 0.4];
    const TARGETS: [i32; 4] = [1, -100, 3, 2];
    const WEIGHTS: [f64; 4] = [0.5, 2.0, 0.0, 1.25];
    let torch_loss = 2.2805594443896213;
    #[rustfmt::skip]
    let torch_grad = [
        0.09750443662460292, -0.5936284348253853, 0.43698456792995344, 0.05913943027082905,
        0.0, 0.0, 0.0, 0.0,
        0.006491856922525829, 0.06159302356836045, 0.10154972808389018, -0.16963460857477647,
        0.0, 0.0, 0.0, 0.0,
    ];
    let (loss, lse, wsum) = softmax_xent::forward_weighted(&LOGITS, &TARGETS, &WEIGHTS, 4, -100);
    let d = softmax_xent::backward_weighted(&LOGITS, &TARGETS, &WEIGHTS, 4, -100, &lse, wsum, 1.0);
    assert!((loss - torch_loss).abs() < 1e-12, "loss {loss} vs PyTorch {torch_loss}");
    for (i, (g, t)) in d.iter().zip(torch_grad).enumerate() {
        assert!((g - t).abs() < 1e-12, "dlogits[{i}] {g} vs PyTorch {t}");
    }
}

#[test]
fn dora_backward_with_detached_norm() {
    // y = (c + k0)·p + c·s·q, c = m/n with n constant: dp = (c + k0)·w, dq = c·s·w,
    // dm = Σ_rows w·(p + s·q)/n. Finite differences hold n fixed, as PEFT's .detach() does.
    let mut rng = Rng::new(16);
    let (rows, out, s) = (3, 4, 1.5);
    for k0 in [0.0, -1.0] {
        let (m, p, q, w) = (
            randv(&mut rng, out),
            randv(&mut rng, rows * out),
            randv(&mut rng, rows * out),
            randv(&mut rng, rows * out),
        );
        let n: Vec<f64> = randv(&mut rng, out).iter().map(|x| 0.5 + x.abs()).collect();
        let bias = randv(&mut rng, out);
        let (dp, dq, dm) = dora::backward(&m, &n, &p, &q, &w, s, k0);
        let f = |m: &[f64], p: &[f64], q: &[f64]| dot(&w, &dora::forward(m, &n, p, q, Some(&bias), s, k0));
        check(&format!("dora k0={k0} dp"), &p, &dp, |x| f(&m, x, &q));
        check(&format!("dora k0={k0} dq"), &q, &dq, |x| f(&m, &p, x));
        check(&format!("dora k0={k0} dm"), &m, &dm, |x| f(x, &p, &q));
    }
}

#[test]
fn attention_backward() {
    let mut rng = Rng::new(14);
    for (causal, with_mask, hq, hkv, window) in [
        (false, false, 2, 2, None),
        (true, false, 4, 2, None),
        (true, true, 3, 1, None),
        (false, true, 2, 1, None),
        (true, false, 2, 1, Some(2)),
        (true, true, 2, 2, Some(3)),
    ] {
        let dm = attention::Dims { b: 2, t: 5, hq, hkv, d: 3, causal, scale: 0.6, window, segments: None };
        let nq = dm.b * dm.t * hq * dm.d;
        let nk = dm.b * dm.t * hkv * dm.d;
        let (q, k, v, w) = (randv(&mut rng, nq), randv(&mut rng, nk), randv(&mut rng, nk), randv(&mut rng, nq));
        // Second sequence: last two positions are padding.
        let mask: Vec<bool> = (0..dm.b * dm.t).map(|i| !(i >= dm.t && i % dm.t >= 3)).collect();
        let mask = with_mask.then_some(&mask[..]);
        let (dq, dk, dv) = attention::backward(&dm, &q, &k, &v, mask, &w);
        let what = format!("attention causal={causal} mask={with_mask} hq={hq} hkv={hkv} window={window:?}");
        check(&format!("{what} dq"), &q, &dq, |x| dot(&w, &attention::forward(&dm, x, &k, &v, mask).0));
        check(&format!("{what} dk"), &k, &dk, |x| dot(&w, &attention::forward(&dm, &q, x, &v, mask).0));
        check(&format!("{what} dv"), &v, &dv, |x| dot(&w, &attention::forward(&dm, &q, &k, x, mask).0));
    }
}

/// Packed sequences: the block-diagonal causal mask of two examples (and a padding tail) per
/// row; the masked probabilities are zero, so the same dS formula holds.
#[test]
fn attention_backward_packed() {
    let mut rng = Rng::new(15);
    for (hq, hkv, window) in [(2, 1, None), (2, 2, Some(2))] {
        let segments = vec![1, 1, 2, 2, 2, 0, 1, 2, 2, 3, 3, 3];
        let mask: Vec<bool> = segments.iter().map(|&s| s != 0).collect();
        let dm =
            attention::Dims { b: 2, t: 6, hq, hkv, d: 3, causal: true, scale: 0.6, window, segments: Some(segments) };
        let nq = dm.b * dm.t * hq * dm.d;
        let nk = dm.b * dm.t * hkv * dm.d;
        let (q, k, v, w) = (randv(&mut rng, nq), randv(&mut rng, nk), randv(&mut rng, nk), randv(&mut rng, nq));
        let m = Some(&mask[..]);
        let (dq, dk, dv) = attention::backward(&dm, &q, &k, &v, m, &w);
        let what = format!("packed attention hq={hq} hkv={hkv} window={window:?}");
        check(&format!("{what} dq"), &q, &dq, |x| dot(&w, &attention::forward(&dm, x, &k, &v, m).0));
        check(&format!("{what} dk"), &k, &dk, |x| dot(&w, &attention::forward(&dm, &q, x, &v, m).0));
        check(&format!("{what} dv"), &v, &dv, |x| dot(&w, &attention::forward(&dm, &q, &k, x, m).0));
    }
}

#[test]
fn rope_backward_is_inverse_rotation() {
    let mut rng = Rng::new(15);
    let dims = (2, 3, 2, 6);
    let n = dims.0 * dims.1 * dims.2 * dims.3;
    let (x, w) = (randv(&mut rng, n), randv(&mut rng, n));
    let angles = kiln::kernels::rope::angles(dims.3, 8, 10000.0);
    let positions: Vec<usize> = vec![0, 1, 2, 5, 6, 7];
    let dx = rope::apply(&w, dims, &angles, &positions, true);
    check("rope dx", &x, &dx, |x| dot(&w, &rope::apply(x, dims, &angles, &positions, false)));
}

/// Partial rotary with an attention factor f: y = blockdiag(f·R(θ), I)·x, so
/// dx = blockdiag(f·R(−θ), I)·dy (the transpose; no longer the inverse once f ≠ 1).
#[test]
fn rope_partial_scaled_backward_is_transpose() {
    let mut rng = Rng::new(17);
    let dims = (2, 3, 2, 10);
    let (rot_dim, factor) = (6, 1.3);
    let n = dims.0 * dims.1 * dims.2 * dims.3;
    let (x, w) = (randv(&mut rng, n), randv(&mut rng, n));
    let inv_freq = [1.0, 0.3, 0.05];
    let angles = kiln::kernels::rope::angles_from(&inv_freq, 8);
    let positions: Vec<usize> = vec![0, 1, 2, 5, 6, 7];
    let dx = rope::apply_partial(&w, dims, rot_dim, &angles, factor, &positions, true);
    check("rope partial dx", &x, &dx, |x| {
        dot(&w, &rope::apply_partial(x, dims, rot_dim, &angles, factor, &positions, false))
    });
}

#[test]
fn embedding_backward_is_scatter_add() {
    let mut rng = Rng::new(16);
    let (vocab, cols) = (6, 4);
    let ids = [2u32, 5, 2, 0, 2];
    let table = randv(&mut rng, vocab * cols);
    let w = randv(&mut rng, ids.len() * cols);
    let mut dtable = vec![0.0; vocab * cols];
    embedding::scatter_add(&w, cols, &ids, &mut dtable);
    check("embedding dtable", &table, &dtable, |t| dot(&w, &embedding::gather(t, cols, &ids)));
}

#[test]
fn dropout_backward_reuses_the_mask() {
    let mut rng = Rng::new(17);
    let (x, w) = (randv(&mut rng, 50), randv(&mut rng, 50));
    let dx = dropout::apply(&w, 0.3, 7, 3);
    check("dropout dx", &x, &dx, |x| dot(&w, &dropout::apply(x, 0.3, 7, 3)));
    let kept = dropout::apply(&vec![1.0; 10_000], 0.3, 1, 1).iter().filter(|v| **v != 0.0).count();
    assert!((6700..7300).contains(&kept), "dropout p=0.3 kept {kept} of 10000");
}

#[test]
fn bias_gradient_is_row_sum() {
    let mut rng = Rng::new(18);
    let (rows, cols) = (4, 5);
    let (x, bias, w) = (randv(&mut rng, rows * cols), randv(&mut rng, cols), randv(&mut rng, rows * cols));
    let dbias = reduce::sum_rows(&w, cols);
    check("bias dbias", &bias, &dbias, |b| dot(&w, &elementwise::add_bias(&x, b)));
}

#[test]
fn qmatmul_dx_through_a_frozen_quantized_weight() {
    // y = x·Wᵀ with W the dequantized blocks (constant)  ⇒  dL/dx = dy·W; W gets no gradient.
    use kiln::quant::{QuantType, QuantWeights};
    let mut rng = Rng::new(40);
    for kind in QuantType::ALL {
        // Two blocks per row: 64 weights, or 512 for the K-quants' super-blocks.
        let (m, n, k) = (3, 5, 2 * kind.block_weights());
        let w = QuantWeights::quantize(kind, &rng.vec(n * k), n, k, "w").unwrap();
        let (x, dy) = (randv(&mut rng, m * k), randv(&mut rng, m * n));
        let fwd = |x: &[f64]| {
            let mut y = vec![0.0; m * n];
            quant::qmatmul(x, kind, &w.blocks, None, &mut y, (m, n, k), 1.0, false);
            y
        };
        let mut dx = vec![0.0; m * k];
        quant::qmatmul_dx(&dy, kind, &w.blocks, &mut dx, (m, n, k), 1.0, false);
        check(&format!("qmatmul {kind} dx"), &x, &dx, |x| dot(&dy, &fwd(x)));
    }
}

#[test]
fn conv2d_backward() {
    // y[n,o,i,j] = b[o] + Σ w[o,c,a,b]·x[n,c',i·s−p+a·d, j·s−p+b·d] is bilinear in (x, w), so
    // dx, dw are the same sums with dy in y's place and db[o] = Σ dy[n,o,·,·].
    use conv2d::Conv2dGeometry;
    let mut rng = Rng::new(25);
    let mut uneven = Conv2dGeometry::new(1, 3, (5, 6), 3, 3, 2, 0).groups(3);
    uneven.pad_end = (1, 1);
    for g in [
        Conv2dGeometry::new(2, 3, (5, 4), 2, 3, 1, 1),
        Conv2dGeometry::new(1, 4, (6, 7), 4, 3, 2, 1).groups(2).dilation(2),
        uneven,
        Conv2dGeometry::new(1, 2, (5, 5), 3, 1, 2, 0),
    ] {
        let (x, wt, bias) = (
            randv(&mut rng, g.x_shape().iter().product()),
            randv(&mut rng, g.w_shape().iter().product()),
            randv(&mut rng, g.c_out),
        );
        let w = randv(&mut rng, g.y_shape().iter().product());
        let (dx, dw, db) = conv2d::backward(&g, &x, &wt, &w);
        check(&format!("conv2d {g} dx"), &x, &dx, |x| dot(&w, &conv2d::forward(&g, x, &wt, Some(&bias))));
        check(&format!("conv2d {g} dw"), &wt, &dw, |k| dot(&w, &conv2d::forward(&g, &x, k, Some(&bias))));
        check(&format!("conv2d {g} dbias"), &bias, &db, |b| dot(&w, &conv2d::forward(&g, &x, &wt, Some(b))));
    }
}

#[test]
fn batch_norm_backward_both_modes() {
    // Training mode: μ and σ² are functions of x, so dx has the two mean terms
    // dx = γ·rstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M); fixed statistics: dx = dy·γ·rstd.
    let mut rng = Rng::new(26);
    let (n, c, s) = (3, 2, 5);
    let x: Vec<f64> = randv(&mut rng, n * c * s).iter().map(|v| v * 2.0 + 1.0).collect();
    let w = randv(&mut rng, n * c * s);
    let (gamma, beta) = (randv(&mut rng, c), randv(&mut rng, c));
    let train = |x: &[f64], g: &[f64], b: &[f64]| batch_norm::forward_train(x, c, s, g, b, 1e-5, 0.1, None).0;
    let (_, mean, rstd) = batch_norm::forward_train(&x, c, s, &gamma, &beta, 1e-5, 0.1, None);
    let (dx, dg, db) = batch_norm::backward_train(&x, s, &gamma, &mean, &rstd, &w);
    check("batch_norm train dx", &x, &dx, |x| dot(&w, &train(x, &gamma, &beta)));
    check("batch_norm train dgamma", &gamma, &dg, |g| dot(&w, &train(&x, g, &beta)));
    check("batch_norm train dbeta", &beta, &db, |b| dot(&w, &train(&x, &gamma, b)));

    let rm = randv(&mut rng, c);
    let rstd_run = batch_norm::rstd_of(&[0.7, 1.3], 1e-5);
    let fixed = |x: &[f64], g: &[f64], b: &[f64]| batch_norm::apply(x, s, &rm, &rstd_run, g, b);
    let (dx, dg, db) = batch_norm::backward_fixed(&x, s, &gamma, &rm, &rstd_run, &w);
    check("batch_norm fixed dx", &x, &dx, |x| dot(&w, &fixed(x, &gamma, &beta)));
    check("batch_norm fixed dgamma", &gamma, &dg, |g| dot(&w, &fixed(&x, g, &beta)));
    check("batch_norm fixed dbeta", &beta, &db, |b| dot(&w, &fixed(&x, &gamma, b)));
}

#[test]
fn pooling_and_relu_backward() {
    // Max-pool is piecewise the identity on the chosen element (away from ties, which random
    // inputs do not have): dx gets dy at each window's argmax. Global average: dx = dy/S.
    let mut rng = Rng::new(27);
    let g = pool2d::PoolGeometry { planes: 2, h: 5, w: 6, k: 3, stride: 2, pad: 1 };
    let x = randv(&mut rng, 2 * 5 * 6);
    let (y, arg) = pool2d::max_pool(&g, &x);
    let w = randv(&mut rng, y.len());
    let dx = pool2d::max_pool_backward(&g, &arg, &w);
    check("max_pool2d dx", &x, &dx, |x| dot(&w, &pool2d::max_pool(&g, x).0));
    let w = randv(&mut rng, 2);
    let dx = pool2d::global_avg_pool_backward(&w, 30);
    check("global_avg_pool dx", &x[..60], &dx, |x| dot(&w, &pool2d::global_avg_pool(x, 30)));

    // Away from the kinks at 0 (and 6), ReLU and ReLU6 are piecewise linear.
    let x: Vec<f64> =
        randv(&mut rng, 20).iter().map(|v| v * 8.0).filter(|v| v.abs() > 1e-3 && (v - 6.0).abs() > 1e-3).collect();
    let w = randv(&mut rng, x.len());
    type Pair = (&'static str, fn(f64) -> f64, fn(f64) -> f64);
    let pairs: [Pair; 2] =
        [("relu", elementwise::relu, elementwise::relu_grad), ("relu6", elementwise::relu6, elementwise::relu6_grad)];
    for (name, f, df) in pairs {
        let analytic: Vec<f64> = x.iter().zip(&w).map(|(&x, &w)| w * df(x)).collect();
        check(name, &x, &analytic, |x| x.iter().zip(&w).map(|(&x, &w)| w * f(x)).sum());
    }
    // tanh (BERT's pooler): d/dx tanh(x) = 1 − tanh(x)², smooth everywhere.
    let analytic: Vec<f64> = x.iter().zip(&w).map(|(&x, &w)| w * elementwise::tanh_grad(x)).collect();
    check("tanh", &x, &analytic, |x| x.iter().zip(&w).map(|(&x, &w)| w * elementwise::tanh(x)).sum());
}
