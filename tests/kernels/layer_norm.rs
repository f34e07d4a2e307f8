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
