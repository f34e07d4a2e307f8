//! Plain CPU versions of every kernel: the readable spec the GPU kernels are tested against.
//!
//! Everything here is f64, written as obvious loops, so that finite differences on it are
//! accurate and a mismatch with a kernel points at the kernel. Forward functions return what
//! the backward needs (mean and rstd, log-sum-exp); backward functions sit below their forward.

pub mod adamw;
pub mod attention;
pub mod batch_norm;
pub mod conv2d;
pub mod dora;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layer_norm;
pub mod matmul;
pub mod pool2d;
pub mod quant;
pub mod reduce;
pub mod rope;
pub mod softmax_xent;
