//! BERT-family encoders, mirroring Hugging Face's `BertModel`
//! (transformers/models/bert/modeling_bert.py): all-MiniLM-L6-v2, bert-base and friends.
//!
//! # Shapes
//! B batch, T tokens, C `hidden_size`, H heads, D = C/H, I `intermediate_size`.
//! Linear weights are `[out, in]` ([`WeightLayout::OutIn`]).
//!
//! # Names
//! Checkpoints come with the `bert.` prefix (`BertForSequenceClassification`, bert-base) or
//! without it (a bare `BertModel` such as all-MiniLM-L6-v2). Parameters are always named as in
//! `BertForSequenceClassification` (`bert.encoder.layer.0...`), which is what PEFT's adapter
//! keys for a SEQ_CLS task expect, whatever the checkpoint's own layout.

use std::path::Path;

use serde::Deserialize;

use crate::autograd::{self, Module, Param, Tape, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsSource, WeightSource, read_config};
use crate::gpu::Gpu;
use crate::kernels::attention::AttentionSpec;
use crate::kernels::elementwise::Activation;
use crate::kernels::layer_norm::Norm;
use crate::nn::{Linear, NormLayer};
use crate::tensor::Tensor;

/// The prefix of every parameter name (see the module docs).
pub const PREFIX: &str = "bert.";

fn default_act() -> String {
    "gelu".into()
}
fn default_pdrop() -> f32 {
    0.1
}
fn default_eps() -> f32 {
    1e-12
}
fn default_type_vocab() -> usize {
    2
}
fn default_position_type() -> String {
    "absolute".into()
}

/// config.json of a BERT checkpoint (the keys transformers writes).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_pdrop")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_pdrop")]
    pub attention_probs_dropout_prob: f32,
    /// Dropout before the classifier; `hidden_dropout_prob` when absent (as in transformers).
    #[serde(default)]
    pub classifier_dropout: Option<f32>,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

/// Token ids of a batch with their segment (token type) ids and padding mask.
pub struct EncoderInput {
    pub batch: usize,
    pub seq: usize,
    /// `[B, T]` row-major.
    pub ids: Vec<u32>,
    pub ids_gpu: Tensor,
    /// `[B, T]` segment ids (0 for a single sentence).
    pub token_types: Vec<u32>,
    pub token_types_gpu: Tensor,
    /// `[B, T]` 1 for real tokens, 0 for padding (host copy, used for pooling).
    pub mask: Vec<u32>,
    /// The mask on the GPU; None when nothing is padded.
    pub key_mask: Option<Tensor>,
}

impl EncoderInput {
    /// `token_types` None means all zeros; `mask` None means no padding.
    pub fn new(
        gpu: &Gpu,
        ids: Vec<u32>,
        token_types: Option<Vec<u32>>,
        mask: Option<Vec<u32>>,
        batch: usize,
        seq: usize,
    ) -> Result<Self> {
        let n = batch * seq;
        let token_types = token_types.unwrap_or_else(|| vec![0; n]);
        let mask = mask.unwrap_or_else(|| vec![1; n]);
        for (what, len) in [("ids", ids.len()), ("token type ids", token_types.len()), ("attention mask", mask.len())] {
            if len != n {
                return Err(Error::invalid("encoder input", format!("{len} {what} for a batch of {batch} × {seq}")));
            }
        }
        let ids_gpu = Tensor::from_u32(gpu, &ids, &[batch, seq])?;
        let token_types_gpu = Tensor::from_u32(gpu, &token_types, &[batch, seq])?;
        let key_mask = if mask.contains(&0) { Some(Tensor::from_u32(gpu, &mask, &[batch, seq])?) } else { None };
        Ok(EncoderInput { batch, seq, ids, ids_gpu, token_types, token_types_gpu, mask, key_mask })
    }
}

/// `BertLayer`: post-norm self-attention and feed-forward, each with a residual.
#[derive(Clone)]
pub struct BertLayer {
    /// `attention.self.{query,key,value}` `[C, C]`.
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    /// `attention.output.dense` `[C, C]` and `attention.output.LayerNorm`.
    pub attention_output: Linear,
    pub attention_norm: NormLayer,
    /// `intermediate.dense` `[I, C]`, `output.dense` `[C, I]`, `output.LayerNorm`.
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: NormLayer,
}

impl BertLayer {
    /// x `[B, T, C]` → the layer's output: attention, residual, LayerNorm, then the
    /// feed-forward, residual, LayerNorm; `p` is the hidden dropout.
    pub fn forward(
        &self,
        tape: &Tape,
        x: &Var,
        spec: &AttentionSpec,
        key_mask: Option<&Tensor>,
        activation: Activation,
        p: f32,
    ) -> Result<Var> {
        let (b, t, nh, d) = (spec.batch, spec.seq, spec.q_heads, spec.head_dim);
        let c = nh * d;
        let q = self.query.forward(tape, x)?.reshape(&[b, t, nh, d])?;
        let k = self.key.forward(tape, x)?.reshape(&[b, t, nh, d])?;
        let v = self.value.forward(tape, x)?.reshape(&[b, t, nh, d])?;
        // Attention-probability dropout is not applied (the kernel keeps no probabilities).
        let y = autograd::attention(tape, spec, &q, &k, &v, key_mask)?;
        let y = self.attention_output.forward(tape, &y.reshape(&[b, t, c])?)?;
        let y = autograd::dropout(tape, &y, p)?;
        let (_, x) = self.attention_norm.forward_add(tape, x, &y)?;
        let m = self.intermediate.forward_activation(tape, &x, activation)?;
        let m = self.output.forward(tape, &m)?;
        let m = autograd::dropout(tape, &m, p)?;
        Ok(self.output_norm.forward_add(tape, &x, &m)?.1)
    }

    fn linears_mut(&mut self) -> [&mut Linear; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        for l in [&self.query, &self.key, &self.value, &self.attention_output] {
            l.visit_params(f);
        }
        self.attention_norm.visit_params(f);
        self.intermediate.visit_params(f);
        self.output.visit_params(f);
        self.output_norm.visit_params(f);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        for l in [&mut self.query, &mut self.key, &mut self.value, &mut self.attention_output] {
            l.visit_params_mut(f);
        }
        self.attention_norm.visit_params_mut(f);
        self.intermediate.visit_params_mut(f);
        self.output.visit_params_mut(f);
        self.output_norm.visit_params_mut(f);
    }
}

/// `BertEmbeddings`: word + position + token type, then LayerNorm.
pub struct BertEmbeddings {
    /// `[V, C]`, `[max_position_embeddings, C]`, `[type_vocab_size, C]`.
    pub word: Param,
    pub position: Param,
    pub token_type: Param,
    pub norm: NormLayer,
}

impl BertEmbeddings {
    pub fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.word);
        f(&self.position);
        f(&self.token_type);
        self.norm.visit_params(f);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.word);
        f(&mut self.position);
        f(&mut self.token_type);
        self.norm.visit_params_mut(f);
    }
}

pub struct Bert {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    pub activation: Activation,
    /// Recompute each layer in backward instead of keeping its activations.
    pub grad_checkpoint: bool,
}

impl Bert {
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Bert> {
        let config: BertConfig = read_config(dir)?;
        let mut src = SafetensorsSource::open(dir)?;
        let bert = Bert::from_source(gpu, config, &mut src, &dir.join("config.json"))?;
        src.finish(&ignored_by_encoder)?;
        Ok(bert)
    }

    /// Takes the encoder's weights from `src`, which may hold more (a classifier, a pooler, an
    /// MLM head): the caller decides what else to take and then calls `finish`.
    pub fn from_source(gpu: &Gpu, config: BertConfig, src: &mut dyn WeightSource, config_path: &Path) -> Result<Bert> {
        let bad = |message: String| Error::Parse { path: config_path.to_path_buf(), message };
        let c = config.hidden_size;
        crate::formats::safetensors::check_dims(
            config_path,
            &[
                ("vocab_size", config.vocab_size),
                ("hidden_size", c),
                ("num_hidden_layers", config.num_hidden_layers),
                ("num_attention_heads", config.num_attention_heads),
                ("intermediate_size", config.intermediate_size),
                ("max_position_embeddings", config.max_position_embeddings),
                ("type_vocab_size", config.type_vocab_size),
            ],
        )?;
        if config.num_attention_heads == 0 || !c.is_multiple_of(config.num_attention_heads) {
            return Err(bad(format!(
                "hidden_size {c} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            )));
        }
        if config.position_embedding_type != "absolute" {
            return Err(bad(format!(
                "position_embedding_type `{}` is not supported (kiln has `absolute`)",
                config.position_embedding_type
            )));
        }
        let activation = Activation::from_hf_name(&config.hidden_act)
            .ok_or_else(|| bad(format!("hidden_act `{}` is not one kiln has", config.hidden_act)))?;
        let ckpt = if src.contains("bert.embeddings.word_embeddings.weight") { PREFIX } else { "" };
        let eps = config.layer_norm_eps;
        // `path` is the module path without any prefix; the checkpoint's name has its own.
        let param = |src: &mut dyn WeightSource, path: &str, shape: &[usize]| -> Result<Param> {
            Ok(Param::new(format!("{PREFIX}{path}"), src.tensor(gpu, &format!("{ckpt}{path}"), shape)?))
        };
        let norm = |src: &mut dyn WeightSource, path: &str| -> Result<NormLayer> {
            Ok(NormLayer {
                kind: Norm::LayerNorm,
                weight: param(src, &format!("{path}.weight"), &[c])?,
                bias: Some(param(src, &format!("{path}.bias"), &[c])?),
                eps,
            })
        };
        let linear = |src: &mut dyn WeightSource, path: &str, d_in: usize, d_out: usize| -> Result<Linear> {
            let w = src.tensor(gpu, &format!("{ckpt}{path}.weight"), &[d_out, d_in])?;
            let b = src.tensor(gpu, &format!("{ckpt}{path}.bias"), &[d_out])?;
            Ok(Linear::new(&format!("{PREFIX}{path}"), w, Some(b), WeightLayout::OutIn))
        };
        let embeddings = BertEmbeddings {
            word: param(src, "embeddings.word_embeddings.weight", &[config.vocab_size, c])?,
            position: param(src, "embeddings.position_embeddings.weight", &[config.max_position_embeddings, c])?,
            token_type: param(src, "embeddings.token_type_embeddings.weight", &[config.type_vocab_size, c])?,
            norm: norm(src, "embeddings.LayerNorm")?,
        };
        let inter = config.intermediate_size;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            layers.push(BertLayer {
                query: linear(src, &format!("{l}.attention.self.query"), c, c)?,
                key: linear(src, &format!("{l}.attention.self.key"), c, c)?,
                value: linear(src, &format!("{l}.attention.self.value"), c, c)?,
                attention_output: linear(src, &format!("{l}.attention.output.dense"), c, c)?,
                attention_norm: norm(src, &format!("{l}.attention.output.LayerNorm"))?,
                intermediate: linear(src, &format!("{l}.intermediate.dense"), c, inter)?,
                output: linear(src, &format!("{l}.output.dense"), inter, c)?,
                output_norm: norm(src, &format!("{l}.output.LayerNorm"))?,
            });
        }
        Ok(Bert { config, embeddings, layers, activation, grad_checkpoint: false })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The last hidden states `[B, T, C]`.
    pub fn forward(&self, tape: &Tape, input: &EncoderInput) -> Result<Var> {
        let cfg = &self.config;
        let (b, t, c, nh) = (input.batch, input.seq, cfg.hidden_size, cfg.num_attention_heads);
        let d = c / nh;
        if t > cfg.max_position_embeddings {
            return Err(Error::invalid(
                "bert",
                format!("{t} tokens exceed max_position_embeddings {} of this model", cfg.max_position_embeddings),
            ));
        }
        let emb = &self.embeddings;
        let words = autograd::embedding(tape, &tape.param(&emb.word), &input.ids, &input.ids_gpu)?;
        let (pos, pos_gpu) = super::positions(tape.gpu, b, t, 0)?;
        let positions = autograd::embedding(tape, &tape.param(&emb.position), &pos, &pos_gpu)?;
        let types =
            autograd::embedding(tape, &tape.param(&emb.token_type), &input.token_types, &input.token_types_gpu)?;
        let (_, mut x) = emb.norm.forward_add(tape, &autograd::add(tape, &words, &positions)?, &types)?;
        x = autograd::dropout(tape, &x, cfg.hidden_dropout_prob)?;
        let spec = AttentionSpec::new(b, t, nh, nh, d, false);
        let (activation, p) = (self.activation, cfg.hidden_dropout_prob);
        for layer in &self.layers {
            x = if self.grad_checkpoint {
                // The rerun in backward needs its own handles on the layer and the mask.
                let (layer, mask) = (layer.clone(), input.key_mask.clone());
                autograd::checkpoint(tape, &x, move |tape, x| {
                    layer.forward(tape, x, &spec, mask.as_ref(), activation, p)
                })?
            } else {
                layer.forward(tape, &x, &spec, input.key_mask.as_ref(), activation, p)?
            };
        }
        Ok(x)
    }

    /// Every linear layer of every block (LoRA attaches to and merges from these).
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers.iter_mut().flat_map(|l| l.linears_mut()).collect()
    }
}

/// Checkpoint tensors an encoder knowingly leaves: the position-id buffer, the pooler, and the
/// pre-training heads (`cls.` for MLM/NSP).
pub fn ignored_by_encoder(name: &str) -> bool {
    let name = name.strip_prefix(PREFIX).unwrap_or(name);
    name == "embeddings.position_ids" || name.starts_with("pooler.") || name.starts_with("cls.")
}

impl Module for Bert {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.embeddings.visit_params(f);
        for l in &self.layers {
            l.visit_params(f);
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.embeddings.visit_params_mut(f);
        for l in &mut self.layers {
            l.visit_params_mut(f);
        }
    }
}
