//! Sequence-classification data: labelled texts from jsonl or csv, the label set, stratified
//! splits and subsamples, and class weights.
//!
//! A data folder holds `train.jsonl` or `train.csv` (required) and optionally `valid` and `test`
//! in either format. A jsonl line and a csv row carry the same three fields:
//!
//! ```text
//! {"text": "...", "label": "spam", "group": "spam-1"}     jsonl; `label` may be an integer
//! text,label,group                                        csv; a header row names the columns
//! "Cheap pills, now",spam,spam-1                          (RFC 4180 quoting)
//! ```
//!
//! `group` is optional (a sub-population to score apart, e.g. SpamAssassin's `hard-ham-1`); other
//! keys and columns are ignored; blank lines are skipped. Anything else is an error naming the file
//! and line.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::data::line_error;
use crate::data::lm::json_type;
use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    /// The label as written; an integer label in jsonl is kept as its decimal string.
    pub label: String,
    pub group: Option<String>,
    /// The line of its file it was read from (a csv row's first line); 0 when not from a file.
    pub line: usize,
}

/// The splits of a data folder; a split that is absent is empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Splits {
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub test: Vec<Example>,
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Reads a `.jsonl` or `.csv` file of examples; at least one example is required.
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    let examples = match path.extension().and_then(|x| x.to_str()) {
        Some("jsonl") => read_jsonl(path)?,
        Some("csv") => read_csv(path)?,
        _ => {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                message: "unknown format; expected a .jsonl or .csv file".into(),
            });
        }
    };
    if examples.is_empty() {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            message: "no examples; expected one {\"text\", \"label\"} per line (jsonl) or row (csv)".into(),
        });
    }
    Ok(examples)
}

fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    super::for_each_line(path, |line_no, line| {
        let example = parse_json_example(line).map_err(|m| line_error(path, line_no, m))?;
        examples.push(Example { line: line_no, ..example });
        Ok(())
    })?;
    Ok(examples)
}

/// Parses one non-blank jsonl line; the error is the message without the file and line.
fn parse_json_example(line: &str) -> std::result::Result<Example, String> {
    const EXPECTED: &str = "expected {\"text\": \"...\", \"label\": \"...\"} with an optional \"group\"";
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON ({e}); {EXPECTED}"))?;
    let Value::Object(obj) = value else {
        return Err(format!("found {}; {EXPECTED}", json_type(&value)));
    };
    let text = match obj.get("text") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(format!("`text` must be a string, found {}", json_type(v))),
        None => return Err("`text` is missing".into()),
    };
    let label = match obj.get("label") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(Value::Number(n)) => return Err(format!("`label` must be a string or an integer, found {n}")),
        Some(v) => return Err(format!("`label` must be a string or an integer, found {}", json_type(v))),
        None => return Err("`label` is missing".into()),
    };
    let group = match obj.get("group") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(v) => return Err(format!("`group` must be a string, found {}", json_type(v))),
    };
    check_fields(&text, &label)?;
    Ok(Example { text, label, group, line: 0 })
}

fn check_fields(text: &str, label: &str) -> std::result::Result<(), String> {
    if text.is_empty() {
        return Err("`text` is empty".into());
    }
    if label.is_empty() {
        return Err("`label` is empty".into());
    }
    Ok(())
}

/// Reads a csv file with a header row naming `text`, `label` and optionally `group`. Line numbers
/// in errors are those of the row's first line (a quoted field may span several).
fn read_csv(path: &Path) -> Result<Vec<Example>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(BufReader::new(file));
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let column = |name: &str| header.iter().position(|h| h.trim_start_matches('\u{feff}').trim() == name);
    let (Some(text_col), Some(label_col)) = (column("text"), column("label")) else {
        let found: Vec<&str> = header.iter().collect();
        return Err(line_error(path, 1, format!("the header row needs `text` and `label` columns, found {found:?}")));
    };
    let group_col = column("group");
    let mut examples = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| csv_error(path, e))?;
        let line = row.position().map_or(0, |p| p.line() as usize);
        // Rows have as many fields as the header (the reader rejects others), so these exist.
        let field = |col: usize| row.get(col).unwrap_or("").to_string();
        let (text, label) = (field(text_col), field(label_col));
        check_fields(&text, &label).map_err(|m| line_error(path, line, m))?;
        let group = group_col.map(field).filter(|g| !g.is_empty());
        examples.push(Example { text, label, group, line });
    }
    Ok(examples)
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line() as usize);
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} fields, but the header row has {expected_len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 ({err})"),
        csv::ErrorKind::Io(err) => return Error::io(path, std::io::Error::new(err.kind(), err.to_string())),
        _ => e.to_string(),
    };
    match line {
        Some(line) => line_error(path, line, message),
        None => Error::Parse { path: path.to_path_buf(), message },
    }
}

/// Reads `train.{jsonl,csv}` (required) and `valid.*`, `test.*` (optional, empty if absent) from
/// `dir`. A split present as both `.jsonl` and `.csv` is an error.
pub fn read_folder(dir: &Path) -> Result<Splits> {
    const EXPECTED: &str = "expected train.jsonl or train.csv (and optionally valid.*, test.*)";
    if !dir.is_dir() {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            message: format!("not a folder; {EXPECTED}{}", super::train_file_hint(dir)),
        });
    }
    let split_path = |name: &str| -> Result<Option<PathBuf>> {
        let jsonl = dir.join(format!("{name}.jsonl"));
        let csv = dir.join(format!("{name}.csv"));
        match (jsonl.is_file(), csv.is_file()) {
            (true, true) => Err(Error::Parse {
                path: dir.to_path_buf(),
                message: format!("both {name}.jsonl and {name}.csv are here; keep one"),
            }),
            (true, false) => Ok(Some(jsonl)),
            (false, true) => Ok(Some(csv)),
            (false, false) => Ok(None),
        }
    };
    let Some(train) = split_path("train")? else {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            message: format!("no training file; {EXPECTED}{}", super::train_file_hint(dir)),
        });
    };
    let optional = |name: &str| -> Result<Vec<Example>> {
        match split_path(name)? {
            Some(path) => read_examples(&path),
            None => Ok(Vec::new()),
        }
    };
    Ok(Splits { train: read_examples(&train)?, valid: optional("valid")?, test: optional("test")? })
}

// ---------------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------------

/// The classes of a task; a label's id is its index in `names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    pub names: Vec<String>,
}

impl LabelSet {
    /// The distinct labels, in numeric order if every label is an integer (`"2"` before `"10"`),
    /// else in lexicographic order (`ham` = 0, `spam` = 1).
    pub fn from_examples(examples: &[Example]) -> Self {
        let mut names: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
        names.sort();
        names.dedup();
        let numbers: Option<Vec<i128>> = names.iter().map(|n| n.trim().parse().ok()).collect();
        if let Some(numbers) = numbers {
            let mut pairs: Vec<(i128, String)> = numbers.into_iter().zip(names).collect();
            pairs.sort();
            names = pairs.into_iter().map(|(_, n)| n).collect();
        }
        Self { names }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The id of every example's label. An unknown label (say a test label never seen in
    /// training) is an error naming `path_for_errors`, the example and the known labels.
    pub fn ids(&self, examples: &[Example], path_for_errors: &str) -> Result<Vec<usize>> {
        examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                self.id(&e.label).ok_or_else(|| Error::Parse {
                    path: PathBuf::from(path_for_errors),
                    message: format!(
                        "{}: label `{}` is not in the training labels {:?}",
                        if e.line > 0 { format!("line {}", e.line) } else { format!("example {}", i + 1) },
                        e.label,
                        self.names
                    ),
                })
            })
            .collect()
    }
}

/// How many examples carry each label of `labels`, by id; labels not in the set are not counted.
pub fn label_counts(examples: &[Example], labels: &LabelSet) -> Vec<usize> {
    let mut counts = vec![0; labels.len()];
    for id in examples.iter().filter_map(|e| labels.id(&e.label)) {
        counts[id] += 1;
    }
    counts
}

/// scikit-learn's "balanced" class weights: `n_total / (n_classes · count_c)`, where `n_classes`
/// counts the classes present, so the weights summed over the examples give `n_total`. A class
/// with no examples gets weight 0.
pub fn balanced_class_weights(counts: &[usize]) -> Vec<f32> {
    let total: usize = counts.iter().sum();
    let present = counts.iter().filter(|&&c| c > 0).count();
    counts.iter().map(|&c| if c == 0 { 0.0 } else { (total as f64 / (present * c) as f64) as f32 }).collect()
}

// ---------------------------------------------------------------------------------------------
// Stratified splits and subsamples
// ---------------------------------------------------------------------------------------------

/// The indices of `examples` for each label, labels in sorted order, indices ascending.
fn indices_by_label(examples: &[Example]) -> Vec<Vec<usize>> {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        by_label.entry(e.label.as_str()).or_default().push(i);
    }
    by_label.into_values().collect()
}

/// Splits `examples` into train, valid and test with each label's share kept in each split.
///
/// Per label of `n` examples, shuffled with `seed`: `round(n · valid_frac)` go to valid and
/// `round(n · test_frac)` to test, at least one each when `n ≥ 3` and the fraction is positive,
/// and training always keeps at least one. Fractions are clamped to `[0, 1]`. Each split keeps the
/// examples in their input order. Same seed, same splits.
pub fn stratified_split(examples: Vec<Example>, valid_frac: f64, test_frac: f64, seed: u64) -> Splits {
    // 0 train, 1 valid, 2 test, by input index.
    let mut split_of = vec![0u8; examples.len()];
    let mut rng = SplitMix64::new(seed);
    let share = |n: usize, frac: f64| -> usize {
        let frac = if frac.is_nan() { 0.0 } else { frac.clamp(0.0, 1.0) };
        let k = (n as f64 * frac).round() as usize;
        if n >= 3 && frac > 0.0 { k.max(1) } else { k }
    };
    for mut indices in indices_by_label(&examples) {
        rng.shuffle(&mut indices);
        let n = indices.len();
        let n_valid = share(n, valid_frac).min(n - 1);
        let n_test = share(n, test_frac).min(n - 1 - n_valid);
        for &i in &indices[..n_valid] {
            split_of[i] = 1;
        }
        for &i in &indices[n_valid..n_valid + n_test] {
            split_of[i] = 2;
        }
    }
    let mut splits = Splits::default();
    for (e, split) in examples.into_iter().zip(split_of) {
        match split {
            1 => splits.valid.push(e),
            2 => splits.test.push(e),
            _ => splits.train.push(e),
        }
    }
    splits
}

/// About `n` of `examples` with each label's share kept, in a shuffled order. Shares are given
/// by largest remainder, so exactly `n` are kept unless a label whose share rounds to zero is
/// raised to the one example every present label keeps. `n ≥ len` keeps all; `n = 0` keeps none.
/// Same seed, same subsample.
pub fn stratified_subsample(examples: &[Example], n: usize, seed: u64) -> Vec<Example> {
    let mut rng = SplitMix64::new(seed);
    let mut keep: Vec<usize> = if n >= examples.len() {
        (0..examples.len()).collect()
    } else if n == 0 {
        Vec::new()
    } else {
        let groups = indices_by_label(examples);
        let total = examples.len();
        // Exact shares n·count/total as quotient and remainder (integers, no rounding drift).
        let mut quotas: Vec<usize> = groups.iter().map(|g| n * g.len() / total).collect();
        let mut by_remainder: Vec<usize> = (0..groups.len()).collect();
        by_remainder.sort_by_key(|&c| (std::cmp::Reverse(n * groups[c].len() % total), c));
        let left = n - quotas.iter().sum::<usize>();
        for &c in &by_remainder[..left] {
            quotas[c] += 1;
        }
        let mut keep = Vec::new();
        for (mut indices, quota) in groups.into_iter().zip(quotas) {
            rng.shuffle(&mut indices);
            keep.extend_from_slice(&indices[..quota.max(1)]);
        }
        keep
    };
    rng.shuffle(&mut keep);
    keep.into_iter().map(|i| examples[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str, label: &str) -> Example {
        Example { text: text.into(), label: label.into(), group: None, line: 0 }
    }

    /// `counts[k]` examples of label `labels[k]`, texts numbered in input order.
    fn corpus(labels: &[&str], counts: &[usize]) -> Vec<Example> {
        let mut out = Vec::new();
        for (l, &c) in labels.iter().zip(counts) {
            for i in 0..c {
                out.push(ex(&format!("{l} {i}"), l));
            }
        }
        out
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn err_of(path: &Path) -> String {
        read_examples(path).unwrap_err().to_string()
    }

    #[test]
    fn reads_jsonl_with_string_and_integer_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            "a.jsonl",
            "\u{feff}{\"text\": \"hello\", \"label\": \"ham\", \"group\": \"easy\"}\n\n  \n\
             {\"text\": \"buy\", \"label\": 1, \"extra\": [1]}\n{\"text\": \"x\", \"label\": -3, \"group\": null}",
        );
        let examples = read_examples(&path).unwrap();
        assert_eq!(
            examples,
            vec![
                Example { text: "hello".into(), label: "ham".into(), group: Some("easy".into()), line: 1 },
                Example { line: 4, ..ex("buy", "1") },
                Example { line: 5, ..ex("x", "-3") },
            ]
        );
    }

    #[test]
    fn jsonl_errors_name_file_line_and_field() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            ("{\"text\": \"a\"}", "line 2: `label` is missing"),
            ("{\"label\": \"a\"}", "line 2: `text` is missing"),
            ("{\"text\": \"\", \"label\": \"a\"}", "line 2: `text` is empty"),
            ("{\"text\": \"a\", \"label\": \"\"}", "line 2: `label` is empty"),
            ("{\"text\": \"a\", \"label\": 1.5}", "line 2: `label` must be a string or an integer, found 1.5"),
            ("{\"text\": \"a\", \"label\": true}", "`label` must be a string or an integer, found a boolean"),
            ("{\"text\": 3, \"label\": \"a\"}", "line 2: `text` must be a string, found a number"),
            ("{\"text\": \"a\", \"label\": \"a\", \"group\": 2}", "line 2: `group` must be a string"),
            ("[1, 2]", "line 2: found an array"),
            ("{\"text\": ", "line 2: invalid JSON"),
        ];
        for (bad, expected) in cases {
            let path = write(tmp.path(), "spam.jsonl", &format!("{{\"text\": \"ok\", \"label\": \"ham\"}}\n{bad}\n"));
            let err = err_of(&path);
            assert!(err.contains("spam.jsonl: ") && err.contains(expected), "{bad} -> {err}");
        }
        let empty = write(tmp.path(), "empty.jsonl", "\n\n");
        assert!(err_of(&empty).contains("empty.jsonl: no examples"), "{}", err_of(&empty));
        let tsv = write(tmp.path(), "data.tsv", "text\tlabel\n");
        assert!(err_of(&tsv).contains("data.tsv: unknown format; expected a .jsonl or .csv"), "{}", err_of(&tsv));
        let missing = tmp.path().join("missing.jsonl");
        assert!(err_of(&missing).contains("missing.jsonl"));
    }

    #[test]
    fn reads_csv_with_quoting_and_optional_group() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            "a.csv",
            "\u{feff}id,label,text,group\n\
             1,spam,\"Cheap, now\",spam-1\n\
             2,ham,\"line one\nline \"\"two\"\"\",\n\
             \n\
             3,0,plain,easy\n",
        );
        let examples = read_examples(&path).unwrap();
        assert_eq!(
            examples,
            vec![
                Example { text: "Cheap, now".into(), label: "spam".into(), group: Some("spam-1".into()), line: 2 },
                Example { line: 3, ..ex("line one\nline \"two\"", "ham") },
                // The csv reader counts a record from the blank line before it.
                Example { text: "plain".into(), label: "0".into(), group: Some("easy".into()), line: 5 },
            ]
        );
        let no_group = write(tmp.path(), "b.csv", "text,label\nhi,a\n");
        assert_eq!(read_examples(&no_group).unwrap(), vec![Example { line: 2, ..ex("hi", "a") }]);
    }

    #[test]
    fn csv_errors_name_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        // The empty text is on the row starting at line 4 (row 1 spans lines 2 and 3).
        let path = write(tmp.path(), "a.csv", "text,label\n\"two\nlines\",a\n,b\n");
        let err = err_of(&path);
        assert!(err.contains("a.csv: line 4: `text` is empty"), "{err}");
        let path = write(tmp.path(), "b.csv", "text,label\nx,\n");
        assert!(err_of(&path).contains("b.csv: line 2: `label` is empty"), "{}", err_of(&path));
        let path = write(tmp.path(), "c.csv", "text,label\nx,a\ny,b,extra\n");
        let err = err_of(&path);
        assert!(err.contains("c.csv: line 3: 3 fields, but the header row has 2"), "{err}");
        let path = write(tmp.path(), "d.csv", "text,category\nx,a\n");
        let err = err_of(&path);
        assert!(err.contains("d.csv: line 1: the header row needs `text` and `label` columns"), "{err}");
        assert!(err.contains("category"), "{err}");
        let path = write(tmp.path(), "e.csv", "text,label\n");
        assert!(err_of(&path).contains("e.csv: no examples"), "{}", err_of(&path));
    }

    #[test]
    fn reads_a_folder_in_either_format() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(read_folder(dir).unwrap_err().to_string().contains("no training file"));
        write(dir, "train.csv", "text,label\na,x\nb,y\n");
        write(dir, "valid.jsonl", "{\"text\": \"c\", \"label\": \"x\"}\n");
        let splits = read_folder(dir).unwrap();
        assert_eq!(splits.train, vec![Example { line: 2, ..ex("a", "x") }, Example { line: 3, ..ex("b", "y") }]);
        assert_eq!(splits.valid, vec![Example { line: 1, ..ex("c", "x") }]);
        assert!(splits.test.is_empty());

        write(dir, "train.jsonl", "{\"text\": \"a\", \"label\": \"x\"}\n");
        let err = read_folder(dir).unwrap_err().to_string();
        assert!(err.contains("both train.jsonl and train.csv"), "{err}");
        assert!(read_folder(&dir.join("nope")).unwrap_err().to_string().contains("not a folder"));
    }

    #[test]
    fn label_set_orders_numbers_numerically_and_words_lexicographically() {
        let words = LabelSet::from_examples(&corpus(&["spam", "ham", "spam"], &[1, 1, 1]));
        assert_eq!(words.names, ["ham", "spam"]);
        assert_eq!((words.id("ham"), words.id("spam"), words.id("eggs")), (Some(0), Some(1), None));
        let numbers = LabelSet::from_examples(&corpus(&["10", "2", "-1", "2"], &[1, 1, 1, 1]));
        assert_eq!(numbers.names, ["-1", "2", "10"]);
        let mixed = LabelSet::from_examples(&corpus(&["10", "2", "b"], &[1, 1, 1]));
        assert_eq!(mixed.names, ["10", "2", "b"]);

        assert_eq!(words.ids(&corpus(&["spam", "ham"], &[2, 1]), "train.jsonl").unwrap(), [1, 1, 0]);
        let err = words.ids(&[ex("a", "ham"), ex("b", "eggs")], "test.jsonl").unwrap_err().to_string();
        assert!(err.contains("test.jsonl: example 2: label `eggs`") && err.contains("[\"ham\", \"spam\"]"), "{err}");
    }

    #[test]
    fn counts_and_balanced_weights() {
        let examples = corpus(&["a", "b", "zzz"], &[6, 2, 1]);
        let labels = LabelSet::from_examples(&examples[..8]);
        assert_eq!(label_counts(&examples, &labels), [6, 2]);
        // sklearn: compute_class_weight("balanced", classes=[0, 1], y=[0]*6 + [1]*2) = [2/3, 2].
        assert_eq!(balanced_class_weights(&[6, 2]), [8.0 / 12.0, 2.0]);
        // An absent class gets 0; the present ones are weighted as if it did not exist.
        assert_eq!(balanced_class_weights(&[6, 0, 2]), [8.0 / 12.0, 0.0, 2.0]);
        assert_eq!(balanced_class_weights(&[3, 3, 3]), [1.0, 1.0, 1.0]);
        assert!(balanced_class_weights(&[]).is_empty());
    }

    #[test]
    fn stratified_split_keeps_each_label_share() {
        let examples = corpus(&["ham", "spam", "rare", "two"], &[100, 40, 3, 2]);
        let splits = stratified_split(examples.clone(), 0.1, 0.2, 7);
        let labels = LabelSet::from_examples(&examples); // ham, rare, spam, two
        assert_eq!(label_counts(&splits.valid, &labels), [10, 1, 4, 0]);
        assert_eq!(label_counts(&splits.test, &labels), [20, 1, 8, 0]);
        assert_eq!(label_counts(&splits.train, &labels), [70, 1, 28, 2]);

        // A partition of the input, each split in input order.
        let mut all: Vec<Example> = [&splits.train[..], &splits.valid[..], &splits.test[..]].concat();
        all.sort_by(|a, b| a.text.cmp(&b.text));
        let mut sorted = examples.clone();
        sorted.sort_by(|a, b| a.text.cmp(&b.text));
        assert_eq!(all, sorted);
        let position = |e: &Example| examples.iter().position(|x| x == e).unwrap();
        for split in [&splits.train, &splits.valid, &splits.test] {
            assert!(split.windows(2).all(|w| position(&w[0]) < position(&w[1])));
        }

        assert_eq!(stratified_split(examples.clone(), 0.1, 0.2, 7), splits);
        assert_ne!(stratified_split(examples.clone(), 0.1, 0.2, 8).valid, splits.valid);
        // No held-out fractions: everything trains. Fractions too large: training keeps one.
        assert_eq!(stratified_split(examples.clone(), 0.0, 0.0, 7).train, examples);
        let greedy = stratified_split(examples, 0.6, 0.6, 7);
        assert_eq!(label_counts(&greedy.train, &labels), [1, 1, 1, 1]);
        assert_eq!(label_counts(&greedy.valid, &labels), [60, 2, 24, 1]);
    }

    #[test]
    fn stratified_subsample_keeps_shares_and_every_label() {
        let examples = corpus(&["ham", "spam", "rare"], &[700, 297, 3]);
        let labels = LabelSet::from_examples(&examples); // ham, rare, spam
        let sub = stratified_subsample(&examples, 100, 1);
        // Shares 70, 0.3, 29.7: largest remainder gives 70, 0, 30, and rare is raised to 1.
        assert_eq!(label_counts(&sub, &labels), [70, 1, 30]);
        assert_eq!(stratified_subsample(&examples, 100, 1), sub);
        assert_ne!(stratified_subsample(&examples, 100, 2), sub);
        // Shuffled: not grouped by label.
        assert!(sub[..30].iter().any(|e| e.label == "ham") && sub[..30].iter().any(|e| e.label == "spam"));
        let mut texts: Vec<&str> = sub.iter().map(|e| e.text.as_str()).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), 101);

        let all = stratified_subsample(&examples, 5000, 1);
        assert_eq!(all.len(), 1000);
        assert_ne!(all, examples);
        assert_eq!(label_counts(&all, &labels), [700, 3, 297]);
        assert!(stratified_subsample(&examples, 0, 1).is_empty());
    }
}
