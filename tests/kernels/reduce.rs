//! Column sums and the global squared norm vs the reference.

use kiln::Tensor;
use kiln::kernels::reduce;
use kiln::reference::reduce as r;

use crate::common::*;

#[test]
fn sum_rows_awkward_shapes() {
    let gpu = gpu();
    let mut rng = Rng::new(30);
    for (rows, cols) in [(1, 1), (7, 13), (300, 257), (4096, 3)] {
        let x = rng.vec(rows * cols);
        let base = rng.vec(cols);
        let out = upload(&base, &[cols]);
        reduce::sum_rows_into(gpu, &upload(&x, &[rows, cols]), &out, true).unwrap();
        let want: Vec<f64> = r::sum_rows(&f64s(&x), cols).iter().zip(&base).map(|(s, b)| s + *b as f64).collect();
        // Sequential f32 sum over `rows` terms.
        assert_close(&format!("sum_rows {rows}x{cols}"), &download(&out), &want, 1e-6 * rows as f64, 1e-5);
    }
}

#[test]
fn global_norm_of_several_tensors() {
    under_both_reductions(|reductions| {
        let gpu = gpu();
        let mut rng = Rng::new(31);
        let sizes = [1usize, 4095, 4097, 1_000_003];
        let data: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n)).collect();
        let tensors: Vec<Tensor> = data.iter().map(|d| upload(d, &[d.len()])).collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let got = download(&reduce::global_norm_squared(gpu, &refs).unwrap());
        let d64: Vec<Vec<f64>> = data.iter().map(|d| f64s(d)).collect();
        let slices: Vec<&[f64]> = d64.iter().map(|d| &d[..]).collect();
        assert_close(
            &format!("global norm², {reductions} reductions"),
            &got,
            &[r::global_norm_squared(&slices)],
            0.0,
            1e-5,
        );
        // Each tensor's own norm² (its partials sit at a common stride, zero-padded), in any order.
        let reversed: Vec<&Tensor> = refs.iter().rev().copied().collect();
        let per = reduce::norms_squared(gpu, &reversed).unwrap().read_per_tensor(gpu).unwrap();
        let want: Vec<f64> = slices.iter().rev().map(|t| r::global_norm_squared(&[t])).collect();
        assert_close(&format!("per-tensor norm², {reductions} reductions"), &per, &want, 0.0, 1e-5);
    });
}
