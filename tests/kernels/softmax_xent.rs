//! Fused softmax + cross-entropy with ignore index vs the reference, up to a 50k vocabulary;
//! the class-weighted variant vs its reference, and through the tape against the unweighted loss.

use kiln::Tensor;
use kiln::autograd::{Param, Tape, cross_entropy, cross_entropy_weighted};
use kiln::kernels::softmax_xent::{self as xent, IGNORE_INDEX};
use kiln::reference::softmax_xent as r;

use crate::common::*;

#[test]
fn cross_entropy_forward_backward() {
    under_both_reductions(|reductions| {
        let gpu = gpu();
        let mut rng = Rng::new(50);
        for (rows, vocab) in [(1, 1), (1, 7), (9, 257), (5, 50_257)] {
            let logits: Vec<f32> = rng.vec(rows * vocab).iter().map(|v| v * 8.0).collect();
            let targets: Vec<i32> =
                (0..rows).map(|i| if i % 4 == 1 { IGNORE_INDEX } else { rng.below(vocab as u32) as i32 }).collect();
            let lt = upload(&logits, &[rows, vocab]);
            let tt = Tensor::from_i32(gpu, &targets, &[rows]).unwrap();
            let fwd = xent::forward(gpu, &lt, &tt, IGNORE_INDEX).unwrap();
            let (loss, lse, count) = r::forward(&f64s(&logits), &targets, vocab, IGNORE_INDEX);
            let what = format!("xent {rows}x{vocab}, {reductions} reductions");
            assert_close(&format!("{what} stats"), &download(&fwd.stats), &[loss, count as f64], 1e-4, 1e-5);
            assert_close(&format!("{what} lse"), &download(&fwd.lse), &lse, 1e-4, 1e-5);
            let d = Tensor::zeros(gpu, &[rows, vocab]).unwrap();
            xent::backward(gpu, &lt, &tt, &fwd, 0.5, &d, IGNORE_INDEX, false).unwrap();
            let want = r::backward(&f64s(&logits), &targets, vocab, IGNORE_INDEX, &lse, count, 0.5);
            assert_close(&format!("{what} dlogits"), &download(&d), &want, 1e-6, 1e-4);
        }
    });
}

#[test]
fn cross_entropy_all_ignored_is_zero_not_nan() {
    let gpu = gpu();
    let lt = upload(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let tt = Tensor::from_i32(gpu, &[IGNORE_INDEX, IGNORE_INDEX], &[2]).unwrap();
    let fwd = xent::forward(gpu, &lt, &tt, IGNORE_INDEX).unwrap();
    assert_eq!(download(&fwd.stats), vec![0.0, 0.0]);
}

#[test]
fn cross_entropy_rejects_bad_targets() {
    let err = xent::check_targets(&[0, 5, -100], 5, IGNORE_INDEX).unwrap_err().to_string();
    assert!(err.contains("target 5 at row 1"), "{err}");
}

/// Loss and dlogits tolerances of the weighted kernel against the f64 reference.
const WEIGHTED_LOSS_TOL: (f64, f64) = (1e-4, 1e-5);
const WEIGHTED_GRAD_TOL: (f64, f64) = (1e-6, 1e-4);

/// Targets with every 4th row (from row 1) ignored and every 5th (from row 2) of class 0, whose
/// weight the weighted tests set to 0.
fn weighted_targets(rng: &mut Rng, rows: usize, classes: usize) -> Vec<i32> {
    (0..rows)
        .map(|i| match i {
            _ if i % 4 == 1 => IGNORE_INDEX,
            _ if i % 5 == 2 => 0,
            _ => rng.below(classes as u32) as i32,
        })
        .collect()
}

/// Class weights in [0, 2), class 0 weighted 0.
fn weighted_classes(rng: &mut Rng, classes: usize) -> Vec<f32> {
    let mut w: Vec<f32> = rng.vec(classes).iter().map(|v| v + 1.0).collect();
    w[0] = 0.0;
    w
}

#[test]
fn cross_entropy_weighted_forward_backward() {
    under_both_reductions(|reductions| {
        let gpu = gpu();
        let mut rng = Rng::new(51);
        for rows in [1, 7, 300] {
            for classes in [2, 3, 1000] {
                let logits: Vec<f32> = rng.vec(rows * classes).iter().map(|v| v * 8.0).collect();
                let targets = weighted_targets(&mut rng, rows, classes);
                let class_w = weighted_classes(&mut rng, classes);
                // The kernel must skip ignored rows whatever their weight: give them garbage.
                let mut row_w = xent::row_weights(&targets, &class_w, IGNORE_INDEX);
                for (w, &t) in row_w.iter_mut().zip(&targets) {
                    if t == IGNORE_INDEX {
                        *w = 7.0;
                    }
                }
                let lt = upload(&logits, &[rows, classes]);
                let tt = Tensor::from_i32(gpu, &targets, &[rows]).unwrap();
                let wt = upload(&row_w, &[rows]);
                let fwd = xent::forward_weighted(gpu, &lt, &tt, &wt, IGNORE_INDEX).unwrap();
                let (loss, lse, wsum) =
                    r::forward_weighted(&f64s(&logits), &targets, &f64s(&class_w), classes, IGNORE_INDEX);
                let what = format!("weighted xent {rows}x{classes}, {reductions} reductions");
                let (atol, rtol) = WEIGHTED_LOSS_TOL;
                assert_close(&format!("{what} stats"), &download(&fwd.stats), &[loss, wsum], atol, rtol);
                assert_close(&format!("{what} lse"), &download(&fwd.lse), &lse, atol, rtol);

                let want = r::backward_weighted(
                    &f64s(&logits),
                    &targets,
                    &f64s(&class_w),
                    classes,
                    IGNORE_INDEX,
                    &lse,
                    wsum,
                    0.5,
                );
                let d = Tensor::zeros(gpu, &[rows, classes]).unwrap();
                let (atol, rtol) = WEIGHTED_GRAD_TOL;
                xent::backward(gpu, &lt, &tt, &fwd, 0.5, &d, IGNORE_INDEX, false).unwrap();
                assert_close(&format!("{what} dlogits"), &download(&d), &want, atol, rtol);
                // Accumulating adds the same gradient again.
                xent::backward(gpu, &lt, &tt, &fwd, 0.5, &d, IGNORE_INDEX, true).unwrap();
                let twice: Vec<f64> = want.iter().map(|g| 2.0 * g).collect();
                assert_close(&format!("{what} dlogits accumulated"), &download(&d), &twice, atol, rtol);
            }
        }
    });
}

/// Every counted row weighted 0: loss and gradient 0, not NaN (PyTorch gives NaN here).
#[test]
fn cross_entropy_weighted_zero_weight_sum_is_zero_not_nan() {
    let gpu = gpu();
    let lt = upload(&[1.0, 2.0, 3.0, 4.0, 0.5, -1.0], &[3, 2]);
    let targets = [0, IGNORE_INDEX, 0];
    let tt = Tensor::from_i32(gpu, &targets, &[3]).unwrap();
    let wt = upload(&xent::row_weights(&targets, &[0.0, 3.0], IGNORE_INDEX), &[3]);
    let fwd = xent::forward_weighted(gpu, &lt, &tt, &wt, IGNORE_INDEX).unwrap();
    assert_eq!(download(&fwd.stats), vec![0.0, 0.0]);
    let d = upload(&[9.0; 6], &[3, 2]);
    xent::backward(gpu, &lt, &tt, &fwd, 1.0, &d, IGNORE_INDEX, false).unwrap();
    assert_eq!(download(&d), vec![0.0; 6]);
}

/// Runs `loss` on a fresh tape over trainable logits; returns (loss, count, dlogits, op names).
fn through_tape(
    logits: &[f32],
    shape: &[usize],
    loss: impl Fn(&Tape, &kiln::autograd::Var) -> kiln::Result<kiln::autograd::Loss>,
) -> (f32, usize, Vec<f32>, Vec<&'static str>) {
    let g = gpu();
    let mut p = Param::new("logits", upload(logits, shape));
    p.set_trainable(g, true).unwrap();
    let tape = Tape::train(g, 0, 1);
    let l = loss(&tape, &tape.param(&p)).unwrap();
    let names = tape.recorded_names();
    tape.backward(&l, 1.0).unwrap();
    let (mean, count) = l.read(g).unwrap();
    (mean, count, download(p.grad.as_ref().unwrap()), names)
}

/// With every class weight 1 the weighted loss is the plain one: same value, count and gradient.
#[test]
fn cross_entropy_weighted_all_ones_equals_cross_entropy() {
    let mut rng = Rng::new(52);
    let (rows, classes) = (7, 3);
    let logits: Vec<f32> = rng.vec(rows * classes).iter().map(|v| v * 4.0).collect();
    let targets = weighted_targets(&mut rng, rows, classes);
    let ones = vec![1.0; classes];
    let (plain, plain_n, plain_d, _) = through_tape(&logits, &[rows, classes], |t, x| cross_entropy(t, x, &targets));
    let (weighted, n, d, names) =
        through_tape(&logits, &[rows, classes], |t, x| cross_entropy_weighted(t, x, &targets, &ones));
    assert_eq!(names, vec!["cross_entropy_weighted"]);
    assert_eq!((n, plain_n), (5, 5), "counted rows");
    assert_close("weighted(ones) loss vs cross_entropy", &[weighted], &[plain as f64], 1e-6, 1e-6);
    assert_close("weighted(ones) dlogits vs cross_entropy", &d, &f64s(&plain_d), 1e-7, 1e-6);
}

/// Through the tape, with a zero class weight and ignored rows: value, count and gradient match
/// the reference.
#[test]
fn cross_entropy_weighted_autograd_matches_reference() {
    let mut rng = Rng::new(53);
    let (rows, classes) = (300, 3);
    let logits: Vec<f32> = rng.vec(rows * classes).iter().map(|v| v * 4.0).collect();
    let targets = weighted_targets(&mut rng, rows, classes);
    let class_w = weighted_classes(&mut rng, classes);
    let (mean, count, d, _) =
        through_tape(&logits, &[rows, classes], |t, x| cross_entropy_weighted(t, x, &targets, &class_w));
    let (loss, lse, wsum) = r::forward_weighted(&f64s(&logits), &targets, &f64s(&class_w), classes, IGNORE_INDEX);
    let want = r::backward_weighted(&f64s(&logits), &targets, &f64s(&class_w), classes, IGNORE_INDEX, &lse, wsum, 1.0);
    assert_eq!(count, targets.iter().filter(|&&t| t != IGNORE_INDEX).count(), "Loss::read count is counted rows");
    let (atol, rtol) = WEIGHTED_LOSS_TOL;
    assert_close("cross_entropy_weighted loss", &[mean], &[loss], atol, rtol);
    let (atol, rtol) = WEIGHTED_GRAD_TOL;
    assert_close("cross_entropy_weighted dlogits", &d, &want, atol, rtol);
}

#[test]
fn cross_entropy_weighted_rejects_bad_class_weights() {
    let g = gpu();
    let tape = Tape::no_grad(g);
    let x = kiln::autograd::Var::constant(upload(&[0.0; 6], &[2, 3]));
    let err = |w: &[f32]| cross_entropy_weighted(&tape, &x, &[0, 2], w).err().expect("an error").to_string();
    let e = err(&[1.0, 1.0]);
    assert!(e.contains("class_weights") && e.contains("[2]") && e.contains("expected [3]"), "{e}");
    let e = err(&[1.0, -0.5, 1.0]);
    assert!(e.contains("class weight -0.5 at class 1"), "{e}");
    let e = err(&[1.0, 1.0, f32::NAN]);
    assert!(e.contains("class weight NaN at class 2"), "{e}");
}

/// A head larger than one storage binding (Gemma 3's 262,144 × 640 in f32 is 671 MB, lavapipe
/// binds 128 MiB): on a device capped at 256 KiB, a 1000 × 100 head (400 KB) is bound in row
/// blocks, and the loss, dh and dW still equal the f64 reference (70 rows: two row chunks).
#[test]
fn linear_cross_entropy_splits_a_head_larger_than_one_binding() {
    let mut small = kiln::Gpu::new(&kiln::gpu::AdapterChoice::from_flag_or_env(None)).unwrap();
    small.cap_storage_binding(256 << 10);
    let g = &small;
    let mut rng = Rng::new(53);
    let (rows, c, vocab) = (70, 100, 1000);
    let (h, w) = (rng.vec(rows * c), rng.vec(vocab * c));
    let targets: Vec<i32> =
        (0..rows).map(|i| if i % 9 == 4 { IGNORE_INDEX } else { rng.below(vocab as u32) as i32 }).collect();
    let param = |name: &str, v: &[f32], shape: &[usize]| {
        let mut p = Param::new(name, Tensor::from_f32(g, v, shape).unwrap());
        p.set_trainable(g, true).unwrap();
        p
    };
    let (hp, wp) = (param("h", &h, &[rows, c]), param("w", &w, &[vocab, c]));
    let tape = Tape::train(g, 0, 1);
    let loss = kiln::autograd::linear_cross_entropy(&tape, &tape.param(&hp), &tape.param(&wp), &targets).unwrap();
    tape.backward(&loss, 1.0).unwrap();
    let (mean, _) = loss.read(g).unwrap();

    // The reference: logits = h·Wᵀ, then the fused loss's reference, then both products.
    let (hd, wd) = (f64s(&h), f64s(&w));
    let mut logits = vec![0.0; rows * vocab];
    for i in 0..rows {
        for v in 0..vocab {
            logits[i * vocab + v] = (0..c).map(|k| hd[i * c + k] * wd[v * c + k]).sum();
        }
    }
    let (want_loss, lse, count) = r::forward(&logits, &targets, vocab, IGNORE_INDEX);
    let dl = r::backward(&logits, &targets, vocab, IGNORE_INDEX, &lse, count, 1.0);
    let mut dh = vec![0.0; rows * c];
    let mut dw = vec![0.0; vocab * c];
    for i in 0..rows {
        for v in 0..vocab {
            let d = dl[i * vocab + v];
            for k in 0..c {
                dh[i * c + k] += d * wd[v * c + k];
                dw[v * c + k] += d * hd[i * c + k];
            }
        }
    }
    assert_close("split head loss", &[mean], &[want_loss], 1e-4, 1e-5);
    assert_close("split head dh", &hp.grad.as_ref().unwrap().to_f32_vec(g).unwrap(), &dh, 1e-5, 1e-4);
    assert_close("split head dW", &wp.grad.as_ref().unwrap().to_f32_vec(g).unwrap(), &dw, 1e-5, 1e-4);
}
