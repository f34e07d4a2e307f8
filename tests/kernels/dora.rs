//! DoRA's kernels (weight norm, scaled output, input and magnitude gradients, merge scale) vs
//! `kiln::reference::dora` on shapes that are not multiples of the 256-wide workgroup.

use kiln::Tensor;
use kiln::kernels::dora;
use kiln::reference::dora as r;

use crate::common::*;

/// f32 sums of `terms` products of O(1) values.
fn tol(terms: usize) -> f64 {
    2e-6 * (terms as f64).sqrt().max(1.0)
}

#[test]
fn dora_weight_norm_both_layouts() {
    let mut rng = Rng::new(61);
    for (d_out, d_in) in [(1, 1), (7, 13), (300, 5), (33, 257)] {
        let v = rng.vec(d_out * d_in);
        for out_in in [true, false] {
            let shape = if out_in { [d_out, d_in] } else { [d_in, d_out] };
            let n = Tensor::zeros(gpu(), &[d_out]).unwrap();
            dora::weight_norm_into(gpu(), &upload(&v, &shape), out_in, &n).unwrap();
            let want = r::weight_norm(&f64s(&v), d_out, d_in, out_in);
            assert_close(
                &format!("dora weight_norm {d_out}x{d_in} out_in={out_in}"),
                &download(&n),
                &want,
                tol(d_in),
                1e-5,
            );
        }
    }
}

/// Positive norms away from zero, as a real weight's are.
fn norms(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec(n).iter().map(|x| 0.5 + x.abs()).collect()
}

#[test]
fn dora_forward_and_backward_awkward_shapes() {
    let mut rng = Rng::new(62);
    for (rows, out, k0, with_bias) in
        [(1, 1, 0.0, false), (5, 3, 0.0, true), (13, 301, -1.0, false), (257, 7, 0.0, true)]
    {
        let (m, n) = (rng.vec(out), norms(&mut rng, out));
        let (p, q, dy, bias) = (rng.vec(rows * out), rng.vec(rows * out), rng.vec(rows * out), rng.vec(out));
        let s = 1.7f32;
        let what = format!("dora {rows}x{out} k0={k0} bias={with_bias}");
        let (mg, ng) = (upload(&m, &[out]), upload(&n, &[out]));
        let (pg, qg, dyg) = (upload(&p, &[rows, out]), upload(&q, &[rows, out]), upload(&dy, &[rows, out]));
        let bg = upload(&bias, &[out]);
        let y = Tensor::zeros(gpu(), &[rows, out]).unwrap();
        dora::forward_into(gpu(), &mg, &ng, &pg, &qg, with_bias.then_some(&bg), (s, k0), &y).unwrap();
        let b64 = f64s(&bias);
        let want =
            r::forward(&f64s(&m), &f64s(&n), &f64s(&p), &f64s(&q), with_bias.then_some(&b64[..]), s as f64, k0 as f64);
        assert_close(&format!("{what} y"), &download(&y), &want, 1e-5, 1e-5);

        let (dp_w, dq_w, dm_w) =
            r::backward(&f64s(&m), &f64s(&n), &f64s(&p), &f64s(&q), &f64s(&dy), s as f64, k0 as f64);
        // dp and dq are added into what is there (gradient accumulation), dm overwritten.
        let (base_p, base_q) = (rng.vec(rows * out), rng.vec(rows * out));
        let (dp, dq) = (upload(&base_p, &[rows, out]), upload(&base_q, &[rows, out]));
        dora::scale_into(gpu(), &mg, &ng, &dyg, false, (1.0, k0), &dp, true).unwrap();
        dora::scale_into(gpu(), &mg, &ng, &dyg, false, (s, 0.0), &dq, true).unwrap();
        let plus = |w: &[f64], b: &[f32]| w.iter().zip(b).map(|(w, b)| w + *b as f64).collect::<Vec<f64>>();
        assert_close(&format!("{what} dp"), &download(&dp), &plus(&dp_w, &base_p), 1e-5, 1e-5);
        assert_close(&format!("{what} dq"), &download(&dq), &plus(&dq_w, &base_q), 1e-5, 1e-5);
        let dm = Tensor::zeros(gpu(), &[out]).unwrap();
        dora::magnitude_grad_into(gpu(), &ng, &dyg, &pg, &qg, s, &dm, false).unwrap();
        assert_close(&format!("{what} dm"), &download(&dm), &dm_w, tol(rows) * 4.0, 1e-5);
    }
}

#[test]
fn dora_merge_scale_both_layouts() {
    let mut rng = Rng::new(63);
    for (d_out, d_in) in [(1, 1), (7, 300), (259, 3)] {
        let (m, n, v) = (rng.vec(d_out), norms(&mut rng, d_out), rng.vec(d_out * d_in));
        for out_in in [true, false] {
            let shape = if out_in { [d_out, d_in] } else { [d_in, d_out] };
            let y = Tensor::zeros(gpu(), &shape).unwrap();
            let (mg, ng) = (upload(&m, &[d_out]), upload(&n, &[d_out]));
            dora::scale_into(gpu(), &mg, &ng, &upload(&v, &shape), out_in, (1.0, 0.0), &y, false).unwrap();
            let want = r::merge(&f64s(&v), &f64s(&m), &f64s(&n), out_in);
            assert_close(&format!("dora merge {d_out}x{d_in} out_in={out_in}"), &download(&y), &want, 1e-6, 1e-5);
        }
    }
}
