//! Criterion benchmark of near-duplicate detection (`near_duplicate_pairs`, default config) on
//! synthetic corpora of 25k, 50k and 100k short documents with ~5% planted near duplicates
//! (kiln::curate::synthetic). Throughput is documents per second.
//!
//! `cargo bench --bench near_dup` (add `-- 25000` to run one size). For wall time, recall and
//! peak memory per size, see `examples/near_dup_scale.rs`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use kiln::curate::{NearDupConfig, near_duplicate_pairs, synthetic_corpus};

fn near_dup(c: &mut Criterion) {
    let cfg = NearDupConfig::default();
    let mut group = c.benchmark_group("near_duplicate_pairs");
    // Flat sampling: every sample runs the same number of calls, so ten samples need ten calls
    // (the default linear mode needs 55), which matters when one call takes seconds.
    group.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_secs(1));
    for n in [25_000, 50_000, 100_000] {
        let corpus = synthetic_corpus(n, 42);
        let texts: Vec<&str> = corpus.texts.iter().map(String::as_str).collect();
        let pairs = near_duplicate_pairs(&texts, &cfg).expect("valid config");
        eprintln!("{n} documents: {} pairs found ({} planted)", pairs.len(), corpus.planted.len());
        // Room for ten calls at 20 µs per document (measured ~16 µs on one busy core).
        group.measurement_time(Duration::from_secs_f64(n as f64 * 2e-4));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &texts, |b, texts| {
            b.iter(|| near_duplicate_pairs(texts, &cfg).expect("valid config"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // No plots: criterion's plotting backend needs system fonts, and on a machine without them
    // (CI images, containers) it panics after the first measurement. The numbers are printed.
    config = Criterion::default().without_plots();
    targets = near_dup
}
criterion_main!(benches);
