//! Exact duplicates: texts whose [`normalize`]d forms are equal.
//!
//! Texts are grouped by [`content_hash`] first (a sort of n hashes), and only texts that share a
//! hash are normalized again and compared, so a hash collision never merges two different texts
//! and memory stays at a few words per text.

use std::collections::HashMap;

use crate::curate::normalize::{content_hash, normalize};
use crate::curate::parallel::par_map;

/// For each text, the index of the first text with the same normal form (its own index when it
/// is the first). Texts that normalize to nothing (empty or whitespace only) map to themselves:
/// they are junk ([`Junk::Empty`](crate::curate::Junk::Empty)), not duplicates of each other.
///
/// `exact_duplicates(&["A  b", "x", "a b"]) == [0, 1, 0]`.
pub fn exact_duplicates(texts: &[&str]) -> Vec<usize> {
    // None for blank texts, so they never group.
    let hashes: Vec<Option<u64>> = par_map(texts.len(), |i| {
        let n = normalize(texts[i]);
        (!n.is_empty()).then(|| content_hash(&n))
    });
    let mut order: Vec<(u64, usize)> = hashes.iter().enumerate().filter_map(|(i, h)| h.map(|h| (h, i))).collect();
    order.sort_unstable();

    let mut first: Vec<usize> = (0..texts.len()).collect();
    for run in order.chunk_by(|x, y| x.0 == y.0) {
        if run.len() < 2 {
            continue;
        }
        // Indices ascend within a run (the sort's second key), so the first text seen with a
        // given normal form is the lowest index.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for &(_, i) in run {
            first[i] = *seen.entry(normalize(texts[i])).or_insert(i);
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_case_and_whitespace_duplicates_are_found() {
        let texts = [
            "The quick brown fox.",
            "Something else entirely.",
            "  the QUICK\tbrown   fox. ",
            "The quick brown fox",    // no full stop: not the same text
            "THE QUICK BROWN FOX.\n", // a third copy
            "something  ELSE entirely.",
        ];
        assert_eq!(exact_duplicates(&texts), vec![0, 1, 0, 3, 0, 1]);
    }

    #[test]
    fn blank_texts_are_not_duplicates_of_each_other() {
        assert_eq!(exact_duplicates(&["", " ", "a", "\n\t", "A"]), vec![0, 1, 2, 3, 2]);
    }

    #[test]
    fn many_copies_stay_linear() {
        // 20k copies of one text and 20k distinct ones: one group, the rest singletons.
        let distinct: Vec<String> = (0..20_000).map(|i| format!("text number {i}")).collect();
        let mut texts: Vec<&str> = Vec::new();
        for d in &distinct {
            texts.push("Same text every time");
            texts.push(d);
        }
        let first = exact_duplicates(&texts);
        for (i, &f) in first.iter().enumerate() {
            assert_eq!(f, if i % 2 == 0 { 0 } else { i }, "text {i}");
        }
    }
}
