//! A parallel map over `0..n` on scoped std threads, for the per-text work of curation
//! (normalizing, shingling, MinHash) and the per-pair checks. Results come back in index order
//! whatever the thread count, so outputs are deterministic.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Items a thread claims at a time: large enough that the shared counter is touched rarely,
/// small enough that a few long texts at the end do not leave one thread working alone.
const BLOCK: usize = 256;

/// `(0..n).map(f).collect()`, spread over `std::thread::available_parallelism()` threads.
/// A panic in `f` is re-raised on the calling thread.
pub(crate) fn par_map<T, F>(n: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).min(n.div_ceil(BLOCK));
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut blocks = Vec::new();
        loop {
            let start = next.fetch_add(BLOCK, Ordering::Relaxed);
            if start >= n {
                return blocks;
            }
            let end = (start + BLOCK).min(n);
            blocks.push((start, (start..end).map(&f).collect::<Vec<T>>()));
        }
    };
    let mut blocks: Vec<(usize, Vec<T>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        all
    });
    blocks.sort_unstable_by_key(|&(start, _)| start);
    let mut out = Vec::with_capacity(n);
    for (_, block) in blocks {
        out.extend(block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_index_order() {
        for n in [0, 1, BLOCK - 1, BLOCK, 5 * BLOCK + 3] {
            let got = par_map(n, |i| i * i);
            let want: Vec<usize> = (0..n).map(|i| i * i).collect();
            assert_eq!(got, want, "n = {n}");
        }
    }
}
