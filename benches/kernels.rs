//! Criterion benchmarks of the core kernels, on the adapter `KILN_ADAPTER` names (or the best
//! one). Throughput is set per case, so criterion reports elements/s for matmul and attention
//! (one "element" = one floating-point operation, i.e. FLOP/s) and bytes/s for memory-bound
//! kernels. Cases and their work counts are shared with `kiln bench` (src/bench.rs).
//!
//! `cargo bench --bench kernels` (add `-- matmul` to filter). Sizes follow `kiln bench`'s
//! scale for the adapter: small on lavapipe, full on a GPU.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln::Gpu;
use kiln::bench::{self, Bound, Case, Scale};
use kiln::gpu::AdapterChoice;

fn run_case(c: &mut Criterion, gpu: &Gpu, mut case: Case) {
    let mut group = c.benchmark_group(case.kernel.clone());
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    group.throughput(match case.bound {
        Bound::Compute => Throughput::Elements(case.flops as u64),
        Bound::Memory => Throughput::Bytes(case.bytes as u64),
    });
    group.bench_function(BenchmarkId::from_parameter(&case.shape), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                (case.run)().expect("kernel dispatch");
            }
            gpu.synchronize().expect("GPU finished");
            start.elapsed()
        })
    });
    group.finish();
}

fn kernels(c: &mut Criterion) {
    let gpu = Gpu::new(&AdapterChoice::from_flag_or_env(None)).expect("benchmarks need a GPU adapter");
    let scale = Scale::auto(&gpu);
    eprintln!(
        "benchmarking on {} (matmul tile {}, scale {scale:?})",
        gpu.describe(),
        kiln::kernels::matmul::tile(&gpu)
    );
    run_case(c, &gpu, bench::copy_case(&gpu, 64 << 20).expect("copy case"));
    for mm in bench::matmul_shapes(scale) {
        run_case(c, &gpu, bench::matmul_case(&gpu, mm).expect("matmul case"));
        gpu.trim_pool();
    }
    for shape in bench::attention_shapes(scale) {
        for case in bench::attention_cases(&gpu, shape).expect("attention cases") {
            run_case(c, &gpu, case);
        }
        gpu.trim_pool();
    }
    for case in bench::memory_cases(&gpu, scale).expect("memory cases") {
        run_case(c, &gpu, case);
    }
    for case in bench::conv_cases(&gpu, scale).expect("conv cases") {
        run_case(c, &gpu, case);
    }
    for case in bench::cnn_cases(&gpu, scale).expect("batch norm and pooling cases") {
        run_case(c, &gpu, case);
    }
    for case in quant_cases(&gpu, scale) {
        run_case(c, &gpu, case);
    }
}

/// The frozen-base products of LoRA on a quantized model (`shaders/qmatmul.wgsl`), at
/// SmolLM2-135M's MLP up-projection [1536, 576]: the forward x·Wᵀ over a batch of tokens, the
/// backward dy·W, and one token (generation); the same W in f32 through `matmul` beside them.
/// FLOP/s as elements; the work is the same, the bytes of W are 5/32 (Q4_1) of f32's.
fn quant_cases(gpu: &Gpu, scale: Scale) -> Vec<Case<'_>> {
    use kiln::kernels::matmul::{Matmul, matmul_into};
    use kiln::kernels::qmatmul::QuantTensor;
    use kiln::kernels::qmatmul::{qmatmul_dx_into, qmatmul_into};
    use kiln::quant::{QuantType, QuantWeights};
    use kiln::{DType, Tensor};
    let tokens = if scale == Scale::Small { 512 } else { 4096 };
    let (n, k) = (1536, 576);
    let data: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let w32 = Tensor::from_f32(gpu, &data, &[n, k]).expect("upload");
    let mut cases = Vec::new();
    for m in [tokens, 1] {
        let x = Tensor::zeros(gpu, &[m, k]).expect("x");
        let y = Tensor::empty(gpu, &[m, n], DType::F32).expect("y");
        let flops = 2.0 * (m * n * k) as f64;
        let (x2, y2, w2) = (x.clone(), y.clone(), w32.clone());
        let mm = Matmul::new(m, n, k).trans_b(true);
        cases.push(Case {
            kernel: "qmatmul_f32_ref".into(),
            shape: format!("{m}x{n}x{k}"),
            flops,
            bytes: 4.0 * (m * k + n * k + m * n) as f64,
            bound: Bound::Compute,
            run: Box::new(move || matmul_into(gpu, &mm, &x2, &w2, None, &y2)),
        });
        // K = 576 is not whole 256-weight super-blocks: the K-quants are in `kiln bench`.
        for kind in QuantType::ALL.into_iter().filter(|q| k % q.block_weights() == 0) {
            let w = QuantTensor::upload(gpu, &QuantWeights::quantize(kind, &data, n, k, "w").expect("quantize"))
                .expect("upload");
            let (x2, y2, w2) = (x.clone(), y.clone(), w.clone());
            cases.push(Case {
                kernel: format!("qmatmul_{kind}"),
                shape: format!("{m}x{n}x{k}"),
                flops,
                bytes: 4.0 * (m * k + m * n) as f64 + w.byte_len() as f64,
                bound: Bound::Compute,
                run: Box::new(move || qmatmul_into(gpu, &x2, &w2, None, &y2, 1.0, false)),
            });
            if m > 1 {
                let (dy, dx) = (y.clone(), Tensor::empty(gpu, &[m, k], DType::F32).expect("dx"));
                cases.push(Case {
                    kernel: format!("qmatmul_dx_{kind}"),
                    shape: format!("{m}x{n}x{k}"),
                    flops,
                    bytes: 4.0 * (m * k + m * n) as f64 + w.byte_len() as f64,
                    bound: Bound::Compute,
                    run: Box::new(move || qmatmul_dx_into(gpu, &dy, &w, &dx, 1.0, false)),
                });
            }
        }
    }
    cases
}

criterion_group!(benches, kernels);
criterion_main!(benches);
