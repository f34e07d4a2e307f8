//! A Llama model from a GGUF file: the config from `llama.*` metadata, the weights under their
//! Hugging Face names (dequantized to f32), with llama.cpp's Q/K row permutation undone so the
//! Hugging Face RoPE pairing (`rotate_half`) applies unchanged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::llama::{Llama, LlamaConfig};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::WeightSource;
use crate::gpu::Gpu;
use crate::quant::{QuantType, QuantWeights};

/// Reads the model in `file` (a `llama` architecture GGUF), every weight dequantized to f32.
pub fn load_llama(gpu: &Gpu, file: &GgufFile) -> Result<Llama> {
    load_llama_with(gpu, file, false)
}

/// Reads the model in `file`; with `keep_quantized`, linear weights stored as Q8_0, Q4_0 or
/// Q4_1 go to the GPU as they are (frozen, in blocks) instead of being dequantized. The token
/// embedding (Q8_0 in SmolLM2's file) is dequantized either way: the embedding lookup and the
/// tied LM head read f32.
pub fn load_llama_with(gpu: &Gpu, file: &GgufFile, keep_quantized: bool) -> Result<Llama> {
    let config = config_from_metadata(file)?;
    let mut src = GgufSource::new(file, &config);
    src.keep_quantized = keep_quantized;
    Llama::from_source(gpu, config, &mut src, &file.path)
}

/// The `LlamaConfig` a GGUF file's metadata describes.
pub fn config_from_metadata(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = file.require_str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::Parse {
            path: file.path.clone(),
            message: format!("general.architecture is `{arch}`; kiln reads `llama` GGUF files"),
        });
    }
    let key = |k: &str| format!("llama.{k}");
    let n_head = file.require_u64(&key("attention.head_count"))? as usize;
    let hidden = file.require_u64(&key("embedding_length"))? as usize;
    let head_dim = match file.get_u64(&key("attention.key_length"))? {
        Some(d) => d as usize,
        None => hidden / n_head.max(1),
    };
    if let Some(rot) = file.get_u64(&key("rope.dimension_count"))?
        && rot as usize != head_dim
    {
        return Err(Error::Parse {
            path: file.path.clone(),
            message: format!("llama.rope.dimension_count {rot} differs from the head dim {head_dim} (partial RoPE)"),
        });
    }
    let vocab = match file.get_u64(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => file.require_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let tied = file.tensor_info("output.weight").is_none();
    let id = |k: &str| -> Result<Option<serde_json::Value>> { Ok(file.get_u64(k)?.map(|v| v.into())) };
    Ok(LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: file.require_u64(&key("feed_forward_length"))? as usize,
        num_hidden_layers: file.require_u64(&key("block_count"))? as usize,
        num_attention_heads: n_head,
        num_key_value_heads: Some(file.get_u64(&key("attention.head_count_kv"))?.map_or(n_head, |v| v as usize)),
        head_dim: Some(head_dim),
        rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32,
        rope_theta: file.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
        rope_parameters: None,
        rope_scaling: None,
        max_position_embeddings: file.require_u64(&key("context_length"))? as usize,
        tie_word_embeddings: tied,
        hidden_act: "silu".into(),
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: id("tokenizer.ggml.eos_token_id")?,
    })
}

/// GGUF tensors under Hugging Face names.
pub struct GgufSource<'a> {
    file: &'a GgufFile,
    path: PathBuf,
    n_head: usize,
    n_kv_head: usize,
    taken: BTreeSet<String>,
    /// Hand Q8_0/Q4_0/Q4_1 linear weights out as blocks ([`WeightSource::quantized`]).
    pub keep_quantized: bool,
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a GgufFile, config: &LlamaConfig) -> Self {
        GgufSource {
            file,
            path: file.path.clone(),
            n_head: config.num_attention_heads,
            n_kv_head: config.kv_heads(),
            taken: BTreeSet::new(),
            keep_quantized: false,
        }
    }
}

/// The GGUF name of a Hugging Face Llama tensor name.
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
    let part = match module {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
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
        gguf_name(name).is_some_and(|g| self.file.tensor_info(&g).is_some())
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let g = gguf_name(name).ok_or_else(|| Error::Parse {
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
        let data = if g.ends_with("attn_q.weight") {
            unpermute_rows(&data, shape[0], shape[1], self.n_head)
        } else if g.ends_with("attn_k.weight") {
            unpermute_rows(&data, shape[0], shape[1], self.n_kv_head)
        } else {
            data
        };
        Ok(data)
    }

    fn remaining(&self) -> Vec<String> {
        self.file.tensors.iter().map(|t| t.name.clone()).filter(|n| !self.taken.contains(n)).collect()
    }

    fn quantized(&mut self, name: &str, shape: &[usize]) -> Result<Option<QuantWeights>> {
        let Some(g) = gguf_name(name) else { return Ok(None) };
        let Some(info) = self.file.tensor_info(&g) else { return Ok(None) };
        let Some(kind) = QuantType::from_ggml(info.ggml_type) else { return Ok(None) };
        if !self.keep_quantized || g == "token_embd.weight" {
            return Ok(None);
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
        let w = if g.ends_with("attn_q.weight") {
            w.permute_rows(&unpermute_order(shape[0], self.n_head))
        } else if g.ends_with("attn_k.weight") {
            w.permute_rows(&unpermute_order(shape[0], self.n_kv_head))
        } else {
            w
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
                n_head: 4,
                n_kv_head: 2,
                taken: BTreeSet::new(),
                keep_quantized: keep,
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
    }
}
