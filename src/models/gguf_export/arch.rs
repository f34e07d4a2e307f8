//! Each family's `<arch>.*` metadata and extra tensors, as convert_hf_to_gguf.py writes them
//! (`TextModel.set_gguf_parameters` and each model class's own; conversion/*.py in llama.cpp):
//!
//! | kiln family | `general.architecture` | beyond the shared keys                              |
//! |-------------|------------------------|-----------------------------------------------------|
//! | llama       | `llama`                | `vocab_size`, `rope.dimension_count`; Llama 3's     |
//! |             |                        | scaling as the `rope_freqs.weight` divisors         |
//! | mistral     | `llama`                | as llama (+ `attention.sliding_window`, see below)  |
//! | qwen2/qwen3 | `qwen2` / `qwen3`      | none                                                |
//! | phi3        | `phi3`                 | `rope.dimension_count`, `attention.sliding_window`  |
//! |             |                        | (0 for none), LongRoPE's `rope_factors_long/short`  |
//! |             |                        | tensors, `rope.scaling.original_context_length`,    |
//! |             |                        | `rope.scaling.attn_factor`                          |
//! | gemma3_text | `gemma3`               | `attention.sliding_window`, `rope.freq_base_swa`    |
//! | gpt2        | `gpt2`                 | `attention.layer_norm_epsilon`, FFN 4·hidden        |
//!
//! The shared keys: `context_length`, `embedding_length`, `feed_forward_length`, `block_count`,
//! `attention.head_count`, `attention.head_count_kv`, `rope.freq_base`,
//! `attention.layer_norm_rms_epsilon`, `attention.key_length`/`value_length` (the converter writes
//! them when config.json has `head_dim`, which kiln's exported configs always have), linear and
//! YaRN `rope.scaling.*`.
//!
//! llama.cpp's converter drops Mistral's sliding window (its `llama` has none); kiln writes
//! `llama.attention.sliding_window` as its own reader expects (llama.cpp ignores the key), so
//! the file reads back into the model it came from. Qwen's per-layer windows have no key in
//! either and are left out (the report says so).

use crate::error::{Error, Result};
use crate::formats::gguf::GgufValue;
use crate::models::decoder::DecoderConfig;
use crate::nn::RopeScaling;

/// An extra F32 tensor the converter adds (RoPE factors).
pub type Extra = (String, Vec<f32>);

pub struct ArchKeys {
    pub arch: &'static str,
    pub kvs: Vec<(String, GgufValue)>,
    pub extra: Vec<Extra>,
    pub notes: Vec<String>,
}

/// llama.cpp's architecture for a kiln decoder family; families it has no converter for are
/// refused by name.
pub fn arch_of(model_type: &str) -> Result<&'static str> {
    Ok(match model_type {
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "phi3" => "phi3",
        "gemma3_text" => "gemma3",
        "gpt2" => "gpt2",
        other => {
            return Err(Error::invalid(
                "--format gguf",
                format!(
                    "a `{other}` model has no llama.cpp architecture kiln writes; GGUF export knows llama, mistral, \
                     qwen2, qwen3, phi3, gemma3_text and gpt2"
                ),
            ));
        }
    })
}

/// Keys of the decoder families.
pub fn decoder_keys(c: &DecoderConfig) -> Result<ArchKeys> {
    let arch = arch_of(c.model_type)?;
    let mut kvs: Vec<(String, GgufValue)> = Vec::new();
    let mut notes = Vec::new();
    let mut extra = Vec::new();
    let u32 = |kvs: &mut Vec<(String, GgufValue)>, k: &str, v: usize| {
        kvs.push((format!("{arch}.{k}"), GgufValue::U32(v as u32)))
    };
    u32(&mut kvs, "block_count", c.num_hidden_layers);
    u32(&mut kvs, "context_length", c.max_position_embeddings);
    u32(&mut kvs, "embedding_length", c.hidden_size);
    u32(&mut kvs, "feed_forward_length", c.intermediate_size);
    u32(&mut kvs, "attention.head_count", c.num_attention_heads);
    u32(&mut kvs, "attention.head_count_kv", c.num_key_value_heads);
    let f32 = |kvs: &mut Vec<(String, GgufValue)>, k: &str, v: f64| {
        kvs.push((format!("{arch}.{k}"), GgufValue::F32(v as f32)))
    };
    f32(&mut kvs, "rope.freq_base", c.rope.theta);
    f32(&mut kvs, "attention.layer_norm_rms_epsilon", c.rms_norm_eps as f64);
    u32(&mut kvs, "attention.key_length", c.head_dim);
    u32(&mut kvs, "attention.value_length", c.head_dim);
    let window = c.sliding_window.iter().flatten().next().copied();
    match arch {
        "llama" => {
            u32(&mut kvs, "vocab_size", c.vocab_size);
            u32(&mut kvs, "rope.dimension_count", c.rope.rot_dim);
            if let Some(w) = window {
                u32(&mut kvs, "attention.sliding_window", w);
                notes.push(format!(
                    "llama.attention.sliding_window = {w} is kiln's key (llama.cpp's llama has no sliding window and \
                     attends to the whole context)"
                ));
            }
        }
        "phi3" => {
            u32(&mut kvs, "rope.dimension_count", c.rope.rot_dim);
            u32(&mut kvs, "attention.sliding_window", window.unwrap_or(0));
        }
        "gemma3" => {
            let w = window.ok_or_else(|| Error::invalid("gguf export", "a Gemma 3 model without a sliding window"))?;
            u32(&mut kvs, "attention.sliding_window", w);
            if let Some(local) = &c.rope_local {
                f32(&mut kvs, "rope.freq_base_swa", local.theta);
            }
            // GGUF has no key for it: llama.cpp scales by key_length^-1/2 (hidden / heads for
            // the 62-layer 27B), as kiln's reader does.
            let implied = if c.num_hidden_layers == 62 { c.hidden_size / c.num_attention_heads } else { c.head_dim };
            if let Some(q) = c.query_pre_attn_scalar.filter(|&q| q != implied as f64) {
                notes.push(format!(
                    "query_pre_attn_scalar is {q}; GGUF has no key for it and llama.cpp scales attention by {implied}^-1/2"
                ));
            }
        }
        _ => {
            if window.is_some() {
                notes.push(format!(
                    "the model's sliding windows have no {arch} key in GGUF; llama.cpp attends to the whole context"
                ));
            }
        }
    }
    // RoPE scaling.
    let theta = c.rope.theta;
    let half = c.rope.rot_dim / 2;
    let base: Vec<f64> = (0..half).map(|i| theta.powf(-((2 * i) as f64) / c.rope.rot_dim as f64)).collect();
    let scaling_key = |k: &str| format!("{arch}.rope.scaling.{k}");
    match &c.rope.scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            kvs.push((scaling_key("type"), GgufValue::String("linear".into())));
            kvs.push((scaling_key("factor"), GgufValue::F32(*factor as f32)));
        }
        RopeScaling::Yarn {
            factor, attention_factor, beta_fast, beta_slow, original_max_position_embeddings, ..
        } => {
            kvs.push((scaling_key("type"), GgufValue::String("yarn".into())));
            kvs.push((scaling_key("factor"), GgufValue::F32(factor.unwrap_or(1.0) as f32)));
            kvs.push((
                scaling_key("original_context_length"),
                GgufValue::U32(*original_max_position_embeddings as u32),
            ));
            if let Some(a) = attention_factor {
                kvs.push((scaling_key("yarn_attn_factor"), GgufValue::F32(*a as f32)));
            }
            kvs.push((scaling_key("yarn_beta_fast"), GgufValue::F32(*beta_fast as f32)));
            kvs.push((scaling_key("yarn_beta_slow"), GgufValue::F32(*beta_slow as f32)));
        }
        RopeScaling::Llama3 { .. } | RopeScaling::FreqFactors { .. } if arch == "llama" => {
            // Divisors of each inverse frequency (convert_hf_to_gguf.py's `rope_freqs`).
            let (scaled, _) = c.rope.inv_freq(None);
            extra.push((
                "rope_freqs.weight".to_string(),
                base.iter().zip(&scaled).map(|(b, s)| (b / s) as f32).collect(),
            ));
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            factor,
            attention_factor,
            original_max_position_embeddings,
        } if arch == "phi3" => {
            let orig = *original_max_position_embeddings;
            kvs.push((scaling_key("original_context_length"), GgufValue::U32(orig as u32)));
            let scale = factor.unwrap_or(c.max_position_embeddings as f64 / orig as f64);
            let attn = attention_factor.unwrap_or(if scale > 1.0 {
                (1.0 + scale.ln() / (orig as f64).ln()).sqrt()
            } else {
                1.0
            });
            kvs.push((scaling_key("attn_factor"), GgufValue::F32(attn as f32)));
            let f = |v: &Vec<f64>| v.iter().map(|&x| x as f32).collect();
            extra.push(("rope_factors_long.weight".into(), f(long_factor)));
            extra.push(("rope_factors_short.weight".into(), f(short_factor)));
        }
        other => {
            return Err(Error::invalid(
                "--format gguf",
                format!("the model's RoPE scaling {other:?} has no {arch} form in GGUF that kiln writes"),
            ));
        }
    }
    Ok(ArchKeys { arch, kvs, extra, notes })
}

/// GPT-2's keys (`GPT2Model.set_gguf_parameters`), from its config.json.
pub fn gpt2_keys(config: &serde_json::Value) -> Result<ArchKeys> {
    let get = |k: &str| {
        config[k]
            .as_u64()
            .map(|v| v as u32)
            .ok_or_else(|| Error::invalid("gguf export", format!("GPT-2 config has no `{k}`")))
    };
    let n_embd = get("n_embd")?;
    let kvs = vec![
        ("gpt2.block_count".to_string(), GgufValue::U32(get("n_layer")?)),
        ("gpt2.context_length".to_string(), GgufValue::U32(get("n_positions")?)),
        ("gpt2.embedding_length".to_string(), GgufValue::U32(n_embd)),
        (
            "gpt2.feed_forward_length".to_string(),
            GgufValue::U32(config["n_inner"].as_u64().map_or(4 * n_embd, |v| v as u32)),
        ),
        ("gpt2.attention.head_count".to_string(), GgufValue::U32(get("n_head")?)),
        (
            "gpt2.attention.layer_norm_epsilon".to_string(),
            GgufValue::F32(config["layer_norm_epsilon"].as_f64().unwrap_or(1e-5) as f32),
        ),
    ];
    Ok(ArchKeys { arch: "gpt2", kvs, extra: Vec::new(), notes: Vec::new() })
}
