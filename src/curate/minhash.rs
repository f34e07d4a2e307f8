//! Near duplicates by MinHash and LSH.
//!
//! A text's features are its word shingles: the overlapping runs of `shingle` words of its
//! [`normalize`]d form (a text shorter than that is one shingle; an empty one has none). Two
//! texts are near duplicates when the Jaccard similarity of their shingle sets, |A∩B| / |A∪B|, is
//! at least the threshold.
//!
//! 1. Exact duplicates are grouped first ([`exact_duplicates`]); only the first text of each
//!    group goes on. The others are reported as `(first, copy)` pairs with Jaccard 1.0: a star
//!    of k−1 pairs per group instead of k(k−1)/2, enough for [`clusters`](crate::curate::clusters)
//!    to put the whole group in one cluster, and 10k copies of one text cost 10k pairs.
//! 2. Each remaining text gets a MinHash signature: for `num_perm` universal hash functions
//!    `h(x) = (a·x + b) mod (2⁶¹ − 1)`, the smallest value over its shingles, kept as its low 32
//!    bits. Two signatures agree in one position with probability ≈ Jaccard.
//! 3. LSH ([`lsh_params`]) turns the signatures into candidate pairs.
//! 4. Every candidate is checked against the exact Jaccard of the two shingle sets (64-bit shingle
//!    hashes, kept sorted per text, about 8 bytes per word of text). The signature estimate would
//!    save that memory but is off by ±0.035 (one standard deviation at J = 0.8, 128 permutations),
//!    which would let pairs at 0.77 in and keep pairs at 0.83 out; the sets cost memory linear in
//!    the corpus, and the check is exact.
//!
//! So the reported pairs have Jaccard ≥ threshold exactly; a pair above the threshold can be
//! missed only by LSH, with the probability `lsh_params` documents (about 13% of pairs right at
//! 0.8 with the defaults, 2.5% at 0.85, less above).
//!
//! Cost: MinHash dominates, about 15 µs per 50-word text on one core (100k short documents in
//! 1.5 s, `examples/near_dup_scale.rs`), memory linear in the corpus. What is not linear is the
//! output itself: a family of m distinct but near-identical texts (a template with a changing
//! order number) yields all m(m−1)/2 pairs; 4,000 such texts give 8M pairs in 4.4 s and 0.5 GB.
//! Only identical texts are collapsed into a star.

use crate::curate::exact::exact_duplicates;
use crate::curate::hash::{fnv1a64, mix64};
use crate::curate::lsh::{band_key, candidate_pairs, lsh_params};
use crate::curate::normalize::normalize;
use crate::curate::parallel::par_map;
use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// The Mersenne prime 2⁶¹ − 1, the modulus of the universal hash functions: reduction modulo it
/// is a shift and an add, and it is larger than any 32-bit value a signature keeps.
const MERSENNE_61: u64 = (1 << 61) - 1;

/// The largest `num_perm` accepted. Beyond it a signature (4 bytes per permutation) is larger
/// than the shingle set it summarises for typical documents, and choosing bands × rows (a search
/// over every split of `num_perm`) starts to take seconds.
pub const MAX_NUM_PERM: usize = 4096;

/// How near duplicates are found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NearDupConfig {
    /// Words per shingle (≥ 1). Five is common for documents; shorter texts may want three.
    pub shingle: usize,
    /// Jaccard similarity of the shingle sets at or above which two texts are near duplicates,
    /// in (0, 1].
    pub threshold: f64,
    /// MinHash permutations, 2 to [`MAX_NUM_PERM`]. More make LSH's S-curve steeper.
    pub num_perm: usize,
    /// Seeds the hash functions; same seed, same signatures and pairs.
    pub seed: u64,
}

impl Default for NearDupConfig {
    fn default() -> Self {
        Self { shingle: 5, threshold: 0.8, num_perm: 128, seed: 1 }
    }
}

impl NearDupConfig {
    /// Errors name the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "near duplicates";
        if self.shingle == 0 {
            return Err(Error::invalid(OP, "shingle must be at least 1 word, got 0"));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(Error::invalid(OP, format!("threshold must be in (0, 1], got {}", self.threshold)));
        }
        if !(2..=MAX_NUM_PERM).contains(&self.num_perm) {
            return Err(Error::invalid(
                OP,
                format!("num_perm must be between 2 and {MAX_NUM_PERM}, got {}", self.num_perm),
            ));
        }
        Ok(())
    }
}

/// Two near-duplicate texts by index (`a < b`) and the Jaccard similarity of their shingle sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NearPair {
    pub a: usize,
    pub b: usize,
    pub jaccard: f64,
}

/// The sorted, distinct 64-bit hashes of a normalized text's word shingles of `k` words; the
/// whole text is one shingle when it has fewer than `k` words, and an empty text has none.
fn shingle_set(normalized: &str, k: usize) -> Vec<u64> {
    if normalized.is_empty() {
        return Vec::new();
    }
    // A normalized text has single spaces and no ends to trim, so no word is empty.
    let words: Vec<u64> = normalized.split(' ').map(|w| mix64(fnv1a64(w.as_bytes()))).collect();
    const SHINGLE_SEED: u64 = 0x6b69_6c6e_7368_6e67; // any fixed value; "kilnshng"
    let mut set: Vec<u64> =
        words.windows(k.min(words.len())).map(|w| w.iter().fold(SHINGLE_SEED, |h, &x| mix64(h ^ x))).collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// The Jaccard similarity of two sorted, distinct sets.
fn set_jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - common;
    if union == 0 { 0.0 } else { common as f64 / union as f64 }
}

/// The exact Jaccard similarity of two texts' shingle sets of `shingle` words, after
/// normalization: what [`near_duplicate_pairs`] compares with the threshold. Two empty texts
/// give 0 (they are never near duplicates).
pub fn jaccard(a: &str, b: &str, shingle: usize) -> f64 {
    let k = shingle.max(1);
    set_jaccard(&shingle_set(&normalize(a), k), &shingle_set(&normalize(b), k))
}

/// `num_perm` universal hash functions `(a·x + b) mod p`, `p = 2⁶¹ − 1`, `a ∈ [1, p)`,
/// `b ∈ [0, p)`, drawn from SplitMix64(seed).
struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHasher {
    fn new(num_perm: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut a = Vec::with_capacity(num_perm);
        let mut b = Vec::with_capacity(num_perm);
        for _ in 0..num_perm {
            a.push(1 + rng.next_u64() % (MERSENNE_61 - 1));
            b.push(rng.next_u64() % MERSENNE_61);
        }
        Self { a, b }
    }

    /// The signature of a non-empty shingle set: per hash function, the smallest of its low 32
    /// bits over the shingles (as datasketch keeps them; halves the memory of 64-bit values, and
    /// two distinct shingles tie by chance with probability 2⁻³², far below the estimate's noise).
    fn signature(&self, shingles: &[u64]) -> Vec<u32> {
        let mut sig = vec![u32::MAX; self.a.len()];
        for &s in shingles {
            let x = reduce(s);
            for ((m, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                let v = mul_add_mod(a, x, b) as u32;
                if v < *m {
                    *m = v;
                }
            }
        }
        sig
    }
}

/// `x mod p` for any u64 (x < 2⁶⁴ = 8p + 8, so one fold and one subtraction suffice).
fn reduce(x: u64) -> u64 {
    let r = (x & MERSENNE_61) + (x >> 61);
    if r >= MERSENNE_61 { r - MERSENNE_61 } else { r }
}

/// `(a·x + b) mod p` for `a, x, b < p`: the product is below 2¹²², and since 2⁶¹ ≡ 1 (mod p) its
/// high part (from bit 61) adds onto its low 61 bits.
fn mul_add_mod(a: u64, x: u64, b: u64) -> u64 {
    let t = a as u128 * x as u128 + b as u128;
    reduce((t as u64 & MERSENNE_61) + (t >> 61) as u64)
}

/// MinHash signatures (`cfg.num_perm` values each) of the texts, `None` for a text that
/// normalizes to nothing. Computed on all cores; the result does not depend on their number.
pub fn signatures(texts: &[&str], cfg: &NearDupConfig) -> Result<Vec<Option<Vec<u32>>>> {
    cfg.validate()?;
    let hasher = MinHasher::new(cfg.num_perm, cfg.seed);
    Ok(par_map(texts.len(), |i| {
        let shingles = shingle_set(&normalize(texts[i]), cfg.shingle);
        (!shingles.is_empty()).then(|| hasher.signature(&shingles))
    }))
}

/// What the LSH stage keeps of one distinct text: its shingle set for the exact check and its
/// band keys for bucketing (the signature itself is dropped once hashed into bands).
struct Sketch {
    shingles: Vec<u64>,
    keys: Box<[u64]>,
}

/// All pairs of texts whose shingle sets have Jaccard ≥ `cfg.threshold`, sorted by `(a, b)`,
/// found by MinHash LSH and checked exactly (see the module docs). Texts equal after
/// normalization appear only as `(first, copy)` pairs with Jaccard 1.0, not pairwise; empty
/// texts never appear.
pub fn near_duplicate_pairs(texts: &[&str], cfg: &NearDupConfig) -> Result<Vec<NearPair>> {
    cfg.validate()?;
    if texts.len() > u32::MAX as usize {
        return Err(Error::invalid("near duplicates", format!("at most 2^32 - 1 texts, got {}", texts.len())));
    }
    let first = exact_duplicates(texts);
    let mut pairs: Vec<NearPair> = first
        .iter()
        .enumerate()
        .filter(|&(i, &f)| f != i)
        .map(|(i, &f)| NearPair { a: f, b: i, jaccard: 1.0 })
        .collect();

    // Ascending, so a pair of distinct texts (i, j) with i < j maps to reps[i] < reps[j].
    let reps: Vec<usize> = first.iter().enumerate().filter(|&(i, &f)| f == i).map(|(i, _)| i).collect();
    let (bands, rows) = lsh_params(cfg.threshold, cfg.num_perm);
    let hasher = MinHasher::new(cfg.num_perm, cfg.seed);
    let sketches: Vec<Option<Sketch>> = par_map(reps.len(), |i| {
        let shingles = shingle_set(&normalize(texts[reps[i]]), cfg.shingle);
        if shingles.is_empty() {
            return None;
        }
        let sig = hasher.signature(&shingles);
        let keys = sig.chunks_exact(rows).take(bands).map(band_key).collect();
        Some(Sketch { shingles, keys })
    });
    let keys: Vec<Option<&[u64]>> = sketches.iter().map(|s| s.as_ref().map(|s| &*s.keys)).collect();
    let candidates = candidate_pairs(&keys, bands);

    // Checked in chunks that keep only the pairs that pass, so a mostly rejected candidate list
    // costs no result slot per candidate.
    const CHECK_CHUNK: usize = 1024;
    let checked: Vec<Vec<NearPair>> = par_map(candidates.len().div_ceil(CHECK_CHUNK), |c| {
        let chunk = &candidates[c * CHECK_CHUNK..((c + 1) * CHECK_CHUNK).min(candidates.len())];
        chunk
            .iter()
            .filter_map(|&(i, j)| {
                let (i, j) = (i as usize, j as usize);
                let (x, y) = (sketches[i].as_ref()?, sketches[j].as_ref()?);
                let jaccard = set_jaccard(&x.shingles, &y.shingles);
                (jaccard >= cfg.threshold).then_some(NearPair { a: reps[i], b: reps[j], jaccard })
            })
            .collect()
    });
    pairs.extend(checked.into_iter().flatten());
    pairs.sort_unstable_by_key(|p| (p.a, p.b));
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curate::clusters;

    /// `n` words drawn from a 20k-word vocabulary, so two texts drawn apart share almost no
    /// 5-word shingle.
    fn words(n: usize, rng: &mut SplitMix64) -> Vec<String> {
        (0..n).map(|_| format!("w{}", rng.below(20_000))).collect()
    }

    fn pairs_of(found: &[NearPair]) -> Vec<(usize, usize)> {
        found.iter().map(|p| (p.a, p.b)).collect()
    }

    fn cfg(threshold: f64) -> NearDupConfig {
        NearDupConfig { threshold, ..NearDupConfig::default() }
    }

    #[test]
    fn a_three_word_edit_in_100_words_is_found_at_0_8() {
        let mut rng = SplitMix64::new(7);
        let base = words(100, &mut rng);
        // A replaced three-word phrase touches 7 of the 96 five-word shingles:
        // J = 89 / 103 = 0.864.
        let mut phrase = base.clone();
        phrase[50..53].clone_from_slice(&["alpha".into(), "beta".into(), "gamma".into()]);
        // Three scattered words touch 15: J = 81 / 111 = 0.730, below 0.8 with 5-word shingles.
        let mut scattered = base.clone();
        for (k, i) in [20, 50, 80].into_iter().enumerate() {
            scattered[i] = format!("changed{k}");
        }
        let texts = [base.join(" "), words(100, &mut rng).join(" "), phrase.join(" "), scattered.join(" ")];
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        assert!((jaccard(texts[0], texts[2], 5) - 89.0 / 103.0).abs() < 1e-12);
        assert!((jaccard(texts[0], texts[3], 5) - 81.0 / 111.0).abs() < 1e-12);

        let found = near_duplicate_pairs(&texts, &cfg(0.8)).unwrap();
        assert_eq!(pairs_of(&found), vec![(0, 2)]);
        assert!((found[0].jaccard - 89.0 / 103.0).abs() < 1e-12);
        // At 0.7 the scattered edit joins. The two edits share 96 - (5 + 7 + 5) = 79 shingles:
        // J = 79 / 113 = 0.699, just below, so (2, 3) stays out.
        assert!((jaccard(texts[2], texts[3], 5) - 79.0 / 113.0).abs() < 1e-12);
        assert_eq!(pairs_of(&near_duplicate_pairs(&texts, &cfg(0.7)).unwrap()), vec![(0, 2), (0, 3)]);
    }

    #[test]
    fn unrelated_texts_are_not_pairs() {
        let mut rng = SplitMix64::new(11);
        let texts: Vec<String> = (0..300).map(|i| words(30 + i % 50, &mut rng).join(" ")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        assert_eq!(near_duplicate_pairs(&texts, &cfg(0.8)).unwrap(), vec![]);
        assert_eq!(near_duplicate_pairs(&texts, &cfg(0.3)).unwrap(), vec![]);
    }

    #[test]
    fn a_half_similar_pair_is_found_only_below_its_similarity() {
        let mut rng = SplitMix64::new(3);
        let a = words(100, &mut rng);
        // The first 67 words shared: 63 common shingles of 96 each, J = 63 / 129 = 0.488.
        let mut b = a[..67].to_vec();
        b.extend(words(33, &mut rng));
        let texts = [a.join(" "), b.join(" ")];
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let j = jaccard(texts[0], texts[1], 5);
        assert!((j - 63.0 / 129.0).abs() < 1e-12, "J = {j}");
        assert_eq!(near_duplicate_pairs(&texts, &cfg(0.8)).unwrap(), vec![]);
        assert_eq!(near_duplicate_pairs(&texts, &cfg(0.5)).unwrap(), vec![]);
        let found = near_duplicate_pairs(&texts, &cfg(0.4)).unwrap();
        assert_eq!(found, vec![NearPair { a: 0, b: 1, jaccard: j }]);
    }

    #[test]
    fn exact_duplicates_are_a_star_of_pairs() {
        let mut texts: Vec<String> = Vec::new();
        for i in 0..10_000 {
            // Case and whitespace vary; the normal form does not.
            texts.push(if i % 2 == 0 { "The same  text, again.".into() } else { "the SAME text,\nagain.".into() });
        }
        texts.push("Something unrelated".into());
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let found = near_duplicate_pairs(&texts, &cfg(0.8)).unwrap();
        assert_eq!(found.len(), 9_999, "one pair per copy, not one per pair of copies");
        assert!(found.iter().enumerate().all(|(k, p)| p.a == 0 && p.b == k + 1 && p.jaccard == 1.0));
        let ids = clusters(texts.len(), &found);
        assert!(ids[..10_000].iter().all(|&c| c == 0));
        assert_eq!(ids[10_000], 10_000);
    }

    #[test]
    fn copies_of_near_duplicates_share_one_cluster() {
        // 0 and 2 are near duplicates; 1 and 3 are exact copies of them.
        let mut rng = SplitMix64::new(5);
        let a = words(60, &mut rng);
        let mut b = a.clone();
        b.push("extra".into()); // J = 56 / 57
        let texts = [a.join(" "), a.join(" ").to_uppercase(), b.join(" "), b.join("  "), words(60, &mut rng).join(" ")];
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let found = near_duplicate_pairs(&texts, &cfg(0.8)).unwrap();
        assert_eq!(pairs_of(&found), vec![(0, 1), (0, 2), (2, 3)]);
        assert_eq!(clusters(texts.len(), &found), vec![0, 0, 0, 0, 4]);
    }

    #[test]
    fn empty_and_short_texts() {
        let texts = ["", "  \n", "Hello there", "hello  THERE", "hello there friend", "", "x"];
        let found = near_duplicate_pairs(&texts, &cfg(0.8)).unwrap();
        // Blank texts never pair; "hello there friend" is one 3-word shingle, not a superset.
        assert_eq!(found, vec![NearPair { a: 2, b: 3, jaccard: 1.0 }]);
        assert_eq!(jaccard("", "", 5), 0.0);
        assert_eq!(jaccard("a b c", "A  B C", 5), 1.0);
        assert_eq!(jaccard("a b c", "a b c d", 5), 0.0);
        // With 1-word shingles the two share 3 of 4 words.
        assert_eq!(jaccard("a b c", "a b c d", 1), 0.75);
        let sigs = signatures(&texts, &NearDupConfig::default()).unwrap();
        assert!(sigs[0].is_none() && sigs[1].is_none() && sigs[5].is_none());
        assert_eq!(sigs[2].as_ref().map(Vec::len), Some(128));
        assert_eq!(sigs[2], sigs[3]);
    }

    #[test]
    fn same_seed_same_result() {
        let mut rng = SplitMix64::new(9);
        let mut texts: Vec<String> = Vec::new();
        for i in 0..2000 {
            if i % 10 == 9 {
                // Near copy of the previous text: one word appended.
                let prev: String = texts[i - 1].clone();
                texts.push(format!("{prev} appended"));
            } else {
                texts.push(words(40, &mut rng).join(" "));
            }
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let first = near_duplicate_pairs(&texts, &cfg(0.8)).unwrap();
        assert_eq!(first.len(), 200, "every planted pair (J = 36/37) is found");
        assert_eq!(near_duplicate_pairs(&texts, &cfg(0.8)).unwrap(), first);
        let sigs = signatures(&texts, &cfg(0.8)).unwrap();
        assert_eq!(signatures(&texts, &cfg(0.8)).unwrap(), sigs);
        let other = signatures(&texts, &NearDupConfig { seed: 2, ..cfg(0.8) }).unwrap();
        assert_ne!(other[0], sigs[0], "the seed changes the hash functions");
    }

    #[test]
    fn signature_agreement_estimates_jaccard() {
        let mut rng = SplitMix64::new(13);
        let a = words(200, &mut rng);
        let mut b = a[..140].to_vec();
        b.extend(words(60, &mut rng));
        let (a, b) = (a.join(" "), b.join(" "));
        let j = jaccard(&a, &b, 5); // 136 / 256 = 0.531
        let cfg = NearDupConfig { num_perm: 2048, ..NearDupConfig::default() };
        let sigs = signatures(&[&a, &b], &cfg).unwrap();
        let (x, y) = (sigs[0].as_ref().unwrap(), sigs[1].as_ref().unwrap());
        let agree = x.iter().zip(y).filter(|(p, q)| p == q).count() as f64 / x.len() as f64;
        // Standard deviation sqrt(J(1-J)/2048) = 0.011; allow four.
        assert!((agree - j).abs() < 0.045, "agreement {agree:.3} vs Jaccard {j:.3}");
    }

    #[test]
    fn mersenne_arithmetic_matches_u128_modulo() {
        let mut rng = SplitMix64::new(17);
        let p = MERSENNE_61 as u128;
        for x in [0, 1, MERSENNE_61 - 1, MERSENNE_61, MERSENNE_61 + 1, u64::MAX] {
            assert_eq!(reduce(x) as u128, x as u128 % p, "reduce({x})");
        }
        for _ in 0..10_000 {
            let (a, x, b) = (rng.next_u64() % MERSENNE_61, reduce(rng.next_u64()), rng.next_u64() % MERSENNE_61);
            assert_eq!(mul_add_mod(a, x, b) as u128, (a as u128 * x as u128 + b as u128) % p);
        }
        let top = MERSENNE_61 - 1;
        assert_eq!(mul_add_mod(top, top, top) as u128, (top as u128 * top as u128 + top as u128) % p);
    }

    #[test]
    fn bad_configs_are_refused_with_the_field_named() {
        let texts = ["a b c"];
        let cases = [
            (NearDupConfig { shingle: 0, ..Default::default() }, "shingle must be at least 1"),
            (NearDupConfig { threshold: 0.0, ..Default::default() }, "threshold must be in (0, 1], got 0"),
            (NearDupConfig { threshold: 1.5, ..Default::default() }, "threshold must be in (0, 1], got 1.5"),
            (NearDupConfig { threshold: f64::NAN, ..Default::default() }, "threshold must be in (0, 1], got NaN"),
            (NearDupConfig { num_perm: 1, ..Default::default() }, "num_perm must be between 2 and 4096, got 1"),
            (NearDupConfig { num_perm: 5000, ..Default::default() }, "num_perm must be between 2 and 4096, got 5000"),
        ];
        for (cfg, want) in cases {
            let err = near_duplicate_pairs(&texts, &cfg).unwrap_err().to_string();
            assert!(err.contains(want), "{cfg:?}: {err}");
            assert!(signatures(&texts, &cfg).is_err());
        }
        assert!(NearDupConfig::default().validate().is_ok());
        assert!(NearDupConfig { threshold: 1.0, num_perm: 2, shingle: 1, seed: 0 }.validate().is_ok());
    }
}
