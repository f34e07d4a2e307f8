//! Quantized weights in GGUF's block formats (Q8_0, Q4_0, Q4_1): the CPU codecs (quantize a
//! row of f32, read blocks back), and [`QuantTensor`], a frozen weight matrix kept quantized on
//! the GPU and multiplied by `kernels::qmatmul`, which dequantizes in its inner loop.
//!
//! # Block formats (ggml-common.h), 32 weights per block, `d` and `m` f16
//!   Q8_0: 34 bytes = d, 32 × i8 q;              w = d·q
//!   Q4_0: 18 bytes = d, 16 bytes of nibbles;    w = d·(q − 8)
//!   Q4_1: 20 bytes = d, m, 16 bytes of nibbles; w = d·q + m
//! In Q4 blocks byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
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

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::gguf::GgmlType;
use crate::tensor::{DType, Tensor};

/// Weights per block in every supported format.
pub const BLOCK: usize = 32;

/// A block format kiln keeps on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[allow(non_camel_case_types)]
#[serde(rename_all = "snake_case")]
pub enum QuantType {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
}

impl QuantType {
    pub const ALL: [QuantType; 3] = [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1];

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
        }
    }

    /// The format of a GGUF tensor type, if kiln can keep it quantized.
    pub fn from_ggml(t: GgmlType) -> Option<QuantType> {
        match t {
            GgmlType::Q8_0 => Some(QuantType::Q8_0),
            GgmlType::Q4_0 => Some(QuantType::Q4_0),
            GgmlType::Q4_1 => Some(QuantType::Q4_1),
            _ => None,
        }
    }

    /// Bytes of one block in the file.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
        }
    }

    /// Bytes of the scale fields at the start of a block (d, or d and m).
    fn scale_bytes(self) -> usize {
        if self == QuantType::Q4_1 { 4 } else { 2 }
    }

    /// u32 words of quants per block on the GPU.
    pub fn quant_words(self) -> usize {
        (self.block_bytes() - self.scale_bytes()) / 4
    }

    /// The number the shader is specialised with (`QTYPE`): GGUF's type number.
    pub fn shader_id(self) -> u32 {
        match self {
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q8_0 => 8,
        }
    }

    /// Bits per weight as stored (scales included).
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / BLOCK as f64
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `[rows, cols]` matrix in GGUF blocks on the CPU (each row `cols / 32` blocks), as a file
/// stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantWeights {
    pub kind: QuantType,
    pub rows: usize,
    pub cols: usize,
    pub blocks: Vec<u8>,
}

impl QuantWeights {
    /// Checks that `blocks` holds exactly the blocks of a `[rows, cols]` matrix; `name` (the
    /// tensor) and `origin` (the file) go into the error.
    pub fn new(kind: QuantType, rows: usize, cols: usize, blocks: Vec<u8>, name: &str) -> Result<Self> {
        check_row_len(kind, cols, name)?;
        let want = rows * (cols / BLOCK) * kind.block_bytes();
        if blocks.len() != want {
            return Err(Error::invalid(
                "quantized weight",
                format!(
                    "tensor `{name}` ({kind}, [{rows}, {cols}]) has {} bytes; {} blocks of {} bytes are {want}",
                    blocks.len(),
                    rows * cols / BLOCK,
                    kind.block_bytes()
                ),
            ));
        }
        Ok(QuantWeights { kind, rows, cols, blocks })
    }

    /// Quantizes a row-major `[rows, cols]` f32 matrix (ggml's reference rounding).
    pub fn quantize(kind: QuantType, data: &[f32], rows: usize, cols: usize, name: &str) -> Result<Self> {
        check_row_len(kind, cols, name)?;
        if data.len() != rows * cols {
            return Err(Error::invalid(
                "quantize",
                format!("tensor `{name}`: {} values for a [{rows}, {cols}] matrix", data.len()),
            ));
        }
        let mut blocks = Vec::with_capacity(rows * cols / BLOCK * kind.block_bytes());
        for block in data.chunks_exact(BLOCK) {
            quantize_block(kind, block, &mut blocks);
        }
        Ok(QuantWeights { kind, rows, cols, blocks })
    }

    /// The values the blocks encode, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        crate::reference::quant::dequantize(self.kind, &self.blocks).into_iter().map(|v| v as f32).collect()
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Rows reordered: row `i` of the result is row `order[i]` of `self` (whole rows of blocks
    /// move, so no value changes). For llama.cpp's Q/K row permutation.
    pub fn permute_rows(&self, order: &[usize]) -> QuantWeights {
        let row_bytes = self.cols / BLOCK * self.kind.block_bytes();
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for &r in order {
            blocks.extend_from_slice(&self.blocks[r * row_bytes..(r + 1) * row_bytes]);
        }
        QuantWeights { blocks, ..self.clone() }
    }
}

/// Rows must be whole blocks.
pub fn check_row_len(kind: QuantType, cols: usize, name: &str) -> Result<()> {
    if cols == 0 || !cols.is_multiple_of(BLOCK) {
        return Err(Error::invalid(
            "quantized weight",
            format!("tensor `{name}` has rows of {cols} values; {kind} needs a multiple of the block size {BLOCK}"),
        ));
    }
    Ok(())
}

/// Appends one block of 32 values, as ggml's `quantize_row_*_ref` encodes it.
fn quantize_block(kind: QuantType, x: &[f32], out: &mut Vec<u8>) {
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

/// A frozen `[rows, cols]` weight matrix (`[out, in]`, blocks along `in`) on the GPU in the
/// repacked block layout. It never gets a gradient.
#[derive(Clone)]
pub struct QuantTensor {
    pub kind: QuantType,
    pub rows: usize,
    pub cols: usize,
    /// The repacked words (`DType::U32`).
    pub words: Tensor,
    /// Word index where the scales start.
    pub scale_offset: usize,
}

impl std::fmt::Debug for QuantTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantTensor({}, [{}, {}])", self.kind, self.rows, self.cols)
    }
}

impl QuantTensor {
    pub fn upload(gpu: &Gpu, w: &QuantWeights) -> Result<QuantTensor> {
        let (words, scale_offset) = repack(w);
        let n = words.len();
        Ok(QuantTensor {
            kind: w.kind,
            rows: w.rows,
            cols: w.cols,
            words: Tensor::from_u32(gpu, &words, &[n])?,
            scale_offset,
        })
    }

    /// The blocks back on the CPU, as the file had them.
    pub fn download(&self, gpu: &Gpu) -> Result<QuantWeights> {
        let words = self.words.to_u32_vec(gpu)?;
        Ok(QuantWeights {
            kind: self.kind,
            rows: self.rows,
            cols: self.cols,
            blocks: unpack(self.kind, self.rows, self.cols, &words),
        })
    }

    /// The matrix dequantized into a new f32 tensor `[rows, cols]` (through the CPU: for
    /// exports and merges, not for the hot path).
    pub fn dequantize(&self, gpu: &Gpu) -> Result<Tensor> {
        Tensor::from_f32(gpu, &self.download(gpu)?.dequantize(), &[self.rows, self.cols])
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Bytes on the GPU.
    pub fn byte_len(&self) -> u64 {
        debug_assert_eq!(self.words.dtype(), DType::U32);
        self.words.byte_len()
    }
}

/// The quantization error of one tensor: mean and max |w − dequantize(quantize(w))|, and the
/// mean |w| for scale.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct QuantError {
    pub values: usize,
    pub mean_abs: f64,
    pub max_abs: f64,
    pub mean_abs_weight: f64,
}

impl QuantError {
    pub fn measure(original: &[f32], decoded: &[f32]) -> QuantError {
        let (mut sum, mut max, mut sum_w) = (0.0f64, 0.0f64, 0.0f64);
        for (&a, &b) in original.iter().zip(decoded) {
            let e = (a as f64 - b as f64).abs();
            sum += e;
            max = max.max(e);
            sum_w += (a as f64).abs();
        }
        let n = original.len().max(1) as f64;
        QuantError { values: original.len(), mean_abs: sum / n, max_abs: max, mean_abs_weight: sum_w / n }
    }

    /// Pools tensors' errors (weighted by their sizes).
    pub fn merge(&self, other: &QuantError) -> QuantError {
        let n = (self.values + other.values).max(1) as f64;
        let w = |a: f64, b: f64| (a * self.values as f64 + b * other.values as f64) / n;
        QuantError {
            values: self.values + other.values,
            mean_abs: w(self.mean_abs, other.mean_abs),
            max_abs: self.max_abs.max(other.max_abs),
            mean_abs_weight: w(self.mean_abs_weight, other.mean_abs_weight),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * if i % 97 == 0 { 3.0 } else { 1.0 }).collect()
    }

    #[test]
    fn repack_keeps_every_bit() {
        for kind in QuantType::ALL {
            for rows in [1, 3] {
                let w = QuantWeights::quantize(kind, &data(rows * 96), rows, 96, "w").unwrap();
                let (words, off) = repack(&w);
                assert_eq!(off, rows * 3 * kind.quant_words());
                assert_eq!(unpack(kind, rows, 96, &words), w.blocks, "{kind} rows={rows}");
                // The GPU copy is the file's size, plus at most one half word of scales.
                assert!(words.len() * 4 - w.blocks.len() <= 2, "{kind}: {} words", words.len());
            }
        }
    }

    #[test]
    fn quantization_error_is_within_half_a_step() {
        // Per block: Q8_0 half a step (max/127/2) plus f16 rounding of d; Q4_0 one step
        // (max/8, the far side clips at q = 15); Q4_1 half a step ((max−min)/15/2) plus the
        // rounding of d and m. On data in [−3, 3].
        let x = data(32 * 20);
        for (kind, bound) in [
            (QuantType::Q8_0, 0.57 * 3.0 / 127.0),
            (QuantType::Q4_0, 1.01 * 3.0 / 8.0),
            (QuantType::Q4_1, 0.51 * 6.0 / 15.0 + 3.0 / 1024.0),
        ] {
            let w = QuantWeights::quantize(kind, &x, 20, 32, "w").unwrap();
            let e = QuantError::measure(&x, &w.dequantize());
            assert!(e.max_abs <= bound, "{kind}: max error {} over {bound}", e.max_abs);
            assert!(e.mean_abs > 0.0 && e.mean_abs < e.max_abs);
        }
    }

    #[test]
    fn bad_rows_and_byte_counts_are_errors_naming_the_tensor() {
        let e = QuantWeights::quantize(QuantType::Q4_1, &data(40), 1, 40, "blk.0.ffn_down.weight").unwrap_err();
        assert!(
            e.to_string().contains("blk.0.ffn_down.weight") && e.to_string().contains("multiple of the block size 32"),
            "{e}"
        );
        let e = QuantWeights::new(QuantType::Q8_0, 2, 32, vec![0; 67], "t").unwrap_err();
        assert!(e.to_string().contains("67 bytes") && e.to_string().contains("68"), "{e}");
    }
}
