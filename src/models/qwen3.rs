//! Qwen3, mirroring transformers' `Qwen3ForCausalLM` (models/qwen3/modular_qwen3.py): Qwen2
//! without the q/k/v biases (`attention_bias`, false in released models, covers q, k, v and o)
//! and with an RMSNorm over each head's `head_dim` values of q and k before RoPE (`q_norm`,
//! `k_norm`); `head_dim` is given (128 for Qwen3-0.6B's 1024 hidden and 16 heads).
//!
//! config.json keys beyond the shared ones: `attention_bias`, and Qwen2's window keys. GGUF:
//! architecture `qwen3`, `blk.N.attn_{q,k}_norm.weight`, `qwen3.attention.key_length`.

use std::path::Path;

use serde_json::Value;

use super::decoder::DecoderConfig;
use super::gguf_decoder::GgufConfig;
use crate::error::Result;

pub fn config(json: &Value, path: &Path) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::from_hf(json, path, "qwen3", "Qwen3ForCausalLM")?;
    c.qk_norm = true;
    let bias = json["attention_bias"].as_bool().unwrap_or(false);
    (c.qkv_bias, c.o_bias) = (bias, bias);
    c.sliding_window = super::decoder::qwen_layer_windows(json, c.num_hidden_layers, path)?;
    Ok(c)
}

pub fn from_gguf(g: &GgufConfig) -> Result<DecoderConfig> {
    let mut c = g.decoder("qwen3", "Qwen3ForCausalLM")?;
    c.qk_norm = true;
    Ok(c)
}
