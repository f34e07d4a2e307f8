//! Batch normalisation in training mode (batch statistics, running averages) and with fixed
//! statistics (evaluation, frozen), forward and backward, against the f64 reference.

use kiln::Tensor;
use kiln::kernels::batch_norm::{self as bn, BnGrads};
use kiln::reference::batch_norm as r;

use crate::common::*;

/// Tree sums in f32 over up to a few thousand values; inputs offset by 3 so the mean is far
/// from zero (the two-pass variance is what keeps this close).
const ATOL: f64 = 5e-5;
const RTOL: f64 = 1e-4;
const EPS: f32 = 1e-5;
const MOMENTUM: f32 = 0.1;

/// (N, C, H, W): BatchNorm1d-like (S = 1), one with more values per channel than the 256
/// invocations of a workgroup, and more channels than a workgroup.
const SHAPES: [[usize; 4]; 4] = [[2, 3, 5, 7], [4, 5, 1, 1], [3, 17, 13, 11], [2, 300, 2, 3]];

fn added(base: &[f32], d: &[f64]) -> Vec<f64> {
    base.iter().zip(d).map(|(&a, &b)| a as f64 + b).collect()
}

#[test]
fn batch_norm_training_mode_matches_reference() {
    under_both_reductions(|reductions| {
        let gpu = gpu();
        let mut rng = Rng::new(260);
        for shape in SHAPES {
            let [n, c, h, w] = shape;
            let (s, len) = (h * w, n * c * h * w);
            let x: Vec<f32> = rng.vec(len).iter().map(|v| v * 2.0 + 3.0).collect();
            let (gamma, beta, dy) = (rng.vec(c), rng.vec(c), rng.vec(len));
            let rm0 = rng.vec(c);
            let rv0: Vec<f32> = rng.vec(c).iter().map(|v| v.abs() + 0.5).collect();
            let (xt, gt, bt) = (upload(&x, &shape), upload(&gamma, &[c]), upload(&beta, &[c]));
            let (rm, rv) = (upload(&rm0, &[c]), upload(&rv0, &[c]));
            let (y, saved) = bn::forward_train(gpu, &xt, &gt, &bt, Some((&rm, &rv)), EPS, MOMENTUM).unwrap();
            let (mut wrm, mut wrv) = (f64s(&rm0), f64s(&rv0));
            let (wy, wmean, wrstd) = r::forward_train(
                &f64s(&x),
                c,
                s,
                &f64s(&gamma),
                &f64s(&beta),
                EPS as f64,
                MOMENTUM as f64,
                Some((&mut wrm, &mut wrv)),
            );
            let what = format!("batch_norm train {shape:?}, {reductions} reductions");
            assert_close(&format!("{what} y"), &download(&y), &wy, ATOL, RTOL);
            assert_close(&format!("{what} mean"), &download(&saved.mean), &wmean, ATOL, RTOL);
            assert_close(&format!("{what} rstd"), &download(&saved.rstd_or_var), &wrstd, ATOL, RTOL);
            assert_close(&format!("{what} running mean"), &download(&rm), &wrm, ATOL, RTOL);
            assert_close(&format!("{what} running var"), &download(&rv), &wrv, ATOL, RTOL);

            let (wdx, wdg, wdb) = r::backward_train(&f64s(&x), s, &f64s(&gamma), &wmean, &wrstd, &f64s(&dy));
            let (bx, bg, bb) = (rng.vec(len), rng.vec(c), rng.vec(c));
            let (dx, dg, db) = (upload(&bx, &shape), upload(&bg, &[c]), upload(&bb, &[c]));
            let out = BnGrads { dx: Some((&dx, true)), dgamma: Some(&dg), dbeta: Some(&db), accumulate_params: true };
            bn::backward(gpu, &xt, &gt, &saved, &upload(&dy, &shape), out).unwrap();
            assert_close(&format!("{what} dx"), &download(&dx), &added(&bx, &wdx), ATOL * 4.0, RTOL * 10.0);
            assert_close(&format!("{what} dgamma"), &download(&dg), &added(&bg, &wdg), ATOL * 10.0, RTOL * 10.0);
            assert_close(&format!("{what} dbeta"), &download(&db), &added(&bb, &wdb), ATOL * 10.0, RTOL * 10.0);
        }
    });
}

#[test]
fn batch_norm_fixed_statistics_match_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(261);
    for shape in SHAPES {
        let [n, c, h, w] = shape;
        let (s, len) = (h * w, n * c * h * w);
        let x: Vec<f32> = rng.vec(len).iter().map(|v| v * 2.0 + 3.0).collect();
        let (gamma, beta, dy) = (rng.vec(c), rng.vec(c), rng.vec(len));
        let rm0: Vec<f32> = rng.vec(c).iter().map(|v| v + 3.0).collect();
        let rv0: Vec<f32> = rng.vec(c).iter().map(|v| v.abs() + 0.5).collect();
        let (xt, gt, bt) = (upload(&x, &shape), upload(&gamma, &[c]), upload(&beta, &[c]));
        let (rm, rv) = (upload(&rm0, &[c]), upload(&rv0, &[c]));
        let (y, saved) = bn::forward_fixed(gpu, &xt, &gt, &bt, &rm, &rv, EPS).unwrap();
        let (wm, wrstd) = (f64s(&rm0), r::rstd_of(&f64s(&rv0), EPS as f64));
        let what = format!("batch_norm fixed {shape:?}");
        assert_close(
            &format!("{what} y"),
            &download(&y),
            &r::apply(&f64s(&x), s, &wm, &wrstd, &f64s(&gamma), &f64s(&beta)),
            ATOL,
            RTOL,
        );
        assert_close(&format!("{what} running mean unchanged"), &download(&rm), &f64s(&rm0), 0.0, 0.0);
        assert_close(&format!("{what} running var unchanged"), &download(&rv), &f64s(&rv0), 0.0, 0.0);

        let (wdx, wdg, wdb) = r::backward_fixed(&f64s(&x), s, &f64s(&gamma), &wm, &wrstd, &f64s(&dy));
        let dyt = upload(&dy, &shape);
        // dx alone (frozen gamma and beta), overwriting.
        let dx = Tensor::zeros(gpu, &shape).unwrap();
        let out = BnGrads { dx: Some((&dx, false)), dgamma: None, dbeta: None, accumulate_params: true };
        bn::backward(gpu, &xt, &gt, &saved, &dyt, out).unwrap();
        assert_close(&format!("{what} dx"), &download(&dx), &wdx, ATOL, RTOL);
        // gamma and beta alone (the bottom of the trainable part), added into.
        let (bg, bb) = (rng.vec(c), rng.vec(c));
        let (dg, db) = (upload(&bg, &[c]), upload(&bb, &[c]));
        let out = BnGrads { dx: None, dgamma: Some(&dg), dbeta: Some(&db), accumulate_params: true };
        bn::backward(gpu, &xt, &gt, &saved, &dyt, out).unwrap();
        assert_close(&format!("{what} dgamma"), &download(&dg), &added(&bg, &wdg), ATOL * 10.0, RTOL * 10.0);
        assert_close(&format!("{what} dbeta"), &download(&db), &added(&bb, &wdb), ATOL * 10.0, RTOL * 10.0);
    }
}
