//! Block codecs, each GGUF block type once: decoding to f32/f64, ggml's reference encoding,
//! and the word layout the GPU reads.
//!
//! # GPU layout: the same bits, repacked into aligned words
//! A block of 18, 20 or 34 bytes puts most blocks at offsets that are not multiples of 4, and
//! WGSL reads storage buffers in u32 words (no byte or f16 loads without extensions). Rather
//! than assembling each word from two unaligned ones in the inner loop, the upload splits the
//! blocks into two regions of one u32 buffer, keeping every bit and adding at most 2 bytes:
//!   quants: block i's 16 (Q4) or 32 (Q8_0) quant bytes at word `i·QW` (QW = 4 or 8), in file
//!           order, so one vec4<u32> (Q4) or two (Q8_0) hold a block's quants;
//!   scales: after the quants (word `scale_offset`): Q4_1 one word per block, d in the low
//!           half and m in the high half; Q4_0 and Q8_0 two blocks' d per word (block i in
//!           half i % 2). The shader unpacks them with `unpack2x16float`.
//! Blocks are numbered row-major: row r's block b is block r·(K/32) + b. So a Q4_1 weight takes
//! 20 bytes per block on the GPU, exactly as in the file; Q4_0 and Q8_0 too, plus 2 bytes when
//! the block count is odd. Nothing is dequantized on load.

use half::{bf16, f16};

use super::{BLOCK, GgmlType, QuantType, QuantWeights};

/// The values of `bytes` stored as type `ty`, in order, exactly (every readable type's values
/// are f64 products and sums of f16 fields and small integers). The caller checks that `ty` is
/// readable ([`GgmlType::is_readable`]) and that `bytes` is whole blocks.
pub fn dequantize_f64(ty: GgmlType, bytes: &[u8]) -> Vec<f64> {
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f64();
    let (per_block, block_bytes) = ty.block_layout().unwrap_or((1, 1));
    let mut out = Vec::with_capacity(bytes.len() / block_bytes as usize * per_block as usize);
    match ty {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|b| f16_at(b, 0))),
        GgmlType::BF16 => out.extend(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f64())),
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| d * (q as i8) as f64));
            }
        }
        GgmlType::Q4_0 => {
            for block in bytes.chunks_exact(18) {
                let d = f16_at(block, 0);
                // Low nibbles are weights 0..15, high nibbles 16..31.
                out.extend(block[2..].iter().map(|&b| d * ((b & 0x0f) as f64 - 8.0)));
                out.extend(block[2..].iter().map(|&b| d * ((b >> 4) as f64 - 8.0)));
            }
        }
        GgmlType::Q4_1 => {
            for block in bytes.chunks_exact(20) {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                out.extend(block[4..].iter().map(|&b| d * (b & 0x0f) as f64 + m));
                out.extend(block[4..].iter().map(|&b| d * (b >> 4) as f64 + m));
            }
        }
        other => unreachable!("dequantize called for {other}, which is_readable() rejects"),
    }
    out
}

/// [`dequantize_f64`] rounded once to f32: what ggml computes (d·q is exact in f32, so the
/// only rounding is that of the sum, as here).
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    dequantize_f64(ty, bytes).into_iter().map(|v| v as f32).collect()
}

/// Appends one block of 32 values, as ggml's `quantize_row_*_ref` encodes it.
pub(super) fn quantize_block(kind: QuantType, x: &[f32], out: &mut Vec<u8>) {
    match kind {
        QuantType::Q8_0 => {
            // d = max|x| / 127, q = round(x / d).
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
        }
        QuantType::Q4_0 => {
            // d = (the value of largest magnitude) / −8, so that value maps to q = 0 exactly
            // and the other sign gets 7 steps; q = min(15, trunc(x / d + 8.5)).
            let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: Vec<u8> = x.iter().map(|&v| ((v * id + 8.5) as u8).min(15)).collect();
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
        }
        QuantType::Q4_1 => {
            // m = min, d = (max − min) / 15, q = min(15, trunc((x − m) / d + 0.5)).
            let min = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
            let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: Vec<u8> = x.iter().map(|&v| (((v - min) * id + 0.5) as u8).min(15)).collect();
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(f16::from_f32(min).to_le_bytes());
            out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
        }
    }
}

/// The GPU words of `w` (see the module doc): quants, then scales. Returns (words, scale offset).
pub fn repack(w: &QuantWeights) -> (Vec<u32>, usize) {
    let (bb, qw, sb) = (w.kind.block_bytes(), w.kind.quant_words(), w.kind.scale_bytes());
    let n = w.blocks.len() / bb;
    let scale_words = if w.kind == QuantType::Q4_1 { n } else { n.div_ceil(2) };
    let mut words = vec![0u32; n * qw + scale_words];
    for (i, block) in w.blocks.chunks_exact(bb).enumerate() {
        for (j, q) in block[sb..].chunks_exact(4).enumerate() {
            words[i * qw + j] = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
        }
        let d = u16::from_le_bytes([block[0], block[1]]) as u32;
        if w.kind == QuantType::Q4_1 {
            let m = u16::from_le_bytes([block[2], block[3]]) as u32;
            words[n * qw + i] = d | (m << 16);
        } else {
            words[n * qw + i / 2] |= d << (16 * (i % 2));
        }
    }
    (words, n * qw)
}

/// The inverse of [`repack`]: GGUF block bytes from the GPU words of a `[rows, cols]` matrix.
pub fn unpack(kind: QuantType, rows: usize, cols: usize, words: &[u32]) -> Vec<u8> {
    let (qw, n) = (kind.quant_words(), rows * cols / BLOCK);
    let mut out = Vec::with_capacity(n * kind.block_bytes());
    for i in 0..n {
        if kind == QuantType::Q4_1 {
            out.extend(words[n * qw + i].to_le_bytes());
        } else {
            out.extend(((words[n * qw + i / 2] >> (16 * (i % 2))) as u16).to_le_bytes());
        }
        for w in &words[i * qw..(i + 1) * qw] {
            out.extend(w.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks written by hand, decoded by the formulas of ggml-common.h.
    #[test]
    fn hand_made_blocks_decode_to_their_formulas() {
        let h = |v: f32| f16::from_f32(v).to_le_bytes();
        // Q8_0: d = 0.5, q = -3 then 0..31 → d·q.
        let mut q8 = h(0.5).to_vec();
        q8.extend((0..32).map(|i: i32| (if i == 0 { -3 } else { i }) as i8 as u8));
        let v = dequantize_f64(GgmlType::Q8_0, &q8);
        assert_eq!(v[0], -1.5);
        assert_eq!(v[5], 2.5);
        // Q4_0: d = 0.25; byte j = lo | hi << 4 with lo = j, hi = 15 - j → d·(q − 8).
        let mut q40 = h(0.25).to_vec();
        q40.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize_f64(GgmlType::Q4_0, &q40);
        assert_eq!(v[0], -2.0); // weight 0: q = 0
        assert_eq!(v[3], 0.25 * (3.0 - 8.0));
        assert_eq!(v[16], 0.25 * (15.0 - 8.0)); // weight 16: high nibble of byte 0
        // Q4_1: d = 2, m = -1 → d·q + m.
        let mut q41 = h(2.0).to_vec();
        q41.extend(h(-1.0));
        q41.extend((0..16u8).map(|j| j | (1 << 4)));
        let v = dequantize_f64(GgmlType::Q4_1, &q41);
        assert_eq!(v[7], 13.0);
        assert_eq!(v[20], 1.0);
        // F16 and BF16 widen exactly.
        assert_eq!(dequantize_f64(GgmlType::F16, &h(-0.375)), vec![-0.375]);
        assert_eq!(dequantize_f64(GgmlType::BF16, &bf16::from_f32(3.0).to_le_bytes()), vec![3.0]);
    }
}
