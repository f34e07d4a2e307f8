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
    eprintln!("benchmarking on {} (matmul tile {}, scale {scale:?})", gpu.describe(), gpu.matmul_tile());
    run_case(c, &gpu, bench::copy_case(&gpu, 64 << 20).expect("copy case"));
    for mm in bench::matmul_shapes(scale) {
        run_case(c, &gpu, bench::matmul_case(&gpu, mm).expect("matmul case"));
        gpu.trim_pool();
    }
    for t in bench::attention_lengths(scale) {
        for case in bench::attention_cases(&gpu, t).expect("attention cases") {
            run_case(c, &gpu, case);
        }
        gpu.trim_pool();
    }
    for case in bench::memory_cases(&gpu, scale).expect("memory cases") {
        run_case(c, &gpu, case);
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
