//! Llama 2/3.x (and SmolLM2), mirroring transformers' `LlamaForCausalLM`
//! (transformers/models/llama/modeling_llama.py): the [`Decoder`] with no switch set but
//! `attention_bias` / `mlp_bias`; RoPE scaling (`rope_scaling` llama3 for 3.1/3.2, linear,
//! dynamic, yarn) from `nn::rope_scaling`.
//!
//! config.json keys beyond the shared ones ([`DecoderConfig::from_hf`]): `attention_bias` (q, k,
//! v and o), `mlp_bias`. GGUF: architecture `llama`, Q/K rows permuted by llama.cpp (undone by
//! [`super::gguf_decoder`]); Llama 3's scaling as `rope_freqs.weight`.

use std::path::Path;

use serde_json::Value;

use super::decoder::DecoderConfig;
use super::gguf_decoder::GgufConfig;
use crate::error::Result;

pub fn config(json: &Value, path: &Path) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::from_hf(json, path, "llama", "LlamaForCausalLM")?;
    let bias = json["attention_bias"].as_bool().unwrap_or(false);
    (c.qkv_bias, c.o_bias) = (bias, bias);
    c.mlp_bias = json["mlp_bias"].as_bool().unwrap_or(false);
    Ok(c)
}

/// From GGUF metadata: the shared keys are all a Llama needs.
pub fn from_gguf(g: &GgufConfig) -> Result<DecoderConfig> {
    g.decoder("llama", "LlamaForCausalLM")
}
