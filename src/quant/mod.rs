//! Quantized weights in GGUF's block formats: the codecs of every block type kiln reads, in one
//! place. [`GgmlType`] names what a GGUF file can hold; [`QuantType`] the formats kiln keeps on
//! the GPU as blocks ([`QuantWeights`] on the CPU; `kernels::qmatmul::QuantTensor` on the GPU,
//! multiplied by `kernels::qmatmul`, which dequantizes in its inner loop); [`codec`] encodes,
//! decodes and repacks blocks for the GPU.
//!
//! # Block formats (ggml-common.h), 32 weights per block, `d` and `m` f16
//!   Q8_0: 34 bytes = d, 32 × i8 q;              w = d·q
//!   Q4_0: 18 bytes = d, 16 bytes of nibbles;    w = d·(q − 8)
//!   Q4_1: 20 bytes = d, m, 16 bytes of nibbles; w = d·q + m
//! In Q4 blocks byte j holds weight j in its low nibble and weight j + 16 in its high nibble.

pub mod codec;
mod ggml;

pub use codec::{dequantize, dequantize_f64, repack, unpack};
pub use ggml::{GgmlType, READABLE_TYPES};

use crate::error::{Error, Result};

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

    /// The GGUF type of these blocks.
    pub fn ggml(self) -> GgmlType {
        match self {
            QuantType::Q8_0 => GgmlType::Q8_0,
            QuantType::Q4_0 => GgmlType::Q4_0,
            QuantType::Q4_1 => GgmlType::Q4_1,
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
    pub(crate) fn scale_bytes(self) -> usize {
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
            codec::quantize_block(kind, block, &mut blocks);
        }
        Ok(QuantWeights { kind, rows, cols, blocks })
    }

    /// The values the blocks encode, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        codec::dequantize(self.kind.ggml(), &self.blocks)
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
