//! The mixed-precision matmuls (`shaders/matmul_coop.wgsl`, `shaders/qmatmul_coop.wgsl`,
//! `kernels::matmul_coop`): f16 inputs on cooperative matrices, f32 accumulation.
//!
//! On an adapter with cooperative matrices (lavapipe from Mesa 26, which `.ci/run` runs these
//! tests on; NVIDIA; Apple) every product is checked against the reference on its inputs rounded
//! to f16, on awkward shapes, every transpose, batches with shared operands, bias, alpha,
//! accumulate, the epilogues and the fused dropouts, a frozen linear layer's output and dX
//! through the tape against the f32 path, and the quantized bases' forward and dX. On an
//! adapter without them the tests check that f16 is refused with the reason, and say loudly
//! that the kernels were not run; with `KILN_REQUIRE_COOP=1` (as `.ci/run` sets it for its
//! Mesa 26 run) they fail instead.

use half::f16;
use kiln::Tensor;
use kiln::kernels::matmul::{DropOn, Matmul, matmul_into};
use kiln::kernels::matmul_coop::{self, Precision};
use kiln::reference;

use crate::common::*;

// These tests run on `coop_gpu()`, a second device of the adapter, so their f16 setting never
// reaches the other tests' products; these shadow the common helpers of the same names.
fn gpu() -> &'static kiln::Gpu {
    coop_gpu()
}

fn upload(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(gpu(), data, shape).expect("upload")
}

fn download(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec(gpu()).expect("download")
}

fn trainable_params(names: &[&str], data: &[Vec<f32>], shapes: &[Vec<usize>]) -> Vec<kiln::autograd::Param> {
    let param = |((name, d), shape): ((&&str, &Vec<f32>), &Vec<usize>)| {
        let mut p = kiln::autograd::Param::new(*name, upload(d, shape));
        p.set_trainable(gpu(), true).unwrap();
        p
    };
    names.iter().zip(data).zip(shapes).map(param).collect()
}

// f32 accumulation of exact f16 products: the f32 kernel's tolerance.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

/// One product with mixed precision accepted, against the reference on f16-rounded inputs; and
/// how far it is from the reference on the inputs as given.
fn case(rng: &mut Rng, mm: Matmul, a_shared: bool, b_shared: bool, with_bias: bool) -> f64 {
    let gpu = gpu();
    let (m, n, k, batch) = (mm.m, mm.n, mm.k, mm.batch);
    let a = rng.vec(if a_shared { m * k } else { batch * m * k });
    let b = rng.vec(if b_shared { k * n } else { batch * k * n });
    let (bias, c0) = (rng.vec(n), rng.vec(batch * m * n));
    let c = upload(&c0, &[batch, m, n]);
    let bias_t = upload(&bias, &[n]);
    let mm = mm.mixed_precision(true);
    matmul_into(gpu, &mm, &upload(&a, &[a.len()]), &upload(&b, &[b.len()]), with_bias.then_some(&bias_t), &c).unwrap();
    let got = download(&c);
    let bias64 = f64s(&bias);
    let reference_on = |a: &[f32], b: &[f32]| {
        let mut want = f64s(&c0);
        let flags = (mm.trans_a, mm.trans_b, mm.alpha as f64, mm.accumulate);
        reference::matmul::matmul(
            &f64s(a),
            &f64s(b),
            with_bias.then_some(&bias64[..]),
            &mut want,
            (batch, m, n, k),
            flags.0,
            flags.1,
            flags.2,
            flags.3,
        );
        want
    };
    let want = reference_on(&rounded(&a), &rounded(&b));
    let what = format!("coop matmul {mm:?} a_shared={a_shared} b_shared={b_shared} bias={with_bias}");
    assert_close(&what, &got, &want, ATOL * (k as f64).sqrt().max(1.0), RTOL);
    let exact = reference_on(&a, &b);
    got.iter().zip(&exact).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max)
}

#[test]
fn coop_products_match_the_reference_on_f16_inputs() {
    let Some(shape) = shape_or_refusal() else { return };
    let mut rng = Rng::new(1601);
    let block = shape.block() as usize;
    under_f16(|| {
        // Within one block, across block edges on both sides, K shorter than a fragment and
        // not a multiple of the staged depth, and a product of exactly whole blocks.
        let shapes = [
            (17, 17, 1),
            (33, 45, 70),
            (block + 1, 2 * block - 1, 3),
            (100, 37, 129),
            (2 * block, 2 * block, 4 * shape.size as usize),
            (129, 257, 31),
        ];
        for (m, n, k) in shapes {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                case(&mut rng, Matmul::new(m, n, k).trans_a(ta).trans_b(tb), false, false, false);
            }
            case(&mut rng, Matmul::new(m, n, k).alpha(0.5).accumulate(true), false, false, true);
        }
        // Batches, with one operand shared.
        case(&mut rng, Matmul::new(40, 23, 50).batch(3), false, false, true);
        case(&mut rng, Matmul::new(40, 23, 50).batch(3).trans_b(true), false, true, false);
        case(&mut rng, Matmul::new(23, 40, 19).batch(2).trans_a(true), true, false, true);
        // The rounding shows: the f16 path is 1e-3 or more from the exact product, where f32's
        // error is near 1e-6, so it did run (a product that silently took the f32 kernel fails).
        let off = case(&mut rng, Matmul::new(64, 64, 256), false, false, false);
        assert!(off > 1e-3, "the f16 product is within {off:e} of the exact one: did it run?");
        // A product not marked mixed stays f32 under the same setting.
        let (a, b) = (rng.vec(64 * 256), rng.vec(256 * 64));
        let c = Tensor::zeros(gpu(), &[64, 64]).unwrap();
        matmul_into(gpu(), &Matmul::new(64, 64, 256), &upload(&a, &[64, 256]), &upload(&b, &[256, 64]), None, &c)
            .unwrap();
        let mut want = vec![0.0; 64 * 64];
        reference::matmul::matmul(&f64s(&a), &f64s(&b), None, &mut want, (1, 64, 64, 256), false, false, 1.0, false);
        assert_close("an f32 product under --precision f16", &download(&c), &want, ATOL * 16.0, RTOL);
    });
}

/// The epilogues and the fused dropouts (p = 0.5, whose scale of 2 commutes with the rounding)
/// give what the f32 kernel gives on the inputs rounded to f16.
#[test]
fn coop_epilogues_and_dropouts_equal_the_f32_kernel_on_rounded_inputs() {
    use kiln::kernels::dropout::DropoutMask;
    use kiln::kernels::elementwise::{Activation, GatedUnit};
    use kiln::kernels::matmul::{Epilogue, matmul_epilogue_into};
    let Some(_) = shape_or_refusal() else { return };
    let gpu = gpu();
    let mut rng = Rng::new(1602);
    let (m, n, k) = (45, 70, 37);
    let a: Vec<f32> = rng.vec(m * k).iter().map(|v| v * 3.0).collect();
    let (b, bias, gate) = (rng.vec(n * k), rng.vec(n), rng.vec(m * n));
    let (a16, b16) = (upload(&rounded(&a), &[m, k]), upload(&rounded(&b), &[n, k]));
    let (a32, b32) = (upload(&a, &[m, k]), upload(&b, &[n, k]));
    let (bias_t, gate_t) = (upload(&bias, &[n]), upload(&gate, &[m, n]));
    let mm = Matmul::new(m, n, k).trans_b(true);
    let tol = ATOL * (k as f64).sqrt() * 4.0;
    let epilogues = [
        ("gelu_tanh", Epilogue::Activation(Activation::GeluTanh)),
        ("relu6", Epilogue::Activation(Activation::Relu6)),
        ("swiglu", Epilogue::Gated(GatedUnit::SwiGlu, &gate_t)),
    ];
    for (name, epilogue) in epilogues {
        let want_c = Tensor::zeros(gpu, &[m, n]).unwrap();
        let want = matmul_epilogue_into(gpu, &mm, &a16, &b16, Some(&bias_t), &want_c, epilogue).unwrap();
        let got_c = Tensor::zeros(gpu, &[m, n]).unwrap();
        let got = under_f16(|| {
            matmul_epilogue_into(gpu, &mm.mixed_precision(true), &a32, &b32, Some(&bias_t), &got_c, epilogue).unwrap()
        });
        let what = format!("coop matmul then {name}");
        assert_close(&format!("{what}: c"), &download(&got_c), &f64s(&download(&want_c)), tol, RTOL);
        assert_close(&format!("{what}: epilogue"), &download(&got), &f64s(&download(&want)), tol, RTOL);
    }
    let mask = DropoutMask { p: 0.5, seed: 7, step: 3 };
    for on in [DropOn::A, DropOn::B, DropOn::Product] {
        let plain = mm.dropout(on, mask);
        let want = Tensor::zeros(gpu, &[m, n]).unwrap();
        matmul_into(gpu, &plain, &a16, &b16, Some(&bias_t), &want).unwrap();
        let got = Tensor::zeros(gpu, &[m, n]).unwrap();
        under_f16(|| matmul_into(gpu, &plain.mixed_precision(true), &a32, &b32, Some(&bias_t), &got).unwrap());
        assert_close(&format!("coop matmul, dropout on {on:?}"), &download(&got), &f64s(&download(&want)), tol, RTOL);
    }
}

/// A linear layer on a frozen weight through the tape, under f16 against f32 on the same inputs:
/// the output and dX within the stated tolerance (2e-3 + 1e-2 relative; f16 keeps 11 bits), and
/// not equal to them (the f16 path ran).
#[test]
fn frozen_linear_output_and_dx_under_f16_match_the_f32_path() {
    use kiln::autograd::{Tape, Var, WeightLayout, cross_entropy, linear};
    let Some(_) = shape_or_refusal() else { return };
    let g = gpu();
    let mut rng = Rng::new(1603);
    let (rows, d_in, d_out) = (37, 48, 70);
    let (x, w) = (rng.vec(rows * d_in), rng.vec(d_out * d_in));
    let targets: Vec<i32> = (0..rows).map(|_| rng.below(d_out as u32) as i32).collect();
    let run = || -> (Vec<f32>, Vec<f32>) {
        let params = trainable_params(&["x"], std::slice::from_ref(&x), &[vec![rows, d_in]]);
        let tape = Tape::train(g, 0, 1);
        let xv = tape.param(&params[0]);
        let wv = Var::constant(upload(&w, &[d_out, d_in]));
        let y = linear(&tape, &xv, &wv, WeightLayout::OutIn, None, None).unwrap();
        let loss = cross_entropy(&tape, &y, &targets).unwrap();
        tape.backward(&loss, 1.0).unwrap();
        (download(&y.value), download(params[0].grad.as_ref().expect("a gradient for x")))
    };
    let (y32, dx32) = under_precision(Precision::F32, run);
    let (y16, dx16) = under_f16(run);
    for (what, got, want) in [("y", &y16, &y32), ("dx", &dx16, &dx32)] {
        assert_close(&format!("frozen linear under f16: {what}"), got, &f64s(want), 2e-3, 1e-2);
        assert!(got != want, "frozen linear under f16: {what} equals the f32 path's bit for bit: did f16 run?");
    }
}

/// The precision setting: f32 on a CPU adapter by default, what `describe` says, and the
/// precision flag's parse.
#[test]
fn precision_setting_parses_and_describes() {
    assert_eq!(Precision::parse("f16"), Some(Precision::F16));
    assert_eq!(Precision::parse("f32"), Some(Precision::F32));
    assert_eq!(Precision::parse("bf16"), None);
    let gpu = gpu();
    if gpu.info().device_type == wgpu::DeviceType::Cpu && std::env::var_os("KILN_PRECISION").is_none() {
        assert_eq!(
            matmul_coop::default_precision(gpu.info().device_type, &matmul_coop::coop_shape(gpu)),
            Precision::F32
        );
    }
    if let Some(shape) = shape_or_refusal() {
        under_f16(|| {
            let text = matmul_coop::describe(gpu);
            assert!(text.contains("f16") && text.contains(&format!("{0}x{0}x{0}", shape.size)), "{text}");
        });
    }
    under_precision(Precision::F32, || assert_eq!(matmul_coop::describe(gpu), "f32 matmuls"));
}

/// The quantized and 16-bit bases' products (`shaders/qmatmul_coop.wgsl`) under f16: y = x·Wᵀ
/// (bias, alpha, accumulate) and dx = dy·W against the reference on x (dy) and the dequantized
/// W rounded to f16, for 16-bit, 32-weight and K-quant formats, on shapes off the block both
/// ways. Below 17 rows the forward keeps its skinny f32 kernel.
#[test]
fn coop_quantized_products_match_the_reference_on_f16_inputs() {
    use kiln::kernels::qmatmul::{QuantTensor, qmatmul_dx_into, qmatmul_into};
    use kiln::quant::{QuantType, QuantWeights};
    let Some(_) = shape_or_refusal() else { return };
    let gpu = gpu();
    let mut rng = Rng::new(1604);
    let round64 = |v: &[f64]| -> Vec<f64> { v.iter().map(|&x| f16::from_f64(x).to_f64()).collect() };
    let cases = [
        (QuantType::F16, (17, 33, 96)),
        (QuantType::BF16, (70, 100, 160)),
        (QuantType::Q4_0, (65, 130, 96)),
        (QuantType::Q8_0, (129, 65, 320)),
        (QuantType::Q4_K, (33, 70, 512)),
        (QuantType::Q6_K, (40, 65, 256)),
    ];
    under_f16(|| {
        for (kind, (m, n, k)) in cases {
            let data: Vec<f32> = (0..n * k).map(|i| rng.uniform() * (1.0 + (i / k % 5) as f32)).collect();
            let w = QuantWeights::quantize(kind, &data, n, k, "w").unwrap();
            let qt = QuantTensor::upload(gpu, &w).unwrap();
            let w16 = round64(&kiln::reference::quant::dequantize(kind, &w.blocks));
            let (x, bias, y0) = (rng.vec(m * k), rng.vec(n), rng.vec(m * n));
            let y = upload(&y0, &[m, n]);
            qmatmul_into(gpu, &upload(&x, &[m, k]), &qt, Some(&upload(&bias, &[n])), &y, 0.5, true).unwrap();
            let mut want = f64s(&y0);
            let x16 = f64s(&rounded(&x));
            reference::matmul::matmul(&x16, &w16, Some(&f64s(&bias)), &mut want, (1, m, n, k), false, true, 0.5, true);
            let tol = ATOL * (k as f64).sqrt();
            assert_close(&format!("coop qmatmul {kind} {m}x{n}x{k}"), &download(&y), &want, tol, RTOL);

            let dy = rng.vec(m * n);
            let dx = Tensor::zeros(gpu, &[m, k]).unwrap();
            qmatmul_dx_into(gpu, &upload(&dy, &[m, n]), &qt, &dx, 1.0, false).unwrap();
            let mut want = vec![0.0; m * k];
            let dy16 = f64s(&rounded(&dy));
            reference::matmul::matmul(&dy16, &w16, None, &mut want, (1, m, k, n), false, false, 1.0, false);
            let tol = ATOL * (n as f64).sqrt();
            assert_close(&format!("coop qmatmul_dx {kind} {m}x{n}x{k}"), &download(&dx), &want, tol, RTOL);
        }
    });
}

/// Cross-entropy through a frozen LM head (a LoRA run's tied embedding), vocabulary-chunked,
/// under f16 against f32 on the same inputs: the loss and dh within the stated tolerance, and
/// dh not equal to f32's (f16 ran).
#[test]
fn frozen_head_cross_entropy_under_f16_matches_the_f32_path() {
    use kiln::autograd::{Tape, Var, linear_cross_entropy};
    let Some(_) = shape_or_refusal() else { return };
    let g = gpu();
    let mut rng = Rng::new(1605);
    let (rows, c, vocab) = (40, 48, 300);
    let (h, w) = (rng.vec(rows * c), rng.vec(vocab * c));
    let targets: Vec<i32> = (0..rows).map(|_| rng.below(vocab as u32) as i32).collect();
    let run = || -> (f32, Vec<f32>) {
        let params = trainable_params(&["h"], std::slice::from_ref(&h), &[vec![rows, c]]);
        let tape = Tape::train(g, 0, 1);
        let hv = tape.param(&params[0]);
        let wv = Var::constant(upload(&w, &[vocab, c]));
        let loss = linear_cross_entropy(&tape, &hv, &wv, &targets).unwrap();
        tape.backward(&loss, 1.0).unwrap();
        (loss.read(g).unwrap().0, download(params[0].grad.as_ref().expect("a gradient for h")))
    };
    let (loss32, dh32) = under_precision(Precision::F32, run);
    let (loss16, dh16) = under_f16(run);
    assert!((loss16 - loss32).abs() <= 2e-3 + 1e-2 * loss32.abs(), "loss {loss16} under f16 against {loss32}");
    assert_close("frozen head under f16: dh", &dh16, &f64s(&dh32), 2e-3, 1e-2);
    assert!(dh16 != dh32, "frozen head under f16: dh equals the f32 path's bit for bit: did f16 run?");
}
