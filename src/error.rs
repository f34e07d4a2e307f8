//! One error type for the whole crate. Every variant names what went wrong (the op, the
//! tensor, the file, the limit) so a user can act on the message without a debugger.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- adapters and devices ----
    #[error(
        "no GPU adapter found (wgpu enumerated none). On Linux without a GPU install lavapipe from \
         Mesa 25 (bookworm's own 22.3 runs kiln's kernels 3-4x slower): add `bookworm-backports` \
         to the apt sources, then `apt-get update && apt-get install -t bookworm-backports \
         mesa-vulkan-drivers` (README, first section; `.ci/run` does exactly this)"
    )]
    NoAdapter,
    #[error("no adapter matches `{wanted}`; available: {available}")]
    AdapterNotFound { wanted: String, available: String },
    #[error("adapter `{adapter}` refused a device: {reason}")]
    RequestDevice { adapter: String, reason: String },
    #[error("adapter `{adapter}` lacks feature {feature}, needed for {needed_for}")]
    MissingFeature { adapter: String, feature: String, needed_for: String },

    // ---- shapes and sizes ----
    #[error("{op}: tensor `{tensor}` has shape {found:?}, expected {expected}")]
    Shape { op: &'static str, tensor: &'static str, expected: String, found: Vec<usize> },
    #[error("{op}: {message}")]
    InvalidArgument { op: &'static str, message: String },
    #[error("{op}: tensor `{tensor}` needs {bytes} bytes, over this adapter's {limit_name} of {limit} bytes")]
    TooLarge { op: &'static str, tensor: &'static str, bytes: u64, limit_name: &'static str, limit: u64 },
    #[error("{op}: dispatch of {groups} workgroups along one axis exceeds the adapter limit {limit}")]
    DispatchTooLarge { op: &'static str, groups: u64, limit: u32 },
    #[error("tensor has dtype {found}, {op} expects {expected}")]
    DType { op: &'static str, expected: &'static str, found: &'static str },

    // ---- GPU execution ----
    #[error("GPU error in {context}: {message}")]
    Gpu { context: String, message: String },
    #[error(
        "the GPU device `{adapter}` was lost ({reason}): the driver reset it or it ran out of memory. Rerun \
         (`kiln train --resume RUN` continues from the last checkpoint), with a smaller --batch-size or \
         --max-len if memory was short"
    )]
    DeviceLost { adapter: String, reason: String },
    #[error("shader `{file}` entry `{entry}` failed to compile: {message}")]
    Shader { file: &'static str, entry: &'static str, message: String },

    // ---- files ----
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },

    // ---- runs ----
    /// The loss or a gradient became NaN or infinite: the message has the step, the learning
    /// rate, what went bad and the last good checkpoint.
    #[error("train: {message}")]
    Diverged { step: usize, message: String },
    #[error("interrupted after step {step}; {}", match run {
        Some(run) => format!("checkpoint written; continue with `kiln train --resume {}`", run.display()),
        None => "no checkpoint was written (checkpoints are off: --save-every 0)".to_string(),
    })]
    Interrupted { step: usize, run: Option<PathBuf> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument { op, message: message.into() }
    }
}
