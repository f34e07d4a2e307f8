//! The predictions file of `kiln predict`: jsonl (one object per input) or csv (one row per
//! input, a column per class probability), chosen by the file's extension, written to a
//! temporary name and renamed once complete.
//!
//! ```text
//! {"line": 3, "label": "spam", "probs": {"ham": 0.02, "spam": 0.98}, "truncated": true}
//! {"line": 1, "completion": "K IH1 L N", "tokens": 6, "truncated": false}
//! line,label,p_ham,p_spam,truncated            (csv; `image` after `line` for images,
//! line,completion,tokens,truncated              `given` last when inputs carried one)
//! ```

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::util::write_atomic;

/// One input's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The input's line (None: an image of a folder).
    pub line: Option<usize>,
    /// The image's path (image classifiers).
    pub image: Option<String>,
    /// The most probable class (classifiers).
    pub label: Option<String>,
    /// Every class's probability, in the order of the labels (classifiers).
    pub probs: Vec<f64>,
    /// The greedy completion (language models) and its number of new tokens.
    pub completion: Option<String>,
    pub tokens: Option<usize>,
    /// Whether the input was cut to `--max-len` tokens.
    pub truncated: bool,
    /// The label or completion the input carried, if any (reported, not used).
    pub given: Option<String>,
}

/// Which columns a file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Label,
    Completion,
}

/// One prediction as a JSON object.
pub fn to_json(p: &Prediction, labels: &[String]) -> Value {
    let mut o = Map::new();
    if let Some(l) = p.line {
        o.insert("line".into(), json!(l));
    }
    if let Some(i) = &p.image {
        o.insert("image".into(), json!(i));
    }
    if let Some(l) = &p.label {
        o.insert("label".into(), json!(l));
        let probs: Map<String, Value> = labels.iter().cloned().zip(p.probs.iter().map(|&x| json!(x))).collect();
        o.insert("probs".into(), Value::Object(probs));
    }
    if let Some(c) = &p.completion {
        o.insert("completion".into(), json!(c));
        o.insert("tokens".into(), json!(p.tokens));
    }
    o.insert("truncated".into(), json!(p.truncated));
    if let Some(g) = &p.given {
        o.insert("given".into(), json!(g));
    }
    Value::Object(o)
}

fn csv_bytes(task: Task, labels: &[String], preds: &[Prediction]) -> Result<Vec<u8>> {
    let fail = |e: csv::Error| Error::invalid("predict", format!("cannot write csv: {e}"));
    let images = preds.iter().any(|p| p.image.is_some());
    let given = preds.iter().any(|p| p.given.is_some());
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["line".to_string()];
    if images {
        header.push("image".into());
    }
    match task {
        Task::Label => {
            header.push("label".into());
            header.extend(labels.iter().map(|l| format!("p_{l}")));
        }
        Task::Completion => header.extend(["completion".to_string(), "tokens".to_string()]),
    }
    header.push("truncated".into());
    if given {
        header.push("given".into());
    }
    w.write_record(&header).map_err(fail)?;
    for p in preds {
        let mut row = vec![p.line.map(|l| l.to_string()).unwrap_or_default()];
        if images {
            row.push(p.image.clone().unwrap_or_default());
        }
        match task {
            Task::Label => {
                row.push(p.label.clone().unwrap_or_default());
                row.extend(p.probs.iter().map(|x| x.to_string()));
            }
            Task::Completion => {
                row.push(p.completion.clone().unwrap_or_default());
                row.push(p.tokens.map(|t| t.to_string()).unwrap_or_default());
            }
        }
        row.push(p.truncated.to_string());
        if given {
            row.push(p.given.clone().unwrap_or_default());
        }
        w.write_record(&row).map_err(fail)?;
    }
    w.into_inner().map_err(|e| Error::invalid("predict", format!("cannot write csv: {e}")))
}

/// Writes the predictions to `out`: csv for a `.csv` name, jsonl otherwise.
pub fn write(out: &Path, task: Task, labels: &[String], preds: &[Prediction]) -> Result<()> {
    let bytes = if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        csv_bytes(task, labels, preds)?
    } else {
        let mut text = String::new();
        for p in preds {
            text.push_str(&to_json(p, labels).to_string());
            text.push('\n');
        }
        text.into_bytes()
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_atomic(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_csv() {
        let labels = vec!["ham".to_string(), "spam".to_string()];
        let p = Prediction {
            line: Some(3),
            image: None,
            label: Some("spam".into()),
            probs: vec![0.25, 0.75],
            completion: None,
            tokens: None,
            truncated: true,
            given: Some("ham".into()),
        };
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/p.jsonl");
        write(&f, Task::Label, &labels, std::slice::from_ref(&p)).unwrap();
        let v: Value = serde_json::from_str(std::fs::read_to_string(&f).unwrap().trim()).unwrap();
        assert_eq!(
            v,
            json!({"line": 3, "label": "spam", "probs": {"ham": 0.25, "spam": 0.75}, "truncated": true, "given": "ham"})
        );
        let c = dir.path().join("p.csv");
        write(&c, Task::Label, &labels, &[p]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&c).unwrap(),
            "line,label,p_ham,p_spam,truncated,given\n3,spam,0.25,0.75,true,ham\n"
        );
        // Nothing but the files is left: the temporary names were renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
    }
}
