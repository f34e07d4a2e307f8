//! Small helpers every layer may use: nothing here knows about GPUs, models or training.
//! [`plot`] holds the plotting primitives; [`SplitMix64`] the seeded generator; [`Hash64`] the
//! stable hash; [`write_atomic`] the one way files are replaced; [`cache_dir`] where fetched
//! and measured things are kept.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

mod hash;
pub mod plot;
mod rng;
pub use hash::Hash64;
pub use rng::SplitMix64;

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes the file `path` by streaming into a temporary file beside it, then renaming it: a
/// reader sees the whole file or none, and a failed write (a full disk) removes the temporary
/// file before the error is returned.
pub fn write_file_whole(path: &Path, write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> Result<()> {
    let name = path.file_name().map_or("out".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut file)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()
    })()
    .map_err(|e| Error::io(&tmp, e))
    .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Fills the folder `tmp` with `write`, then renames it to `dir` (replacing one there): a reader
/// sees a whole folder (a checkpoint, an export) or none. When writing fails (a full disk) `tmp`
/// is removed before the error is returned, so a failed write leaves nothing behind.
pub fn write_folder_whole(tmp: &Path, dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let filled = std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e)).and_then(|()| write(tmp));
    let moved = filled.and_then(|()| {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))
    });
    if moved.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    moved
}

/// Refuses to replace an existing output (a file, or a folder with anything in it) unless the
/// user passed `--overwrite`: nothing the user had is lost by accident.
pub fn check_output(path: &Path, overwrite: bool) -> Result<()> {
    let occupied = match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => path.exists(),
    };
    if occupied && !overwrite {
        return Err(Error::invalid(
            "--out",
            format!("{} already exists; pass --overwrite to replace it", path.display()),
        ));
    }
    Ok(())
}

/// kiln's cache folder (fetched models and data, measured matmul tiles): `$KILN_CACHE` or
/// `~/.cache/kiln`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("KILN_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("kiln"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fails halfway (here the second file, as a full disk would) removes its
    /// temporary folder and leaves no output; one that succeeds leaves only the output.
    #[test]
    fn a_failed_folder_write_removes_its_temp_folder() {
        let root = tempfile::tempdir().unwrap();
        let (tmp, dir) = (root.path().join(".tmp-step-0000003-1"), root.path().join("step-0000003"));
        let err = write_folder_whole(&tmp, &dir, |t| {
            std::fs::write(t.join("state.safetensors"), b"half").unwrap();
            Err(Error::io(t.join("state.json"), std::io::Error::other("no space left on device")))
        })
        .unwrap_err();
        assert!(err.to_string().contains("no space left"), "{err}");
        assert!(!tmp.exists() && !dir.exists(), "a failed write left {:?}", std::fs::read_dir(root.path()).unwrap());
        write_folder_whole(&tmp, &dir, |t| std::fs::write(t.join("state.json"), b"{}").map_err(|e| Error::io(t, e)))
            .unwrap();
        assert!(dir.join("state.json").is_file() && !tmp.exists());
    }
}
