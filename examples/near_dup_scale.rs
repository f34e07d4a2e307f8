//! How near-duplicate detection scales: for each corpus size, wall time of
//! `near_duplicate_pairs`, pairs found, recall of the planted near duplicates and peak memory.
//!
//! ```text
//! cargo run --release --example near_dup_scale            # 25k, 50k and 100k documents
//! cargo run --release --example near_dup_scale -- 50000   # one size
//! ```
//!
//! Each size runs in a fresh process (the program starts itself once per size), so the peak
//! resident set (VmHWM in /proc/self/status, Linux only) belongs to that size alone. Recall counts
//! the planted pairs whose true Jaccard is at or above the threshold (the others are not near
//! duplicates by definition, see kiln::curate::synthetic) and how many of those were reported.

use std::collections::HashSet;
use std::process::Command;
use std::time::Instant;

use kiln::curate::{NearDupConfig, jaccard, near_duplicate_pairs, synthetic_corpus};

const SIZES: [usize; 3] = [25_000, 50_000, 100_000];
const SEED: u64 = 42;

/// Peak resident set size in MiB, from the kernel's high-water mark.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn fmt_mib(m: Option<f64>) -> String {
    m.map_or("n/a".into(), |m| format!("{m:.1}"))
}

fn run(n: usize) {
    let corpus = synthetic_corpus(n, SEED);
    let texts: Vec<&str> = corpus.texts.iter().map(String::as_str).collect();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let cfg = NearDupConfig::default();
    let rss_before = peak_rss_mib();

    let start = Instant::now();
    let pairs = near_duplicate_pairs(&texts, &cfg).expect("valid config");
    let secs = start.elapsed().as_secs_f64();
    let rss_peak = peak_rss_mib();

    let found: HashSet<(usize, usize)> = pairs.iter().map(|p| (p.a, p.b)).collect();
    let near: Vec<(usize, usize)> = corpus
        .planted
        .iter()
        .copied()
        .filter(|&(a, b)| jaccard(texts[a], texts[b], cfg.shingle) >= cfg.threshold)
        .collect();
    let recovered = near.iter().filter(|p| found.contains(p)).count();
    println!(
        "{n:>7} docs ({:.1} MiB text) | {secs:>6.2} s | {:>5} pairs | planted {:>5}, of them J>={}: {:>5}, \
         recovered {:>5} (recall {:.4}) | peak RSS {} MiB (after generating the corpus: {} MiB)",
        bytes as f64 / (1 << 20) as f64,
        pairs.len(),
        corpus.planted.len(),
        cfg.threshold,
        near.len(),
        recovered,
        recovered as f64 / near.len().max(1) as f64,
        fmt_mib(rss_peak),
        fmt_mib(rss_before),
    );
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    match std::env::args().nth(1) {
        Some(arg) => match arg.parse::<usize>() {
            Ok(n) => run(n),
            Err(_) => {
                eprintln!("usage: near_dup_scale [DOCUMENTS]   (got `{arg}`)");
                std::process::exit(2);
            }
        },
        None => {
            println!("near_dup_scale: {threads} threads, default config {:?}", NearDupConfig::default());
            let me = std::env::current_exe().expect("path of this program");
            for n in SIZES {
                let status = Command::new(&me).arg(n.to_string()).status().expect("start a child process");
                if !status.success() {
                    eprintln!("size {n} failed: {status}");
                    std::process::exit(1);
                }
            }
        }
    }
}
