//! Every WGSL kernel against its CPU reference (one binary, so one device and one pipeline
//! cache serve all of them). Run with `cargo test --release`.

mod common;

#[path = "kernels/matmul.rs"]
mod matmul;
#[path = "kernels/matmul_coop.rs"]
mod matmul_coop;

/// Tests that change the adapter's matmul tile or matvec shape hold this, so they don't race
/// each other.
pub static TILE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[path = "kernels/adamw.rs"]
mod adamw;
#[path = "kernels/attention.rs"]
mod attention;
#[path = "kernels/batch_norm.rs"]
mod batch_norm;
#[path = "kernels/conv2d.rs"]
mod conv2d;
#[path = "kernels/dora.rs"]
mod dora;
#[path = "kernels/dropout.rs"]
mod dropout;
#[path = "kernels/elementwise.rs"]
mod elementwise;
#[path = "kernels/embedding.rs"]
mod embedding;
#[path = "kernels/layer_norm.rs"]
mod layer_norm;
#[path = "kernels/pool2d.rs"]
mod pool2d;
#[path = "kernels/qmatmul.rs"]
mod qmatmul;
#[path = "kernels/reduce.rs"]
mod reduce;
#[path = "kernels/rope.rs"]
mod rope;
#[path = "kernels/runtime.rs"]
mod runtime;
#[path = "kernels/softmax_xent.rs"]
mod softmax_xent;
