//! Which GGUF type each tensor of an export gets, as llama.cpp chooses it: the converter
//! (convert_hf_to_gguf.py) keeps 1-D tensors and norms in F32 and writes the rest in the output
//! type; `llama-quantize` (src/llama-quant.cpp, `llama_tensor_get_type_impl`) then picks per
//! tensor for a quantized type. For Q4_K_M:
//!   - `output.weight` (or `token_embd.weight` when the head is tied): Q6_K, or Q8_0 when its
//!     rows are not whole 256-value super-blocks;
//!   - `attn_v` and `ffn_down` of the layers `use_more_bits` picks (the first and last eighth
//!     and every third in between): Q6_K; a fused `attn_qkv`: Q5_K; the rest Q4_K;
//!   - a row width the chosen type cannot hold falls back: Q4_K → Q5_0, Q5_K → Q5_1,
//!     Q6_K → Q8_0, and F16 when even 32 does not divide it (`tensor_type_fallback`).

use crate::formats::gguf::GgmlType;

/// The `--quantize` choices: llama.cpp's output types and `llama-quantize` mixtures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[allow(non_camel_case_types)]
pub enum OutType {
    #[value(name = "f32")]
    F32,
    #[value(name = "f16")]
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_k_m")]
    Q4_K_M,
    #[value(name = "q6_k")]
    Q6_K,
}

impl OutType {
    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::Q8_0 => "q8_0",
            OutType::Q4_0 => "q4_0",
            OutType::Q4_K_M => "q4_k_m",
            OutType::Q6_K => "q6_k",
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q4_0 => 2,
            OutType::Q8_0 => 7,
            OutType::Q4_K_M => 15,
            OutType::Q6_K => 18,
        }
    }

    /// The type most tensors get (llama.cpp's `default_type` of the mixture).
    fn default_type(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::Q8_0 => GgmlType::Q8_0,
            OutType::Q4_0 => GgmlType::Q4_0,
            OutType::Q4_K_M => GgmlType::Q4_K,
            OutType::Q6_K => GgmlType::Q6_K,
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, OutType::F32 | OutType::F16)
    }
}

impl std::fmt::Display for OutType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a tensor sits in the model, for the type choice.
pub struct TensorPlace<'a> {
    /// The GGUF name (`blk.3.attn_v.weight`).
    pub name: &'a str,
    /// Row-major shape.
    pub shape: &'a [usize],
    pub layer: Option<usize>,
    pub n_layers: usize,
    /// No `output.weight`: the token embedding is the head too.
    pub tied: bool,
}

/// The chosen type, and a line saying so when the row width forced a fallback.
pub fn choose(out: OutType, t: &TensorPlace) -> (GgmlType, Option<String>) {
    let cols = t.shape.last().copied().unwrap_or(1);
    // The converter's rule: 1-D tensors and norms stay F32.
    if t.shape.len() < 2 || t.name.ends_with("_norm.weight") || out == OutType::F32 {
        return (GgmlType::F32, None);
    }
    if out == OutType::F16 {
        return (GgmlType::F16, None);
    }
    // llama-quantize leaves these as the converter wrote them (`tensor_allows_quantization`).
    if !t.name.ends_with("weight") || t.name == "position_embd.weight" {
        return (GgmlType::F32, None);
    }
    let default = out.default_type();
    let block = |ty: GgmlType| ty.block_layout().map_or(1, |(b, _)| b as usize);
    let more_bits = |i: usize, n: usize| i < n / 8 || i >= 7 * n / 8 || (i as isize - (n / 8) as isize) % 3 == 2;
    let layer_more_bits = t.layer.is_some_and(|i| more_bits(i, t.n_layers));
    let is_output = t.name == "output.weight" || (t.tied && t.name == "token_embd.weight");
    let ty = if is_output {
        if !cols.is_multiple_of(block(default)) {
            GgmlType::Q8_0
        } else if default != GgmlType::Q8_0 {
            GgmlType::Q6_K
        } else {
            default
        }
    } else if out == OutType::Q4_K_M {
        if t.name.contains("attn_v.weight") || t.name.contains("ffn_down") {
            if layer_more_bits { GgmlType::Q6_K } else { default }
        } else if t.name.contains("attn_qkv.weight") {
            GgmlType::Q5_K
        } else {
            default
        }
    } else {
        default
    };
    if cols.is_multiple_of(block(ty)) {
        return (ty, None);
    }
    let fallback = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    let fallback = if cols.is_multiple_of(block(fallback)) { fallback } else { GgmlType::F16 };
    let why = format!(
        "{}: rows of {cols} values are not whole {ty} blocks of {}; written as {fallback} (llama.cpp's fallback)",
        t.name,
        block(ty)
    );
    (fallback, Some(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(out: OutType, name: &str, shape: &[usize], layer: Option<usize>, tied: bool) -> GgmlType {
        choose(out, &TensorPlace { name, shape, layer, n_layers: 18, tied }).0
    }

    /// Gemma 3 270M's Q4_K_M file as Google's quantization wrote it (MODELS.md): hidden 640 is
    /// not a multiple of 256, so Q4_K becomes Q5_0 and Q6_K becomes Q8_0; attn_v and ffn_down
    /// get more bits on blocks 0, 1, 4, 7, 10, 13, 15, 16, 17; the tied embedding is Q8_0.
    #[test]
    fn q4_k_m_picks_what_the_gemma_270m_file_holds() {
        let q = OutType::Q4_K_M;
        assert_eq!(pick(q, "token_embd.weight", &[262144, 640], None, true), GgmlType::Q8_0);
        assert_eq!(pick(q, "blk.0.attn_q.weight", &[1024, 640], Some(0), true), GgmlType::Q5_0);
        assert_eq!(pick(q, "blk.0.attn_output.weight", &[640, 1024], Some(0), true), GgmlType::Q4_K);
        assert_eq!(pick(q, "blk.0.ffn_down.weight", &[640, 2048], Some(0), true), GgmlType::Q6_K);
        assert_eq!(pick(q, "blk.2.ffn_down.weight", &[640, 2048], Some(2), true), GgmlType::Q4_K);
        let more: Vec<usize> = (0..18)
            .filter(|&i| pick(q, &format!("blk.{i}.attn_v.weight"), &[256, 640], Some(i), true) == GgmlType::Q8_0)
            .collect();
        assert_eq!(more, [0, 1, 4, 7, 10, 13, 15, 16, 17]);
        assert_eq!(pick(q, "blk.0.attn_norm.weight", &[640], Some(0), true), GgmlType::F32);
        assert_eq!(pick(q, "output.weight", &[49152, 576], None, false), GgmlType::Q8_0);
        assert_eq!(pick(q, "output.weight", &[49152, 512], None, false), GgmlType::Q6_K);
        assert_eq!(pick(q, "blk.1.attn_qkv.weight", &[96, 512], Some(1), false), GgmlType::Q5_K);
        assert_eq!(pick(q, "blk.1.attn_qkv.weight", &[96, 96], Some(1), false), GgmlType::Q5_1);
        // Rows of 48 fit no 32-block: F16, and the fallback is said.
        let (ty, why) = choose(
            q,
            &TensorPlace { name: "blk.0.ffn_up.weight", shape: &[4, 48], layer: Some(0), n_layers: 2, tied: true },
        );
        assert_eq!(ty, GgmlType::F16);
        assert!(why.unwrap().contains("blk.0.ffn_up.weight"));
    }

    #[test]
    fn other_types() {
        assert_eq!(pick(OutType::F16, "blk.0.attn_q.weight", &[32, 32], Some(0), true), GgmlType::F16);
        assert_eq!(pick(OutType::F16, "blk.0.attn_norm.weight", &[32], Some(0), true), GgmlType::F32);
        assert_eq!(pick(OutType::Q8_0, "token_embd.weight", &[96, 64], None, true), GgmlType::Q8_0);
        assert_eq!(pick(OutType::Q4_0, "token_embd.weight", &[96, 256], None, true), GgmlType::Q6_K);
        assert_eq!(pick(OutType::Q4_0, "token_embd.weight", &[96, 64], None, false), GgmlType::Q4_0);
        assert_eq!(pick(OutType::Q6_K, "blk.0.attn_q.weight", &[64, 64], Some(0), true), GgmlType::Q8_0);
    }
}
