//! The runtime under the kernels (src/gpu): its counters and the profiler. Each test opens a
//! device of its own, because the other tests of this binary dispatch on the shared one
//! meanwhile and would show up in its counters.

use kiln::gpu::{AdapterChoice, GpuTiming};
use kiln::kernels::elementwise;
use kiln::kernels::matmul::{Matmul, matmul_into};
use kiln::{DType, Gpu, Tensor};

fn own_gpu() -> Gpu {
    Gpu::new(&AdapterChoice::from_flag_or_env(None)).expect("GPU tests need an adapter")
}

/// Three axpys and a matmul: what the counters and the profile must show.
fn four_dispatches(gpu: &Gpu, x: &Tensor, y: &Tensor, [a, b, c]: [&Tensor; 3]) {
    for _ in 0..3 {
        elementwise::axpy(gpu, 0.5, x, y).unwrap();
    }
    matmul_into(gpu, &Matmul::new(5, 7, 3), a, b, None, c).unwrap();
}

#[test]
fn a_profile_logs_each_dispatch_by_kernel_and_family() {
    let gpu = own_gpu();
    let x = Tensor::from_f32(&gpu, &[1.0; 300], &[300]).unwrap();
    let y = Tensor::zeros(&gpu, &[300]).unwrap();
    let a = Tensor::from_f32(&gpu, &[0.5; 15], &[5, 3]).unwrap();
    let b = Tensor::from_f32(&gpu, &[0.5; 21], &[3, 7]).unwrap();
    let c = Tensor::empty(&gpu, &[5, 7], DType::F32).unwrap();
    let abc = [&a, &b, &c];
    // Once unprofiled, so pipelines are compiled and the pools hold what the dispatches need.
    four_dispatches(&gpu, &x, &y, abc);
    gpu.synchronize().unwrap();
    for timed in [false, true] {
        gpu.profile_begin(timed);
        four_dispatches(&gpu, &x, &y, abc);
        let p = gpu.profile_end().unwrap();
        let expected = if timed { gpu.gpu_timing() } else { GpuTiming::Off };
        eprintln!("profile with GPU times {timed}: {}", p.timing.describe());
        assert_eq!(p.timing, expected);
        assert_eq!(p.counts.dispatches, 4);
        assert_eq!(p.dispatches.len(), 4);
        assert!(p.counts.submits >= 1, "profile_end submits what was recorded");
        let kernels = p.by_kernel();
        let scale = kernels.iter().find(|g| g.name == "elementwise/scale").expect("axpy is elementwise/scale");
        assert_eq!(scale.dispatches, 3);
        let families: Vec<String> = p.by_family().into_iter().map(|g| g.name).collect();
        assert_eq!(families.len(), 2, "elementwise and the matmul's family: {families:?}");
        assert!(p.dispatches.iter().all(|d| d.cpu_ns > 0), "each dispatch's recording time is measured");
        assert_eq!(p.counts.record_ns, p.dispatches.iter().map(|d| d.cpu_ns).sum::<u64>());
        let timed_here = p.timing == GpuTiming::PerDispatch;
        assert!(
            p.dispatches.iter().all(|d| d.gpu_ns.is_some() == timed_here),
            "GPU times exactly when timestamps were used: {:?}",
            p.dispatches
        );
    }
    // The values are untouched by profiling: y = 9 × 0.5 × 1.
    assert!(y.to_f32_vec(&gpu).unwrap().iter().all(|&v| v == 4.5));
}

/// A step's allocations, kernels and outputs, as a training step repeats them.
fn a_small_step(gpu: &Gpu, x: &Tensor, w: &Tensor) -> Vec<f32> {
    let h = elementwise::add(gpu, x, x).unwrap();
    let h = elementwise::activation(gpu, elementwise::Activation::Silu, &h).unwrap();
    let y = kiln::kernels::matmul::matmul(gpu, &h, w, false, false).unwrap();
    let z = elementwise::scale(gpu, &y, 0.5).unwrap();
    z.to_f32_vec(gpu).unwrap()
}

#[test]
fn a_repeated_step_creates_no_buffers_or_bind_groups_and_shares_passes() {
    let gpu = own_gpu();
    let x = Tensor::from_f32(&gpu, &(0..40).map(|i| i as f32 / 40.0).collect::<Vec<_>>(), &[5, 8]).unwrap();
    let w = Tensor::from_f32(&gpu, &(0..24).map(|i| i as f32 / 24.0).collect::<Vec<_>>(), &[8, 3]).unwrap();
    let first = a_small_step(&gpu, &x, &w);
    let mut before = gpu.counts();
    for _ in 0..2 {
        before = gpu.counts();
        assert_eq!(a_small_step(&gpu, &x, &w), first, "the same step gives the same bits");
    }
    let step = gpu.counts().since(&before);
    eprintln!("a repeated step: {step:?}");
    assert_eq!(step.dispatches, 4);
    assert_eq!(step.buffers_created, 0, "the pool and the readback staging serve everything");
    assert_eq!(step.bind_groups_created, 0, "the same buffers come back, so the cached groups serve");
    assert_eq!(step.passes, 1, "consecutive dispatches share one compute pass");
    assert_eq!(step.submits, 1, "the readback submits the step once");
}

#[test]
fn chunks_are_submitted_every_n_dispatches_with_the_same_results() {
    let gpu = own_gpu();
    let x = Tensor::from_f32(&gpu, &(0..40).map(|i| i as f32 / 40.0).collect::<Vec<_>>(), &[5, 8]).unwrap();
    let w = Tensor::from_f32(&gpu, &(0..24).map(|i| i as f32 / 24.0).collect::<Vec<_>>(), &[8, 3]).unwrap();
    let whole = a_small_step(&gpu, &x, &w);
    gpu.set_submit_every(1);
    let before = gpu.counts();
    let chunked = a_small_step(&gpu, &x, &w);
    let step = gpu.counts().since(&before);
    assert_eq!(chunked, whole);
    // One dispatch per chunk: three submitted while recording, the last by the readback.
    assert_eq!(step.submits, 4);
    // Each chunk's parameters were written into the arena before it ran.
    assert_eq!(step.passes, 4);
}
