//! Small helpers every layer may use: nothing here knows about GPUs, models or training.
//! [`plot`] holds the plotting primitives; [`SplitMix64`] the seeded generator; [`Hash64`] the
//! stable hash; [`write_atomic`] the one way files are replaced; [`folder`] kiln's output
//! folders (the marker `--overwrite` asks for, whole-folder replacement); [`lock`] one writer per
//! folder; [`cache_dir`] where fetched and measured things are kept.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub mod folder;
mod hash;
pub mod lock;
pub mod plot;
mod rng;
pub use folder::{check_output, write_folder_whole};
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

/// The numbers of a comma-separated list such as `128,128,8,16,16` (an environment override
/// of a kernel shape), or None when any part is not a u32: a typo is not half read.
pub fn parse_u32_list(text: &str) -> Option<Vec<u32>> {
    text.split(',').map(|s| s.trim().parse().ok()).collect()
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
    use super::parse_u32_list;

    #[test]
    fn a_u32_list_is_read_whole_or_not_at_all() {
        assert_eq!(parse_u32_list("128, 128,8,16 ,16"), Some(vec![128, 128, 8, 16, 16]));
        assert_eq!(parse_u32_list("256,abc,128"), None);
        assert_eq!(parse_u32_list("256,,128"), None);
        assert_eq!(parse_u32_list("-1"), None);
    }
}
