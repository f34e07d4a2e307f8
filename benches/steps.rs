//! Criterion benchmarks of whole training steps (src/bench/step.rs, as `kiln bench --step`):
//! the SmolLM2-135M-shaped LoRA step and the MiniLM classifier step, on random weights of the
//! real shapes. Throughput is tokens per step, so criterion reports tokens/s.
//!
//! `cargo bench --bench steps` (add `-- minilm` to filter). Small scale on lavapipe (layers,
//! batch and vocabulary cut, widths kept), full on a GPU; `KILN_ADAPTER` picks the adapter.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln::Gpu;
use kiln::bench::Scale;
use kiln::bench::step::{StepBench, StepModel, StepShape};
use kiln::gpu::AdapterChoice;

fn steps(c: &mut Criterion) {
    let gpu = Gpu::new(&AdapterChoice::from_flag_or_env(None)).expect("benchmarks need a GPU adapter");
    let scale = Scale::auto(&gpu);
    for model in [StepModel::Smollm2, StepModel::Minilm] {
        let shape = StepShape::new(model, scale);
        eprintln!("{} on {}", shape.describe(), gpu.describe());
        let tokens = shape.tokens() as u64;
        let mut bench = StepBench::new(&gpu, shape).expect("step set up");
        bench.run().expect("warm-up step");
        let mut group = c.benchmark_group("step");
        group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(10));
        group.throughput(Throughput::Elements(tokens));
        // Each step ends with its loss read back, so an iteration is the whole step.
        group.bench_function(format!("{model:?}").to_lowercase(), |b| b.iter(|| bench.run().expect("training step")));
        group.finish();
        drop(bench);
        gpu.trim_pool();
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
