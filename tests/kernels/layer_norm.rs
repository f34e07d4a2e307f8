//! LayerNorm and RMSNorm forward (with saved statistics) and backward vs the reference.

use kiln::Tensor;
use kiln::kernels::layer_norm::{self, Norm};
use kiln::reference::layer_norm as r;

use crate::common::*;

const ATOL: f64 = 2e-5;
const RTOL: f64 = 1e-4;

/// Every row width a device may use (256 on a GPU, 32 on lavapipe), and 1 (no tree at all),
/// each with subgroup and barrier reductions.
#[test]
fn norms_forward_backward_awkward_shapes() {
    let gpu = gpu();
    let saved = layer_norm::row_workgroup(gpu);
    under_both_reductions(|reductions| {
        for wg in [256, 32, 8, 1] {
            layer_norm::set_row_workgroup(gpu, layer_norm::RowWorkgroup(wg)).unwrap();
            norms_against_the_reference(wg, reductions);
        }
    });
    layer_norm::set_row_workgroup(gpu, saved).unwrap();
    assert!(layer_norm::set_row_workgroup(gpu, layer_norm::RowWorkgroup(48)).is_err(), "not a power of two");
}

fn norms_against_the_reference(wg: u32, reductions: &str) {
    let gpu = gpu();
    let mut rng = Rng::new(40);
    for (rows, cols) in [(1, 1), (1, 7), (13, 129), (5, 384), (64, 1031)] {
        for norm in [Norm::LayerNorm, Norm::RmsNorm] {
            let rms = norm == Norm::RmsNorm;
            // Offset the inputs so the mean is far from zero (checks the two-pass variance).
            let x: Vec<f32> = rng.vec(rows * cols).iter().map(|v| v * 2.0 + 3.0).collect();
            let (gamma, beta, dy) = (rng.vec(cols), rng.vec(cols), rng.vec(rows * cols));
            let xt = upload(&x, &[rows, cols]);
            let (gt, bt) = (upload(&gamma, &[cols]), upload(&beta, &[cols]));
            let (y, stats) = layer_norm::forward(gpu, norm, &xt, &gt, Some(&bt), 1e-5).unwrap();
            let beta64 = f64s(&beta);
            let (wy, wmean, wrstd) = r::forward(&f64s(&x), &f64s(&gamma), (!rms).then_some(&beta64[..]), 1e-5);
            let what = format!("{norm:?} {rows}x{cols}, {wg} invocations per row, {reductions} reductions");
            assert_close(&format!("{what} y"), &download(&y), &wy, ATOL, RTOL);
            assert_close(&format!("{what} rstd"), &download(&stats.rstd), &wrstd, ATOL, RTOL);
            if let Some(mean) = &stats.mean {
                assert_close(&format!("{what} mean"), &download(mean), &wmean, ATOL, RTOL);
            }
            let dx = Tensor::zeros(gpu, &[rows, cols]).unwrap();
            let (dg, db) = (Tensor::zeros(gpu, &[cols]).unwrap(), Tensor::zeros(gpu, &[cols]).unwrap());
            layer_norm::backward(
                gpu,
                norm,
                &xt,
                &gt,
                &stats,
                &upload(&dy, &[rows, cols]),
                Some(&dx),
                Some((&dg, Some(&db))),
                false,
            )
            .unwrap();
            let (wdx, wdg, wdb) = r::backward(&f64s(&x), &f64s(&gamma), &wmean, &wrstd, &f64s(&dy), rms);
            assert_close(&format!("{what} dx"), &download(&dx), &wdx, ATOL * 10.0, RTOL * 10.0);
            assert_close(&format!("{what} dgamma"), &download(&dg), &wdg, ATOL * rows as f64, RTOL * 10.0);
            if !rms {
                assert_close(&format!("{what} dbeta"), &download(&db), &wdb, ATOL * rows as f64, RTOL * 10.0);
            }
        }
    }
}

/// The residual forward writes sum = x + res and normalises it: against the reference of the
/// norm of x + res, on awkward shapes, with both kinds of reduction.
#[test]
fn residual_add_and_norm_match_the_reference() {
    let gpu = gpu();
    under_both_reductions(|reductions| {
        let mut rng = Rng::new(41);
        for (rows, cols) in [(1, 1), (1, 7), (13, 129), (64, 1031)] {
            for norm in [Norm::LayerNorm, Norm::RmsNorm] {
                let rms = norm == Norm::RmsNorm;
                let x: Vec<f32> = rng.vec(rows * cols).iter().map(|v| v * 2.0 + 3.0).collect();
                let (res, gamma, beta) = (rng.vec(rows * cols), rng.vec(cols), rng.vec(cols));
                let (xt, rt) = (upload(&x, &[rows, cols]), upload(&res, &[rows, cols]));
                let (gt, bt) = (upload(&gamma, &[cols]), upload(&beta, &[cols]));
                let (sum, y, stats) = layer_norm::forward_residual(gpu, norm, &xt, &rt, &gt, Some(&bt), 1e-5).unwrap();
                let sum_f32: Vec<f32> = x.iter().zip(&res).map(|(a, b)| a + b).collect();
                let beta64 = f64s(&beta);
                let (wy, wmean, wrstd) =
                    r::forward(&f64s(&sum_f32), &f64s(&gamma), (!rms).then_some(&beta64[..]), 1e-5);
                let what = format!("residual {norm:?} {rows}x{cols}, {reductions} reductions");
                assert_close(&format!("{what} sum"), &download(&sum), &f64s(&sum_f32), 0.0, 0.0);
                assert_close(&format!("{what} y"), &download(&y), &wy, ATOL, RTOL);
                assert_close(&format!("{what} rstd"), &download(&stats.rstd), &wrstd, ATOL, RTOL);
                if let Some(mean) = &stats.mean {
                    assert_close(&format!("{what} mean"), &download(mean), &wmean, ATOL, RTOL);
                }
            }
        }
    });
    let (x, short) = (Tensor::zeros(gpu, &[2, 3]).unwrap(), Tensor::zeros(gpu, &[5]).unwrap());
    let gamma = Tensor::zeros(gpu, &[3]).unwrap();
    let Err(err) = layer_norm::forward_residual(gpu, Norm::RmsNorm, &x, &short, &gamma, None, 1e-5) else {
        panic!("a residual of 5 elements for x of 6 was accepted");
    };
    assert!(err.to_string().contains("res"), "{err}");
}

/// Through the tape, add_norm gives the values and gradients of add then norm (the same
/// kernels run backward; the forward's sum is the same f32 addition), with a loss that reads
/// both the sum and the normed rows.
#[test]
fn add_norm_on_the_tape_equals_add_then_norm() {
    use kiln::autograd::{Tape, add, add_norm, cross_entropy, norm as norm_op};
    let g = gpu();
    let mut rng = Rng::new(42);
    let (rows, cols) = (6, 37);
    let data: Vec<Vec<f32>> = [rows * cols, rows * cols, cols, cols].iter().map(|&n| rng.vec(n)).collect();
    let targets: Vec<i32> = (0..rows).map(|_| rng.below(cols as u32) as i32).collect();
    for kind in [Norm::LayerNorm, Norm::RmsNorm] {
        let run = |fused: bool| -> Vec<Vec<f32>> {
            let shapes = [vec![rows, cols], vec![rows, cols], vec![cols], vec![cols]];
            let params = trainable_params(&["x", "r", "gamma", "beta"], &data, &shapes);
            let tape = Tape::train(g, 0, 1);
            let v: Vec<_> = params.iter().map(|p| tape.param(p)).collect();
            let beta = (kind == Norm::LayerNorm).then_some(&v[3]);
            let (s, y) = if fused {
                add_norm(&tape, kind, &v[0], &v[1], &v[2], beta, 1e-5).unwrap()
            } else {
                let s = add(&tape, &v[0], &v[1]).unwrap();
                let y = norm_op(&tape, kind, &s, &v[2], beta, 1e-5).unwrap();
                (s, y)
            };
            let loss = cross_entropy(&tape, &add(&tape, &s, &y).unwrap(), &targets).unwrap();
            tape.backward(&loss, 1.0).unwrap();
            let mut out = vec![vec![loss.read(g).unwrap().0]];
            let used = if kind == Norm::LayerNorm { 4 } else { 3 };
            out.extend(params[..used].iter().map(|p| download(p.grad.as_ref().expect("a gradient"))));
            out
        };
        let (fused, plain) = (run(true), run(false));
        for (i, what) in ["loss", "dx", "dr", "dgamma", "dbeta"].iter().enumerate().take(fused.len()) {
            // Not bit for bit: other tests switch the row width and the reductions meanwhile.
            assert_close(&format!("{kind:?} add_norm {what}"), &fused[i], &f64s(&plain[i]), 1e-7, 1e-5);
        }
    }
}
