//! Every WGSL kernel against its CPU reference (one binary, so one device and one pipeline
//! cache serve all of them). Run with `cargo test --release`.

mod common;

#[path = "kernels/matmul.rs"]
mod matmul;

/// Tests that change the adapter's matmul tile hold this, so they don't race each other.
pub static TILE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
