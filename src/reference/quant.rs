//! Quantized matmul through a frozen block-quantized weight: dequantize, then multiply in f64.
//!
//! Shapes: M rows of x, N = W's rows (outputs), K = W's columns (inputs, a multiple of 32).
//! W `[N, K]` in GGUF blocks (`crate::quant` describes them); x `[M, K]`; y, dy `[M, N]`;
//! dx `[M, K]`. W is frozen: it has no gradient.

use crate::quant::QuantType;

/// The values of GGUF blocks of type `kind`, in order (32 per block).
pub fn dequantize(kind: QuantType, blocks: &[u8]) -> Vec<f64> {
    let f16_at = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f64();
    let mut out = Vec::with_capacity(blocks.len() / kind.block_bytes() * 32);
    for block in blocks.chunks_exact(kind.block_bytes()) {
        match kind {
            QuantType::Q8_0 => {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| d * (q as i8) as f64));
            }
            QuantType::Q4_0 => {
                let d = f16_at(block, 0);
                // Low nibbles are weights 0..15, high nibbles 16..31.
                out.extend(block[2..].iter().map(|&b| d * ((b & 0x0f) as f64 - 8.0)));
                out.extend(block[2..].iter().map(|&b| d * ((b >> 4) as f64 - 8.0)));
            }
            QuantType::Q4_1 => {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                out.extend(block[4..].iter().map(|&b| d * (b & 0x0f) as f64 + m));
                out.extend(block[4..].iter().map(|&b| d * (b >> 4) as f64 + m));
            }
        }
    }
    out
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
