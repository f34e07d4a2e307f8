//! Phi-3 / Phi-3.5 / Phi-4-mini, mirroring transformers' `Phi3ForCausalLM`
//! (models/phi3/modular_phi3.py): Llama with q, k and v in one `qkv_proj` (rows q | k | v) and
//! gate and up in one `gate_up_proj` (rows gate | up), a rotary embedding over the first
//! `partial_rotary_factor` of each head (0.75 in Phi-4-mini), LongRoPE (`rope_scaling` type
//! `longrope`, which older files call `su`, and Phi-3 also reads `yarn` as) for the 128k models,
//! and a sliding window on every layer when `sliding_window` is set (2047 in Phi-3-mini-4k).
//!
//! The fused weights stay fused, so LoRA and PEFT adapters target `qkv_proj` and `gate_up_proj`
//! as Hugging Face names them. GGUF: architecture `phi3` (`blk.N.attn_qkv`, the fused gate/up
//! as `blk.N.ffn_up`), LongRoPE as `rope_factors_{short,long}.weight` with
//! `phi3.rope.scaling.attn_factor` and `phi3.rope.scaling.original_context_length`.

use std::path::Path;

use serde_json::Value;

use super::decoder::DecoderConfig;
use super::gguf_decoder::GgufConfig;
use crate::error::{Error, Result};
use crate::nn::{RopeConfig, RopeScaling};

pub fn config(json: &Value, path: &Path) -> Result<DecoderConfig> {
    // Phi3Config renames the older rope types before anything reads them.
    let mut json = json.clone();
    for key in ["rope_scaling", "rope_parameters"] {
        if let Some(obj) = json.get_mut(key).and_then(Value::as_object_mut) {
            let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str);
            if matches!(kind, Some("su" | "yarn")) {
                obj.insert("rope_type".into(), "longrope".into());
                obj.remove("type");
            }
        }
    }
    let mut c = DecoderConfig::from_hf(&json, path, "phi3", "Phi3ForCausalLM")?;
    (c.fused_qkv, c.fused_gate_up) = (true, true);
    let window = super::decoder::window_key(&json, "sliding_window", path)?;
    c.sliding_window = vec![window; c.num_hidden_layers];
    Ok(c)
}

pub fn from_gguf(g: &GgufConfig) -> Result<DecoderConfig> {
    let mut c = g.decoder("phi3", "Phi3ForCausalLM")?;
    (c.fused_qkv, c.fused_gate_up) = (true, true);
    let file = g.file;
    if file.tensor_info("rope_factors_long.weight").is_some() {
        let factors =
            |name: &str| -> Result<Vec<f64>> { Ok(file.tensor_f32(name)?.0.into_iter().map(f64::from).collect()) };
        let original = file.require_u64("phi3.rope.scaling.original_context_length")? as usize;
        let attention_factor = file.get_f64("phi3.rope.scaling.attn_factor")?;
        let (short_factor, long_factor) = (factors("rope_factors_short.weight")?, factors("rope_factors_long.weight")?);
        let want = c.rope.rot_dim / 2;
        if short_factor.len() != want || long_factor.len() != want {
            return Err(Error::Parse {
                path: file.path.clone(),
                message: format!(
                    "rope_factors_short/long.weight have {}/{} entries; phi3.rope.dimension_count {} needs {want}",
                    short_factor.len(),
                    long_factor.len(),
                    c.rope.rot_dim
                ),
            });
        }
        c.rope = RopeConfig {
            scaling: RopeScaling::LongRope {
                short_factor,
                long_factor,
                factor: None,
                attention_factor,
                original_max_position_embeddings: original,
            },
            ..c.rope
        };
    }
    Ok(c)
}
