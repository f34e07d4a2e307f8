//! The SpamAssassin public corpus as a classification data set: one jsonl line per e-mail,
//! `{"text", "label": "ham"|"spam", "group": folder}`. Each e-mail is stored twice in the
//! package (`.txt` and `.json`); only the `.json` copies are read.

use std::io::Write;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The corpus folders, in the order they are written.
pub const GROUPS: [&str; 5] = ["easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"];

#[derive(Deserialize)]
struct Email {
    id: String,
    group: String,
    text: String,
}

/// E-mails written per group, in [`GROUPS`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportCounts {
    pub per_group: Vec<(String, usize)>,
    pub spam: usize,
    pub ham: usize,
}

/// Subject and body of a raw message: the headers dropped except `Subject:`, the body being
/// everything after the first blank line. With `keep_headers` the raw message is kept whole.
pub fn message_text(raw: &str, keep_headers: bool) -> String {
    if keep_headers {
        return raw.to_string();
    }
    let raw = raw.replace("\r\n", "\n");
    let (headers, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
    let subject = headers
        .lines()
        .find_map(|l| l.strip_prefix("Subject:").or_else(|| l.strip_prefix("subject:")))
        .map(str::trim)
        .unwrap_or("");
    format!("{subject}\n\n{}", body.trim())
}

/// Reads every group folder under `data_dir` (the package's `data/`) and writes `out` (jsonl).
pub fn import(data_dir: &Path, out: &Path, keep_headers: bool) -> Result<ImportCounts> {
    let mut lines = String::new();
    let mut counts = ImportCounts { per_group: Vec::new(), spam: 0, ham: 0 };
    for group in GROUPS {
        let dir = data_dir.join(group);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Parse {
                path: dir,
                message: "no .json e-mails here (is this the package's data/ folder?)".into(),
            });
        }
        let label = if group.starts_with("spam") { "spam" } else { "ham" };
        for f in &files {
            let raw = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            let email: Email = serde_json::from_str(&raw).map_err(|e| Error::Parse {
                path: f.clone(),
                message: format!("expected {{\"id\", \"group\", \"text\"}}: {e}"),
            })?;
            if email.group != group {
                return Err(Error::Parse {
                    path: f.clone(),
                    message: format!("e-mail {} says group `{}` but sits in `{group}`", email.id, email.group),
                });
            }
            let line =
                serde_json::json!({ "text": message_text(&email.text, keep_headers), "label": label, "group": group });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        if label == "spam" {
            counts.spam += files.len();
        } else {
            counts.ham += files.len();
        }
        counts.per_group.push((group.to_string(), files.len()));
    }
    let tmp = out.with_extension("jsonl.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(lines.as_bytes()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_and_body_without_headers() {
        let raw = "Return-Path: a@b\nSubject: Cheap pills\nTo: c@d\n\nBuy now!\n\nReally.\n";
        assert_eq!(message_text(raw, false), "Cheap pills\n\nBuy now!\n\nReally.");
        assert_eq!(message_text(raw, true), raw);
        assert_eq!(message_text("Subject: only headers", false), "only headers\n\n");
    }

    #[test]
    fn imports_every_group_with_labels() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, g) in GROUPS.iter().enumerate() {
            let dir = tmp.path().join(g);
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..=i {
                let email = serde_json::json!({"id": format!("{k:05}"), "group": g, "checksum": {}, "text": format!("Subject: s{k}\n\nbody {g}")});
                std::fs::write(dir.join(format!("{k:05}.x.json")), email.to_string()).unwrap();
                std::fs::write(dir.join(format!("{k:05}.x.txt")), "the same e-mail, not read").unwrap();
            }
        }
        let out = tmp.path().join("spam.jsonl");
        let counts = import(tmp.path(), &out, false).unwrap();
        assert_eq!((counts.ham, counts.spam), (1 + 2 + 3, 4 + 5));
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 15);
        assert_eq!(lines[0]["label"], "ham");
        assert_eq!(lines[0]["group"], "easy-ham-1");
        assert_eq!(lines[0]["text"], "s0\n\nbody easy-ham-1");
        assert_eq!(lines[14]["label"], "spam");

        // An e-mail in the wrong folder is named.
        let bad = tmp.path().join("spam-2/00009.x.json");
        std::fs::write(&bad, serde_json::json!({"id": "9", "group": "spam-1", "text": ""}).to_string()).unwrap();
        let err = import(tmp.path(), &out, false).unwrap_err().to_string();
        assert!(err.contains("00009.x.json") && err.contains("spam-1"), "{err}");
    }
}
