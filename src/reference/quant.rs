//! Quantized matmul through a frozen block-quantized weight: dequantize, then multiply in f64.
//!
//! Shapes: M rows of x, N = W's rows (outputs), K = W's columns (inputs, a multiple of 32).
//! W `[N, K]` in GGUF blocks (`crate::quant` describes them); x `[M, K]`; y, dy `[M, N]`;
//! dx `[M, K]`. W is frozen: it has no gradient.

use crate::quant::QuantType;

/// The values of GGUF blocks of type `kind`, in order (32 per block): the codec's exact f64
/// decoding, which the kernels are held to.
pub fn dequantize(kind: QuantType, blocks: &[u8]) -> Vec<f64> {
    crate::quant::dequantize_f64(kind.ggml(), blocks)
}

/// y = alpha·x·Wᵀ (+ bias) (+ y when accumulating).
#[allow(clippy::too_many_arguments)]
pub fn qmatmul(
    x: &[f64],            // [M, K]
    kind: QuantType,      //
    w: &[u8],             // [N, K] in blocks
    bias: Option<&[f64]>, // [N]
    y: &mut [f64],        // [M, N]
    (m, n, k): (usize, usize, usize),
    alpha: f64,
    accumulate: bool,
) {
    let w = dequantize(kind, w);
    super::matmul::matmul(x, &w, bias, y, (1, m, n, k), false, true, alpha, accumulate);
}

/// dx = alpha·dy·W (+ dx when accumulating): the backward of [`qmatmul`] for x.
#[allow(clippy::too_many_arguments)]
pub fn qmatmul_dx(
    dy: &[f64],      // [M, N]
    kind: QuantType, //
    w: &[u8],        // [N, K] in blocks
    dx: &mut [f64],  // [M, K]
    (m, n, k): (usize, usize, usize),
    alpha: f64,
    accumulate: bool,
) {
    let w = dequantize(kind, w);
    super::matmul::matmul(dy, &w, None, dx, (1, m, k, n), false, false, alpha, accumulate);
}
