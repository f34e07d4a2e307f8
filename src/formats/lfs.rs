//! git-lfs pointers: a clone without `git lfs` holds a ~130-byte text file where each large file
//! should be. Every model file kiln reads (safetensors, GGUF, tokenizer.json, config.json) is
//! checked for one first, so the message says what happened instead of a parse error about
//! the pointer's text ("header too large", "invalid JSON").

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The first line of every git-lfs pointer file (git-lfs's spec, v1).
const FIRST_LINE: &[u8] = b"version https://git-lfs.github.com/spec/v1";

/// Whether `head` (a file's first bytes) starts a git-lfs pointer.
pub fn is_pointer(head: &[u8]) -> bool {
    head.starts_with(FIRST_LINE)
}

/// The error for a pointer found at `path`.
pub fn pointer_error(path: &Path) -> Error {
    Error::Parse {
        path: path.to_path_buf(),
        message: "is a git-lfs pointer, not the weights: run `git lfs pull` in the model's repository \
                  (or download the file itself) and try again"
            .into(),
    }
}

/// An error when `bytes`, the contents of `path`, are a git-lfs pointer.
pub fn check_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    if is_pointer(bytes) { Err(pointer_error(path)) } else { Ok(()) }
}

/// An error when the file at `path` is a git-lfs pointer (reads only its first line); a file that
/// cannot be opened passes, left for the reader to report.
pub fn check_file(path: &Path) -> Result<()> {
    let mut head = [0u8; FIRST_LINE.len()];
    let Ok(mut file) = std::fs::File::open(path) else { return Ok(()) };
    match file.read_exact(&mut head) {
        Ok(()) => check_bytes(path, &head),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_is_recognised_by_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let pointer = dir.path().join("model.safetensors");
        std::fs::write(&pointer, "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 269060552\n")
            .unwrap();
        let e = check_file(&pointer).unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("git-lfs pointer") && e.contains("git lfs pull"), "{e}");
        let real = dir.path().join("config.json");
        std::fs::write(&real, "{\"model_type\": \"llama\"}").unwrap();
        check_file(&real).unwrap();
        check_file(&dir.path().join("absent")).unwrap();
    }
}
