//! A decoder from a GGUF file: the config from `<arch>.*` metadata (the keys llama.cpp's
//! convert_hf_to_gguf.py writes, the same names for every architecture; each family's file adds
//! its own), the weights under their Hugging Face names (dequantized to f32, or kept in blocks),
//! with llama.cpp's Q/K row permutation undone for the `llama` architecture (the only one it
//! permutes) so the Hugging Face RoPE pairing (`rotate_half`) applies unchanged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::decoder::{Decoder, DecoderConfig};
use super::{gemma3, llama, phi3, qwen2, qwen3};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::WeightSource;
use crate::gpu::Gpu;
use crate::nn::{RopeConfig, RopeScaling};
use crate::quant::{BaseDtype, QuantWeights};

/// Architectures kiln reads, as `general.architecture` names them.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "phi3", "gemma3"];

/// Tensors the config is read from rather than the model's weights.
const ROPE_TENSORS: &[&str] = &["rope_freqs.weight", "rope_factors_short.weight", "rope_factors_long.weight"];

/// Reads the model in `file`, every weight dequantized to f32.
pub fn load_decoder(gpu: &Gpu, file: &GgufFile) -> Result<Decoder> {
    load_decoder_with(gpu, file, false)
}

/// Reads the model in `file`; with `keep_quantized`, linear weights stored in a block format
/// kiln keeps on the GPU (`QuantType`: Q8_0, Q4_0/1, Q5_0/1, Q2_K-Q6_K, F16, BF16) go to the GPU as they
/// are (frozen, in blocks) instead of being dequantized. The token
/// embedding (Q8_0 in SmolLM2's file) is dequantized either way: the embedding lookup and the
/// tied LM head read f32.
pub fn load_decoder_with(gpu: &Gpu, file: &GgufFile, keep_quantized: bool) -> Result<Decoder> {
    load_decoder_base(gpu, file, if keep_quantized { BaseDtype::Auto } else { BaseDtype::F32 })
}

/// Reads the model in `file`, its linear weights held as `base` says (`--base-dtype`).
pub fn load_decoder_base(gpu: &Gpu, file: &GgufFile, base: BaseDtype) -> Result<Decoder> {
    let config = config_from_metadata(file)?;
    let mut src = GgufSource::new(file, &config)?;
    src.base = base;
    Decoder::from_source(gpu, config, &mut src, &file.path)
}

/// The decoder config a GGUF file's metadata describes, by its architecture.
pub fn config_from_metadata(file: &GgufFile) -> Result<DecoderConfig> {
    let g = GgufConfig::new(file)?;
    match g.arch.as_str() {
        "llama" => llama::from_gguf(&g),
        "qwen2" => qwen2::from_gguf(&g),
        "qwen3" => qwen3::from_gguf(&g),
        "phi3" => phi3::from_gguf(&g),
        "gemma3" => gemma3::from_gguf(&g),
        other => Err(Error::Parse {
            path: file.path.clone(),
            message: format!("general.architecture is `{other}`; kiln reads {ARCHITECTURES:?} GGUF files"),
        }),
    }
}

/// A GGUF file's metadata under its architecture's prefix.
pub struct GgufConfig<'a> {
    pub file: &'a GgufFile,
    /// `general.architecture`.
    pub arch: String,
}

impl<'a> GgufConfig<'a> {
    pub fn new(file: &'a GgufFile) -> Result<Self> {
        Ok(GgufConfig { file, arch: file.require_str("general.architecture")?.to_string() })
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn bad(&self, message: String) -> Error {
        Error::Parse { path: self.file.path.clone(), message }
    }

    /// The keys every architecture shares: sizes, RoPE (base, rotary dims, linear/yarn scaling,
    /// `rope_freqs.weight` divisors), sliding window, tied head (no `output.weight`).
    pub fn decoder(&self, model_type: &'static str, architecture: &'static str) -> Result<DecoderConfig> {
        let file = self.file;
        let n_head = file.require_u64(&self.key("attention.head_count"))? as usize;
        let hidden = file.require_u64(&self.key("embedding_length"))? as usize;
        let head_dim = match file.get_u64(&self.key("attention.key_length"))? {
            Some(d) => d as usize,
            None => hidden / n_head.max(1),
        };
        let rot_dim = file.get_u64(&self.key("rope.dimension_count"))?.map_or(head_dim, |r| r as usize);
        if rot_dim == 0 || rot_dim > head_dim || !rot_dim.is_multiple_of(2) {
            return Err(self.bad(format!(
                "{} is {rot_dim}; expected an even number of rotary dims up to the head dim {head_dim}",
                self.key("rope.dimension_count")
            )));
        }
        let vocab = match file.get_u64(&self.key("vocab_size"))? {
            Some(v) => v as usize,
            None => file.require_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let layers = file.require_u64(&self.key("block_count"))? as usize;
        let context = file.require_u64(&self.key("context_length"))? as usize;
        let window = match file.get_u64(&self.key("attention.sliding_window"))? {
            None | Some(0) => None,
            Some(w) => Some(w as usize),
        };
        let id = |k: &str| -> Result<Option<serde_json::Value>> { Ok(file.get_u64(k)?.map(|v| v.into())) };
        let mut c = DecoderConfig {
            model_type,
            architecture,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: file.require_u64(&self.key("feed_forward_length"))? as usize,
            num_hidden_layers: layers,
            num_attention_heads: n_head,
            num_key_value_heads: file.get_u64(&self.key("attention.head_count_kv"))?.map_or(n_head, |v| v as usize),
            head_dim,
            rms_norm_eps: file.get_f64(&self.key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            fused_qkv: false,
            fused_gate_up: false,
            mlp: crate::kernels::elementwise::GatedUnit::SwiGlu,
            embed_scale: None,
            sandwich_norms: false,
            query_pre_attn_scalar: None,
            rope_local: None,
            norm_offset: 0.0,
            rope: RopeConfig {
                theta: file.get_f64(&self.key("rope.freq_base"))?.unwrap_or(10000.0),
                head_dim,
                rot_dim,
                max_position_embeddings: context,
                scaling: self.rope_scaling(rot_dim)?,
            },
            sliding_window: vec![window; layers],
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
            max_position_embeddings: context,
            bos_token_id: id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: id("tokenizer.ggml.eos_token_id")?,
        };
        // llama.cpp converts Mistral as `llama`; its window is what tells them apart.
        if model_type == "llama" && window.is_some() {
            (c.model_type, c.architecture) = ("mistral", "MistralForCausalLM");
        }
        Ok(c)
    }

    fn rope_scaling(&self, rot_dim: usize) -> Result<RopeScaling> {
        let file = self.file;
        if file.tensor_info("rope_freqs.weight").is_some() {
            let factors: Vec<f64> = file.tensor_f32("rope_freqs.weight")?.0.into_iter().map(f64::from).collect();
            if factors.len() != rot_dim / 2 || factors.iter().any(|f| f.is_nan() || *f <= 0.0) {
                return Err(self.bad(format!(
                    "rope_freqs.weight has {} entries; expected {} positive divisors (rotary dims / 2)",
                    factors.len(),
                    rot_dim / 2
                )));
            }
            return Ok(RopeScaling::FreqFactors { factors });
        }
        let kind = file.get_str(&self.key("rope.scaling.type"))?.unwrap_or("none");
        let factor = || -> Result<f64> {
            match file.get_f64(&self.key("rope.scaling.factor"))? {
                Some(f) if f > 0.0 => Ok(f),
                other => Err(self.bad(format!(
                    "{} is {}; rope scaling `{kind}` needs a positive factor",
                    self.key("rope.scaling.factor"),
                    other.map_or("missing".to_string(), |f| f.to_string())
                ))),
            }
        };
        Ok(match kind {
            "none" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "yarn" => RopeScaling::Yarn {
                factor: Some(factor()?),
                attention_factor: None,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: None,
                mscale_all_dim: None,
                original_max_position_embeddings: file.require_u64(&self.key("rope.scaling.original_context_length"))?
                    as usize,
                truncate: true,
            },
            other => {
                return Err(self
                    .bad(format!("{} is `{other}`; kiln reads none, linear and yarn", self.key("rope.scaling.type"))));
            }
        })
    }
}

/// GGUF tensors under Hugging Face names.
pub struct GgufSource<'a> {
    file: &'a GgufFile,
    path: PathBuf,
    /// Gemma's sandwich norms are named differently (see [`gguf_name_in`]).
    sandwich: bool,
    /// (query heads, key/value heads) when Q/K rows are stored permuted (`llama` only).
    permuted: Option<(usize, usize)>,
    taken: BTreeSet<String>,
    /// Which linear weights go out as blocks ([`WeightSource::quantized`]): `auto` the file's
    /// quantized and 16-bit ones, `f16`/`bf16` every float one rounded to that, `f32` none.
    pub base: BaseDtype,
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a GgufFile, config: &DecoderConfig) -> Result<Self> {
        let arch = file.require_str("general.architecture")?;
        let permuted = (arch == "llama").then_some((config.num_attention_heads, config.num_key_value_heads));
        // The RoPE tensors went into the config.
        let taken = ROPE_TENSORS.iter().filter(|n| file.tensor_info(n).is_some()).map(|n| n.to_string()).collect();
        let sandwich = config.sandwich_norms;
        Ok(GgufSource { file, path: file.path.clone(), sandwich, permuted, taken, base: BaseDtype::F32 })
    }

    /// Rows of `g` to unpermute: the head count when it is a permuted Q or K weight.
    fn permuted_heads(&self, g: &str) -> Option<usize> {
        let (hq, hkv) = self.permuted?;
        // The converter permutes the biases' rows too (Llama's `attention_bias`).
        if g.ends_with("attn_q.weight") || g.ends_with("attn_q.bias") {
            Some(hq)
        } else if g.ends_with("attn_k.weight") || g.ends_with("attn_k.bias") {
            Some(hkv)
        } else {
            None
        }
    }
}

/// The GGUF name of a Hugging Face tensor name of the decoder (any family: Phi-3's fused
/// `qkv_proj` is `attn_qkv`, its fused `gate_up_proj` is `ffn_up`).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let (module, kind) = module.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let part = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.{kind}"))
}

/// The GGUF name of a decoder tensor in a file of a model with `sandwich` norms (Gemma 3), where
/// llama.cpp names the attention output's norm `post_attention_norm` and the MLP's input norm
/// `ffn_norm` (Llama's `post_attention_layernorm`).
pub fn gguf_name_in(sandwich: bool, hf: &str) -> Option<String> {
    if sandwich && let Some(layer) = hf.strip_prefix("model.layers.") {
        let (i, rest) = layer.split_once('.')?;
        if rest == "post_attention_layernorm.weight" {
            return Some(format!("blk.{i}.post_attention_norm.weight"));
        }
    }
    gguf_name(hf)
}

/// Undoes llama.cpp's conversion permutation of Q/K rows. llama.cpp stores, per head, row
/// `2i + j` what Hugging Face has at row `j·half + i` (j ∈ {0, 1}, i < half = rows/head/2), so
/// that its RoPE rotates adjacent pairs; Hugging Face rotates the two halves.
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * 2 * half + 2 * i + j;
                let dst = h * 2 * half + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The row order [`unpermute_rows`] produces: row `i` of the result is row `order[i]` of the
/// file.
pub fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let half = rows / heads / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                order[h * 2 * half + j * half + i] = h * 2 * half + 2 * i + j;
            }
        }
    }
    order
}

impl WeightSource for GgufSource<'_> {
    fn origin(&self) -> &Path {
        &self.path
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name_in(self.sandwich, name).is_some_and(|g| self.file.tensor_info(&g).is_some())
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let g = gguf_name_in(self.sandwich, name).ok_or_else(|| Error::Parse {
            path: self.path.clone(),
            message: format!("no GGUF name for tensor `{name}`"),
        })?;
        if self.file.tensor_info(&g).is_none() {
            return Err(Error::Parse {
                path: self.path.clone(),
                message: format!("missing tensor `{g}` (for `{name}`)"),
            });
        }
        let (data, found) = self.file.tensor_f32(&g)?;
        if found != shape {
            return Err(Error::Parse {
                path: self.path.clone(),
                message: format!("tensor `{g}` has shape {found:?}, config says {shape:?}"),
            });
        }
        self.taken.insert(g.clone());
        Ok(match self.permuted_heads(&g) {
            Some(heads) => unpermute_rows(&data, shape[0], shape.get(1).copied().unwrap_or(1), heads),
            None => data,
        })
    }

    fn remaining(&self) -> Vec<String> {
        self.file.tensors.iter().map(|t| t.name.clone()).filter(|n| !self.taken.contains(n)).collect()
    }

    fn quantized(&mut self, name: &str, shape: &[usize]) -> Result<Option<QuantWeights>> {
        let Some(g) = gguf_name_in(self.sandwich, name) else { return Ok(None) };
        let Some(info) = self.file.tensor_info(&g) else { return Ok(None) };
        // The embedding is gathered from, not multiplied: it stays f32.
        if g == "token_embd.weight" {
            return Ok(None);
        }
        let stored = info.ggml_type;
        let Some(kind) = self.base.keep(stored, &g)? else { return Ok(None) };
        // 16-bit rows that are not whole blocks of 32 stay f32.
        if kind.is_16bit() && !shape.get(1).is_some_and(|c| c.is_multiple_of(crate::quant::BLOCK)) {
            return Ok(None);
        }
        if kind.ggml() != stored {
            // Rounding a float weight to 16 bits: through f32, Q/K rows unpermuted by `take`.
            let data = self.take(name, shape)?;
            return Ok(Some(QuantWeights::quantize(kind, &data, shape[0], shape[1], &g)?));
        }
        let found = info.shape();
        if found != shape {
            return Err(Error::Parse {
                path: self.path.clone(),
                message: format!("tensor `{g}` has shape {found:?}, config says {shape:?}"),
            });
        }
        let bytes = self.file.tensor_bytes(&g)?.to_vec();
        let w = QuantWeights::new(kind, shape[0], shape[1], bytes, &g)
            .map_err(|e| Error::Parse { path: self.path.clone(), message: e.to_string() })?;
        // llama.cpp's Q/K row permutation moves whole rows, so it is undone on the blocks.
        let w = match self.permuted_heads(&g) {
            Some(heads) => w.permute_rows(&unpermute_order(shape[0], heads)),
            None => w,
        };
        self.taken.insert(g);
        Ok(Some(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward permutation, as llama.cpp's convert script writes it (numpy's
    /// reshape(heads, 2, half, cols).swapaxes(1, 2)).
    fn permute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = vec![0.0; data.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..half {
                    let hf = h * 2 * half + j * half + i;
                    let gg = h * 2 * half + i * 2 + j;
                    out[gg * cols..(gg + 1) * cols].copy_from_slice(&data[hf * cols..(hf + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let (rows, cols, heads) = (24, 3, 3);
        let data: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        assert_eq!(unpermute_rows(&permute(&data, rows, cols, heads), rows, cols, heads), data);
        // Row 1 of head 0 in GGUF order (pair 0, second element) is Hugging Face row `half`.
        let p = permute(&data, rows, cols, heads);
        assert_eq!(p[cols..2 * cols], data[4 * cols..5 * cols]);
    }

    #[test]
    fn kept_blocks_are_the_files_with_q_and_k_rows_unpermuted_like_the_f32_path() {
        use crate::formats::gguf::GgmlType;
        use crate::formats::gguf::testing::*;
        let (rows, cols) = (16, 64);
        let x = seeded(rows * cols, 3);
        for (ty, bytes) in [
            (GgmlType::Q4_1, quantize_q4_1(&x).0),
            (GgmlType::Q4_0, quantize_q4_0(&x).0),
            (GgmlType::Q8_0, quantize_q8_0(&x).0),
        ] {
            let mut b = GgufBuilder::new();
            for t in ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_up.weight", "token_embd.weight"] {
                b = b.tensor(t, &[cols as u64, rows as u64], ty, bytes.clone());
            }
            let file = GgufFile::parse(b.build(), "tiny.gguf").unwrap();
            let source = |keep| GgufSource {
                file: &file,
                path: file.path.clone(),
                sandwich: false,
                permuted: Some((4, 2)),
                taken: BTreeSet::new(),
                base: if keep { BaseDtype::Auto } else { BaseDtype::F32 },
            };
            let (mut kept, mut plain) = (source(true), source(false));
            for hf in [
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.mlp.up_proj.weight",
            ] {
                let q = kept.quantized(hf, &[rows, cols]).unwrap().expect("kept quantized");
                assert_eq!(q.dequantize(), plain.take(hf, &[rows, cols]).unwrap(), "{ty} {hf}");
                assert!(plain.quantized(hf, &[rows, cols]).unwrap().is_none());
            }
            // The embedding is looked up in f32; a wrong shape names the tensor.
            assert!(kept.quantized("model.embed_tokens.weight", &[rows, cols]).unwrap().is_none());
            let e = source(true).quantized("model.layers.0.mlp.up_proj.weight", &[cols, rows]).unwrap_err();
            assert!(e.to_string().contains("blk.0.ffn_up.weight") && e.to_string().contains("config says"), "{e}");
        }
    }

    #[test]
    fn names_map_both_ways_that_matter() {
        assert_eq!(gguf_name("model.layers.3.self_attn.k_proj.weight").as_deref(), Some("blk.3.attn_k.weight"));
        assert_eq!(gguf_name("model.embed_tokens.weight").as_deref(), Some("token_embd.weight"));
        assert_eq!(gguf_name("model.layers.0.mlp.down_proj.weight").as_deref(), Some("blk.0.ffn_down.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
        assert_eq!(gguf_name("model.layers.2.self_attn.q_proj.bias").as_deref(), Some("blk.2.attn_q.bias"));
        assert_eq!(gguf_name("model.layers.1.self_attn.qkv_proj.weight").as_deref(), Some("blk.1.attn_qkv.weight"));
        assert_eq!(gguf_name("model.layers.1.mlp.gate_up_proj.weight").as_deref(), Some("blk.1.ffn_up.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.k_norm.weight").as_deref(), Some("blk.0.attn_k_norm.weight"));
        // Gemma's sandwich norms.
        let gemma = |hf| gguf_name_in(true, hf);
        assert_eq!(
            gemma("model.layers.4.post_attention_layernorm.weight").as_deref(),
            Some("blk.4.post_attention_norm.weight")
        );
        assert_eq!(gemma("model.layers.4.pre_feedforward_layernorm.weight").as_deref(), Some("blk.4.ffn_norm.weight"));
        assert_eq!(
            gemma("model.layers.4.post_feedforward_layernorm.weight").as_deref(),
            Some("blk.4.post_ffw_norm.weight")
        );
        assert_eq!(gemma("model.layers.4.input_layernorm.weight").as_deref(), Some("blk.4.attn_norm.weight"));
    }
}
