//! Block codecs, each GGUF block type once: decoding to f32/f64, ggml's reference encoding,
//! and the word layout the GPU reads.
//!
//! # GPU layout: the same bits, repacked into aligned words
//! A block of 18, 20, 22, 34, 84, 110 or 210 bytes puts most blocks at offsets that are not
//! multiples of 4, and WGSL reads storage buffers in u32 words (no byte or f16 loads without
//! extensions). Rather than assembling each word from two unaligned ones in the inner loop, the
//! upload splits each block's bytes ([`GpuLayout`](super::GpuLayout): three disjoint byte
//! ranges that cover the block) into three regions of one u32 buffer, keeping every bit and
//! adding at most 2 bytes:
//!   quants: block i's quant bytes at word `i·QW`, in file order: Q4_0/Q4_1 16 bytes, Q8_0 32,
//!           Q5_0/Q5_1 the 4 bytes of fifth bits then 16 of nibbles, Q2_K its 16 bytes of
//!           scales and 64 of 2-bit quants, Q3_K its first 108 bytes (high bits, 2-bit quants,
//!           scales), Q4_K 128 bytes of nibbles, Q5_K 32 bytes of fifth bits then 128 of
//!           nibbles, Q6_K 128 bytes of low nibbles then 64 of high bit pairs;
//!   scales: from word `scale_offset`, block i's whole scale words at `scale_offset + i·SW`:
//!           Q4_1/Q5_1 d and m; Q2_K d and dmin; Q4_K/Q5_K d, dmin and the 12 bytes of 6-bit
//!           scales and mins; Q6_K the 16 int8 scales;
//!   halves: after those, a lone f16 field (the d of Q4_0, Q5_0, Q8_0, Q3_K and Q6_K), two
//!           blocks per word, block i in half i % 2.
//! The shader unpacks f16 pairs with `unpack2x16float`. Blocks are numbered row-major: row r's
//! block b is block r·(K/B) + b (B = 32, or 256 for the K-quants' super-blocks). Nothing is
//! dequantized on load.

use half::{bf16, f16};

use super::{GgmlType, QuantType, QuantWeights};

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
        GgmlType::Q5_0 => {
            for block in bytes.chunks_exact(22) {
                let d = f16_at(block, 0);
                let qh = u32_at(block, 2);
                for (i, q) in nibbles(&block[6..]).enumerate() {
                    out.push(d * ((q | ((qh >> i) & 1) << 4) as f64 - 16.0));
                }
            }
        }
        GgmlType::Q5_1 => {
            for block in bytes.chunks_exact(24) {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                let qh = u32_at(block, 4);
                for (i, q) in nibbles(&block[8..]).enumerate() {
                    out.push(d * (q | ((qh >> i) & 1) << 4) as f64 + m);
                }
            }
        }
        GgmlType::Q2_K => {
            // 16 groups of 16: scales[g] = sc | m << 4 (4 bits each); qs byte 32·h + l holds
            // weights 128·h + 32·s + l at bits 2s (s = 0..3), h the 128-half.
            for block in bytes.chunks_exact(84) {
                let (sc, qs) = (&block[..16], &block[16..80]);
                let (d, dmin) = (f16_at(block, 80), f16_at(block, 82));
                for i in 0..QK_K {
                    let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                    let g = i / 16;
                    let q = (qs[32 * h + l] >> (2 * s)) & 3;
                    out.push(d * (sc[g] & 15) as f64 * q as f64 - dmin * (sc[g] >> 4) as f64);
                }
            }
        }
        GgmlType::Q3_K => {
            // As Q2_K's low bits, plus a high bit from hmask (bit i / 32 of byte i % 32) that
            // *subtracts* 4 when clear; 6-bit signed scales (offset 32) packed as K_SCALES.
            for block in bytes.chunks_exact(110) {
                let (hmask, qs, sc) = (&block[..32], &block[32..96], &block[96..108]);
                let d = f16_at(block, 108);
                for i in 0..QK_K {
                    let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                    let g = i / 16;
                    let low = (sc[g % 8] >> (4 * (g / 8))) & 15;
                    let high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
                    let scale = (low | high << 4) as f64 - 32.0;
                    let q = ((qs[32 * h + l] >> (2 * s)) & 3) as f64
                        - if (hmask[l] >> (i / 32)) & 1 == 1 { 0.0 } else { 4.0 };
                    out.push(d * scale * q);
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // Eight sub-blocks of 32 with 6-bit scale and min ([`k_scale_min`]); qs byte
            // 32·(j/2) + l holds sub-block j's weight l in nibble j % 2; Q5_K's qh byte l holds
            // the fifth bit of sub-block j's weight l at bit j.
            let five = ty == GgmlType::Q5_K;
            let bb = if five { 176 } else { 144 };
            for block in bytes.chunks_exact(bb) {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let scales: &[u8; 12] = block[4..16].try_into().expect("12 bytes");
                let (qh, qs) = if five { (&block[16..48], &block[48..]) } else { (&block[..0], &block[16..]) };
                for j in 0..8 {
                    let (sc, m) = k_scale_min(scales, j);
                    let (dl, ml) = (d * sc as f64, dmin * m as f64);
                    for l in 0..32 {
                        let mut q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15;
                        if five {
                            q |= ((qh[l] >> j) & 1) << 4;
                        }
                        out.push(dl * q as f64 - ml);
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            // Two 128-halves h; in each, weight 32·c + l (c = 0..3) has its low 4 bits in ql
            // byte 64·h + 32·(c % 2) + l at nibble c / 2, its high 2 bits in qh byte 32·h + l at
            // bits 2c; int8 scale per 16 weights; d last.
            for block in bytes.chunks_exact(210) {
                let (ql, qh, sc) = (&block[..128], &block[128..192], &block[192..208]);
                let d = f16_at(block, 208);
                for i in 0..QK_K {
                    let (h, c, l) = (i / 128, (i / 32) % 4, i % 32);
                    let lo = (ql[64 * h + 32 * (c % 2) + l] >> (4 * (c / 2))) & 15;
                    let hi = (qh[32 * h + l] >> (2 * c)) & 3;
                    out.push(d * (sc[i / 16] as i8) as f64 * ((lo | hi << 4) as f64 - 32.0));
                }
            }
        }
        other => unreachable!("dequantize called for {other}, which is_readable() rejects"),
    }
    out
}

/// Weights per K-quant super-block.
pub const QK_K: usize = 256;

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The 32 4-bit values of 16 bytes in weight order: low nibbles, then high nibbles.
fn nibbles(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.iter().map(|&q| (q & 15) as u32).chain(b.iter().map(|&q| (q >> 4) as u32))
}

/// Sub-block `j`'s 6-bit scale and min in Q4_K/Q5_K's 12 packed bytes: bytes 0..3 hold scales
/// 0..3 and bytes 4..7 mins 0..3 in their low 6 bits; sub-blocks 4..7 keep their low 4 bits in
/// bytes 8..11 (scale low nibble, min high nibble) and their top 2 bits in the top bits of
/// bytes j − 4 (scale) and j (min).
pub(crate) fn k_scale_min(q: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// [`dequantize_f64`] rounded once to f32: what ggml computes (d·q is exact in f32, so the
/// only rounding is that of the sum, as here).
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    dequantize_f64(ty, bytes).into_iter().map(|v| v as f32).collect()
}

/// Appends one block (32 values, or 256 for the K-quants), as ggml's `quantize_row_*_ref`
/// encodes it.
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
        QuantType::Q5_0 => {
            // As Q4_0 with 16 levels each side: d = (largest magnitude) / −16,
            // q = min(31, trunc(x / d + 16.5)).
            let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: Vec<u8> = x.iter().map(|&v| ((v * id + 16.5) as i8).min(31) as u8).collect();
            out.extend(f16::from_f32(d).to_le_bytes());
            push_q5(&q, out);
        }
        QuantType::Q5_1 => {
            // As Q4_1 with 32 levels: d = (max − min) / 31, q = trunc((x − m) / d + 0.5).
            let min = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
            let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: Vec<u8> = x.iter().map(|&v| (((v - min) * id + 0.5) as u8).min(31)).collect();
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(f16::from_f32(min).to_le_bytes());
            push_q5(&q, out);
        }
        QuantType::Q2_K => super::kquant::quantize_q2_k(x, out),
        QuantType::Q3_K => super::kquant::quantize_q3_k(x, out),
        QuantType::Q4_K => super::kquant::quantize_q45_k(x, false, out),
        QuantType::Q5_K => super::kquant::quantize_q45_k(x, true, out),
        QuantType::Q6_K => super::kquant::quantize_q6_k(x, out),
        // Round to nearest even, as PyTorch's `.to(torch.float16 / torch.bfloat16)`.
        QuantType::F16 => out.extend(x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes())),
        QuantType::BF16 => out.extend(x.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes())),
    }
}

/// The quants of a Q5_0/Q5_1 block: bit 4 of weight j at bit j of a u32 (qh), then the low
/// nibbles as in Q4 (byte j: weight j low, weight j + 16 high).
fn push_q5(q: &[u8], out: &mut Vec<u8>) {
    let qh = q.iter().enumerate().fold(0u32, |h, (j, &v)| h | (((v >> 4) & 1) as u32) << j);
    out.extend(qh.to_le_bytes());
    out.extend((0..16).map(|j| (q[j] & 0xf) | ((q[j + 16] & 0xf) << 4)));
}

/// The GPU words of `w` (see the module doc): quants, then whole scale words, then the
/// paired f16 fields. Returns (words, scale offset).
pub fn repack(w: &QuantWeights) -> (Vec<u32>, usize) {
    let g = w.kind.gpu_layout();
    let n = w.blocks.len() / w.kind.block_bytes();
    let (qw, sw) = (g.quant_words(), g.scale_words());
    let halves = if g.half.is_some() { n.div_ceil(2) } else { 0 };
    let mut words = vec![0u32; n * (qw + sw) + halves];
    for (i, block) in w.blocks.chunks_exact(w.kind.block_bytes()).enumerate() {
        for j in 0..qw {
            words[i * qw + j] = u32_at(block, g.quants.0 + 4 * j);
        }
        for j in 0..sw {
            words[n * qw + i * sw + j] = u32_at(block, g.scales.0 + 4 * j);
        }
        if let Some(h) = g.half {
            words[n * (qw + sw) + i / 2] |= (u16::from_le_bytes([block[h], block[h + 1]]) as u32) << (16 * (i % 2));
        }
    }
    (words, n * qw)
}

/// The inverse of [`repack`]: GGUF block bytes from the GPU words of a `[rows, cols]` matrix.
pub fn unpack(kind: QuantType, rows: usize, cols: usize, words: &[u32]) -> Vec<u8> {
    let g = kind.gpu_layout();
    let n = rows * cols / kind.block_weights();
    let (qw, sw) = (g.quant_words(), g.scale_words());
    let mut out = vec![0u8; n * kind.block_bytes()];
    for (i, block) in out.chunks_exact_mut(kind.block_bytes()).enumerate() {
        for j in 0..qw {
            block[g.quants.0 + 4 * j..][..4].copy_from_slice(&words[i * qw + j].to_le_bytes());
        }
        for j in 0..sw {
            block[g.scales.0 + 4 * j..][..4].copy_from_slice(&words[n * qw + i * sw + j].to_le_bytes());
        }
        if let Some(h) = g.half {
            let v = (words[n * (qw + sw) + i / 2] >> (16 * (i % 2))) as u16;
            block[h..h + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random valid blocks of every readable block type, decoded by gguf-py
    /// (`scripts/make_fixtures.py`): equal bit for bit, signs of zeros included.
    #[test]
    fn every_block_type_decodes_as_gguf_py_does() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant");
        let types = [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ];
        for ty in types {
            let name = ty.to_string().to_lowercase();
            let blocks = std::fs::read(dir.join(format!("{name}.blocks"))).unwrap();
            let want: Vec<u32> = std::fs::read(dir.join(format!("{name}.f32")))
                .unwrap()
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert!(ty.is_readable(), "{ty}");
            let got: Vec<u32> = dequantize(ty, &blocks).iter().map(|v| v.to_bits()).collect();
            assert_eq!(got.len(), want.len(), "{ty}: value count");
            let diff = got.iter().zip(&want).position(|(a, b)| a != b);
            if let Some(i) = diff {
                panic!(
                    "{ty}: value {i} is {} ({:#010x}), gguf-py says {} ({:#010x})",
                    f32::from_bits(got[i]),
                    got[i],
                    f32::from_bits(want[i]),
                    want[i]
                );
            }
            // The f64 decoding is the same values before rounding.
            let exact = dequantize_f64(ty, &blocks);
            assert!(exact.iter().zip(&got).all(|(&e, &g)| e as f32 == f32::from_bits(g)), "{ty}: f64 decoding");
            eprintln!("{ty}: {} values equal gguf-py's bit for bit", got.len());
        }
    }

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
