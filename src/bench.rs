//! Kernel timing for `kiln bench` and the tile tuner. Each figure is the median of several
//! repetitions, each repetition `iters` dispatches recorded into one submit and waited on.
//! Rooflines are measured in the same run: a device-to-device copy for bandwidth, the best
//! matmul seen for compute.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::matmul::{Matmul, MatmulTile, matmul_into};
use crate::tensor::{DType, Tensor};

/// One row of `kiln bench`'s output.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub kernel: String,
    pub shape: String,
    pub median_ms: f64,
    /// Useful floating-point work per second (matmul-like kernels).
    pub gflops: Option<f64>,
    /// Bytes that must move at least once (read + written), per second.
    pub gbps: Option<f64>,
    /// Percent of the roofline measured in this run: copy bandwidth for memory-bound kernels,
    /// the best matmul for compute-bound ones.
    pub roofline_pct: Option<f64>,
}

/// Median seconds per call of `f`, over `reps` repetitions of `iters` calls each.
pub fn time_it(
    gpu: &Gpu,
    reps: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    f()?;
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        gpu.synchronize()?;
        times.push(start.elapsed().as_secs_f64() / iters as f64);
    }
    Ok(median(&mut times))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Enough repetitions for a stable median without spending minutes on lavapipe.
pub fn iters_for(seconds_per_call_estimate: f64) -> (usize, usize) {
    let iters = (0.05 / seconds_per_call_estimate.max(1e-6)).clamp(1.0, 50.0) as usize;
    (5, iters)
}

/// Device copy bandwidth in GB/s (read + write counted), the memory roofline.
pub fn copy_bandwidth(gpu: &Gpu, bytes: usize) -> Result<Figure> {
    let n = bytes / 4;
    let src = Tensor::zeros(gpu, &[n])?;
    let dst = Tensor::empty(gpu, &[n], DType::F32)?;
    let probe = time_it(gpu, 1, 1, || gpu.copy(&src, &dst))?;
    let (reps, iters) = iters_for(probe);
    let secs = time_it(gpu, reps, iters, || gpu.copy(&src, &dst))?;
    let gbps = 2.0 * bytes as f64 / secs / 1e9;
    Ok(Figure {
        kernel: "copy".into(),
        shape: format!("{} MiB", bytes >> 20),
        median_ms: secs * 1e3,
        gflops: None,
        gbps: Some(gbps),
        roofline_pct: Some(100.0),
    })
}

/// Times one matmul shape with the adapter's current tile.
pub fn matmul_figure(gpu: &Gpu, mm: Matmul) -> Result<Figure> {
    let a = Tensor::zeros(gpu, &[mm.batch * mm.m * mm.k])?;
    let b = Tensor::zeros(gpu, &[mm.batch * mm.k * mm.n])?;
    let c = Tensor::empty(gpu, &[mm.batch * mm.m * mm.n], DType::F32)?;
    let probe = time_it(gpu, 1, 1, || matmul_into(gpu, &mm, &a, &b, None, &c))?;
    let (reps, iters) = iters_for(probe);
    let secs = time_it(gpu, reps, iters, || matmul_into(gpu, &mm, &a, &b, None, &c))?;
    let shape = if mm.batch > 1 {
        format!("{}x{}x{}x{}", mm.batch, mm.m, mm.n, mm.k)
    } else {
        format!("{}x{}x{}", mm.m, mm.n, mm.k)
    };
    Ok(Figure {
        kernel: format!(
            "matmul{}{}",
            if mm.trans_a { "_tA" } else { "" },
            if mm.trans_b { "_tB" } else { "" }
        ),
        shape,
        median_ms: secs * 1e3,
        gflops: Some(mm.flops() / secs / 1e9),
        gbps: None,
        roofline_pct: None,
    })
}

/// Times every candidate tile that fits the adapter on `size`³ and returns them best first.
pub fn tune_matmul(
    gpu: &Gpu,
    size: usize,
    mut progress: impl FnMut(MatmulTile, &Result<f64>),
) -> Vec<(MatmulTile, f64)> {
    let saved = gpu.matmul_tile();
    let mut results = Vec::new();
    for tile in MatmulTile::candidates()
        .into_iter()
        .filter(|t| t.fits(gpu.limits()))
    {
        gpu.set_matmul_tile(tile);
        let r = matmul_figure(gpu, Matmul::new(size, size, size)).map(|f| f.gflops.unwrap_or(0.0));
        progress(tile, &r);
        if let Ok(g) = r {
            results.push((tile, g));
        }
        gpu.trim_pool();
    }
    gpu.set_matmul_tile(saved);
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    results
}
