//! Max-pool (values, argmax and the gather backward) and global average pooling vs reference.

use kiln::Tensor;
use kiln::kernels::pool2d::{self as pool, PoolGeometry};
use kiln::reference::pool2d as r;

use crate::common::*;

const ATOL: f64 = 1e-6;
const RTOL: f64 = 1e-5;

#[test]
fn max_pool_forward_argmax_and_backward() {
    let gpu = gpu();
    let mut rng = Rng::new(270);
    // ResNet's 3x3/2 pad 1 on odd and even sizes, 2x2/2 with a leftover row, overlapping 3x3/1.
    for (shape, k, stride, pad) in
        [([2, 3, 9, 10], 3, 2, 1), ([1, 2, 7, 7], 2, 2, 0), ([1, 3, 5, 6], 3, 1, 1), ([2, 1, 4, 4], 3, 2, 1)]
    {
        let [n, c, h, w] = shape;
        let x = rng.vec(n * c * h * w);
        let (y, arg, g) = pool::max_pool(gpu, &upload(&x, &shape), k, stride, pad).unwrap();
        assert_eq!(g, PoolGeometry { planes: n * c, h, w, k, stride, pad });
        let (wy, warg) = r::max_pool(&g, &f64s(&x));
        let what = format!("max_pool {shape:?} k{k} s{stride} p{pad}");
        assert_close(&format!("{what} y"), &download(&y), &wy, 0.0, 0.0);
        assert_eq!(arg.to_u32_vec(gpu).unwrap(), warg, "{what}: argmax");

        let dy = rng.vec(y.numel());
        let base = rng.vec(x.len());
        let dx = upload(&base, &shape);
        pool::max_pool_backward(gpu, &g, &arg, &upload(&dy, y.shape()), &dx, true).unwrap();
        let want: Vec<f64> =
            r::max_pool_backward(&g, &warg, &f64s(&dy)).iter().zip(&base).map(|(d, &b)| d + b as f64).collect();
        assert_close(&format!("{what} dx"), &download(&dx), &want, ATOL, RTOL);
    }
    let err = pool::max_pool(gpu, &Tensor::zeros(gpu, &[1, 1, 4, 4]).unwrap(), 2, 2, 2).unwrap_err().to_string();
    assert!(err.contains("padding 2 is more than half"), "{err}");
}

#[test]
fn global_average_pool_forward_and_backward() {
    let gpu = gpu();
    let mut rng = Rng::new(271);
    for shape in [[2, 3, 5, 7], [1, 600, 1, 1], [3, 2, 16, 16]] {
        let [n, c, h, w] = shape;
        let s = h * w;
        let x = rng.vec(n * c * s);
        let y = pool::global_avg(gpu, &upload(&x, &shape)).unwrap();
        assert_eq!(y.shape(), [n, c]);
        let what = format!("global_avg_pool {shape:?}");
        assert_close(&format!("{what} y"), &download(&y), &r::global_avg_pool(&f64s(&x), s), ATOL, RTOL);
        let dy = rng.vec(n * c);
        let dx = Tensor::zeros(gpu, &shape).unwrap();
        pool::global_avg_backward(gpu, &upload(&dy, &[n, c]), &dx, false).unwrap();
        assert_close(&format!("{what} dx"), &download(&dx), &r::global_avg_pool_backward(&f64s(&dy), s), ATOL, RTOL);
    }
}
