//! Plain CPU versions of every kernel: the readable spec the GPU kernels are tested against.
//!
//! Everything here is f64, written as obvious loops, so that finite differences on it are
//! accurate and a mismatch with a kernel points at the kernel. Forward functions return what
//! the backward needs (mean and rstd, log-sum-exp); backward functions sit below their forward.

// TODO pub mod adamw;
// TODO pub mod attention;
// TODO pub mod dropout;
// TODO pub mod elementwise;
// TODO pub mod embedding;
// TODO pub mod layer_norm;
pub mod matmul;
// TODO pub mod reduce;
// TODO pub mod rope;
// TODO pub mod softmax_xent;
