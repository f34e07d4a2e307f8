//! Counterfactual inputs: the same text with one term swapped for its counterpart (a female
//! first name for a male one, "he" for "she", ...). A model whose prediction moves under such a
//! swap uses the term itself.
//!
//! Swaps are whole-word (the characters on either side of a match are not letters or digits) and
//! case-preserving (`mary` → `john`, `Mary` → `John`, `MARY` → `JOHN`); both directions of a pair
//! are swapped at once, so `he said she` becomes `she said he`. Name pairs match only capitalised
//! occurrences (`Will`, not the verb `will` nor the markup `META`); user pairs match any case.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::report::{CounterfactualExample, CounterfactualReport, CounterfactualRow};
use crate::data::{for_each_line, line_error};
use crate::error::{Error, Result};

/// Two terms that stand for each other.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TermPair {
    pub a: String,
    pub b: String,
    /// What `a → b` means, e.g. `female→male` for names; empty for user pairs.
    pub direction: String,
    /// Match only occurrences that start with a capital letter.
    #[serde(skip)]
    pub capitalized_only: bool,
}

/// Reads `--swap-terms FILE`: one pair per line, the two terms separated by a tab or a comma;
/// blank lines and lines starting with `#` are skipped.
pub fn read_pairs(path: &Path) -> Result<Vec<TermPair>> {
    let mut pairs = Vec::new();
    for_each_line(path, |line_no, line| {
        if line.starts_with('#') {
            return Ok(());
        }
        let sep = if line.contains('\t') { '\t' } else { ',' };
        let parts: Vec<&str> = line.split(sep).map(str::trim).collect();
        match parts.as_slice() {
            [a, b] if !a.is_empty() && !b.is_empty() && a.to_lowercase() != b.to_lowercase() => {
                pairs.push(TermPair {
                    a: a.to_string(),
                    b: b.to_string(),
                    direction: String::new(),
                    capitalized_only: false,
                });
                Ok(())
            }
            _ => Err(line_error(
                path,
                line_no,
                format!("expected two different terms separated by a tab or a comma, e.g. `he,she`; found {line:?}"),
            )),
        }
    })?;
    if pairs.is_empty() {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            message: "no term pairs; expected lines like `he,she`".into(),
        });
    }
    Ok(pairs)
}

/// Reads a names file (one name per line, as the npm first-name lists ship).
pub fn read_names(path: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for_each_line(path, |_, line| {
        names.push(line.to_string());
        Ok(())
    })?;
    Ok(names)
}

/// Pairs every female name with a male one: names on both lists (Abbe, Jean, ...) are dropped,
/// both lists sorted, and the i-th of F female names goes with the ⌊i·M/F⌋-th of M male names,
/// so each list is walked alphabetically side by side (Aaren ↔ Aaron) and every name is used.
pub fn name_pairs(female: &[String], male: &[String]) -> Vec<TermPair> {
    let key = |s: &String| s.to_lowercase();
    let in_male: std::collections::HashSet<String> = male.iter().map(key).collect();
    let in_female: std::collections::HashSet<String> = female.iter().map(key).collect();
    let mut f: Vec<&String> = female.iter().filter(|n| !in_male.contains(&key(n))).collect();
    let mut m: Vec<&String> = male.iter().filter(|n| !in_female.contains(&key(n))).collect();
    f.sort();
    f.dedup();
    m.sort();
    m.dedup();
    if m.is_empty() {
        return Vec::new();
    }
    f.iter()
        .enumerate()
        .map(|(i, name)| TermPair {
            a: name.to_string(),
            b: m[i * m.len() / f.len()].to_string(),
            direction: "female→male".into(),
            capitalized_only: true,
        })
        .collect()
}

/// Finds which pairs occur in texts, quickly for thousands of pairs: terms are indexed by their
/// first word, so a text costs one lookup per word.
pub struct PairIndex<'a> {
    pub pairs: &'a [TermPair],
    /// Lowercased first word → (pair, side: false for `a`, true for `b`).
    by_first_word: HashMap<String, Vec<(usize, bool)>>,
}

/// Where a pair's term occurs in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    pub pair: usize,
    /// Found `b` (so it becomes `a`) rather than `a`.
    pub reversed: bool,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
}

/// Byte ranges of the words of `text` (runs of letters and digits).
fn words(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = None;
    text.char_indices().chain(std::iter::once((text.len(), ' '))).filter_map(move |(i, c)| {
        match (start, is_word_char(c)) {
            (None, true) => {
                start = Some(i);
                None
            }
            (Some(s), false) => {
                start = None;
                Some((s, i))
            }
            _ => None,
        }
    })
}

/// Whether `term` occurs at byte `at` of `text` as whole words (case-insensitive), and its end.
fn match_at(text: &str, at: usize, term: &str, capitalized_only: bool) -> Option<usize> {
    let mut rest = text[at..].char_indices();
    let mut end = at;
    for tc in term.chars() {
        let (i, c) = rest.next()?;
        if !c.to_lowercase().eq(tc.to_lowercase()) {
            return None;
        }
        end = at + i + c.len_utf8();
    }
    if text[end..].chars().next().is_some_and(is_word_char) {
        return None;
    }
    if capitalized_only && !is_capitalized(&text[at..end]) {
        return None;
    }
    Some(end)
}

/// An upper-case letter followed by lower-case ones only (`Mary`, not `MARY` or `mary`).
fn is_capitalized(word: &str) -> bool {
    let mut letters = word.chars().filter(|c| c.is_alphabetic());
    letters.next().is_some_and(char::is_uppercase) && letters.all(char::is_lowercase)
}

/// Drops the pairs with a term that `texts` also use as a lower-case word: a name that is
/// also a word of the data (`will`, `may`, `see`, `august`) starts many sentences, where
/// swapping it is no counterfactual.
pub fn drop_common_words(pairs: Vec<TermPair>, texts: &[&str]) -> (Vec<TermPair>, usize) {
    let mut lower: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for t in texts {
        for (s, e) in words(t) {
            let w = &t[s..e];
            if w.chars().all(|c| !c.is_uppercase()) {
                lower.insert(w);
            }
        }
    }
    let before = pairs.len();
    let kept: Vec<TermPair> = pairs
        .into_iter()
        .filter(|p| !lower.contains(p.a.to_lowercase().as_str()) && !lower.contains(p.b.to_lowercase().as_str()))
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// `replacement` in the case pattern of `found`: all lower, ALL UPPER, Capitalised, or as given.
fn with_case_of(found: &str, replacement: &str) -> String {
    let letters: Vec<char> = found.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.is_empty() {
        return replacement.to_string();
    }
    if letters.iter().all(|c| c.is_lowercase()) {
        replacement.to_lowercase()
    } else if letters.len() > 1 && letters.iter().all(|c| c.is_uppercase()) {
        replacement.to_uppercase()
    } else if found.split_whitespace().all(is_capitalized) {
        // Mary → John, New York → Los Angeles.
        let capitalize = |w: &str| {
            let mut chars = w.chars();
            chars
                .next()
                .map_or_else(String::new, |f| f.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect())
        };
        replacement.split(' ').map(capitalize).collect::<Vec<_>>().join(" ")
    } else {
        replacement.to_string()
    }
}

impl<'a> PairIndex<'a> {
    pub fn new(pairs: &'a [TermPair]) -> Self {
        let mut by_first_word: HashMap<String, Vec<(usize, bool)>> = HashMap::new();
        for (i, p) in pairs.iter().enumerate() {
            for (term, reversed) in [(&p.a, false), (&p.b, true)] {
                let first = term.split(|c: char| !is_word_char(c)).next().unwrap_or("").to_lowercase();
                let entry = by_first_word.entry(first).or_default();
                // A male name shared by several pairs is swapped by the first of them only.
                if !(reversed && entry.iter().any(|&(_, r)| r)) {
                    entry.push((i, reversed));
                }
            }
        }
        PairIndex { pairs, by_first_word }
    }

    /// The pairs with a term in `text[..visible]` (the part the model reads), first occurrence
    /// first, each pair once.
    pub fn find(&self, text: &str, visible: usize) -> Vec<Match> {
        let mut found: Vec<Match> = Vec::new();
        for (s, e) in words(text) {
            if s >= visible {
                break;
            }
            let Some(cands) = self.by_first_word.get(&text[s..e].to_lowercase()) else { continue };
            for &(pair, reversed) in cands {
                let p = &self.pairs[pair];
                let term = if reversed { &p.b } else { &p.a };
                if match_at(text, s, term, p.capitalized_only).is_some() && !found.iter().any(|m| m.pair == pair) {
                    found.push(Match { pair, reversed });
                }
            }
        }
        found
    }

    /// `text` with every whole-word occurrence of the pair's `a` replaced by `b` and of `b` by
    /// `a`, case kept.
    pub fn swap(&self, text: &str, pair: usize) -> String {
        let p = &self.pairs[pair];
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        for (s, _) in words(text) {
            if s < copied {
                continue;
            }
            for (from, to) in [(&p.a, &p.b), (&p.b, &p.a)] {
                if let Some(end) = match_at(text, s, from, p.capitalized_only) {
                    out.push_str(&text[copied..s]);
                    out.push_str(&with_case_of(&text[s..end], to));
                    copied = end;
                    break;
                }
            }
        }
        out.push_str(&text[copied..]);
        out
    }
}

/// One swapped copy of an example.
#[derive(Clone, Debug)]
pub struct Variant {
    pub example: usize,
    pub pair: usize,
    pub reversed: bool,
    pub text: String,
}

/// The swapped variants of `texts`: for each text, each pair found in its first
/// `visible(text)` bytes (up to `max_per_example` pairs, first occurrences first) gives one
/// variant with that pair swapped everywhere. Also returns how many texts had a term.
pub fn variants(
    texts: &[&str],
    visible: &dyn Fn(&str) -> usize,
    index: &PairIndex,
    max_per_example: usize,
) -> (Vec<Variant>, usize) {
    let mut out = Vec::new();
    let mut with_terms = 0;
    for (example, text) in texts.iter().enumerate() {
        let found = index.find(text, visible(text));
        with_terms += !found.is_empty() as usize;
        for m in found.into_iter().take(max_per_example) {
            out.push(Variant { example, pair: m.pair, reversed: m.reversed, text: index.swap(text, m.pair) });
        }
    }
    (out, with_terms)
}

/// What a variant did to the model's output.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub flipped: bool,
    pub change: f64,
    /// The output before and after the swap (label or completion), for the examples shown.
    pub before: String,
    pub after: String,
}

#[derive(Default)]
struct Tally {
    variants: usize,
    flips: usize,
    change: f64,
    abs_change: f64,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        self.variants += 1;
        self.flips += o.flipped as usize;
        self.change += o.change;
        self.abs_change += o.change.abs();
    }

    fn row(&self, pair: String) -> CounterfactualRow {
        let n = self.variants.max(1) as f64;
        CounterfactualRow {
            pair,
            variants: self.variants,
            flips: self.flips,
            flip_rate: self.flips as f64 / n,
            mean_change: self.change / n,
            mean_abs_change: self.abs_change / n,
        }
    }
}

/// The direction a variant swapped in: the pair's own (`female→male`) or its reverse.
fn direction(p: &TermPair, reversed: bool) -> String {
    match (p.direction.split_once('→'), reversed) {
        (Some((from, to)), true) => format!("{to}→{from}"),
        (Some(_), false) => p.direction.clone(),
        (None, false) => format!("{} → {}", p.a, p.b),
        (None, true) => format!("{} → {}", p.b, p.a),
    }
}

/// Flip rates overall, per direction and per pair (most frequent first), and a few flips.
#[allow(clippy::too_many_arguments)]
pub fn summarize(
    index: &PairIndex,
    variants: &[Variant],
    outcomes: &[Outcome],
    texts: &[&str],
    source: String,
    rule: String,
    with_terms: usize,
    shown: usize,
) -> CounterfactualReport {
    let mut overall = Tally::default();
    let mut by_direction: std::collections::BTreeMap<String, Tally> = Default::default();
    let mut by_pair: HashMap<usize, Tally> = HashMap::new();
    let mut flipped_examples = Vec::new();
    for (v, o) in variants.iter().zip(outcomes) {
        let p = &index.pairs[v.pair];
        overall.add(o);
        by_direction.entry(direction(p, v.reversed)).or_default().add(o);
        by_pair.entry(v.pair).or_default().add(o);
        if o.flipped && flipped_examples.len() < shown {
            flipped_examples.push(CounterfactualExample {
                pair: direction(p, v.reversed),
                original: super::edge_cases::preview(texts[v.example], 160),
                swapped: swapped_window(texts[v.example], &v.text, 120),
                before: o.before.clone(),
                after: o.after.clone(),
            });
        }
    }
    let mut pairs: Vec<(usize, Tally)> = by_pair.into_iter().collect();
    pairs.sort_by(|a, b| b.1.variants.cmp(&a.1.variants).then(b.1.flips.cmp(&a.1.flips)).then(a.0.cmp(&b.0)));
    let has_directions = index.pairs.iter().any(|p| !p.direction.is_empty());
    CounterfactualReport {
        source,
        rule,
        examples_scanned: texts.len(),
        examples_with_terms: with_terms,
        overall: overall.row("all".into()),
        by_direction: if has_directions {
            by_direction.into_iter().map(|(d, t)| t.row(d)).collect()
        } else {
            Vec::new()
        },
        by_pair: pairs
            .into_iter()
            .map(|(i, t)| t.row(format!("{} ↔ {}", index.pairs[i].a, index.pairs[i].b)))
            .collect(),
        flipped_examples,
    }
}

/// Up to `n` characters of the swapped text around its first difference from the original.
fn swapped_window(original: &str, swapped: &str, n: usize) -> String {
    let first = original.char_indices().zip(swapped.chars()).find(|((_, a), b)| a != b).map_or(0, |((i, _), _)| i);
    let start = original[..first].char_indices().rev().nth(n / 3).map_or(0, |(i, _)| i);
    super::edge_cases::preview(&swapped[start.min(swapped.len())..], n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str) -> TermPair {
        TermPair { a: a.into(), b: b.into(), direction: String::new(), capitalized_only: false }
    }

    #[test]
    fn whole_word_case_preserving_both_ways() {
        let pairs = [pair("he", "she"), pair("Mr.", "Ms."), pair("new york", "los angeles")];
        let idx = PairIndex::new(&pairs);
        let text = "He said she would; the shed? HE! she-wolf. Mr. Smith in New York";
        let found = idx.find(text, text.len());
        assert_eq!(
            found,
            vec![
                Match { pair: 0, reversed: false },
                Match { pair: 1, reversed: false },
                Match { pair: 2, reversed: false }
            ]
        );
        assert_eq!(idx.swap(text, 0), "She said he would; the shed? SHE! he-wolf. Mr. Smith in New York");
        assert_eq!(idx.swap(text, 2), "He said she would; the shed? HE! she-wolf. Mr. Smith in Los Angeles");
        // Only the visible prefix counts.
        assert!(idx.find(text, 2).len() == 1 && idx.find(text, 0).is_empty());
        assert!(idx.find("theshed", 7).is_empty());
    }

    #[test]
    fn name_pairs_skip_shared_names_and_match_capitalised_only() {
        let f: Vec<String> = ["Mary", "Jean", "Anna", "Zoe"].map(String::from).to_vec();
        let m: Vec<String> = ["John", "Jean", "Bob"].map(String::from).to_vec();
        let pairs = name_pairs(&f, &m);
        let shown: Vec<(&str, &str)> = pairs.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
        assert_eq!(shown, vec![("Anna", "Bob"), ("Mary", "Bob"), ("Zoe", "John")]);
        let idx = PairIndex::new(&pairs);
        assert_eq!(idx.swap("Mary met JOHN; mary", 1), "Bob met JOHN; mary");
        assert!(idx.find("ZOE", 3).is_empty());
        let (kept, dropped) = drop_common_words(pairs.clone(), &["we met anna", "Zoe"]);
        assert_eq!((kept.len(), dropped), (2, 1));
        // Bob belongs to the first pair that holds him.
        assert_eq!(idx.find("ask Bob", 7), vec![Match { pair: 0, reversed: true }]);
        assert_eq!(idx.swap("ask Bob", 0), "ask Anna");
    }

    #[test]
    fn pairs_file_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.txt");
        std::fs::write(&path, "# comment\nhe,she\nhis\ther\n").unwrap();
        assert_eq!(read_pairs(&path).unwrap(), vec![pair("he", "she"), pair("his", "her")]);
        std::fs::write(&path, "he,she\njust-one\n").unwrap();
        let err = read_pairs(&path).unwrap_err().to_string();
        assert!(err.contains("pairs.txt") && err.contains("line 2") && err.contains("two different terms"), "{err}");
    }
}
