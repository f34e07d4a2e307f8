//! 2-D convolution (implicit GEMM, grouped, and the depthwise direct kernels): forward with
//! bias, dX, dW and dbias against the f64 reference, on shapes that fill no tile evenly.

use kiln::Tensor;
use kiln::kernels::conv2d::{self as conv, Conv2dGeometry};
use kiln::reference::conv2d as r;

use crate::common::*;

/// f32 sums of up to a few hundred products of values in [-1, 1]: ~1e-6 relative each.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

/// Geometries: plain, strided with dilation, grouped, depthwise with TensorFlow-style uneven
/// padding and with a 5x5 kernel, a 1x1 projection shortcut, a ResNet stem, and one whose
/// output channels and positions overflow a 128x128 tile.
pub fn geometries() -> Vec<Conv2dGeometry> {
    let mut tf_same = Conv2dGeometry::new(2, 5, (9, 8), 5, 3, 2, 0).groups(5);
    tf_same.pad_end = (1, 1);
    vec![
        Conv2dGeometry::new(2, 3, (7, 9), 5, 3, 1, 1),
        Conv2dGeometry::new(1, 4, (11, 10), 6, 3, 2, 1).dilation(2),
        Conv2dGeometry::new(2, 4, (6, 7), 6, 3, 1, 0).groups(2),
        tf_same,
        Conv2dGeometry::new(1, 7, (6, 5), 7, 5, 1, 2).groups(7),
        Conv2dGeometry::new(2, 6, (7, 7), 10, 1, 2, 0),
        Conv2dGeometry::new(1, 3, (13, 13), 8, 7, 2, 3),
        Conv2dGeometry::new(2, 17, (15, 15), 130, 3, 1, 1),
    ]
}

#[test]
fn conv2d_forward_and_backward_awkward_shapes() {
    let gpu = gpu();
    let mut rng = Rng::new(250);
    for g in geometries() {
        let (xs, ws, ys) = (g.x_shape(), g.w_shape(), g.y_shape());
        let n = |s: [usize; 4]| s.iter().product::<usize>();
        let (x, w, b, dy) = (rng.vec(n(xs)), rng.vec(n(ws)), rng.vec(g.c_out), rng.vec(n(ys)));
        let (xt, wt, bt, dyt) = (upload(&x, &xs), upload(&w, &ws), upload(&b, &[g.c_out]), upload(&dy, &ys));
        let what = format!("conv2d {g}");
        let y = conv::forward(gpu, &g, &xt, &wt, Some(&bt)).unwrap();
        let want = r::forward(&g, &f64s(&x), &f64s(&w), Some(&f64s(&b)));
        assert_close(&format!("{what} y"), &download(&y), &want, ATOL, RTOL);

        // Backward, each added onto a non-zero buffer (gradient accumulation).
        let (wdx, wdw, wdb) = r::backward(&g, &f64s(&x), &f64s(&w), &f64s(&dy));
        let added = |base: &[f32], d: &[f64]| -> Vec<f64> { base.iter().zip(d).map(|(&a, &b)| a as f64 + b).collect() };
        let (bx, bw, bb) = (rng.vec(n(xs)), rng.vec(n(ws)), rng.vec(g.c_out));
        let (dx, dw, db) = (upload(&bx, &xs), upload(&bw, &ws), upload(&bb, &[g.c_out]));
        conv::input_grad(gpu, &g, &dyt, &wt, &dx, true).unwrap();
        conv::weight_grad(gpu, &g, &xt, &dyt, &dw, true).unwrap();
        conv::bias_grad(gpu, &g, &dyt, &db, true).unwrap();
        assert_close(&format!("{what} dx"), &download(&dx), &added(&bx, &wdx), ATOL, RTOL);
        assert_close(&format!("{what} dw"), &download(&dw), &added(&bw, &wdw), ATOL * 4.0, RTOL);
        assert_close(&format!("{what} dbias"), &download(&db), &added(&bb, &wdb), ATOL * 4.0, RTOL);

        // Overwriting (the first gradient of a tensor) gives the same without the base.
        let dx2 = Tensor::zeros(gpu, &xs).unwrap();
        conv::input_grad(gpu, &g, &dyt, &wt, &dx2, false).unwrap();
        assert_close(&format!("{what} dx overwrite"), &download(&dx2), &wdx, ATOL, RTOL);
    }
}

#[test]
fn conv2d_bad_shapes_are_named_errors() {
    let gpu = gpu();
    let g = Conv2dGeometry::new(1, 4, (5, 5), 6, 3, 1, 1).groups(3);
    let x = Tensor::zeros(gpu, &g.x_shape()).unwrap();
    let w = Tensor::zeros(gpu, &[6, 1, 3, 3]).unwrap();
    let err = conv::forward(gpu, &g, &x, &w, None).unwrap_err().to_string();
    assert!(err.contains("groups do not divide"), "{err}");
    let g = Conv2dGeometry::new(1, 4, (5, 5), 6, 3, 1, 1);
    let err = conv::forward(gpu, &g, &x, &w, None).unwrap_err().to_string();
    assert!(err.contains("`w`") && err.contains("[6, 4, 3, 3]"), "{err}");
    let g = Conv2dGeometry::new(1, 4, (2, 2), 6, 5, 1, 0);
    let err = conv::forward(gpu, &g, &Tensor::zeros(gpu, &g.x_shape()).unwrap(), &w, None).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
}
