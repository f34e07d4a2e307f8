//! kiln: fine-tuning transformers on any GPU through wgpu and hand-written WGSL kernels.
//!
//! # Layers
//!
//! The modules stand in layers, bottom to top. A file imports only from its own layer or the
//! ones below it, and no two files import each other; `python3 ../shared/tools/layers.py src`
//! checks both (CI runs it in `.ci/run`).
//!
//! 1. [`error`], [`util`] (rng, atomic writes, plotting primitives), [`quant`] (block codecs)
//! 2. [`reference`]: plain f64 CPU versions of every kernel, the spec the tests hold kernels to
//! 3. [`gpu`] (device, buffer pool, pipelines, readback) and [`tensor`] (a typed view of a GPU
//!    buffer; it builds on gpu, which names no tensor type)
//! 4. [`kernels`]: one WGSL shader family each
//! 5. [`autograd`]: the tape
//! 6. [`nn`]: modules on top of the ops
//! 7. [`formats`]: GGUF, safetensors, PEFT adapters, tokenizers, chat templates
//! 8. [`models`]: the architectures
//! 9. [`data`] (training formats, batching, fetching) and [`metrics`] (accuracy, F1, confusion)
//! 10. [`generate`]: sampling with the KV cache
//! 11. [`train`]: the training driver and each task's step
//! 12. [`eval`], [`curate`], [`tune`], [`bench`]: libraries each with an entry the CLI calls
//! 13. [`cli`] (one thin file per subcommand) and [`fuzz`]

pub mod autograd;
pub mod bench;
pub mod cli;
pub mod curate;
pub mod data;
pub mod error;
pub mod eval;
pub mod formats;
pub mod fuzz;
pub mod generate;
pub mod gpu;
pub mod kernels;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod quant;
pub mod reference;
pub mod tensor;
pub mod train;
pub mod tune;
pub mod util;

pub use error::{Error, Result};
pub use gpu::Gpu;
pub use tensor::{DType, Tensor};
