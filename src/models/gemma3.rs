//! Gemma 3 (text), mirroring transformers' `Gemma3ForCausalLM` (models/gemma3/modeling_gemma3.py):
//! Llama with
//!   - a GeGLU MLP with the tanh GELU (`hidden_activation: gelu_pytorch_tanh`);
//!   - token embeddings times √hidden (`Gemma3TextScaledWordEmbedding`);
//!   - sandwich norms: `post_attention_layernorm` on the attention output before the residual
//!     add, `pre_feedforward_layernorm` / `post_feedforward_layernorm` around the MLP;
//!   - RMSNorm on each head of q and k (`q_norm`, `k_norm`), as Qwen3;
//!   - RMSNorm as x·(1 + w) (`Gemma3RMSNorm`; kiln adds the 1 on load, see `norm_offset`);
//!   - local and global layers (`layer_types`; from `sliding_window_pattern`, 6, when absent:
//!     layer i is global when (i + 1) % 6 == 0): local layers attend within `sliding_window`
//!     keys and use RoPE base `rope_local_base_freq` (10,000), global ones attend to everything
//!     with `rope_theta` (1e6) and any RoPE scaling;
//!   - scores scaled by `query_pre_attn_scalar`^-1/2, not head_dim^-1/2;
//!   - a tied head by default.
//!
//! config.json (`model_type: gemma3_text`): the shared keys plus `hidden_activation`,
//! `query_pre_attn_scalar`, `sliding_window`, `layer_types` / `sliding_window_pattern`,
//! `rope_parameters` per layer type (transformers 5) or `rope_theta` / `rope_scaling` /
//! `rope_local_base_freq` (older files), `attention_bias`. Softcapping (`attn_logit_softcapping`,
//! `final_logit_softcapping`, Gemma 2's; null in Gemma 3) and `use_bidirectional_attention`
//! are refused by name. The multimodal `gemma3` checkpoints (text under `text_config`, tensors
//! under `language_model`) are refused: kiln reads the text-only model.
//!
//! GGUF: architecture `gemma3` (llama.cpp's convert_hf_to_gguf.py `Gemma3Model`): `blk.N.
//! {attn_norm, attn_q_norm, attn_k_norm, post_attention_norm, ffn_norm, post_ffw_norm}` with the
//! 1 already added to every norm weight, `gemma3.attention.sliding_window`, and neither the
//! local RoPE base nor the layer pattern stored: llama.cpp hard-codes 10,000 and every 6th
//! layer global, and so does kiln.

use std::path::Path;

use serde_json::Value;

use super::decoder::{DecoderConfig, window_key};
use super::gguf_decoder::GgufConfig;
use crate::error::{Error, Result};
use crate::kernels::elementwise::{Activation, GatedUnit};
use crate::nn::{RopeConfig, RopeScaling};

/// Every `SLIDING_WINDOW_PATTERN`-th layer is global (Gemma3TextConfig's default, and what
/// llama.cpp assumes for `gemma3` files).
pub const SLIDING_WINDOW_PATTERN: usize = 6;

/// RoPE base of the local layers (`rope_local_base_freq`; not stored in GGUF).
pub const LOCAL_ROPE_BASE: f64 = 10_000.0;

/// Global layers' RoPE base when a config gives none (Gemma3TextConfig's `default_theta`).
const GLOBAL_ROPE_BASE: f64 = 1_000_000.0;

/// Layer i is local (windowed) unless (i + 1) is a multiple of `pattern`.
fn pattern_windows(layers: usize, pattern: usize, window: usize) -> Vec<Option<usize>> {
    (0..layers).map(|i| if (i + 1) % pattern != 0 { Some(window) } else { None }).collect()
}

/// √hidden as transformers computes it (a Python float) and casts it to the f32 embedding.
fn embed_scale(hidden: usize) -> f32 {
    (hidden as f64).sqrt() as f32
}

/// The Gemma switches on a decoder config read by the shared code.
fn gemma_switches(c: &mut DecoderConfig) {
    c.qk_norm = true;
    c.sandwich_norms = true;
    c.mlp = GatedUnit::GeGlu;
    c.embed_scale = Some(embed_scale(c.hidden_size));
}

pub fn config(json: &Value, path: &Path) -> Result<DecoderConfig> {
    let bad = |message: String| Error::Parse { path: path.to_path_buf(), message };
    if json["model_type"].as_str() == Some("gemma3") {
        return Err(bad("model_type `gemma3` is the multimodal Gemma 3 (text under `text_config`, a vision tower); \
             kiln reads the text-only `gemma3_text` model (Gemma3ForCausalLM, e.g. Gemma 3 270M/1B)"
            .into()));
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if !json[key].is_null() {
            return Err(bad(format!(
                "`{key}` is {}; kiln's attention and head have no tanh softcapping (Gemma 3 sets it null)",
                json[key]
            )));
        }
    }
    if json["use_bidirectional_attention"].as_bool() == Some(true) {
        return Err(bad("`use_bidirectional_attention` is true; kiln's decoder is causal".into()));
    }
    let act = json["hidden_activation"].as_str().or(json["hidden_act"].as_str()).unwrap_or("gelu_pytorch_tanh");
    if Activation::from_hf_name(act) != Some(Activation::GeluTanh) {
        return Err(bad(format!(
            "`hidden_activation` is `{act}`; kiln's Gemma MLP is GeGLU with the tanh GELU (gelu_pytorch_tanh)"
        )));
    }
    // The shared reader checks `hidden_act` against SwiGLU and reads one RoPE; Gemma's
    // activation was checked above, its two RoPEs are read below.
    let mut common = json.clone();
    if let Some(o) = common.as_object_mut() {
        o.insert("hidden_act".into(), "silu".into());
        o.insert("tie_word_embeddings".into(), json["tie_word_embeddings"].as_bool().unwrap_or(true).into());
    }
    let (global, local) = rope_jsons(json);
    common["rope_parameters"] = global["rope_parameters"].clone();
    if let Some(o) = common.as_object_mut() {
        o.remove("rope_scaling");
    }
    let mut c = DecoderConfig::from_hf(&common, path, "gemma3_text", "Gemma3ForCausalLM")?;
    gemma_switches(&mut c);
    c.rope_local = Some(RopeConfig::from_hf(&local, c.head_dim, path)?);
    let bias = json["attention_bias"].as_bool().unwrap_or(false);
    (c.qkv_bias, c.o_bias) = (bias, bias);
    c.norm_offset = 1.0;
    c.query_pre_attn_scalar = Some(match &json["query_pre_attn_scalar"] {
        Value::Null => 256.0,
        v => v.as_f64().ok_or_else(|| bad(format!("`query_pre_attn_scalar` is {v}; expected a number")))?,
    });
    c.sliding_window = layer_windows(json, c.num_hidden_layers, path)?;
    Ok(c)
}

/// The global and local layers' RoPE as two config.json views the shared RoPE reader takes:
/// transformers 5's `rope_parameters` per layer type, or the older `rope_theta` (global, with
/// `rope_scaling`) and `rope_local_base_freq` (local, never scaled).
fn rope_jsons(json: &Value) -> (Value, Value) {
    let view = |params: Value| {
        let mut v = json.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("rope_scaling");
            o.remove("rope_theta");
        }
        v["rope_parameters"] = params;
        v
    };
    let per_type = &json["rope_parameters"];
    if per_type.get("full_attention").is_some() || per_type.get("sliding_attention").is_some() {
        let part = |key: &str, base: f64| {
            let mut p = per_type.get(key).filter(|p| p.is_object()).cloned().unwrap_or(serde_json::json!({}));
            if p.get("rope_theta").is_none() {
                p["rope_theta"] = base.into();
            }
            view(p)
        };
        return (part("full_attention", GLOBAL_ROPE_BASE), part("sliding_attention", LOCAL_ROPE_BASE));
    }
    let mut global = json["rope_scaling"].as_object().cloned().map(Value::Object).unwrap_or(serde_json::json!({}));
    global["rope_theta"] = json["rope_theta"].as_f64().unwrap_or(GLOBAL_ROPE_BASE).into();
    let local = serde_json::json!({
        "rope_type": "default",
        "rope_theta": json["rope_local_base_freq"].as_f64().unwrap_or(LOCAL_ROPE_BASE),
    });
    (view(global), view(local))
}

/// Windows per layer: `layer_types` when given, else every `sliding_window_pattern`-th layer
/// global and the rest local.
fn layer_windows(json: &Value, layers: usize, path: &Path) -> Result<Vec<Option<usize>>> {
    let bad = |message: String| Error::Parse { path: path.to_path_buf(), message };
    let window = window_key(json, "sliding_window", path)?
        .ok_or_else(|| bad("`sliding_window` is null; Gemma 3's local layers need a window".into()))?;
    if json["layer_types"].is_array() {
        return super::decoder::qwen_layer_windows(json, layers, path);
    }
    let pattern = match json.get("sliding_window_pattern").or(json.get("_sliding_window_pattern")) {
        None | Some(Value::Null) => SLIDING_WINDOW_PATTERN,
        Some(v) => match v.as_u64() {
            Some(p) if p > 0 => p as usize,
            _ => return Err(bad(format!("`sliding_window_pattern` is {v}; expected a positive number of layers"))),
        },
    };
    Ok(pattern_windows(layers, pattern, window))
}

pub fn from_gguf(g: &GgufConfig) -> Result<DecoderConfig> {
    let file = g.file;
    let bad = |message: String| Error::Parse { path: file.path.clone(), message };
    for key in ["gemma3.attn_logit_softcapping", "gemma3.final_logit_softcapping"] {
        if let Some(v) = file.get_f64(key)? {
            return Err(bad(format!("{key} is {v}; kiln's attention and head have no tanh softcapping")));
        }
    }
    let mut c = g.decoder("gemma3_text", "Gemma3ForCausalLM")?;
    gemma_switches(&mut c);
    let window = c.sliding_window[0]
        .ok_or_else(|| bad("gemma3.attention.sliding_window is missing; Gemma 3's local layers need it".into()))?;
    c.sliding_window = pattern_windows(c.num_hidden_layers, SLIDING_WINDOW_PATTERN, window);
    c.rope_local = Some(RopeConfig { theta: LOCAL_ROPE_BASE, scaling: RopeScaling::Default, ..c.rope.clone() });
    // query_pre_attn_scalar is not stored either. llama.cpp scales by key_length^-1/2 (the
    // head dim, 256 = query_pre_attn_scalar for 270M, 1B, 4B and 12B), except for the 62-layer
    // 27B whose scalar is hidden / heads (168): the same rule here.
    c.query_pre_attn_scalar = Some(if c.num_hidden_layers == 62 {
        (c.hidden_size / c.num_attention_heads) as f64
    } else {
        c.head_dim as f64
    });
    // The converter wrote 1 + w into every norm weight already.
    c.norm_offset = 0.0;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_layer_is_global() {
        let w = pattern_windows(18, 6, 512);
        let global: Vec<usize> = (0..18).filter(|&i| w[i].is_none()).collect();
        assert_eq!(global, [5, 11, 17]);
        assert!(w.iter().flatten().all(|&x| x == 512));
    }

    #[test]
    fn older_configs_give_the_local_base_and_scale_only_global_layers() {
        let json = serde_json::json!({
            "rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        });
        let (global, local) = rope_jsons(&json);
        assert_eq!(global["rope_parameters"]["rope_theta"], 1e6);
        assert_eq!(global["rope_parameters"]["factor"], 8.0);
        assert_eq!(local["rope_parameters"]["rope_theta"], 1e4);
        assert!(local["rope_parameters"].get("factor").is_none());
        assert!(global.get("rope_scaling").is_none() && local.get("rope_scaling").is_none());
    }
}
