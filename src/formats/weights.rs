//! Opens a model's weights whatever file holds them: a Hugging Face folder of safetensors, one
//! `.safetensors` file, or a PyTorch checkpoint (`.pth`, `.pt`, `.bin`; zip or legacy pickle).

use std::path::Path;

use super::pth;
use super::safetensors::SafetensorsSource;
use crate::error::Result;

/// The weights at `path` as one checked source.
pub fn open(path: &Path) -> Result<SafetensorsSource> {
    if path.is_dir() {
        return SafetensorsSource::open(path);
    }
    if path.extension().is_some_and(|x| x == "safetensors") {
        return SafetensorsSource::open_file(path);
    }
    pth::open(path)
}
