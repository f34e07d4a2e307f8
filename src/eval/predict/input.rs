//! The inputs of `kiln predict`, unlabelled: texts (a classifier's), prompts (a language
//! model's) or images, each with the line of the file it came from. A jsonl line is an object
//! with the input's field; a csv file has a header row naming its column. A `label` (or
//! `completion`) given beside the input is kept as `given` and reported, never required.
//!
//! ```text
//! {"text": "..."}                       classifier texts (jsonl), or csv with a `text` column
//! {"prompt": "..."} or {"text": "..."}  language-model prompts (a text is continued as it is)
//! {"image": "a.png"} / `path` / `text`  images listed in jsonl or csv, relative to the list;
//!                                       or a folder of images (searched one level of
//!                                       subfolders deep, an ImageFolder included)
//! ```

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::data::images::is_image;
use crate::data::{for_each_line, line_error};
use crate::error::{Error, Result};

/// One input to predict.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// The line of the file (a csv's header is line 1); None for a folder's images.
    pub line: Option<usize>,
    /// The text or prompt, or the image's path.
    pub value: String,
    /// Whether `value` is a prompt to be wrapped in the chat template (a `prompt` field) rather
    /// than a text to be continued as it is.
    pub is_prompt: bool,
    /// A label (or reference completion) the row carried; kept for the report only.
    pub given: Option<String>,
}

/// Which field holds the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Text,
    Prompt,
    Image,
}

impl InputKind {
    /// The accepted field names, in order of preference.
    fn fields(self) -> &'static [&'static str] {
        match self {
            InputKind::Text => &["text"],
            InputKind::Prompt => &["prompt", "text"],
            InputKind::Image => &["image", "path", "text"],
        }
    }

    /// The field whose value is reported as `given`.
    fn given_field(self) -> &'static str {
        match self {
            InputKind::Prompt => "completion",
            _ => "label",
        }
    }

    fn expected(self) -> String {
        let f = self.fields();
        let names = f.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" or ");
        format!("expected a JSON object with {names}")
    }
}

/// Reads every input of `path` (jsonl, csv, or for images a folder).
pub fn read(path: &Path, kind: InputKind) -> Result<Vec<Input>> {
    if path.is_dir() {
        if kind != InputKind::Image {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                message: "a folder; give a .jsonl or .csv file of texts (a folder is read for image classifiers only)"
                    .into(),
            });
        }
        return image_folder(path);
    }
    if !path.is_file() {
        return Err(Error::Parse { path: path.to_path_buf(), message: "no such file".into() });
    }
    let mut inputs = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(path, kind)?,
        Some("jsonl") | Some("json") => read_jsonl(path, kind)?,
        _ => {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                message: "expected a .jsonl or .csv file (one input per line or row)".into(),
            });
        }
    };
    if kind == InputKind::Image {
        let base = path.parent().unwrap_or(Path::new("."));
        for i in &mut inputs {
            let p = base.join(&i.value);
            if !p.is_file() {
                let line = i.line.unwrap_or(0);
                return Err(line_error(path, line, format!("image `{}` does not exist", p.display())));
            }
            i.value = p.display().to_string();
        }
    }
    if inputs.is_empty() {
        return Err(Error::Parse { path: path.to_path_buf(), message: format!("no inputs; {}", kind.expected()) });
    }
    Ok(inputs)
}

fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn read_jsonl(path: &Path, kind: InputKind) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    for_each_line(path, |line, text| {
        let v: Value = serde_json::from_str(text).map_err(|e| line_error(path, line, format!("not JSON ({e})")))?;
        if !v.is_object() {
            return Err(line_error(path, line, kind.expected()));
        }
        let Some((field, value)) = kind.fields().iter().find_map(|f| Some((*f, v.get(*f)?))) else {
            return Err(line_error(path, line, kind.expected()));
        };
        let Value::String(value) = value else {
            return Err(line_error(path, line, format!("`{field}` must be a string")));
        };
        let given = v.get(kind.given_field()).and_then(string_of);
        out.push(Input { line: Some(line), value: value.clone(), is_prompt: field == "prompt", given });
        Ok(())
    })?;
    Ok(out)
}

fn read_csv(path: &Path, kind: InputKind) -> Result<Vec<Input>> {
    let bad = |e: csv::Error| Error::Parse { path: path.to_path_buf(), message: e.to_string() };
    let mut reader = csv::Reader::from_path(path).map_err(bad)?;
    let headers = reader.headers().map_err(|e| line_error(path, 1, e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let Some((field, column)) = kind.fields().iter().find_map(|f| Some((*f, col(f)?))) else {
        let names: Vec<&str> = headers.iter().collect();
        return Err(line_error(
            path,
            1,
            format!("the header row needs a {} column, found {names:?}", kind.fields().join(" or ")),
        ));
    };
    let given = col(kind.given_field());
    let mut out = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        // Line numbers as a reader counts them: the header is line 1.
        let line = rec.as_ref().ok().and_then(|r| r.position()).map_or(i + 2, |p| p.line() as usize);
        let rec = rec.map_err(|e| line_error(path, line, e))?;
        let value = rec.get(column).unwrap_or_default().to_string();
        let given = given.and_then(|c| rec.get(c)).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        out.push(Input { line: Some(line), value, is_prompt: field == "prompt", given });
    }
    Ok(out)
}

/// The images of a folder and of its subfolders (an ImageFolder's class folders, whose names
/// are reported as `given`), in name order.
fn image_folder(dir: &Path) -> Result<Vec<Input>> {
    let list = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| Error::io(d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
            .collect();
        v.sort();
        Ok(v)
    };
    let mut out = Vec::new();
    for p in list(dir)? {
        if p.is_dir() {
            let class = p.file_name().and_then(|n| n.to_str()).map(str::to_string);
            for f in list(&p)?.into_iter().filter(|f| is_image(f)) {
                out.push(Input { line: None, value: f.display().to_string(), is_prompt: false, given: class.clone() });
            }
        } else if is_image(&p) {
            out.push(Input { line: None, value: p.display().to_string(), is_prompt: false, given: None });
        }
    }
    if out.is_empty() {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            message: format!(
                "no images (.{}) in the folder or its subfolders",
                crate::data::images::EXTENSIONS.join(", .")
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_prompts_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let f = d.join("t.jsonl");
        std::fs::write(&f, "{\"text\": \"a\", \"label\": \"spam\"}\n\n{\"text\": \"b\"}\n").unwrap();
        let v = read(&f, InputKind::Text).unwrap();
        assert_eq!(
            (v[0].line, v[0].given.as_deref(), v[1].line, v[1].given.as_deref()),
            (Some(1), Some("spam"), Some(3), None)
        );
        std::fs::write(&f, "{\"text\": \"a\"}\n{\"txt\": \"b\"}\n").unwrap();
        let e = read(&f, InputKind::Text).unwrap_err().to_string();
        assert!(e.contains("t.jsonl") && e.contains("line 2") && e.contains("`text`"), "{e}");
        std::fs::write(&f, "{\"text\": 3}\n").unwrap();
        let e = read(&f, InputKind::Text).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("must be a string"), "{e}");
        std::fs::write(&f, "{\"prompt\": \"p\", \"completion\": \"c\"}\n{\"text\": \"t\"}\n").unwrap();
        let v = read(&f, InputKind::Prompt).unwrap();
        assert!(v[0].is_prompt && !v[1].is_prompt && v[0].given.as_deref() == Some("c"));

        let c = d.join("t.csv");
        std::fs::write(&c, "id,text\n1,hello\n2,\"two\nlines\"\n3,bye\n").unwrap();
        let v = read(&c, InputKind::Text).unwrap();
        assert_eq!(v.iter().map(|i| i.line.unwrap()).collect::<Vec<_>>(), [2, 3, 5]);
        assert_eq!(v[1].value, "two\nlines");
        std::fs::write(&c, "id,body\n1,hello\n").unwrap();
        let e = read(&c, InputKind::Text).unwrap_err().to_string();
        assert!(e.contains("t.csv") && e.contains("line 1") && e.contains("text"), "{e}");
        let e = read(&d.join("none.jsonl"), InputKind::Text).unwrap_err().to_string();
        assert!(e.contains("none.jsonl"), "{e}");
    }

    #[test]
    fn images_from_a_folder_and_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("cats")).unwrap();
        for p in ["cats/a.png", "b.png"] {
            image::RgbImage::new(2, 2).save(d.join(p)).unwrap();
        }
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let v = read(d, InputKind::Image).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[0].value.ends_with("b.png") && v[1].given.as_deref() == Some("cats"));
        let l = d.join("list.csv");
        std::fs::write(&l, "path,label\ncats/a.png,cat\nmissing.png,\n").unwrap();
        let e = read(&l, InputKind::Image).unwrap_err().to_string();
        assert!(e.contains("list.csv") && e.contains("line 3") && e.contains("missing.png"), "{e}");
    }
}
