//! Llama (and SmolLM2), mirroring Hugging Face's `LlamaForCausalLM`
//! (transformers/models/llama/modeling_llama.py).
//!
//! # Shapes
//! B batch, T tokens, C `hidden_size`, Hq `num_attention_heads`, Hkv `num_key_value_heads`,
//! D `head_dim` (C/Hq by default), F `intermediate_size`, V `vocab_size`.
//! Linear weights are `[out, in]`.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::{CausalLm, LmInput, LmShape, self_attention, untied_head};
use crate::autograd::{self, Module, Param, Tape, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsSource, WeightSource, read_config};
use crate::gpu::Gpu;
use crate::kernels::attention::AttentionSpec;
use crate::kernels::layer_norm::Norm;
use crate::kernels::rope::RopeTables;
use crate::nn::{KvCache, Linear, NormLayer};

fn default_theta() -> f64 {
    10000.0
}
fn default_act() -> String {
    "silu".into()
}
fn default_eps() -> f32 {
    1e-6
}

/// config.json of a Llama checkpoint (the keys transformers writes; `rope_theta` may sit in
/// `rope_parameters` in transformers 5).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base, refusing scaled variants kiln does not implement.
    fn rope_base(&self, path: &Path) -> Result<f64> {
        let mut theta = self.rope_theta;
        for v in [&self.rope_parameters, &self.rope_scaling].into_iter().flatten() {
            if v.is_null() {
                continue;
            }
            let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
            if kind != "default" {
                return Err(Error::Parse {
                    path: path.to_path_buf(),
                    message: format!("rope type `{kind}` is not supported (kiln implements the default RoPE)"),
                });
            }
            if let Some(t) = v.get("rope_theta").and_then(|t| t.as_f64()) {
                theta = t;
            }
        }
        Ok(theta)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Err(Error::Parse { path: path.to_path_buf(), message });
        crate::formats::safetensors::check_dims(
            path,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("num_key_value_heads", self.kv_heads()),
                ("head_dim", self.head_dim()),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
        )?;
        if self.hidden_act != "silu" {
            return bad(format!("hidden_act `{}`: kiln's Llama MLP is SwiGLU (silu)", self.hidden_act));
        }
        if self.num_attention_heads == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return bad("attention_bias / mlp_bias are not supported".into());
        }
        Ok(())
    }
}

/// `LlamaDecoderLayer`.
pub struct Layer {
    pub input_layernorm: NormLayer,
    /// `self_attn.{q,k,v,o}_proj`: q `[Hq·D, C]`, k and v `[Hkv·D, C]`, o `[C, Hq·D]`.
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub post_attention_layernorm: NormLayer,
    /// `mlp.{gate,up}_proj` `[F, C]`, `mlp.down_proj` `[C, F]`.
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// Positions the RoPE table is built for, at most (see [`Llama::from_source`]).
const MAX_ROPE_POSITIONS: usize = 1 << 17;

pub struct Llama {
    pub config: LlamaConfig,
    /// `model.embed_tokens.weight` `[V, C]`.
    pub embed_tokens: Param,
    pub layers: Vec<Layer>,
    pub norm: NormLayer,
    /// `lm_head.weight` `[V, C]` unless tied.
    pub lm_head: Option<Param>,
    pub rope: Arc<RopeTables>,
}

impl Llama {
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Llama> {
        let config: LlamaConfig = read_config(dir)?;
        let mut src = SafetensorsSource::open(dir)?;
        Llama::from_source(gpu, config, &mut src, &dir.join("config.json"))
    }

    pub fn from_source(
        gpu: &Gpu,
        config: LlamaConfig,
        src: &mut dyn WeightSource,
        config_path: &Path,
    ) -> Result<Llama> {
        config.check(config_path)?;
        let base = config.rope_base(config_path)?;
        let (c, f, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
        let (hq, hkv, d) = (config.num_attention_heads, config.kv_heads(), config.head_dim());
        let eps = config.rms_norm_eps;
        let rms = |src: &mut dyn WeightSource, path: String| -> Result<NormLayer> {
            let w = src.tensor(gpu, &format!("{path}.weight"), &[c])?;
            Ok(NormLayer { kind: Norm::RmsNorm, weight: Param::new(format!("{path}.weight"), w), bias: None, eps })
        };
        let linear = |src: &mut dyn WeightSource, path: String, d_in: usize, d_out: usize| -> Result<Linear> {
            // A quantized file's blocks stay blocks on the GPU when the source keeps them.
            if let Some(q) = src.quantized(&format!("{path}.weight"), &[d_out, d_in])? {
                return Ok(Linear::quantized(&path, crate::kernels::qmatmul::QuantTensor::upload(gpu, &q)?, None));
            }
            let w = src.tensor(gpu, &format!("{path}.weight"), &[d_out, d_in])?;
            Ok(Linear::new(&path, w, None, WeightLayout::OutIn))
        };
        let embed_tokens =
            Param::new("model.embed_tokens.weight", src.tensor(gpu, "model.embed_tokens.weight", &[v, c])?);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_layernorm: rms(src, format!("{p}.input_layernorm"))?,
                q_proj: linear(src, format!("{p}.self_attn.q_proj"), c, hq * d)?,
                k_proj: linear(src, format!("{p}.self_attn.k_proj"), c, hkv * d)?,
                v_proj: linear(src, format!("{p}.self_attn.v_proj"), c, hkv * d)?,
                o_proj: linear(src, format!("{p}.self_attn.o_proj"), hq * d, c)?,
                post_attention_layernorm: rms(src, format!("{p}.post_attention_layernorm"))?,
                gate_proj: linear(src, format!("{p}.mlp.gate_proj"), c, f)?,
                up_proj: linear(src, format!("{p}.mlp.up_proj"), c, f)?,
                down_proj: linear(src, format!("{p}.mlp.down_proj"), f, c)?,
            });
        }
        let norm = rms(src, "model.norm".into())?;
        let lm_head = untied_head(gpu, src, config.tie_word_embeddings, [v, c])?;
        // rotary_emb.inv_freq is a buffer some checkpoints carry; it is recomputed from rope_theta.
        src.finish(&|n| n.ends_with("rotary_emb.inv_freq"))?;
        // The table covers at most MAX_ROPE_POSITIONS: a model claiming millions of positions
        // should not cost gigabytes up front; longer inputs are refused by the RoPE kernel.
        let positions = config.max_position_embeddings.min(MAX_ROPE_POSITIONS);
        let rope = Arc::new(RopeTables::new(gpu, d, positions, base)?);
        Ok(Llama { config, embed_tokens, layers, norm, lm_head, rope })
    }
}

impl Module for Llama {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.embed_tokens);
        for l in &self.layers {
            l.input_layernorm.visit_params(f);
            for lin in [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj] {
                lin.visit_params(f);
            }
            l.post_attention_layernorm.visit_params(f);
            for lin in [&l.gate_proj, &l.up_proj, &l.down_proj] {
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
            l.input_layernorm.visit_params_mut(f);
            for lin in [&mut l.q_proj, &mut l.k_proj, &mut l.v_proj, &mut l.o_proj] {
                lin.visit_params_mut(f);
            }
            l.post_attention_layernorm.visit_params_mut(f);
            for lin in [&mut l.gate_proj, &mut l.up_proj, &mut l.down_proj] {
                lin.visit_params_mut(f);
            }
        }
        self.norm.visit_params_mut(f);
        if let Some(h) = &mut self.lm_head {
            f(h);
        }
    }
}

impl CausalLm for Llama {
    fn model_type(&self) -> &'static str {
        "llama"
    }

    fn shape(&self) -> LmShape {
        LmShape {
            vocab: self.config.vocab_size,
            hidden: self.config.hidden_size,
            layers: self.config.num_hidden_layers,
            kv_heads: self.config.kv_heads(),
            head_dim: self.config.head_dim(),
            max_positions: self.config.max_position_embeddings,
        }
    }

    fn hidden(&self, tape: &Tape, input: &LmInput, cache: Option<&KvCache>) -> Result<Var> {
        let cfg = &self.config;
        let (b, t) = (input.batch, input.seq);
        let (hq, hkv, d) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let offset = cache.map_or(0, |k| k.len);
        let mut x = autograd::embedding(tape, &tape.param(&self.embed_tokens), &input.ids, &input.ids_gpu)?;
        let mut spec = AttentionSpec::new(b, t, hq, hkv, d, true);
        if let Some(k) = cache {
            spec = spec.with_cache(k.capacity, offset);
        }
        for (i, l) in self.layers.iter().enumerate() {
            let a = l.input_layernorm.forward(tape, &x)?;
            let q = l.q_proj.forward(tape, &a)?.reshape(&[b, t, hq, d])?;
            let k = l.k_proj.forward(tape, &a)?.reshape(&[b, t, hkv, d])?;
            let v = l.v_proj.forward(tape, &a)?.reshape(&[b, t, hkv, d])?;
            let q = autograd::rope(tape, &self.rope, &q, offset)?;
            let k = autograd::rope(tape, &self.rope, &k, offset)?;
            let y = self_attention(tape, &spec, &q, &k, &v, input.key_mask.as_ref(), cache, i)?;
            let y = l.o_proj.forward(tape, &y.reshape(&[b, t, hq * d])?)?;
            x = autograd::add(tape, &x, &y)?;
            let m = l.post_attention_layernorm.forward(tape, &x)?;
            let gate = l.gate_proj.forward(tape, &m)?;
            let up = l.up_proj.forward(tape, &m)?;
            let m = l.down_proj.forward(tape, &autograd::swiglu(tape, &gate, &up)?)?;
            x = autograd::add(tape, &x, &m)?;
        }
        self.norm.forward(tape, &x)
    }

    fn head(&self, tape: &Tape) -> Var {
        tape.param(self.lm_head.as_ref().unwrap_or(&self.embed_tokens))
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                [
                    &mut l.q_proj,
                    &mut l.k_proj,
                    &mut l.v_proj,
                    &mut l.o_proj,
                    &mut l.gate_proj,
                    &mut l.up_proj,
                    &mut l.down_proj,
                ]
            })
            .collect()
    }

    fn config_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        v["model_type"] = "llama".into();
        v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        v
    }
}
