//! Mistral, mirroring transformers' `MistralForCausalLM` (models/mistral/modular_mistral.py):
//! Llama with a sliding window on every layer (Mistral 7B v0.1's 4096; null in v0.2+) and
//! `head_dim` that may differ from hidden / heads (Mistral Nemo).
//!
//! config.json keys beyond the shared ones: `sliding_window`. GGUF: llama.cpp converts Mistral
//! as architecture `llama` (see [`super::llama`]); a window comes as `llama.attention.sliding_window`.

use std::path::Path;

use serde_json::Value;

use super::decoder::DecoderConfig;
use crate::error::Result;

pub fn config(json: &Value, path: &Path) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::from_hf(json, path, "mistral", "MistralForCausalLM")?;
    let window = super::decoder::window_key(json, "sliding_window", path)?;
    c.sliding_window = vec![window; c.num_hidden_layers];
    Ok(c)
}
