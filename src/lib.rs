//! kiln: fine-tuning transformers on any GPU through wgpu and hand-written WGSL kernels.
//!
//! The crate is layered: [`gpu`] owns the device, buffers and pipelines; [`tensor`] is a typed
//! view of a GPU buffer; [`kernels`] dispatches one WGSL shader family each; [`reference`] holds
//! the plain CPU versions of every kernel that the tests compare against. [`models`] reads
//! pretrained checkpoints; [`autograd`] and [`nn`] build the training graph on the kernels.

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
