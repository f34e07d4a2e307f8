//! Quantized weights in GGUF's block formats: the codecs of every block type kiln reads, in one
//! place. [`GgmlType`] names what a GGUF file can hold; [`QuantType`] the formats kiln keeps on
//! the GPU as blocks ([`QuantWeights`] on the CPU; `kernels::qmatmul::QuantTensor` on the GPU,
//! multiplied by `kernels::qmatmul`, which dequantizes in its inner loop); [`codec`] encodes,
//! decodes and repacks blocks for the GPU.
//!
//! # Block formats (ggml-common.h); `d`, `m`, `dmin` f16
//! 32 weights per block:
//!   Q8_0: 34 bytes = d, 32 × i8 q;                         w = d·q
//!   Q4_0: 18 bytes = d, 16 bytes of nibbles;               w = d·(q − 8)
//!   Q4_1: 20 bytes = d, m, 16 bytes of nibbles;            w = d·q + m
//!   Q5_0: 22 bytes = d, 32 fifth bits (u32), nibbles;      w = d·(q − 16)
//!   Q5_1: 24 bytes = d, m, 32 fifth bits (u32), nibbles;   w = d·q + m
//! In these blocks byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
//! 256 weights per super-block (K-quants), in sub-blocks with their own quantized scales:
//!   Q4_K: 144 bytes, 8 × 32, 6-bit scale sc and min mn;    w = d·sc·q − dmin·mn, q 4 bits
//!   Q5_K: 176 bytes, as Q4_K with 5-bit q
//!   Q6_K: 210 bytes, 16 × 16, int8 scale sc;               w = d·sc·(q − 32), q 6 bits
//!   Q3_K: 110 bytes, 16 × 16, 6-bit signed scale sc;      w = d·sc·q, q in −4..3
//!   Q2_K:  84 bytes, 16 × 16, 4-bit scale sc and min mn;  w = d·sc·q − dmin·mn, q 2 bits
//! 16-bit floats, kept as they are (frozen 16-bit bases), in blocks of 32 like the rest so the
//! same kernels read them:
//!   F16:  64 bytes = 32 × f16;                             w = the f16
//!   BF16: 64 bytes = 32 × bf16;                            w = the bf16 (an f32's top half)
//! `codec::dequantize_f64` spells out where each weight's bits sit.

pub mod codec;
mod ggml;
mod kquant;

pub use codec::{dequantize, dequantize_f64, repack, unpack};
pub use ggml::{GgmlType, READABLE_TYPES};

use crate::error::{Error, Result};

/// Weights per block of the 32-weight formats; the K-quants' super-blocks are 8 of these, and
/// the kernels step through every format 32 weights at a time.
pub const BLOCK: usize = 32;

/// Weights per K-quant super-block.
pub use codec::QK_K;

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
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q2_k")]
    #[serde(rename = "q2_k")]
    Q2_K,
    #[value(name = "q3_k")]
    #[serde(rename = "q3_k")]
    Q3_K,
    #[value(name = "q4_k")]
    #[serde(rename = "q4_k")]
    Q4_K,
    #[value(name = "q5_k")]
    #[serde(rename = "q5_k")]
    Q5_K,
    #[value(name = "q6_k")]
    #[serde(rename = "q6_k")]
    Q6_K,
    #[value(name = "f16")]
    #[serde(rename = "f16")]
    F16,
    #[value(name = "bf16")]
    #[serde(rename = "bf16")]
    BF16,
}

/// Where a block's bytes go on the GPU (`codec` module doc): byte ranges of the block that are
/// copied word by word into the quant and scale regions, and the offset of a lone f16 field
/// packed two blocks to a word. Together they cover the block exactly.
#[derive(Clone, Copy, Debug)]
pub struct GpuLayout {
    pub quants: (usize, usize),
    pub scales: (usize, usize),
    pub half: Option<usize>,
}

impl GpuLayout {
    pub fn quant_words(&self) -> usize {
        (self.quants.1 - self.quants.0) / 4
    }

    pub fn scale_words(&self) -> usize {
        (self.scales.1 - self.scales.0) / 4
    }
}

impl QuantType {
    pub const ALL: [QuantType; 12] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q2_K,
        QuantType::Q3_K,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
        QuantType::F16,
        QuantType::BF16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q5_0 => "q5_0",
            QuantType::Q5_1 => "q5_1",
            QuantType::Q2_K => "q2_k",
            QuantType::Q3_K => "q3_k",
            QuantType::Q4_K => "q4_k",
            QuantType::Q5_K => "q5_k",
            QuantType::Q6_K => "q6_k",
            QuantType::F16 => "f16",
            QuantType::BF16 => "bf16",
        }
    }

    /// The format of a GGUF tensor type, if kiln can keep it quantized.
    pub fn from_ggml(t: GgmlType) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|q| q.ggml() == t)
    }

    /// The GGUF type of these blocks.
    pub fn ggml(self) -> GgmlType {
        match self {
            QuantType::Q8_0 => GgmlType::Q8_0,
            QuantType::Q4_0 => GgmlType::Q4_0,
            QuantType::Q4_1 => GgmlType::Q4_1,
            QuantType::Q5_0 => GgmlType::Q5_0,
            QuantType::Q5_1 => GgmlType::Q5_1,
            QuantType::Q2_K => GgmlType::Q2_K,
            QuantType::Q3_K => GgmlType::Q3_K,
            QuantType::Q4_K => GgmlType::Q4_K,
            QuantType::Q5_K => GgmlType::Q5_K,
            QuantType::Q6_K => GgmlType::Q6_K,
            QuantType::F16 => GgmlType::F16,
            QuantType::BF16 => GgmlType::BF16,
        }
    }

    /// Whether the blocks are 256-weight super-blocks.
    pub fn is_k_quant(self) -> bool {
        matches!(self, QuantType::Q2_K | QuantType::Q3_K | QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K)
    }

    /// Whether these are plain 16-bit floats (F16, BF16) rather than quantized blocks.
    pub fn is_16bit(self) -> bool {
        matches!(self, QuantType::F16 | QuantType::BF16)
    }

    /// Weights per block: 32, or 256 for the K-quants.
    pub fn block_weights(self) -> usize {
        if self.is_k_quant() { QK_K } else { BLOCK }
    }

    /// Bytes of one block in the file.
    pub fn block_bytes(self) -> usize {
        // GGUF counts 16-bit tensors one value per "block"; kiln groups them by 32.
        if self.is_16bit() {
            return 2 * BLOCK;
        }
        self.ggml().block_layout().expect("every QuantType has a known layout").1 as usize
    }

    /// Where the block's bytes go on the GPU.
    pub fn gpu_layout(self) -> GpuLayout {
        let (quants, scales, half) = match self {
            QuantType::Q8_0 => ((2, 34), (0, 0), Some(0)),
            QuantType::Q4_0 => ((2, 18), (0, 0), Some(0)),
            QuantType::Q4_1 => ((4, 20), (0, 4), None),
            QuantType::Q5_0 => ((2, 22), (0, 0), Some(0)),
            QuantType::Q5_1 => ((4, 24), (0, 4), None),
            // The sub-block scales travel with the quants (they precede them in the block);
            // the scale words are d and dmin.
            QuantType::Q2_K => ((0, 80), (80, 84), None),
            QuantType::Q3_K => ((0, 108), (0, 0), Some(108)),
            QuantType::Q4_K => ((16, 144), (0, 16), None),
            QuantType::Q5_K => ((16, 176), (0, 16), None),
            QuantType::Q6_K => ((0, 192), (192, 208), Some(208)),
            // Two values per word, the lower index in the low half.
            QuantType::F16 | QuantType::BF16 => ((0, 64), (0, 0), None),
        };
        GpuLayout { quants, scales, half }
    }

    /// u32 words of quants per block on the GPU.
    pub fn quant_words(self) -> usize {
        self.gpu_layout().quant_words()
    }

    /// The number the shader is specialised with (`QTYPE`): GGUF's type number.
    pub fn shader_id(self) -> u32 {
        self.ggml().to_u32()
    }

    /// Bits per weight as stored (scales included).
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_weights() as f64
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a frozen base's linear weights are held on the GPU (`--base-dtype`). The LoRA adapters,
/// norms and embeddings are f32 whatever this says; products accumulate in f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    /// As the file stores them: GGUF blocks stay blocks, F16/BF16 stay 16-bit, F32 stays f32
    #[default]
    Auto,
    /// Everything widened (or dequantized) to f32
    F32,
    /// 16-bit floats: F16 weights as they are, F32/BF16 ones rounded to f16
    F16,
    /// bfloat16: BF16 weights as they are, F32/F16 ones rounded to bf16 (as `torch_dtype=torch.bfloat16`)
    #[value(name = "bf16")]
    #[serde(rename = "bf16")]
    BF16,
}

impl BaseDtype {
    /// The format a linear weight stored as `stored` is kept in (None: f32). Rounding an f32 or
    /// 16-bit file to 16 bits is a choice users make (PEFT's `torch_dtype`); turning quantized
    /// blocks into 16-bit floats would only cost memory and keep the quantization error, so it
    /// is an error naming the flag and the tensor.
    pub fn keep(self, stored: GgmlType, tensor: &str) -> Result<Option<QuantType>> {
        let float = matches!(stored, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let want = match self {
            BaseDtype::Auto => return Ok(QuantType::from_ggml(stored)),
            BaseDtype::F32 => return Ok(None),
            BaseDtype::F16 => QuantType::F16,
            BaseDtype::BF16 => QuantType::BF16,
        };
        if !float {
            return Err(Error::invalid(
                "--base-dtype",
                format!(
                    "{want}: tensor `{tensor}` is stored as {stored} blocks; a quantized base stays quantized \
                     (--base-dtype auto) or is dequantized (--base-dtype f32), not converted to {want}"
                ),
            ));
        }
        Ok(Some(want))
    }
}

/// A `[rows, cols]` matrix in GGUF blocks on the CPU (each row `cols / kind.block_weights()`
/// blocks), as a file stores it.
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
        let want = rows * (cols / kind.block_weights()) * kind.block_bytes();
        if blocks.len() != want {
            return Err(Error::invalid(
                "quantized weight",
                format!(
                    "tensor `{name}` ({kind}, [{rows}, {cols}]) has {} bytes; {} blocks of {} bytes are {want}",
                    blocks.len(),
                    rows * cols / kind.block_weights(),
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
        let mut blocks = Vec::with_capacity(rows * cols / kind.block_weights() * kind.block_bytes());
        for block in data.chunks_exact(kind.block_weights()) {
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
        let row_bytes = self.cols / self.kind.block_weights() * self.kind.block_bytes();
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for &r in order {
            blocks.extend_from_slice(&self.blocks[r * row_bytes..(r + 1) * row_bytes]);
        }
        QuantWeights { blocks, ..self.clone() }
    }
}

/// Encodes a row-major matrix with rows of `cols` values as a GGUF tensor of type `ty`: F32,
/// F16 and BF16 value by value (rounded to nearest), the block formats by [`QuantWeights::quantize`].
/// `name` (the tensor) goes into errors.
pub fn encode(ty: GgmlType, data: &[f32], cols: usize, name: &str) -> Result<Vec<u8>> {
    Ok(match ty {
        GgmlType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::BF16 => data.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        _ => {
            let kind = QuantType::from_ggml(ty).filter(|k| !k.is_16bit()).ok_or_else(|| {
                Error::invalid("quantize", format!("tensor `{name}`: kiln does not write {ty} blocks"))
            })?;
            let rows = data.len().checked_div(cols).unwrap_or(0);
            QuantWeights::quantize(kind, data, rows, cols, name)?.blocks
        }
    })
}

/// Rows must be whole blocks: K-quant rows whole super-blocks of 256 (llama.cpp refuses the
/// rest too, and its converters fall back to another type for such tensors).
pub fn check_row_len(kind: QuantType, cols: usize, name: &str) -> Result<()> {
    let b = kind.block_weights();
    if cols == 0 || !cols.is_multiple_of(b) {
        let what = if kind.is_k_quant() { "super-block size" } else { "block size" };
        return Err(Error::invalid(
            "quantized weight",
            format!("tensor `{name}` has rows of {cols} values; {kind} needs a multiple of the {what} {b}"),
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
    fn gpu_layouts_cover_every_byte_once() {
        for kind in QuantType::ALL {
            let g = kind.gpu_layout();
            let mut seen = vec![0; kind.block_bytes()];
            let half = g.half.map_or(0..0, |h| h..h + 2);
            for i in (g.quants.0..g.quants.1).chain(g.scales.0..g.scales.1).chain(half) {
                seen[i] += 1;
            }
            assert!(seen.iter().all(|&c| c == 1), "{kind}: {seen:?}");
            assert!((g.quants.1 - g.quants.0) % 4 == 0 && (g.scales.1 - g.scales.0) % 4 == 0, "{kind}");
        }
    }

    #[test]
    fn repack_keeps_every_bit() {
        for kind in QuantType::ALL {
            let cols = 3 * kind.block_weights();
            for rows in [1, 3] {
                let w = QuantWeights::quantize(kind, &data(rows * cols), rows, cols, "w").unwrap();
                let (words, off) = repack(&w);
                assert_eq!(off, rows * 3 * kind.quant_words());
                assert_eq!(unpack(kind, rows, cols, &words), w.blocks, "{kind} rows={rows}");
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
        // Q5_0 and Q5_1 as Q4_0 and Q4_1 with twice the levels. The K-quants' steps depend on
        // their searched scales, so their bound is looser: one step of the sub-block's range
        // (Q4_K, Q5_K) or of the 16-group's largest magnitude (Q6_K), with the 6- or 8-bit
        // rounding of the scales on top.
        let x = data(256 * 5);
        for (kind, bound) in [
            (QuantType::Q8_0, 0.57 * 3.0 / 127.0),
            (QuantType::Q4_0, 1.01 * 3.0 / 8.0),
            (QuantType::Q4_1, 0.51 * 6.0 / 15.0 + 3.0 / 1024.0),
            (QuantType::Q5_0, 1.01 * 3.0 / 16.0),
            (QuantType::Q5_1, 0.51 * 6.0 / 31.0 + 3.0 / 1024.0),
            (QuantType::Q2_K, 1.1 * 6.0 / 3.0),
            (QuantType::Q3_K, 1.1 * 3.0 / 4.0),
            (QuantType::Q4_K, 1.1 * 6.0 / 15.0),
            (QuantType::Q5_K, 1.1 * 6.0 / 31.0),
            (QuantType::Q6_K, 1.1 * 3.0 / 32.0),
        ] {
            let w = QuantWeights::quantize(kind, &x, 5, 256, "w").unwrap();
            let e = QuantError::measure(&x, &w.dequantize());
            eprintln!("{kind}: mean |error| {:.3e}, max {:.3e} (bound {bound:.3e})", e.mean_abs, e.max_abs);
            assert!(e.max_abs <= bound, "{kind}: max error {} over {bound}", e.max_abs);
            assert!(e.mean_abs > 0.0 && e.mean_abs < e.max_abs);
        }
        // More bits, less error.
        let mean =
            |k| QuantError::measure(&x, &QuantWeights::quantize(k, &x, 5, 256, "w").unwrap().dequantize()).mean_abs;
        assert!(mean(QuantType::Q6_K) < mean(QuantType::Q5_K) && mean(QuantType::Q5_K) < mean(QuantType::Q4_K));
        assert!(mean(QuantType::Q4_K) < mean(QuantType::Q3_K) && mean(QuantType::Q3_K) < mean(QuantType::Q2_K));
        assert!(mean(QuantType::Q4_K) < mean(QuantType::Q4_1) && mean(QuantType::Q5_1) < mean(QuantType::Q4_1));
    }

    #[test]
    fn names_are_the_same_in_flags_configs_and_ggml() {
        use clap::ValueEnum;
        for kind in QuantType::ALL {
            let flag = kind.to_possible_value().unwrap();
            assert_eq!(flag.get_name(), kind.name());
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.name()));
            assert_eq!(kind.ggml().to_string().to_lowercase(), kind.name());
            assert_eq!(QuantType::from_ggml(kind.ggml()), Some(kind));
        }
    }

    #[test]
    fn bad_rows_and_byte_counts_are_errors_naming_the_tensor() {
        let e = QuantWeights::quantize(QuantType::Q4_1, &data(40), 1, 40, "blk.0.ffn_down.weight").unwrap_err();
        assert!(
            e.to_string().contains("blk.0.ffn_down.weight") && e.to_string().contains("multiple of the block size 32"),
            "{e}"
        );
        // K-quant rows must be whole super-blocks, as llama.cpp requires.
        let e = QuantWeights::quantize(QuantType::Q4_K, &data(576), 1, 576, "blk.0.attn_q.weight").unwrap_err();
        assert!(e.to_string().contains("blk.0.attn_q.weight") && e.to_string().contains("super-block size 256"), "{e}");
        let e = QuantWeights::new(QuantType::Q6_K, 1, 256, vec![0; 209], "t").unwrap_err();
        assert!(e.to_string().contains("209 bytes") && e.to_string().contains("210"), "{e}");
        let e = QuantWeights::new(QuantType::Q8_0, 2, 32, vec![0; 67], "t").unwrap_err();
        assert!(e.to_string().contains("67 bytes") && e.to_string().contains("68"), "{e}");
    }
}
