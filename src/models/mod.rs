//! Architectures, one file each, written to read like their Hugging Face source, and the code
//! that maps their configs and tensor names onto them (file formats live in `crate::formats`).
//! The decoder families (Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 3) are one [`decoder::Decoder`]
//! configured by a small file each; GPT-2 and BERT keep their own.

pub mod bert;
pub mod classifier;
pub mod conv_bn;
pub mod decoder;
pub mod efficientnet_lite;
pub mod gemma3;
pub mod gguf_decoder;
pub mod gguf_export;
pub mod gpt2;
pub mod image_classifier;
pub mod llama;
pub mod load;
pub mod mistral;
pub mod phi3;
pub mod quantize;
pub mod qwen2;
pub mod qwen3;
pub mod resnet;

use std::path::Path;

use crate::autograd::{self, Loss, Module, Tape, Var};
use crate::error::{Error, Result};
use crate::formats::peft::{self, TaskType};
use crate::formats::safetensors::{self as weights, WeightSource};
use crate::gpu::Gpu;
use crate::kernels::attention::AttentionSpec;
use crate::kernels::matmul::matmul_bt_wide_into;
use crate::kernels::rope::RopeTables;
use crate::nn::{KvCache, Linear, LoraConfig, Rng};
use crate::tensor::{DType, Tensor};

/// Token ids of a batch, on the host and on the GPU, with the padding mask.
pub struct LmInput {
    pub batch: usize,
    pub seq: usize,
    /// `[B, T]` row-major.
    pub ids: Vec<u32>,
    pub ids_gpu: Tensor,
    /// `[B, T]` u32, 1 for real tokens and 0 for padding; None when there is no padding. In a
    /// packed batch, each token's example in its row (1, 2, ...; 0 = padding).
    pub key_mask: Option<Tensor>,
    /// Sequence packing: several examples per row, attention kept inside each (`key_mask` holds
    /// the segments) and positions restarting at each example (`positions`).
    pub packed: bool,
    /// `[B, T]` position of each token (host and GPU); None: 0, 1, ... along the row.
    pub positions: Option<(Vec<u32>, Tensor)>,
}

impl LmInput {
    pub fn new(gpu: &Gpu, ids: Vec<u32>, batch: usize, seq: usize, key_mask: Option<&[u32]>) -> Result<Self> {
        if ids.len() != batch * seq {
            return Err(Error::invalid("input", format!("{} ids for a batch of {batch} × {seq}", ids.len())));
        }
        let ids_gpu = Tensor::from_u32(gpu, &ids, &[batch, seq])?;
        let key_mask = match key_mask {
            Some(m) if m.contains(&0) => Some(Tensor::from_u32(gpu, m, &[batch, seq])?),
            _ => None,
        };
        Ok(LmInput { batch, seq, ids, ids_gpu, key_mask, packed: false, positions: None })
    }

    /// A packed batch: `segments` `[B, T]` says which example of its row each token belongs to
    /// (1, 2, ...; 0 = padding), `positions` `[B, T]` its position inside that example.
    pub fn packed(
        gpu: &Gpu,
        ids: Vec<u32>,
        batch: usize,
        seq: usize,
        segments: &[u32],
        positions: Vec<u32>,
    ) -> Result<Self> {
        if segments.len() != batch * seq || positions.len() != batch * seq {
            return Err(Error::invalid(
                "input",
                format!(
                    "{} segment ids and {} positions for a packed batch of {batch} × {seq}",
                    segments.len(),
                    positions.len()
                ),
            ));
        }
        let mut input = LmInput::new(gpu, ids, batch, seq, None)?;
        input.key_mask = Some(Tensor::from_u32(gpu, segments, &[batch, seq])?);
        let pos_gpu = Tensor::from_u32(gpu, &positions, &[batch, seq])?;
        input.positions = Some((positions, pos_gpu));
        input.packed = true;
        Ok(input)
    }

    /// Rotates q or k `[B, T, H, D]` by each token's position: `offset + t`, or the packed
    /// batch's positions.
    pub fn rope(&self, tape: &Tape, tables: &std::sync::Arc<RopeTables>, x: &Var, offset: usize) -> Result<Var> {
        match &self.positions {
            Some((_, pos)) => autograd::rope_at(tape, tables, x, pos),
            None => autograd::rope(tape, tables, x, offset),
        }
    }

    /// The largest position any token takes, plus one (the RoPE table rows a pass needs).
    pub fn position_span(&self, offset: usize) -> usize {
        match &self.positions {
            Some((p, _)) => p.iter().max().map_or(0, |m| *m as usize + 1),
            None => offset + self.seq,
        }
    }
}

/// Sizes the trainer, the KV cache and generation need.
#[derive(Clone, Copy, Debug)]
pub struct LmShape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
}

/// A decoder-only language model.
pub trait CausalLm: Module {
    /// `gpt2` or `llama` (config.json's `model_type`).
    fn model_type(&self) -> &'static str;
    /// Whether [`CausalLm::hidden`] honours a packed [`LmInput`] (segments and positions);
    /// training refuses `--pack` for a model that does not.
    fn supports_packing(&self) -> bool {
        false
    }
    fn shape(&self) -> LmShape;
    /// The final hidden states `[B, T, C]` (after the last norm). With a cache, the input is the
    /// tokens after the cached ones; the caller advances `cache.len`.
    fn hidden(&self, tape: &Tape, input: &LmInput, cache: Option<&KvCache>) -> Result<Var>;
    /// The output projection `[V, C]` (the input embedding when tied).
    fn head(&self, tape: &Tape) -> Var;
    /// Every linear layer (LoRA attaches to and merges from these).
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
    /// The config as Hugging Face writes it (for exports).
    fn config_json(&self) -> serde_json::Value;

    /// Every weight as Hugging Face names and stores it (for exports): (name, values, shape).
    fn hf_weights(&self, gpu: &Gpu) -> Result<Vec<NamedWeight>> {
        weights_f32(self, gpu)
    }

    /// The decoder's switches, for a model built on the one decoder (every family but GPT-2):
    /// exports to formats that name them (GGUF's `<arch>.*` keys).
    fn decoder_config(&self) -> Option<&decoder::DecoderConfig> {
        None
    }

    /// A sequence length past which every position is encoded differently (LongRoPE's original
    /// context: transformers then drops the KV cache and re-encodes the whole sequence with the
    /// long factors); None for models whose positions never change.
    fn rope_switch(&self) -> Option<usize> {
        None
    }

    /// Sets the dropout rate of the model's own layers (not LoRA's). Only GPT-2 has any: its
    /// embedding and residual dropout.
    fn set_dropout(&mut self, p: f32) -> Result<()> {
        let _ = p;
        Err(Error::invalid(
            "--dropout",
            format!("a {} model has no dropout layers to set; LoRA's dropout is --lora-dropout", self.model_type()),
        ))
    }

    /// Bytes of GPU tables the model keeps besides its parameters (the decoder's RoPE cos/sin),
    /// for the memory estimate.
    fn table_bytes(&self) -> u64 {
        0
    }

    /// Gradient checkpointing (`--grad-checkpoint`, transformers'
    /// `gradient_checkpointing_enable()`): each block keeps only its input on the tape and is
    /// run again in backward (`autograd::checkpoint`).
    fn set_grad_checkpoint(&mut self, on: bool) -> Result<()> {
        if !on {
            return Ok(());
        }
        Err(Error::invalid(
            "--grad-checkpoint",
            format!("a {} model does not checkpoint its blocks", self.model_type()),
        ))
    }

    /// Mean next-token cross-entropy over targets `[B·T]` (−100 ignored).
    fn loss(&self, tape: &Tape, input: &LmInput, targets: &[i32]) -> Result<Loss> {
        let h = self.hidden(tape, input, None)?;
        let h = h.reshape(&[input.batch * input.seq, self.shape().hidden])?;
        autograd::linear_cross_entropy(tape, &h, &self.head(tape), targets)
    }

    /// Logits `[B, V]` of the last position of each sequence (no gradients).
    fn last_logits(&self, gpu: &Gpu, input: &LmInput, cache: Option<&KvCache>) -> Result<Tensor> {
        let tape = Tape::no_grad(gpu);
        let c = self.shape().hidden;
        let h = self.hidden(&tape, input, cache)?.value.reshape(&[input.batch * input.seq, c])?;
        let last = Tensor::empty(gpu, &[input.batch, c], DType::F32)?;
        for b in 0..input.batch {
            gpu.copy(&h.narrow_rows(b * input.seq + input.seq - 1, 1)?, &last.narrow_rows(b, 1)?)?;
        }
        let head = self.head(&tape).value;
        let v = head.dim(0);
        let logits = Tensor::empty(gpu, &[input.batch, v], DType::F32)?;
        // Inference: the head is frozen, so its product may round to f16 (the precision decides).
        matmul_bt_wide_into(gpu, &last, &head, &logits, true)?;
        Ok(logits)
    }

    /// Logits `[B, T, V]` of every position (parity tests and evaluation; no gradients).
    fn all_logits(&self, gpu: &Gpu, input: &LmInput) -> Result<Tensor> {
        let tape = Tape::no_grad(gpu);
        let c = self.shape().hidden;
        let n = input.batch * input.seq;
        let h = self.hidden(&tape, input, None)?.value.reshape(&[n, c])?;
        let head = self.head(&tape).value;
        let v = head.dim(0);
        let logits = Tensor::empty(gpu, &[n, v], DType::F32)?;
        // Rows at a time whose logits fit one binding (a 262,144-word vocabulary is 1 MiB a
        // row), in multiples of 64 so the views of h stay aligned.
        let fit = (gpu.limits().max_storage_buffer_binding_size / (v as u64 * 4)) as usize;
        let step = (fit / 64 * 64).max(64);
        for start in (0..n).step_by(step) {
            let rows = step.min(n - start);
            matmul_bt_wide_into(gpu, &h.narrow_rows(start, rows)?, &head, &logits.narrow_rows(start, rows)?, true)?;
        }
        logits.reshape(&[input.batch, input.seq, v])
    }

    /// LoRA targets when none are given: the attention projections under the family's names
    /// (q/k/v/o, Phi-3's fused qkv_proj and o_proj, GPT-2's c_attn and c_proj). PEFT's own table
    /// (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING) has only q_proj and v_proj for
    /// Llama, Mistral and Qwen, c_attn for GPT-2 and nothing for Phi-3; kiln adapts all of
    /// attention, which trains better per parameter at these ranks.
    fn default_lora_targets(&self) -> Vec<String> {
        let names: &[&str] = match self.model_type() {
            "gpt2" => &["c_attn", "c_proj"],
            "phi3" => &["qkv_proj", "o_proj"],
            _ => &["q_proj", "k_proj", "v_proj", "o_proj"],
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The module names LoRA targets for `given`: the family default when empty, every linear
    /// layer of the model for `all-linear` (PEFT's shorthand; the output head is not a linear
    /// layer here, as PEFT leaves it out too), else `given` as it is. Adapter configs record the
    /// expanded names, so PEFT loads them without knowing the shorthand.
    fn lora_targets(&mut self, given: &[String]) -> Vec<String> {
        match given {
            [] => self.default_lora_targets(),
            [one] if one.eq_ignore_ascii_case("all-linear") => {
                let names: std::collections::BTreeSet<String> = self
                    .linears_mut()
                    .iter()
                    .map(|l| l.path.rsplit('.').next().unwrap_or(&l.path).to_string())
                    .collect();
                names.into_iter().collect()
            }
            _ => given.to_vec(),
        }
    }

    /// Freezes every weight, then attaches LoRA adapters (trainable) to the targeted linears.
    /// Returns the number of adapted layers; none is an error naming what exists.
    fn add_lora(&mut self, gpu: &Gpu, cfg: &LoraConfig, seed: u64) -> Result<usize> {
        cfg.validate()?;
        self.visit_params_mut(&mut |p| p.grad = None);
        let mut rng = Rng::new(seed);
        let mut adapted = 0;
        let mut names = std::collections::BTreeSet::new();
        for lin in self.linears_mut() {
            names.insert(lin.path.rsplit('.').next().unwrap_or("").to_string());
            adapted += lin.add_lora(gpu, cfg, &mut rng)? as usize;
        }
        if adapted == 0 {
            return Err(Error::invalid(
                "lora",
                format!(
                    "target modules {:?} match no layer of this {} model; its linear layers are {:?}",
                    cfg.target_modules,
                    self.model_type(),
                    names
                ),
            ));
        }
        Ok(adapted)
    }

    /// Writes the adapters as a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`).
    fn save_adapter(
        &mut self,
        gpu: &Gpu,
        cfg: &LoraConfig,
        task: TaskType,
        base_model: &str,
        dir: &Path,
    ) -> Result<()> {
        peft::write_adapter(gpu, self.linears_mut(), &[], cfg, task, base_model, dir)
    }

    /// Attaches the PEFT adapter in `dir` (frozen base, trainable adapters). Every key of the
    /// file must land on a layer of the model.
    fn load_adapter(&mut self, gpu: &Gpu, dir: &Path) -> Result<LoraConfig> {
        let (cfg, mut src) = peft::open_adapter(dir)?;
        self.visit_params_mut(&mut |p| p.grad = None);
        peft::attach(gpu, self.linears_mut(), &mut src, &cfg, dir)?;
        src.finish(&|_| false)?;
        Ok(cfg)
    }

    /// Folds every adapter into its base weight.
    fn merge_lora(&mut self, gpu: &Gpu) -> Result<()> {
        for lin in self.linears_mut() {
            lin.merge_lora(gpu)?;
        }
        Ok(())
    }
}

/// Causal LM families a Hugging Face folder may hold (config.json's `model_type`).
pub const CAUSAL_LM_TYPES: &[&str] = &["gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text"];

/// Loads a causal LM from a Hugging Face folder by its config's `model_type`.
pub fn load_causal_lm(gpu: &Gpu, dir: &Path) -> Result<Box<dyn CausalLm>> {
    load_causal_lm_with(gpu, dir, crate::quant::BaseDtype::Auto)
}

/// [`load_causal_lm`] with the decoder's linear weights held as `base` says (`--base-dtype`):
/// under `auto` F16/BF16 files stay 16-bit. GPT-2 loads f32 (its Conv1D weights are
/// `[in, out]`); `load::load_lm_base` rounds it afterwards when asked.
pub fn load_causal_lm_with(gpu: &Gpu, dir: &Path, base: crate::quant::BaseDtype) -> Result<Box<dyn CausalLm>> {
    let path = dir.join("config.json");
    let json: serde_json::Value = weights::read_config(dir)?;
    let config = match json["model_type"].as_str() {
        Some("gpt2") => return Ok(Box::new(gpt2::Gpt2::load(gpu, dir)?)),
        Some("llama") => llama::config(&json, &path)?,
        Some("mistral") => mistral::config(&json, &path)?,
        Some("qwen2") => qwen2::config(&json, &path)?,
        Some("qwen3") => qwen3::config(&json, &path)?,
        Some("phi3") => phi3::config(&json, &path)?,
        Some("gemma3_text" | "gemma3") => gemma3::config(&json, &path)?,
        other => {
            let known = CAUSAL_LM_TYPES.join(", ");
            let message = match other {
                Some(t) => format!("model_type `{t}` is not a causal LM kiln knows ({known})"),
                None => format!("there is no string `model_type`; kiln knows the causal LMs {known}"),
            };
            return Err(Error::Parse { path, message });
        }
    };
    let mut src = weights::SafetensorsSource::open(dir)?;
    src.base = base;
    Ok(Box::new(decoder::Decoder::from_source(gpu, config, &mut src, &path)?))
}

/// Self-attention of one layer: over the batch's own keys (training, prefill without a cache),
/// or, with a cache, after appending this step's keys and values to layer `layer` of it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn self_attention(
    tape: &Tape,
    spec: &AttentionSpec,
    q: &Var,
    k: &Var,
    v: &Var,
    key_mask: Option<&Tensor>,
    cache: Option<&KvCache>,
    layer: usize,
) -> Result<Var> {
    match cache {
        None => autograd::attention(tape, spec, q, k, v, key_mask),
        Some(kc) => {
            kc.append(tape.gpu, layer, &k.value, &v.value)?;
            let (kk, vv) = (Var::constant(kc.k[layer].clone()), Var::constant(kc.v[layer].clone()));
            autograd::attention(tape, spec, q, &kk, &vv, None)
        }
    }
}

/// `lm_head.weight` `[V, C]` when the head is not tied to the input embedding; a tied checkpoint
/// may still carry a copy, which is taken (shape-checked) and dropped.
pub(crate) fn untied_head(
    gpu: &Gpu,
    src: &mut dyn weights::WeightSource,
    tied: bool,
    shape: [usize; 2],
) -> Result<Option<autograd::Param>> {
    const NAME: &str = "lm_head.weight";
    if !tied {
        return Ok(Some(autograd::Param::new(NAME, src.tensor(gpu, NAME, &shape)?)));
    }
    if src.contains(NAME) {
        src.take(NAME, &shape)?;
    }
    Ok(None)
}

/// Positions `offset..offset + T` for each of B sequences, as embedding ids.
pub(crate) fn positions(gpu: &Gpu, batch: usize, seq: usize, offset: usize) -> Result<(Vec<u32>, Tensor)> {
    let pos: Vec<u32> = (0..batch).flat_map(|_| (offset..offset + seq).map(|p| p as u32)).collect();
    let t = Tensor::from_u32(gpu, &pos, &[batch, seq])?;
    Ok((pos, t))
}

/// A weight read back for export: (name, values, shape).
pub type NamedWeight = (String, Vec<f32>, Vec<usize>);

/// Every parameter of `m` read back.
pub fn weights_f32(m: &(impl Module + ?Sized), gpu: &Gpu) -> Result<Vec<NamedWeight>> {
    let mut tensors = Vec::new();
    let mut err = None;
    m.visit_params(&mut |p| match p.value.to_f32_vec(gpu) {
        Ok(v) => tensors.push((p.name.clone(), v, p.value.shape().to_vec())),
        Err(e) => err = Some(e),
    });
    match err {
        Some(e) => Err(e),
        None => Ok(tensors),
    }
}

/// Counts parameters: (trainable, total).
pub fn count_params(m: &dyn Module) -> (usize, usize) {
    let (mut trainable, mut total) = (0, 0);
    m.visit_params(&mut |p| {
        total += p.numel();
        if p.trainable() {
            trainable += p.numel();
        }
    });
    (trainable, total)
}
