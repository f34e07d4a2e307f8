//! Modules built on the tape's ops: a config, a struct with Hugging Face field names, a thin
//! forward. Each module lists its [`Param`](crate::autograd::Param)s through
//! [`Module`](crate::autograd::Module).

pub mod batch_norm;
pub mod conv2d;
pub mod init;
pub mod kv_cache;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod rope_scaling;

pub use batch_norm::{BatchNorm2d, BnMode};
pub use conv2d::{Conv2d, Conv2dConfig};
pub use init::Rng;
pub use kv_cache::KvCache;
pub use linear::Linear;
pub use lora::{LoraAdapter, LoraConfig};
pub use norm::{NormLayer, Residual};
pub use rope_scaling::{RopeConfig, RopeScaling};
