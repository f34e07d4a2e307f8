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
