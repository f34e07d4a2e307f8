//! A synthetic corpus with planted near duplicates, for benchmarks and scale checks of
//! near-duplicate detection (`benches/near_dup.rs`, `examples/near_dup_scale.rs`); the same
//! seed gives the same corpus on every machine.
//!
//! Documents are 30–80 words drawn from a 5,000-word made-up vocabulary with Zipf frequencies
//! (the k-th most common word has weight 1/k, as in natural text), so unrelated documents share
//! common words but almost no 5-word shingle. About 5% of documents are planted copies of an
//! earlier document, edited in one of four ways: an exact copy in other case and spacing (20%),
//! one word replaced (40%), one word deleted (20%), one word appended (20%). The Jaccard similarity
//! of a planted pair (5-word shingles) is 1 for copies, ≈ (L−9)/(L+1) for a replacement in an
//! L-word document (0.68 at 30 words, 0.88 at 80), ≈ (L−9)/L for a deletion and ≈ (L−4)/(L−3)
//! for an append; so some planted pairs fall below a 0.8 threshold by construction.

use crate::util::SplitMix64;

/// Distinct words in the vocabulary.
pub const VOCABULARY: usize = 5000;
/// Share of documents that are planted near copies of an earlier one.
pub const PLANTED_FRACTION: f64 = 0.05;

/// The documents and the planted pairs `(original, copy)`, `original < copy`.
#[derive(Debug, Clone)]
pub struct SyntheticCorpus {
    pub texts: Vec<String>,
    pub planted: Vec<(usize, usize)>,
}

/// Word `i` of the vocabulary: `i` in base 40, one consonant-vowel syllable per digit. All
/// syllables have two letters, so distinct indices give distinct words, and frequent (low)
/// indices give short words, as in real text.
fn word(mut i: usize) -> String {
    const CONSONANTS: &[u8] = b"bdfgklmnpr";
    const VOWELS: &[u8] = b"aeio";
    let mut syllables = Vec::new();
    loop {
        let d = i % 40;
        syllables.push([CONSONANTS[d / 4], VOWELS[d % 4]]);
        i /= 40;
        if i == 0 {
            break;
        }
    }
    syllables.iter().rev().flat_map(|s| s.iter().map(|&b| b as char)).collect()
}

/// A uniform draw in [0, 1) with 53 random bits.
fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Draws word indices with Zipf weights 1/(rank + 1), by binary search in the cumulative weights.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (0..n)
            .map(|r| {
                total += 1.0 / (r + 1) as f64;
                total
            })
            .collect();
        cumulative.iter_mut().for_each(|c| *c /= total);
        Self { cumulative }
    }

    fn draw(&self, rng: &mut SplitMix64) -> usize {
        let u = uniform(rng);
        self.cumulative.partition_point(|&c| c <= u).min(self.cumulative.len() - 1)
    }
}

/// `n` documents from `seed`; see the module docs for what is planted.
pub fn synthetic_corpus(n: usize, seed: u64) -> SyntheticCorpus {
    let mut rng = SplitMix64::new(seed);
    let vocab: Vec<String> = (0..VOCABULARY).map(word).collect();
    let zipf = Zipf::new(VOCABULARY);
    let mut texts: Vec<String> = Vec::with_capacity(n);
    let mut originals: Vec<usize> = Vec::new();
    let mut planted = Vec::new();
    for i in 0..n {
        if !originals.is_empty() && uniform(&mut rng) < PLANTED_FRACTION {
            let j = originals[rng.below(originals.len())];
            let mut words: Vec<&str> = texts[j].split(' ').collect();
            let text = match rng.below(10) {
                0 | 1 => {
                    // Same normal form: other case, other spacing.
                    let spaced = words.join(if rng.below(2) == 0 { "  " } else { " \n" });
                    if rng.below(2) == 0 { spaced.to_uppercase() } else { spaced }
                }
                2..=5 => {
                    let k = rng.below(words.len());
                    words[k] = &vocab[zipf.draw(&mut rng)];
                    words.join(" ")
                }
                6 | 7 => {
                    words.remove(rng.below(words.len()));
                    words.join(" ")
                }
                _ => {
                    words.push(&vocab[zipf.draw(&mut rng)]);
                    words.join(" ")
                }
            };
            texts.push(text);
            planted.push((j, i));
        } else {
            let len = 30 + rng.below(51);
            let mut text = String::new();
            for k in 0..len {
                let w = &vocab[zipf.draw(&mut rng)];
                if k == 0 {
                    // Capitalised first word and a full stop, so case and punctuation occur.
                    text.push_str(&w[..1].to_uppercase());
                    text.push_str(&w[1..]);
                } else {
                    text.push(' ');
                    text.push_str(w);
                }
            }
            text.push('.');
            originals.push(i);
            texts.push(text);
        }
    }
    SyntheticCorpus { texts, planted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_words_are_distinct() {
        let mut words: Vec<String> = (0..VOCABULARY).map(word).collect();
        // 41 = 1·40 + 1: syllable 1 ("be") twice.
        assert_eq!((word(0).as_str(), word(41).as_str()), ("ba", "bebe"));
        words.sort();
        words.dedup();
        assert_eq!(words.len(), VOCABULARY);
    }

    #[test]
    fn corpus_is_deterministic_with_planted_pairs() {
        let a = synthetic_corpus(4000, 1);
        let b = synthetic_corpus(4000, 1);
        assert_eq!(a.texts, b.texts);
        assert_eq!(a.planted, b.planted);
        assert_ne!(synthetic_corpus(4000, 2).texts, a.texts);
        // About 5% planted: 200 expected, standard deviation 14.
        assert!((140..260).contains(&a.planted.len()), "{} planted", a.planted.len());
        assert!(a.planted.iter().all(|&(j, i)| j < i && i < 4000));
        for t in &a.texts {
            let words = t.split_whitespace().count();
            assert!((29..=81).contains(&words), "{words} words: {t}");
        }
    }
}
