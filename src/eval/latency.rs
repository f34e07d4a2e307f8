//! Latency and throughput summaries: percentiles of single-example timings (warm-up runs are
//! never part of them) and rates per batch size.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};

/// The q-th percentile (0..=100) of sorted values, interpolating linearly between the two
/// nearest ranks (numpy's default); NaN for no values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = (q / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Percentiles of timed runs, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub runs: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Every timed run, in order (for the histogram).
    pub samples_ms: Vec<f64>,
}

impl Percentiles {
    pub fn of(seconds: &[f64]) -> Percentiles {
        let samples_ms: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
        let mut sorted = samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        Percentiles {
            runs: sorted.len(),
            p50_ms: percentile(&sorted, 50.0),
            p95_ms: percentile(&sorted, 95.0),
            p99_ms: percentile(&sorted, 99.0),
            mean_ms: sorted.iter().sum::<f64>() / sorted.len().max(1) as f64,
            min_ms: sorted.first().copied().unwrap_or(f64::NAN),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            samples_ms,
        }
    }
}

/// One batch size's throughput.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputPoint {
    pub batch: usize,
    /// Timed batches (after one warm-up batch) and their total wall time.
    pub batches: usize,
    pub seconds: f64,
    pub examples_per_second: f64,
    /// Real (unpadded) tokens per second.
    pub tokens_per_second: f64,
}

impl ThroughputPoint {
    /// Runs one batch of `batch` examples holding `tokens` real tokens: once untimed when
    /// `warmup`, then `batches` times on the clock.
    pub fn measure(
        batch: usize,
        tokens: usize,
        batches: usize,
        warmup: bool,
        mut run: impl FnMut() -> Result<()>,
    ) -> Result<ThroughputPoint> {
        if warmup {
            run()?;
        }
        let t0 = Instant::now();
        for _ in 0..batches {
            run()?;
        }
        let seconds = t0.elapsed().as_secs_f64();
        Ok(ThroughputPoint {
            batch,
            batches,
            seconds,
            examples_per_second: (batch * batches) as f64 / seconds,
            tokens_per_second: (tokens * batches) as f64 / seconds,
        })
    }
}

/// `--batch-sizes`: a comma-separated list of positive integers, e.g. `1,2,4,8`.
pub fn parse_batch_sizes(list: &str) -> Result<Vec<usize>> {
    let sizes: Vec<usize> =
        list.split(',').map(|x| x.trim().parse::<usize>().ok().filter(|&b| b > 0)).collect::<Option<_>>().ok_or_else(
            || Error::invalid("--batch-sizes", format!("`{list}`: expected positive integers, e.g. 1,2,4,8")),
        )?;
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [50, 95, 99]) -> [2.5, 3.85, 3.97]
        let s = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile(&s, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile(&s, 95.0) - 3.85).abs() < 1e-12);
        assert!((percentile(&s, 99.0) - 3.97).abs() < 1e-12);
        assert!(percentile(&[], 50.0).is_nan());
        let p = Percentiles::of(&[0.004, 0.001, 0.003, 0.002]);
        assert!((p.p50_ms - 2.5).abs() < 1e-9 && p.runs == 4 && (p.min_ms - 1.0).abs() < 1e-9);
        assert_eq!(p.samples_ms.len(), 4);
    }

    #[test]
    fn batch_sizes_parse() {
        assert_eq!(parse_batch_sizes("1, 2,64").unwrap(), vec![1, 2, 64]);
        for bad in ["", "0", "1,x", "-1"] {
            assert!(parse_batch_sizes(bad).is_err(), "{bad}");
        }
    }
}
