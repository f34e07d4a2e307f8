//! The one Llama-style decoder every family in this folder maps onto: token embedding, N blocks
//! (RMSNorm → attention → residual, RMSNorm → SwiGLU MLP → residual), a final RMSNorm and a
//! head tied to the embedding or not. What sets a family apart is a field of [`DecoderConfig`],
//! as transformers' `modular_*.py` files state Qwen2, Qwen3, Mistral and Phi-3 as differences
//! from Llama (transformers/models/llama/modeling_llama.py).
//!
//! # Shapes
//! B batch, T tokens, C `hidden_size`, Hq `num_attention_heads`, Hkv `num_key_value_heads`,
//! D `head_dim`, F `intermediate_size`, V `vocab_size`. Linear weights are `[out, in]`.

use std::path::Path;
use std::sync::Arc;

use super::{CausalLm, LmInput, LmShape, self_attention, untied_head};
use crate::autograd::{self, Module, Param, Tape, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::formats::safetensors::{self as weights, WeightSource};
use crate::gpu::Gpu;
use crate::kernels::attention::AttentionSpec;
use crate::kernels::elementwise::GatedUnit;
use crate::kernels::layer_norm::Norm;
use crate::kernels::rope::RopeTables;
use crate::nn::{KvCache, Linear, NormLayer, Residual, RopeConfig};
use crate::tensor::Tensor;

/// Everything that differs between the families, as switches over one block.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// config.json's `model_type` (`llama`, `mistral`, `qwen2`, `qwen3`, `phi3`).
    pub model_type: &'static str,
    /// The `architectures` entry written on export (`LlamaForCausalLM`, ...).
    pub architecture: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Given explicitly (Qwen3: 128 with hidden 1024 and 16 heads), or hidden / heads.
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    /// Biases on q_proj, k_proj and v_proj (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on o_proj (Llama's and Qwen3's `attention_bias`; never Qwen2's).
    pub o_bias: bool,
    /// Biases on the MLP's projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm over D on q and k before RoPE (Qwen3's `q_norm` / `k_norm`).
    pub qk_norm: bool,
    /// One `qkv_proj` `[(Hq + 2·Hkv)·D, C]`, rows q | k | v (Phi-3), instead of three.
    pub fused_qkv: bool,
    /// One `gate_up_proj` `[2F, C]`, rows gate | up (Phi-3), instead of two.
    pub fused_gate_up: bool,
    pub rope: RopeConfig,
    /// Per layer: attend to at most this many keys up to the query (Mistral's `sliding_window`,
    /// Qwen2's `layer_types`); None for full causal attention.
    pub sliding_window: Vec<Option<usize>>,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    /// The MLP's gated unit: SwiGLU (Llama's `silu`), or GeGLU with the tanh GELU (Gemma's
    /// `gelu_pytorch_tanh`).
    pub mlp: GatedUnit,
    /// Token embeddings are multiplied by this before the first layer (Gemma: √hidden, which
    /// transformers casts to the embedding dtype: in f32, √hidden rounded to f32).
    pub embed_scale: Option<f32>,
    /// Gemma's sandwich norms: `post_attention_layernorm` normalizes the attention output before
    /// the residual add, and the MLP has its own `pre_feedforward_layernorm` (input) and
    /// `post_feedforward_layernorm` (output, before the add). Llama's `post_attention_layernorm`
    /// is the MLP's input norm.
    pub sandwich_norms: bool,
    /// Scores are scaled by `query_pre_attn_scalar`^-1/2 instead of `head_dim`^-1/2 (Gemma).
    pub query_pre_attn_scalar: Option<f64>,
    /// RoPE of the sliding-window layers when it differs from [`Self::rope`] (Gemma 3: base
    /// `rope_local_base_freq` 10,000 on local layers, 1e6 and any scaling on global ones).
    pub rope_local: Option<RopeConfig>,
    /// Added to every RMSNorm weight as it loads: Gemma's Hugging Face checkpoints store w and
    /// compute x·(1 + w), so kiln holds 1 + w (GGUF files store 1 + w already: 0 there).
    pub norm_offset: f32,
    /// `bos_token_id` / `eos_token_id` as the source gave them (written back on export).
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f32 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

/// The config.json keys every family shares (transformers' `LlamaConfig` names).
#[derive(serde::Deserialize)]
struct HfCommon {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
}

impl DecoderConfig {
    /// The Llama reading of a config.json: sizes, RoPE, tied head; no biases, norms on q/k,
    /// fusion or windows (each family's file sets its own). `path` names the file in errors.
    pub fn from_hf(
        json: &serde_json::Value,
        path: &Path,
        model_type: &'static str,
        architecture: &'static str,
    ) -> Result<DecoderConfig> {
        let c: HfCommon = serde_json::from_value(json.clone())
            .map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        if c.hidden_act != "silu" {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                message: format!("`hidden_act` is `{}`; kiln's decoder MLP is SwiGLU (silu)", c.hidden_act),
            });
        }
        let heads = c.num_attention_heads;
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / heads.max(1));
        Ok(DecoderConfig {
            model_type,
            architecture,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(heads),
            head_dim,
            rms_norm_eps: c.rms_norm_eps,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            fused_qkv: false,
            fused_gate_up: false,
            rope: RopeConfig::from_hf(json, head_dim, path)?,
            sliding_window: vec![None; c.num_hidden_layers],
            tie_word_embeddings: c.tie_word_embeddings,
            max_position_embeddings: c.max_position_embeddings,
            mlp: GatedUnit::SwiGlu,
            embed_scale: None,
            sandwich_norms: false,
            query_pre_attn_scalar: None,
            rope_local: None,
            norm_offset: 0.0,
            bos_token_id: c.bos_token_id,
            eos_token_id: c.eos_token_id,
        })
    }

    /// Refuses sizes that cannot build a decoder, naming the key in `path`.
    pub fn check(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Err(Error::Parse { path: path.to_path_buf(), message });
        weights::check_dims(
            path,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("num_key_value_heads", self.num_key_value_heads),
                ("head_dim", self.head_dim),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
        )?;
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "`num_attention_heads` {} is not a multiple of `num_key_value_heads` {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.rope.head_dim != self.head_dim {
            return bad(format!(
                "the rotary embedding is for heads of {}, the model's are {}",
                self.rope.head_dim, self.head_dim
            ));
        }
        if let Some(local) = &self.rope_local
            && local.head_dim != self.head_dim
        {
            return bad(format!(
                "the local layers' rotary embedding is for heads of {}, the model's are {}",
                local.head_dim, self.head_dim
            ));
        }
        if let Some(s) = self.query_pre_attn_scalar
            && !(s > 0.0 && s.is_finite())
        {
            return bad(format!("`query_pre_attn_scalar` is {s}; expected a positive number"));
        }
        if self.sliding_window.len() != self.num_hidden_layers {
            return bad(format!(
                "{} sliding-window entries (`layer_types`) for {} layers",
                self.sliding_window.len(),
                self.num_hidden_layers
            ));
        }
        if self.sliding_window.contains(&Some(0)) {
            return bad(
                "`sliding_window` is 0: no token could attend to anything (expected a positive size or null)".into()
            );
        }
        Ok(())
    }

    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// The config as Hugging Face writes it, for exports (transformers 5 reads `rope_parameters`).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let window = self.sliding_window.iter().flatten().next().copied();
        let mut v = serde_json::json!({
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "rope_parameters": self.rope.to_hf_json(),
            "sliding_window": window,
            "torch_dtype": "float32",
        });
        if self.model_type == "qwen2" || self.model_type == "qwen3" {
            v["use_sliding_window"] = window.is_some().into();
            v["layer_types"] = self
                .sliding_window
                .iter()
                .map(|w| if w.is_some() { "sliding_attention" } else { "full_attention" })
                .collect();
        }
        if self.model_type == "llama" || self.model_type == "qwen3" {
            v["attention_bias"] = self.o_bias.into();
        }
        if self.model_type == "llama" {
            v["mlp_bias"] = self.mlp_bias.into();
        }
        if self.model_type == "phi3" {
            v["partial_rotary_factor"] = (self.rope.rot_dim as f64 / self.head_dim as f64).into();
            if let crate::nn::RopeScaling::LongRope { original_max_position_embeddings, .. } = &self.rope.scaling {
                v["original_max_position_embeddings"] = (*original_max_position_embeddings).into();
            }
        }
        if self.model_type == "gemma3_text" {
            if let Some(o) = v.as_object_mut() {
                o.remove("hidden_act");
            }
            v["hidden_activation"] = "gelu_pytorch_tanh".into();
            v["query_pre_attn_scalar"] = self.query_pre_attn_scalar.into();
            v["layer_types"] = self
                .sliding_window
                .iter()
                .map(|w| if w.is_some() { "sliding_attention" } else { "full_attention" })
                .collect();
            let local = self.rope_local.as_ref().unwrap_or(&self.rope);
            v["rope_parameters"] = serde_json::json!({
                "full_attention": self.rope.to_hf_json(),
                "sliding_attention": local.to_hf_json(),
            });
            v["attn_logit_softcapping"] = serde_json::Value::Null;
            v["final_logit_softcapping"] = serde_json::Value::Null;
        }
        for (key, id) in [("bos_token_id", &self.bos_token_id), ("eos_token_id", &self.eos_token_id)] {
            if let Some(id) = id {
                v[key] = id.clone();
            }
        }
        v
    }
}

/// A window size under `key`: null or absent is none, a positive integer a window, anything
/// else (0 included) an error naming the key.
pub(crate) fn window_key(json: &serde_json::Value, key: &str, path: &Path) -> Result<Option<usize>> {
    match &json[key] {
        serde_json::Value::Null => Ok(None),
        v => match v.as_u64() {
            Some(w) if w > 0 => Ok(Some(w as usize)),
            _ => Err(Error::Parse {
                path: path.to_path_buf(),
                message: format!("`{key}` is {v}; expected a positive number of tokens or null"),
            }),
        },
    }
}

/// Qwen2's and Qwen3's windows per layer: `layer_types` when given (transformers 5 writes it),
/// else `sliding_window` on layers from `max_window_layers` on when `use_sliding_window`.
pub(crate) fn qwen_layer_windows(json: &serde_json::Value, layers: usize, path: &Path) -> Result<Vec<Option<usize>>> {
    let bad = |message: String| Error::Parse { path: path.to_path_buf(), message };
    if let Some(types) = json["layer_types"].as_array() {
        if types.len() != layers {
            return Err(bad(format!("`layer_types` has {} entries for {layers} layers", types.len())));
        }
        let mut out = Vec::with_capacity(layers);
        for t in types {
            out.push(match t.as_str() {
                Some("full_attention") => None,
                Some("sliding_attention") => {
                    Some(window_key(json, "sliding_window", path)?.ok_or_else(|| {
                        bad("`layer_types` has sliding_attention but `sliding_window` is null".into())
                    })?)
                }
                _ => return Err(bad(format!("`layer_types` entry {t} is not full_attention or sliding_attention"))),
            });
        }
        return Ok(out);
    }
    if !json["use_sliding_window"].as_bool().unwrap_or(false) {
        return Ok(vec![None; layers]);
    }
    let window = window_key(json, "sliding_window", path)?;
    let from = json["max_window_layers"].as_u64().unwrap_or(28) as usize;
    Ok((0..layers).map(|i| if i >= from { window } else { None }).collect())
}

/// `self_attn.{q,k,v}_proj`, or Phi-3's fused `self_attn.qkv_proj`. (One per layer: the size
/// difference between the variants costs nothing worth boxing for.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum QkvProj {
    Separate { q_proj: Linear, k_proj: Linear, v_proj: Linear },
    Fused { qkv_proj: Linear },
}

/// `mlp.{gate,up}_proj`, or Phi-3's fused `mlp.gate_up_proj`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum GateUpProj {
    Separate { gate_proj: Linear, up_proj: Linear },
    Fused { gate_up_proj: Linear },
}

/// One decoder layer (`LlamaDecoderLayer` and its relatives). A clone shares its buffers.
#[derive(Clone)]
pub struct Block {
    pub input_layernorm: NormLayer,
    pub qkv: QkvProj,
    /// `self_attn.{q,k}_norm` `[D]` (Qwen3).
    pub q_norm: Option<NormLayer>,
    pub k_norm: Option<NormLayer>,
    pub o_proj: Linear,
    /// The MLP's input norm (Llama), or the attention output's (Gemma's sandwich).
    pub post_attention_layernorm: NormLayer,
    /// Gemma's MLP input and output norms (with `sandwich_norms`).
    pub pre_feedforward_layernorm: Option<NormLayer>,
    pub post_feedforward_layernorm: Option<NormLayer>,
    pub gate_up: GateUpProj,
    pub down_proj: Linear,
}

impl Block {
    fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = match &self.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj],
            QkvProj::Fused { qkv_proj } => vec![qkv_proj],
        };
        v.push(&self.o_proj);
        match &self.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => v.extend([gate_proj, up_proj]),
            GateUpProj::Fused { gate_up_proj } => v.push(gate_up_proj),
        }
        v.push(&self.down_proj);
        v
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = match &mut self.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj],
            QkvProj::Fused { qkv_proj } => vec![qkv_proj],
        };
        v.push(&mut self.o_proj);
        match &mut self.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => v.extend([gate_proj, up_proj]),
            GateUpProj::Fused { gate_up_proj } => v.push(gate_up_proj),
        }
        v.push(&mut self.down_proj);
        v
    }

    fn norms(&self) -> Vec<&NormLayer> {
        [
            Some(&self.input_layernorm),
            self.q_norm.as_ref(),
            self.k_norm.as_ref(),
            Some(&self.post_attention_layernorm),
            self.pre_feedforward_layernorm.as_ref(),
            self.post_feedforward_layernorm.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn norms_mut(&mut self) -> Vec<&mut NormLayer> {
        [
            Some(&mut self.input_layernorm),
            self.q_norm.as_mut(),
            self.k_norm.as_mut(),
            Some(&mut self.post_attention_layernorm),
            self.pre_feedforward_layernorm.as_mut(),
            self.post_feedforward_layernorm.as_mut(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Adds what the config implies to a loading error (a shape the config's heads or fused split
/// do not give), so the message names the config keys as well as the tensor.
fn hinted<T>(r: Result<T>, hint: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| match e {
        Error::Parse { path, message } => Error::Parse { path, message: format!("{message} ({})", hint()) },
        other => other,
    })
}

/// Positions the RoPE table is built for, at most (see [`Decoder::from_source`]).
const MAX_ROPE_POSITIONS: usize = 1 << 17;

pub struct Decoder {
    pub config: DecoderConfig,
    /// `model.embed_tokens.weight` `[V, C]`.
    pub embed_tokens: Param,
    pub layers: Vec<Block>,
    pub norm: NormLayer,
    /// `lm_head.weight` `[V, C]` unless tied.
    pub lm_head: Option<Param>,
    /// cos/sin tables from the load-time frequencies.
    pub rope: Arc<RopeTables>,
    /// LongRoPE's tables for forwards reaching past the original context (transformers switches
    /// every position to `long_factor` then).
    pub rope_long: Option<Arc<RopeTables>>,
    /// The sliding-window layers' tables when they have their own RoPE (Gemma 3).
    pub rope_local: Option<Arc<RopeTables>>,
    /// Recompute each block in backward instead of keeping its activations.
    pub grad_checkpoint: bool,
}

impl Decoder {
    /// Builds the decoder from weights under Hugging Face names, every shape from `config`.
    /// `config_path` names the config in errors.
    pub fn from_source(
        gpu: &Gpu,
        config: DecoderConfig,
        src: &mut dyn WeightSource,
        config_path: &Path,
    ) -> Result<Decoder> {
        config.check(config_path)?;
        let (c, f, v, d) = (config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim);
        let (qw, kvw) = (config.q_width(), config.kv_width());
        let (eps, offset) = (config.rms_norm_eps, config.norm_offset);
        let rms = |src: &mut dyn WeightSource, path: String, width: usize| -> Result<NormLayer> {
            let name = format!("{path}.weight");
            let w = if offset == 0.0 {
                src.tensor(gpu, &name, &[width])?
            } else {
                let w: Vec<f32> = src.take(&name, &[width])?.into_iter().map(|x| x + offset).collect();
                crate::tensor::Tensor::from_f32(gpu, &w, &[width])?
            };
            Ok(NormLayer { kind: Norm::RmsNorm, weight: Param::new(name, w), bias: None, eps })
        };
        let linear = |src: &mut dyn WeightSource, path: String, d_in: usize, d_out: usize, bias: bool| {
            let b = if bias { Some(src.tensor(gpu, &format!("{path}.bias"), &[d_out])?) } else { None };
            // A quantized file's blocks stay blocks on the GPU when the source keeps them.
            if let Some(q) = src.quantized(&format!("{path}.weight"), &[d_out, d_in])? {
                return Ok(Linear::quantized(&path, crate::kernels::qmatmul::QuantTensor::upload(gpu, &q)?, b));
            }
            let w = src.tensor(gpu, &format!("{path}.weight"), &[d_out, d_in])?;
            Ok(Linear::new(&path, w, b, WeightLayout::OutIn))
        };
        // A fused weight whose rows do not split as the config says is named with the split.
        let fused = |src: &mut dyn WeightSource, path: String, d_out: usize, split: String| -> Result<Linear> {
            let r = linear(src, path.clone(), c, d_out, false);
            hinted(r, || format!("`{path}.weight` does not split into {split}"))
        };
        let sandwich = |src: &mut dyn WeightSource, path: String| -> Result<Option<NormLayer>> {
            if config.sandwich_norms { rms(src, path, c).map(Some) } else { Ok(None) }
        };
        let heads = |what: &str, n: usize| format!("{what} {n} × head_dim {d} = {}", n * d);
        let q_rows = heads("num_attention_heads", config.num_attention_heads);
        let kv_rows = heads("num_key_value_heads", config.num_key_value_heads);
        let embed_tokens =
            Param::new("model.embed_tokens.weight", src.tensor(gpu, "model.embed_tokens.weight", &[v, c])?);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let qkv = if config.fused_qkv {
                let split = format!(
                    "q | k | v rows of {qw} + {kvw} + {kvw} (num_attention_heads {} and num_key_value_heads {} × head_dim {d})",
                    config.num_attention_heads, config.num_key_value_heads
                );
                QkvProj::Fused { qkv_proj: fused(src, format!("{p}.self_attn.qkv_proj"), qw + 2 * kvw, split)? }
            } else {
                QkvProj::Separate {
                    q_proj: hinted(linear(src, format!("{p}.self_attn.q_proj"), c, qw, config.qkv_bias), || {
                        format!("q_proj rows: {q_rows}")
                    })?,
                    k_proj: hinted(linear(src, format!("{p}.self_attn.k_proj"), c, kvw, config.qkv_bias), || {
                        format!("k_proj rows: {kv_rows}")
                    })?,
                    v_proj: hinted(linear(src, format!("{p}.self_attn.v_proj"), c, kvw, config.qkv_bias), || {
                        format!("v_proj rows: {kv_rows}")
                    })?,
                }
            };
            let (q_norm, k_norm) = if config.qk_norm {
                (
                    Some(rms(src, format!("{p}.self_attn.q_norm"), d)?),
                    Some(rms(src, format!("{p}.self_attn.k_norm"), d)?),
                )
            } else {
                (None, None)
            };
            let gate_up = if config.fused_gate_up {
                let split = format!("gate | up rows of {f} + {f} (intermediate_size {f})");
                GateUpProj::Fused { gate_up_proj: fused(src, format!("{p}.mlp.gate_up_proj"), 2 * f, split)? }
            } else {
                GateUpProj::Separate {
                    gate_proj: linear(src, format!("{p}.mlp.gate_proj"), c, f, config.mlp_bias)?,
                    up_proj: linear(src, format!("{p}.mlp.up_proj"), c, f, config.mlp_bias)?,
                }
            };
            layers.push(Block {
                input_layernorm: rms(src, format!("{p}.input_layernorm"), c)?,
                qkv,
                q_norm,
                k_norm,
                o_proj: hinted(linear(src, format!("{p}.self_attn.o_proj"), qw, c, config.o_bias), || {
                    format!("o_proj columns: {q_rows}")
                })?,
                post_attention_layernorm: rms(src, format!("{p}.post_attention_layernorm"), c)?,
                pre_feedforward_layernorm: sandwich(src, format!("{p}.pre_feedforward_layernorm"))?,
                post_feedforward_layernorm: sandwich(src, format!("{p}.post_feedforward_layernorm"))?,
                gate_up,
                down_proj: linear(src, format!("{p}.mlp.down_proj"), f, c, config.mlp_bias)?,
            });
        }
        let norm = rms(src, "model.norm".into(), c)?;
        let lm_head = untied_head(gpu, src, config.tie_word_embeddings, [v, c])?;
        // rotary_emb.inv_freq is a buffer some checkpoints carry; it is recomputed from the config.
        src.finish(&|n| n.ends_with("rotary_emb.inv_freq"))?;
        // The table covers at most MAX_ROPE_POSITIONS: a model claiming millions of positions
        // should not cost gigabytes up front; longer inputs are refused by the RoPE kernel.
        let positions = config.max_position_embeddings.min(MAX_ROPE_POSITIONS);
        let tables = |seq_len: Option<usize>| -> Result<Arc<RopeTables>> {
            let (inv_freq, factor) = config.rope.inv_freq(seq_len);
            Ok(Arc::new(RopeTables::from_inv_freq(gpu, d, &inv_freq, factor, positions)?))
        };
        let rope = tables(None)?;
        let rope_long = match &config.rope.scaling {
            crate::nn::RopeScaling::LongRope { original_max_position_embeddings: o, .. } if *o < positions => {
                Some(tables(Some(o + 1))?)
            }
            _ => None,
        };
        let rope_local = match &config.rope_local {
            Some(local) => {
                let (inv_freq, factor) = local.inv_freq(None);
                Some(Arc::new(RopeTables::from_inv_freq(gpu, d, &inv_freq, factor, positions)?))
            }
            None => None,
        };
        Ok(Decoder { config, embed_tokens, layers, norm, lm_head, rope, rope_long, rope_local, grad_checkpoint: false })
    }

    /// The tables for a forward whose positions reach `seq_len`.
    fn rope_for(&self, seq_len: usize) -> &Arc<RopeTables> {
        match &self.rope_long {
            Some(long) if self.config.rope.is_long(seq_len) => long,
            _ => &self.rope,
        }
    }
}

impl Module for Decoder {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.embed_tokens);
        for l in &self.layers {
            for n in l.norms() {
                n.visit_params(f);
            }
            for lin in l.linears() {
                lin.visit_params(f);
            }
        }
        self.norm.visit_params(f);
        if let Some(h) = &self.lm_head {
            f(h);
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.embed_tokens);
        for l in &mut self.layers {
            for n in l.norms_mut() {
                n.visit_params_mut(f);
            }
            for lin in l.linears_mut() {
                lin.visit_params_mut(f);
            }
        }
        self.norm.visit_params_mut(f);
        if let Some(h) = &mut self.lm_head {
            f(h);
        }
    }
}

/// What one block's forward reads besides its weights and input.
struct BlockInputs<'a> {
    rope: &'a Arc<RopeTables>,
    /// `[B, T]` per-token positions of a packed batch; None: `offset..` along each row.
    positions: Option<&'a Tensor>,
    spec: AttentionSpec,
    key_mask: Option<&'a Tensor>,
    cache: Option<&'a KvCache>,
    layer: usize,
}

/// One decoder block: x `[B, T, C]` → x + attention + MLP, pre-norm. The MLP's output is
/// returned pending, for the next norm to add (`Residual`).
fn block_forward(tape: &Tape, cfg: &DecoderConfig, l: &Block, x: Residual, inp: &BlockInputs) -> Result<Residual> {
    let (b, t) = (inp.spec.batch, inp.spec.seq);
    let (hq, hkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let offset = inp.cache.map_or(0, |k| k.len);
    let (x, a) = x.norm(tape, &l.input_layernorm)?;
    let (q, k, v) = match &l.qkv {
        QkvProj::Separate { q_proj, k_proj, v_proj } => {
            (q_proj.forward(tape, &a)?, k_proj.forward(tape, &a)?, v_proj.forward(tape, &a)?)
        }
        QkvProj::Fused { qkv_proj } => {
            let qkv = qkv_proj.forward(tape, &a)?;
            let mut parts = autograd::split_cols(tape, &qkv, &[cfg.q_width(), cfg.kv_width(), cfg.kv_width()])?;
            let v = parts.pop().expect("three parts");
            let k = parts.pop().expect("three parts");
            (parts.pop().expect("three parts"), k, v)
        }
    };
    let mut q = q.reshape(&[b, t, hq, d])?;
    let mut k = k.reshape(&[b, t, hkv, d])?;
    let v = v.reshape(&[b, t, hkv, d])?;
    if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
        q = head_norm(tape, qn, &q)?;
        k = head_norm(tape, kn, &k)?;
    }
    let (q, k) = match inp.positions {
        Some(pos) => (autograd::rope_at(tape, inp.rope, &q, pos)?, autograd::rope_at(tape, inp.rope, &k, pos)?),
        None => (autograd::rope(tape, inp.rope, &q, offset)?, autograd::rope(tape, inp.rope, &k, offset)?),
    };
    let y = self_attention(tape, &inp.spec, &q, &k, &v, inp.key_mask, inp.cache, inp.layer)?;
    let y = l.o_proj.forward(tape, &y.reshape(&[b, t, hq * d])?)?;
    // Gemma 3's sandwich: the attention output is normed before the residual add, and the MLP
    // gets its own pre-norm; the other families norm the sum.
    let (x, m) = match &l.pre_feedforward_layernorm {
        Some(pre) => {
            let y = l.post_attention_layernorm.forward(tape, &y)?;
            pre.forward_add(tape, &x, &y)?
        }
        None => l.post_attention_layernorm.forward_add(tape, &x, &y)?,
    };
    let h = match &l.gate_up {
        // The up-projection's matmul applies the gated unit as it stores.
        GateUpProj::Separate { gate_proj, up_proj } => {
            up_proj.forward_gated(tape, &m, cfg.mlp, &gate_proj.forward(tape, &m)?)?
        }
        GateUpProj::Fused { gate_up_proj } => {
            let gu = gate_up_proj.forward(tape, &m)?;
            let f = cfg.intermediate_size;
            let mut parts = autograd::split_cols(tape, &gu, &[f, f])?;
            let up = parts.pop().expect("two parts");
            autograd::gated(tape, cfg.mlp, &parts.pop().expect("two parts"), &up)?
        }
    };
    let mut m = l.down_proj.forward(tape, &h)?;
    if let Some(post) = &l.post_feedforward_layernorm {
        m = post.forward(tape, &m)?;
    }
    Ok(Residual::Pending(x, m))
}

/// RMSNorm over each head's D values of x `[B, T, H, D]`.
fn head_norm(tape: &Tape, norm: &NormLayer, x: &Var) -> Result<Var> {
    let shape = x.shape().to_vec();
    norm.forward(tape, &x.reshape(&[shape[0] * shape[1] * shape[2], shape[3]])?)?.reshape(&shape)
}

impl CausalLm for Decoder {
    fn model_type(&self) -> &'static str {
        self.config.model_type
    }

    fn supports_packing(&self) -> bool {
        true
    }

    fn shape(&self) -> LmShape {
        LmShape {
            vocab: self.config.vocab_size,
            hidden: self.config.hidden_size,
            layers: self.config.num_hidden_layers,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
            max_positions: self.config.max_position_embeddings,
        }
    }

    fn hidden(&self, tape: &Tape, input: &LmInput, cache: Option<&KvCache>) -> Result<Var> {
        let cfg = &self.config;
        let (b, t) = (input.batch, input.seq);
        let (hq, hkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let offset = cache.map_or(0, |k| k.len);
        let rope = self.rope_for(input.position_span(offset));
        let mut embedded = autograd::embedding(tape, &tape.param(&self.embed_tokens), &input.ids, &input.ids_gpu)?;
        if let Some(s) = cfg.embed_scale {
            embedded = autograd::scale(tape, &embedded, s)?;
        }
        let mut x = Residual::Sum(embedded);
        let mut spec = AttentionSpec::new(b, t, hq, hkv, d, true).with_segments(input.packed);
        if let Some(s) = cfg.query_pre_attn_scalar {
            spec.scale = (1.0 / s.sqrt()) as f32;
        }
        if let Some(k) = cache {
            spec = spec.with_cache(k.capacity, offset);
        }
        for (i, l) in self.layers.iter().enumerate() {
            let rope = match &self.rope_local {
                Some(local) if cfg.sliding_window[i].is_some() => local,
                _ => rope,
            };
            let spec = spec.with_window(cfg.sliding_window[i]);
            x = if self.grad_checkpoint && cache.is_none() {
                // The rerun in backward needs its own handles on the block and the inputs.
                let (l, cfg, rope, mask) = (l.clone(), cfg.clone(), rope.clone(), input.key_mask.clone());
                let positions = input.positions.as_ref().map(|p| p.1.clone());
                // A checkpoint's input and output are one tensor each: the stream summed.
                let sum = autograd::checkpoint(tape, &x.sum(tape)?, move |tape, x| {
                    let inputs = BlockInputs {
                        rope: &rope,
                        positions: positions.as_ref(),
                        spec,
                        key_mask: mask.as_ref(),
                        cache: None,
                        layer: i,
                    };
                    block_forward(tape, &cfg, &l, Residual::Sum(x.clone()), &inputs)?.sum(tape)
                })?;
                Residual::Sum(sum)
            } else {
                let positions = input.positions.as_ref().map(|p| &p.1);
                let inputs = BlockInputs { rope, positions, spec, key_mask: input.key_mask.as_ref(), cache, layer: i };
                block_forward(tape, cfg, l, x, &inputs)?
            };
        }
        Ok(x.norm(tape, &self.norm)?.1)
    }

    fn head(&self, tape: &Tape) -> Var {
        tape.param(self.lm_head.as_ref().unwrap_or(&self.embed_tokens))
    }

    fn table_bytes(&self) -> u64 {
        [Some(&self.rope), self.rope_long.as_ref()]
            .into_iter()
            .flatten()
            .map(|t| t.cos.byte_len() + t.sin.byte_len())
            .sum()
    }

    fn set_grad_checkpoint(&mut self, on: bool) -> Result<()> {
        self.grad_checkpoint = on;
        Ok(())
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers.iter_mut().flat_map(|l| l.linears_mut()).collect()
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_hf_json()
    }

    fn decoder_config(&self) -> Option<&DecoderConfig> {
        Some(&self.config)
    }

    /// Gemma's checkpoints store w for norms computing x·(1 + w): kiln's 1 + w loses the 1.
    fn hf_weights(&self, gpu: &Gpu) -> Result<Vec<super::NamedWeight>> {
        let mut tensors = super::weights_f32(self, gpu)?;
        if self.config.model_type == "gemma3_text" {
            for (name, values, _) in &mut tensors {
                if name.ends_with("norm.weight") {
                    values.iter_mut().for_each(|v| *v -= 1.0);
                }
            }
        }
        Ok(tensors)
    }

    fn rope_switch(&self) -> Option<usize> {
        match &self.config.rope.scaling {
            crate::nn::RopeScaling::LongRope { original_max_position_embeddings: o, .. }
                if self.rope_long.is_some() =>
            {
                Some(*o)
            }
            _ => None,
        }
    }
}
