//! The rows curation reads and writes back: every line of a jsonl file or row of a csv file,
//! including the ones training would refuse (an empty text is a finding here, not an error), with
//! its line number and the original line or fields, so that `clean` writes kept rows unchanged.
//!
//! A row's text is `text`, or `prompt` + `completion`, or the contents of `messages` (the formats
//! `kiln train` takes); `label` (string or integer) and `group` are optional.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::data::line_error;
use crate::data::lm::json_type;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// 1-based line of the row's start in its file.
    pub line: usize,
    pub text: String,
    pub label: Option<String>,
    pub group: Option<String>,
    /// The jsonl line as read, or the csv fields in header order.
    pub raw: Raw,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Raw {
    Json(String),
    Csv(Vec<String>),
}

/// A file's rows, and its csv header when it is one.
#[derive(Clone, Debug)]
pub struct DataFile {
    pub path: PathBuf,
    pub header: Option<Vec<String>>,
    pub rows: Vec<Row>,
}

impl DataFile {
    /// The file's name for reports (`train.jsonl`), or the whole path when it has none.
    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(|| self.path.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    /// The same file with only `rows` (for writing a cleaned copy).
    pub fn with_rows(&self, rows: Vec<Row>) -> DataFile {
        DataFile { path: self.path.clone(), header: self.header.clone(), rows }
    }
}

pub fn read_rows(path: &Path) -> Result<DataFile> {
    match path.extension().and_then(|x| x.to_str()) {
        Some("jsonl") => read_jsonl(path),
        Some("csv") => read_csv(path),
        _ => Err(Error::Parse {
            path: path.to_path_buf(),
            message: "unknown format; expected a .jsonl or .csv file".into(),
        }),
    }
}

fn read_jsonl(path: &Path) -> Result<DataFile> {
    let mut rows = Vec::new();
    crate::data::for_each_line(path, |line, text| {
        rows.push(parse_json_row(line, text).map_err(|m| line_error(path, line, m))?);
        Ok(())
    })?;
    Ok(DataFile { path: path.to_path_buf(), header: None, rows })
}

fn parse_json_row(line: usize, raw: &str) -> std::result::Result<Row, String> {
    const EXPECTED: &str =
        "expected an object with `text` (or `prompt` and `completion`, or `messages`) and optional `label` and `group`";
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("invalid JSON ({e}); {EXPECTED}"))?;
    let Value::Object(obj) = &value else { return Err(format!("found {}; {EXPECTED}", json_type(&value))) };
    let string = |key: &str| -> std::result::Result<Option<String>, String> {
        match obj.get(key) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Null) | None => Ok(None),
            Some(v) => Err(format!("`{key}` must be a string, found {}", json_type(v))),
        }
    };
    let text = if let Some(t) = string("text")? {
        t
    } else if let (Some(p), Some(c)) = (string("prompt")?, string("completion")?) {
        format!("{p}\n{c}")
    } else if let Some(Value::Array(messages)) = obj.get("messages") {
        let parts: Vec<&str> = messages.iter().filter_map(|m| m.get("content").and_then(Value::as_str)).collect();
        parts.join("\n")
    } else {
        return Err(EXPECTED.to_string());
    };
    let label = match obj.get("label") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(Value::Null) | None => None,
        Some(v) => return Err(format!("`label` must be a string or an integer, found {v}")),
    };
    Ok(Row { line, text, label, group: string("group")?, raw: Raw::Json(raw.to_string()) })
}

fn read_csv(path: &Path) -> Result<DataFile> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(BufReader::new(file));
    let csv_err = |e: csv::Error| {
        let line = e.position().map_or(0, |p| p.line() as usize);
        line_error(path, line, e.to_string())
    };
    let header: Vec<String> = reader.headers().map_err(csv_err)?.iter().map(|h| h.to_string()).collect();
    let column = |name: &str| header.iter().position(|h| h.trim_start_matches('\u{feff}').trim() == name);
    let Some(text_col) = column("text") else {
        return Err(line_error(path, 1, format!("the header row needs a `text` column, found {header:?}")));
    };
    let (label_col, group_col) = (column("label"), column("group"));
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let fields: Vec<String> = record.iter().map(|f| f.to_string()).collect();
        let get = |col: Option<usize>| col.map(|c| fields[c].clone()).filter(|s| !s.is_empty());
        rows.push(Row {
            line,
            text: fields[text_col].clone(),
            label: get(label_col),
            group: get(group_col),
            raw: Raw::Csv(fields.clone()),
        });
    }
    Ok(DataFile { path: path.to_path_buf(), header: Some(header), rows })
}

/// Writes `file`'s rows to `path` in their original form (jsonl lines as read; csv with the same
/// header), through a temporary file and a rename.
pub fn write_rows(file: &DataFile, path: &Path) -> Result<()> {
    let bytes = match &file.header {
        None => {
            let mut s = String::new();
            for row in &file.rows {
                match &row.raw {
                    Raw::Json(line) => s.push_str(line),
                    Raw::Csv(_) => return Err(Error::invalid("write", "a csv row in a jsonl file")),
                }
                s.push('\n');
            }
            s.into_bytes()
        }
        Some(header) => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let io = |e: csv::Error| Error::invalid("write csv", e.to_string());
            w.write_record(header).map_err(io)?;
            for row in &file.rows {
                match &row.raw {
                    Raw::Csv(fields) => w.write_record(fields).map_err(io)?,
                    Raw::Json(_) => return Err(Error::invalid("write", "a jsonl row in a csv file")),
                }
            }
            w.into_inner().map_err(|e| Error::invalid("write csv", e.to_string()))?
        }
    };
    crate::util::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_format_and_keeps_empty_texts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(
            &p,
            "{\"text\": \"hi\", \"label\": 1}\n\n{\"text\": \"\", \"label\": \"x\", \"group\": \"g\"}\n\
             {\"prompt\": \"p\", \"completion\": \"c\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}]}\n",
        )
        .unwrap();
        let f = read_rows(&p).unwrap();
        let got: Vec<(usize, &str, Option<&str>)> =
            f.rows.iter().map(|r| (r.line, r.text.as_str(), r.label.as_deref())).collect();
        assert_eq!(got, vec![(1, "hi", Some("1")), (3, "", Some("x")), (4, "p\nc", None), (5, "u", None)]);
        assert_eq!(f.rows[1].group.as_deref(), Some("g"));
        let out = dir.path().join("b.jsonl");
        write_rows(&f.with_rows(vec![f.rows[1].clone()]), &out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"text\": \"\", \"label\": \"x\", \"group\": \"g\"}\n");

        let e = {
            std::fs::write(&p, "{\"label\": 1}\n").unwrap();
            read_rows(&p).unwrap_err().to_string()
        };
        assert!(e.contains("a.jsonl") && e.contains("line 1") && e.contains("`text`"), "{e}");
    }

    #[test]
    fn csv_rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "label,text,extra\nspam,\"Buy, now\",1\nham,,2\n").unwrap();
        let f = read_rows(&p).unwrap();
        assert_eq!(f.rows.len(), 2);
        assert_eq!(
            (f.rows[0].text.as_str(), f.rows[0].label.as_deref(), f.rows[0].line),
            ("Buy, now", Some("spam"), 2)
        );
        assert_eq!(f.rows[1].text, "");
        let out = dir.path().join("b.csv");
        write_rows(&f, &out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "label,text,extra\nspam,\"Buy, now\",1\nham,,2\n");
    }
}
