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
