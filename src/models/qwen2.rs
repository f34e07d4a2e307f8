//! Qwen2 / Qwen2.5, mirroring transformers' `Qwen2ForCausalLM` (models/qwen2/modular_qwen2.py):
//! Llama with biases on q_proj, k_proj and v_proj (not o_proj), usually tied embeddings, and a
//! sliding window on the layers `layer_types` marks `sliding_attention` (off in every released
//! Qwen2.5: `use_sliding_window` false).
//!
//! config.json keys beyond the shared ones: `use_sliding_window`, `sliding_window`,
//! `max_window_layers`, `layer_types`. GGUF: architecture `qwen2`, q/k/v biases as
//! `blk.N.attn_{q,k,v}.bias`, rows not permuted.

use std::path::Path;

use serde_json::Value;

use super::decoder::DecoderConfig;
use super::gguf_decoder::GgufConfig;
use crate::error::Result;

pub fn config(json: &Value, path: &Path) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::from_hf(json, path, "qwen2", "Qwen2ForCausalLM")?;
    c.qkv_bias = true;
    c.sliding_window = super::decoder::qwen_layer_windows(json, c.num_hidden_layers, path)?;
    Ok(c)
}

pub fn from_gguf(g: &GgufConfig) -> Result<DecoderConfig> {
    let mut c = g.decoder("qwen2", "Qwen2ForCausalLM")?;
    c.qkv_bias = true;
    Ok(c)
}
