//! Fused AdamW vs the reference over 10 steps, with clipping by a GPU-computed global norm,
//! weight decay, and the EWC term.

use kiln::Tensor;
use kiln::kernels::adamw::{self, AdamW, Clip, Ewc};
use kiln::kernels::reduce;
use kiln::reference::adamw as r;

use crate::common::*;

#[test]
fn adamw_ten_steps_with_clipping_and_ewc() {
    let gpu = gpu();
    let mut rng = Rng::new(100);
    for (n, with_clip, with_ewc) in [(1, false, false), (1031, true, false), (4099, true, true), (300_007, false, true)]
    {
        let cfg = AdamW { beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.01 };
        let hyper = r::Hyper { lr: 1e-2, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.01 };
        let param0 = rng.vec(n);
        let (fisher, anchor) = (rng.vec(n).iter().map(|v| v.abs()).collect::<Vec<_>>(), rng.vec(n));
        let (pt, mt, vt) =
            (upload(&param0, &[n]), Tensor::zeros(gpu, &[n]).unwrap(), Tensor::zeros(gpu, &[n]).unwrap());
        let (ft, at) = (upload(&fisher, &[n]), upload(&anchor, &[n]));
        let (mut p, mut m, mut v) = (f64s(&param0), vec![0.0; n], vec![0.0; n]);
        let (f64f, f64a) = (f64s(&fisher), f64s(&anchor));
        for step in 1..=10u32 {
            // Large gradients so that clipping at 1.0 is active.
            let grad: Vec<f32> = rng.vec(n).iter().map(|g| g * 3.0).collect();
            let gt = upload(&grad, &[n]);
            let norm_sq = reduce::global_norm_squared(gpu, &[&gt]).unwrap();
            let clip = with_clip.then_some(Clip { norm_sq: &norm_sq, max_norm: 1.0 });
            let ewc = with_ewc.then_some(Ewc { lambda: 0.5, fisher: &ft, anchor: &at });
            adamw::step(gpu, &cfg, 1e-2, step, &pt, &gt, &mt, &vt, clip, ewc).unwrap();
            let g64 = f64s(&grad);
            let nsq: f64 = g64.iter().map(|g| g * g).sum();
            r::step(
                &hyper,
                step,
                &mut p,
                &g64,
                &mut m,
                &mut v,
                with_clip.then_some((nsq, 1.0)),
                with_ewc.then_some((0.5, &f64f[..], &f64a[..])),
            );
        }
        let what = format!("adamw n={n} clip={with_clip} ewc={with_ewc} after 10 steps");
        assert_close(&format!("{what} param"), &download(&pt), &p, 1e-5, 1e-4);
        assert_close(&format!("{what} m"), &download(&mt), &m, 1e-5, 1e-4);
        assert_close(&format!("{what} v"), &download(&vt), &v, 1e-6, 1e-4);
    }
}
