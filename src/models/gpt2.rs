//! GPT-2, mirroring Hugging Face's `GPT2LMHeadModel`
//! (transformers/models/gpt2/modeling_gpt2.py).
//!
//! # Shapes
//! B batch, T tokens, C `n_embd`, H `n_head`, D = C/H, V `vocab_size`.
//! `Conv1D` weights are stored `[in, out]` ([`WeightLayout::InOut`]).

use std::path::Path;

use serde::Deserialize;

use super::{CausalLm, LmInput, LmShape, positions, self_attention, untied_head};
use crate::autograd::{self, Module, Param, Tape, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsSource, WeightSource, read_config};
use crate::gpu::Gpu;
use crate::kernels::attention::AttentionSpec;
use crate::kernels::elementwise::Activation;
use crate::kernels::layer_norm::Norm;
use crate::nn::{KvCache, Linear, NormLayer, Residual};
use crate::tensor::Tensor;

fn default_act() -> String {
    "gelu_new".into()
}
fn default_pdrop() -> f32 {
    0.1
}
fn default_eps() -> f32 {
    1e-5
}
fn default_true() -> bool {
    true
}

/// config.json of a GPT-2 checkpoint (the keys transformers writes).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f32,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f32,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f32,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
}

/// `GPT2Block`: pre-norm attention and MLP with residuals. A clone shares its buffers.
#[derive(Clone)]
pub struct Block {
    pub ln_1: NormLayer,
    /// `attn.c_attn` `[C, 3C]` (q|k|v), `attn.c_proj` `[C, C]`.
    pub c_attn: Linear,
    pub attn_c_proj: Linear,
    pub ln_2: NormLayer,
    /// `mlp.c_fc` `[C, 4C]`, `mlp.c_proj` `[4C, C]`.
    pub c_fc: Linear,
    pub mlp_c_proj: Linear,
}

pub struct Gpt2 {
    pub config: Gpt2Config,
    /// `transformer.` in `GPT2LMHeadModel` checkpoints, empty in bare `GPT2Model` ones.
    pub prefix: String,
    /// `wte` `[V, C]`, `wpe` `[n_positions, C]`.
    pub wte: Param,
    pub wpe: Param,
    pub h: Vec<Block>,
    pub ln_f: NormLayer,
    /// `lm_head.weight` `[V, C]` when not tied to `wte`.
    pub lm_head: Option<Param>,
    pub activation: Activation,
    /// Recompute each block in backward instead of keeping its activations.
    pub grad_checkpoint: bool,
}

impl Gpt2 {
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Gpt2> {
        let config: Gpt2Config = read_config(dir)?;
        let mut src = SafetensorsSource::open(dir)?;
        Gpt2::from_source(gpu, config, &mut src, &dir.join("config.json"))
    }

    pub fn from_source(gpu: &Gpu, config: Gpt2Config, src: &mut dyn WeightSource, config_path: &Path) -> Result<Gpt2> {
        let c = config.n_embd;
        crate::formats::safetensors::check_dims(
            config_path,
            &[
                ("vocab_size", config.vocab_size),
                ("n_positions", config.n_positions),
                ("n_embd", c),
                ("n_layer", config.n_layer),
                ("n_head", config.n_head),
                ("n_inner", config.n_inner.unwrap_or(4 * c)),
            ],
        )?;
        if config.n_head == 0 || !c.is_multiple_of(config.n_head) {
            return Err(Error::Parse {
                path: config_path.to_path_buf(),
                message: format!("n_embd {c} is not a multiple of n_head {}", config.n_head),
            });
        }
        let activation = Activation::from_hf_name(&config.activation_function).ok_or_else(|| Error::Parse {
            path: config_path.to_path_buf(),
            message: format!("activation_function `{}` is not one kiln has", config.activation_function),
        })?;
        let prefix = if src.contains("transformer.wte.weight") { "transformer." } else { "" }.to_string();
        let inner = config.n_inner.unwrap_or(4 * c);
        let eps = config.layer_norm_epsilon;
        let ln = |src: &mut dyn WeightSource, path: String| -> Result<NormLayer> {
            Ok(NormLayer {
                kind: Norm::LayerNorm,
                weight: Param::new(format!("{path}.weight"), src.tensor(gpu, &format!("{path}.weight"), &[c])?),
                bias: Some(Param::new(format!("{path}.bias"), src.tensor(gpu, &format!("{path}.bias"), &[c])?)),
                eps,
            })
        };
        let conv = |src: &mut dyn WeightSource, path: String, d_in: usize, d_out: usize| -> Result<Linear> {
            let w = src.tensor(gpu, &format!("{path}.weight"), &[d_in, d_out])?;
            let b = src.tensor(gpu, &format!("{path}.bias"), &[d_out])?;
            Ok(Linear::new(&path, w, Some(b), WeightLayout::InOut))
        };
        let p = &prefix;
        let wte =
            Param::new(format!("{p}wte.weight"), src.tensor(gpu, &format!("{p}wte.weight"), &[config.vocab_size, c])?);
        let wpe =
            Param::new(format!("{p}wpe.weight"), src.tensor(gpu, &format!("{p}wpe.weight"), &[config.n_positions, c])?);
        let mut h = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let b = format!("{p}h.{i}");
            h.push(Block {
                ln_1: ln(src, format!("{b}.ln_1"))?,
                c_attn: conv(src, format!("{b}.attn.c_attn"), c, 3 * c)?,
                attn_c_proj: conv(src, format!("{b}.attn.c_proj"), c, c)?,
                ln_2: ln(src, format!("{b}.ln_2"))?,
                c_fc: conv(src, format!("{b}.mlp.c_fc"), c, inner)?,
                mlp_c_proj: conv(src, format!("{b}.mlp.c_proj"), inner, c)?,
            });
        }
        let ln_f = ln(src, format!("{p}ln_f"))?;
        // Tied checkpoints usually omit lm_head.weight; when present and tied it equals wte.
        let lm_head = untied_head(gpu, src, config.tie_word_embeddings, [config.vocab_size, c])?;
        // attn.bias / attn.masked_bias are causal-mask buffers of old checkpoints, not weights.
        src.finish(&|n| n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias"))?;
        Ok(Gpt2 { config, prefix, wte, wpe, h, ln_f, lm_head, activation, grad_checkpoint: false })
    }

    fn head_dim(&self) -> usize {
        self.config.n_embd / self.config.n_head
    }
}

impl Module for Gpt2 {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.wte);
        f(&self.wpe);
        for b in &self.h {
            b.ln_1.visit_params(f);
            b.c_attn.visit_params(f);
            b.attn_c_proj.visit_params(f);
            b.ln_2.visit_params(f);
            b.c_fc.visit_params(f);
            b.mlp_c_proj.visit_params(f);
        }
        self.ln_f.visit_params(f);
        if let Some(l) = &self.lm_head {
            f(l);
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.wte);
        f(&mut self.wpe);
        for b in &mut self.h {
            b.ln_1.visit_params_mut(f);
            b.c_attn.visit_params_mut(f);
            b.attn_c_proj.visit_params_mut(f);
            b.ln_2.visit_params_mut(f);
            b.c_fc.visit_params_mut(f);
            b.mlp_c_proj.visit_params_mut(f);
        }
        self.ln_f.visit_params_mut(f);
        if let Some(l) = &mut self.lm_head {
            f(l);
        }
    }
}

/// One block's settings besides its weights.
#[derive(Clone, Copy)]
struct BlockStep {
    spec: AttentionSpec,
    activation: Activation,
    resid_pdrop: f32,
    layer: usize,
}

impl BlockStep {
    /// x `[B, T, C]` → x + attention + MLP, pre-norm, with residual dropout. The MLP's output
    /// is returned pending, for the next norm to add (`Residual`).
    fn forward(
        &self,
        tape: &Tape,
        blk: &Block,
        x: Residual,
        key_mask: Option<&Tensor>,
        cache: Option<&KvCache>,
    ) -> Result<Residual> {
        let (b, t, nh, d) = (self.spec.batch, self.spec.seq, self.spec.q_heads, self.spec.head_dim);
        let c = nh * d;
        let (x, a) = x.norm(tape, &blk.ln_1)?;
        let qkv = blk.c_attn.forward(tape, &a)?;
        let parts = autograd::split_cols(tape, &qkv, &[c, c, c])?;
        let q = parts[0].reshape(&[b, t, nh, d])?;
        let k = parts[1].reshape(&[b, t, nh, d])?;
        let v = parts[2].reshape(&[b, t, nh, d])?;
        let y = self_attention(tape, &self.spec, &q, &k, &v, key_mask, cache, self.layer)?;
        let y = blk.attn_c_proj.forward(tape, &y.reshape(&[b, t, c])?)?;
        let y = autograd::dropout(tape, &y, self.resid_pdrop)?;
        let (x, m) = blk.ln_2.forward_add(tape, &x, &y)?;
        let m = blk.c_fc.forward_activation(tape, &m, self.activation)?;
        let m = blk.mlp_c_proj.forward(tape, &m)?;
        let m = autograd::dropout(tape, &m, self.resid_pdrop)?;
        Ok(Residual::Pending(x, m))
    }
}

impl CausalLm for Gpt2 {
    fn model_type(&self) -> &'static str {
        "gpt2"
    }

    fn supports_packing(&self) -> bool {
        true
    }

    fn shape(&self) -> LmShape {
        LmShape {
            vocab: self.config.vocab_size,
            hidden: self.config.n_embd,
            layers: self.config.n_layer,
            kv_heads: self.config.n_head,
            head_dim: self.head_dim(),
            max_positions: self.config.n_positions,
        }
    }

    fn hidden(&self, tape: &Tape, input: &LmInput, cache: Option<&KvCache>) -> Result<Var> {
        let cfg = &self.config;
        let (b, t, nh, d) = (input.batch, input.seq, cfg.n_head, self.head_dim());
        let offset = cache.map_or(0, |k| k.len);
        if offset + t > cfg.n_positions {
            return Err(Error::invalid(
                "gpt2",
                format!("{} tokens exceed n_positions {} of this model", offset + t, cfg.n_positions),
            ));
        }
        let tok = autograd::embedding(tape, &tape.param(&self.wte), &input.ids, &input.ids_gpu)?;
        let (pos, pos_gpu) = match &input.positions {
            Some((p, g)) => (p.clone(), g.clone()),
            None => positions(tape.gpu, b, t, offset)?,
        };
        let pe = autograd::embedding(tape, &tape.param(&self.wpe), &pos, &pos_gpu)?;
        let embedded = autograd::dropout(tape, &autograd::add(tape, &tok, &pe)?, cfg.embd_pdrop)?;
        let mut x = Residual::Sum(embedded);
        let mut spec = AttentionSpec::new(b, t, nh, nh, d, true).with_segments(input.packed);
        if !cfg.scale_attn_weights {
            spec.scale = 1.0;
        }
        if let Some(k) = cache {
            spec = spec.with_cache(k.capacity, offset);
        }
        for (i, blk) in self.h.iter().enumerate() {
            let step = BlockStep { spec, activation: self.activation, resid_pdrop: cfg.resid_pdrop, layer: i };
            x = if self.grad_checkpoint && cache.is_none() {
                // The rerun in backward needs its own handles on the block and the mask; a
                // checkpoint's input and output are one tensor each, the stream summed.
                let (blk, mask) = (blk.clone(), input.key_mask.clone());
                let sum = autograd::checkpoint(tape, &x.sum(tape)?, move |tape, x| {
                    step.forward(tape, &blk, Residual::Sum(x.clone()), mask.as_ref(), None)?.sum(tape)
                })?;
                Residual::Sum(sum)
            } else {
                step.forward(tape, blk, x, input.key_mask.as_ref(), cache)?
            };
        }
        Ok(x.norm(tape, &self.ln_f)?.1)
    }

    fn head(&self, tape: &Tape) -> Var {
        tape.param(self.lm_head.as_ref().unwrap_or(&self.wte))
    }

    fn set_grad_checkpoint(&mut self, on: bool) -> Result<()> {
        self.grad_checkpoint = on;
        Ok(())
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.h.iter_mut().flat_map(|b| [&mut b.c_attn, &mut b.attn_c_proj, &mut b.c_fc, &mut b.mlp_c_proj]).collect()
    }

    /// Embedding and residual dropout. GPT-2's attention-probability dropout (`attn_pdrop`) is
    /// not applied by kiln's fused attention, in training or not.
    fn set_dropout(&mut self, p: f32) -> Result<()> {
        self.config.embd_pdrop = p;
        self.config.resid_pdrop = p;
        Ok(())
    }

    fn config_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        v["model_type"] = "gpt2".into();
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        v
    }
}
