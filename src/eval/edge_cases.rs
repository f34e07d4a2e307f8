//! Edge cases a deployed model meets: empty and blank inputs, one longer than the model reads
//! (so it is truncated), emoji and other scripts, shouting, markup, runs of one character. The
//! built-in suite plus a user's own cases (`--edge-cases FILE`).

use std::path::Path;

use serde::Serialize;

use crate::data::{for_each_line, line_error};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize)]
pub struct EdgeCase {
    pub name: String,
    pub text: String,
}

fn case(name: &str, text: impl Into<String>) -> EdgeCase {
    EdgeCase { name: name.to_string(), text: text.into() }
}

/// The built-in cases; `long_words` words make the long one (give more than the model's token
/// limit: every word is at least one token).
pub fn builtin(long_words: usize) -> Vec<EdgeCase> {
    let long: Vec<&str> = ["please", "read", "this", "message", "about", "your", "account"]
        .iter()
        .copied()
        .cycle()
        .take(long_words)
        .collect();
    vec![
        case("empty", ""),
        case("whitespace only", " \t\n  \n"),
        case("longer than the model's maximum", long.join(" ")),
        case("emoji", "🎉🎉 You won!!! 💰💰 Claim now 👉 🚀"),
        case("other scripts", "你好，明天开会吗？ Привет, как дела? مرحبا كيف حالك नमस्ते"),
        case("all caps", "URGENT: YOUR ACCOUNT HAS BEEN SUSPENDED. CLICK HERE TO VERIFY NOW"),
        case("markup", "<html><body><p>Hi <b>team</b>,</p><a href=\"http://example.com\">notes</a></body></html>"),
        case("repeated characters", format!("{}{}", "a".repeat(300), "!".repeat(100))),
        case("control characters", "line\u{0}one\u{7}\u{1b}[31m red \u{feff}zero\u{200b}width"),
        case("numbers and symbols", "$$$ 100% €50 @#&* 0x7f3a 3.14159 +1-555-0100"),
    ]
}

/// Reads `--edge-cases FILE`: jsonl lines with `text` (or `prompt`) and an optional `name`.
pub fn read_file(path: &Path) -> Result<Vec<EdgeCase>> {
    let mut cases = Vec::new();
    for_each_line(path, |line_no, line| {
        let bad = |m: String| line_error(path, line_no, m);
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| bad(format!("invalid JSON ({e}); expected {{\"text\": \"...\", \"name\": \"...\"}}")))?;
        let text = v.get("text").or_else(|| v.get("prompt"));
        let Some(serde_json::Value::String(text)) = text else {
            return Err(bad("expected a string `text` (or `prompt`), with an optional `name`".into()));
        };
        let name = match v.get("name") {
            Some(serde_json::Value::String(n)) => n.clone(),
            None | Some(serde_json::Value::Null) => format!(
                "{} line {line_no}",
                path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
            Some(_) => return Err(bad("`name` must be a string".into())),
        };
        cases.push(EdgeCase { name, text: text.clone() });
        Ok(())
    })?;
    if cases.is_empty() {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            message: "no cases; expected jsonl lines like {\"text\": \"...\"}".into(),
        });
    }
    Ok(cases)
}

/// What became of one case: the prediction or output, what happened to the input on the way,
/// or the error it gave (a case never stops the evaluation).
#[derive(Clone, Debug, Serialize)]
pub struct EdgeResult {
    pub name: String,
    /// The input's first characters, escaped, for the report.
    pub input: String,
    pub input_chars: usize,
    /// Tokens the model read, and how many the input had before truncation.
    pub tokens: Option<usize>,
    pub tokens_before_truncation: Option<usize>,
    /// E.g. "truncated from 700 to 64 tokens (--max-len 64; the model's maximum is 512)".
    pub note: Option<String>,
    /// The predicted label and its probability, or the generated text.
    pub output: Option<String>,
    pub probability: Option<f64>,
    pub error: Option<String>,
}

impl EdgeResult {
    /// The case's name and input preview, with nothing answered yet.
    pub fn new(case: &EdgeCase) -> EdgeResult {
        EdgeResult {
            name: case.name.clone(),
            input: preview(&case.text, 48),
            input_chars: case.text.chars().count(),
            tokens: None,
            tokens_before_truncation: None,
            note: None,
            output: None,
            probability: None,
            error: None,
        }
    }
}

/// The first `n` characters of a text with control characters escaped, for a table cell.
pub fn preview(text: &str, n: usize) -> String {
    let mut s: String = text.chars().take(n).flat_map(char::escape_debug).collect();
    if text.chars().count() > n {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_suite_and_user_file() {
        let cases = builtin(600);
        assert!(cases.iter().any(|c| c.text.is_empty()));
        assert_eq!(cases[2].text.split(' ').count(), 600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cases.jsonl");
        std::fs::write(&path, "{\"text\": \"hi\", \"name\": \"greeting\"}\n\n{\"prompt\": \"x\"}\n").unwrap();
        let read = read_file(&path).unwrap();
        assert_eq!((read[0].name.as_str(), read[1].name.as_str()), ("greeting", "cases.jsonl line 3"));
        std::fs::write(&path, "{\"text\": 3}\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.contains("cases.jsonl") && err.contains("line 1") && err.contains("`text`"), "{err}");
        assert_eq!(preview("a\u{0}b", 10), "a\\0b");
        assert_eq!(preview("abcdef", 3), "abc…");
    }
}
