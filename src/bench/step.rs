//! Whole training steps on random weights of real shapes (no download): `kiln bench --step` and
//! `benches/steps.rs`.
//!
//! - `smollm2`: a Llama of SmolLM2-135M's shape with LoRA (r 8, α 16, dropout 0.05 on
//!   q/k/v/o_proj), AdamW at 2e-4 with clipping at 1.0, batches of 8 × 64 tokens: the step
//!   `scripts/gpu_baselines.py lora-train` times in PyTorch + PEFT.
//! - `minilm`: a BERT classifier of all-MiniLM-L6-v2's shape (mean pooling, two labels) with
//!   LoRA on query/key/value/dense and the head trained whole, batches of 8 × 64 tokens: the
//!   main job's step (`kiln train --task spamassassin`). `scripts/gpu_baselines.py steps` times
//!   both in PyTorch eager (and torch.compile).
//!
//! - `laptop`: issue 21's laptop case, a Llama of Llama-3.2-1B's shape (16 layers, hidden 2048,
//!   32 heads / 8 KV heads, FFN 8192, vocabulary 128,256, tied) with a Q4_0 base (random weights
//!   quantized on load), LoRA r 16 (α 32, dropout 0.05) on all seven linears, batches of 4 × 512.
//!
//! `--base KIND` holds a decoder's linear weights in a block type (`bf16`, `q4_k`, ...; random
//! f32 values rounded on load); `--grad-checkpoint` runs the decoder or encoder checkpointed; the figure carries the pool's
//! peak (`peak_gpu_bytes`) beside the memory estimate of the same run.
//!
//! Each step is what the training loops do: upload the batch, forward, backward, the optimizer,
//! and read back the loss and the gradient norm. [`Scale::Small`] keeps every width and cuts
//! layers, batch and vocabulary so that lavapipe runs a step in about a second; the
//! per-dispatch costs it measures are those of the full step, with fewer dispatches.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{Scale, median};
use crate::autograd::Tape;
use crate::error::Result;
use crate::formats::safetensors::WeightSource;
use crate::gpu::{Counts, Gpu, Profile};
use crate::kernels::adamw::AdamW;
use crate::models::bert::{Bert, BertConfig, EncoderInput};
use crate::models::classifier::{Pooling, SequenceClassifier};
use crate::models::decoder::{Decoder, DecoderConfig};
use crate::models::llama;
use crate::models::{CausalLm, LmInput};
use crate::nn::LoraConfig;
use crate::quant::{QuantType, QuantWeights};
use crate::train::Optimizer;
use crate::train::classify::Strategy;
use crate::train::memory::{self, MemoryEstimate};

/// Which step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepModel {
    Smollm2,
    Minilm,
    Laptop,
}

/// The sizes a step runs at.
#[derive(Clone, Debug, Serialize)]
pub struct StepShape {
    pub model: StepModel,
    pub layers: usize,
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
    /// Gradient checkpointing of every block.
    pub grad_checkpoint: bool,
    /// The decoder's linear weights in this block type (16-bit or quantized); None: f32.
    pub base: Option<QuantType>,
}

impl StepShape {
    pub fn new(model: StepModel, scale: Scale) -> StepShape {
        let full = scale == Scale::Full;
        match model {
            StepModel::Smollm2 => StepShape {
                model,
                layers: if full { 30 } else { 2 },
                batch: if full { 8 } else { 1 },
                seq: if full { 64 } else { 32 },
                // The tied LM head is the largest product of a step: at 49,152 it alone would
                // take lavapipe seconds.
                vocab: if full { 49_152 } else { 8_192 },
                grad_checkpoint: false,
                base: None,
            },
            StepModel::Minilm => StepShape {
                model,
                layers: if full { 6 } else { 2 },
                batch: if full { 8 } else { 4 },
                seq: 64,
                vocab: 30_522,
                grad_checkpoint: false,
                base: None,
            },
            // Small: every width of the real model, two layers, one row of 128 tokens and a cut
            // vocabulary, so lavapipe runs a step in about a minute.
            StepModel::Laptop => StepShape {
                model,
                layers: if full { 16 } else { 2 },
                batch: if full { 4 } else { 1 },
                seq: if full { 512 } else { 128 },
                vocab: if full { 128_256 } else { 8_192 },
                grad_checkpoint: false,
                base: Some(QuantType::Q4_0),
            },
        }
    }

    pub fn with_checkpointing(mut self, on: bool) -> Self {
        self.grad_checkpoint = on;
        self
    }

    /// The decoder's linear weights held as `base` (the BERT step keeps f32).
    pub fn with_base(mut self, base: QuantType) -> Self {
        self.base = Some(base);
        self
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    pub fn describe(&self) -> String {
        let name = match self.model {
            StepModel::Smollm2 => "SmolLM2-135M-shaped Llama, LoRA r8 q/k/v/o",
            StepModel::Minilm => "MiniLM-shaped BERT classifier, LoRA r8 q/k/v/dense + head",
            StepModel::Laptop => "Llama-3.2-1B-shaped Llama, LoRA r16 all linears",
        };
        let ckpt = if self.grad_checkpoint { ", gradient checkpointing" } else { "" };
        let base = match (self.model, self.base) {
            (StepModel::Minilm, _) | (_, None) => String::new(),
            (_, Some(kind)) => format!(", {kind} base"),
        };
        format!("{name}, {} layers, batch {} × {}, vocab {}{base}{ckpt}", self.layers, self.batch, self.seq, self.vocab)
    }

    /// SmolLM2-135M's config.json with this shape's layers and vocabulary.
    fn llama_config(&self) -> Result<DecoderConfig> {
        let json = serde_json::json!({
            "vocab_size": self.vocab, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": self.layers, "num_attention_heads": 9, "num_key_value_heads": 3,
            "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true, "hidden_act": "silu",
        });
        llama::config(&json, Path::new("<SmolLM2-135M shape>"))
    }

    /// Llama-3.2-1B's config.json with this shape's layers and vocabulary.
    fn llama_1b_config(&self) -> Result<DecoderConfig> {
        let json = serde_json::json!({
            "vocab_size": self.vocab, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": self.layers, "num_attention_heads": 32, "num_key_value_heads": 8,
            "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true, "hidden_act": "silu",
        });
        llama::config(&json, Path::new("<Llama-3.2-1B shape>"))
    }

    /// all-MiniLM-L6-v2's config.json with this shape's layers.
    fn bert_config(&self) -> BertConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": self.vocab, "hidden_size": 384, "num_hidden_layers": self.layers,
            "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
            "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
        }))
        .expect("a complete BERT config")
    }
}

/// Weights drawn on demand: norms 1, biases 0, everything else uniform in ±0.02·√3 (std 0.02,
/// Hugging Face's `initializer_range`), so the loss starts near ln(vocab) as a real model's would.
struct RandomWeights {
    origin: PathBuf,
    state: u64,
    /// Hand linear weights out quantized to this (a quantized base).
    quantize: Option<QuantType>,
}

impl RandomWeights {
    fn new(what: &str, seed: u64) -> Self {
        RandomWeights { origin: PathBuf::from(format!("<random {what} weights>")), state: seed | 1, quantize: None }
    }

    fn next(&mut self) -> f32 {
        // xorshift64*: fast enough for 135M weights, and the same on every machine.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let u = (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * 0.02 * 3f32.sqrt()
    }
}

impl WeightSource for RandomWeights {
    fn origin(&self) -> &Path {
        &self.origin
    }

    fn contains(&self, _name: &str) -> bool {
        false
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        Ok(if name.ends_with("bias") {
            vec![0.0; n]
        } else if name.to_lowercase().contains("norm") {
            vec![1.0; n]
        } else {
            (0..n).map(|_| self.next()).collect()
        })
    }

    fn remaining(&self) -> Vec<String> {
        Vec::new()
    }

    fn quantized(&mut self, name: &str, shape: &[usize]) -> Result<Option<QuantWeights>> {
        let Some(kind) = self.quantize else { return Ok(None) };
        let data = self.take(name, shape)?;
        Ok(Some(QuantWeights::quantize(kind, &data, shape[0], shape[1], name)?))
    }
}

enum Model {
    Lm(Box<Decoder>),
    Classifier(Box<SequenceClassifier>),
}

/// A model, its optimizer and a batch generator: [`StepBench::run`] is one training step.
pub struct StepBench<'g> {
    gpu: &'g Gpu,
    pub shape: StepShape,
    model: Model,
    opt: Optimizer,
    rng: RandomWeights,
    step: u32,
}

const SEED: u64 = 0;
const LR: f32 = 2e-4;

impl<'g> StepBench<'g> {
    pub fn new(gpu: &'g Gpu, shape: StepShape) -> Result<Self> {
        let mut src = RandomWeights::new(&format!("{:?}", shape.model), SEED + 1);
        let lora = |targets: &[&str]| LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: targets.iter().map(|t| t.to_string()).collect(),
            use_rslora: false,
            use_dora: false,
        };
        let config_path = src.origin.clone();
        let model = match shape.model {
            StepModel::Smollm2 => {
                src.quantize = shape.base;
                let mut m = Decoder::from_source(gpu, shape.llama_config()?, &mut src, &config_path)?;
                m.add_lora(gpu, &lora(&["q_proj", "k_proj", "v_proj", "o_proj"]), SEED)?;
                Model::Lm(Box::new(m))
            }
            StepModel::Laptop => {
                src.quantize = shape.base;
                let mut m = Decoder::from_source(gpu, shape.llama_1b_config()?, &mut src, &config_path)?;
                let all = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
                m.add_lora(gpu, &LoraConfig { r: 16, alpha: 32.0, ..lora(&all) }, SEED)?;
                // The f32 copies quantizing took are gone: release what they left pooled.
                gpu.submit()?;
                gpu.trim_pool();
                Model::Lm(Box::new(m))
            }
            StepModel::Minilm => {
                let body = Bert::from_source(gpu, shape.bert_config(), &mut src, &config_path)?;
                let labels = vec!["ham".to_string(), "spam".to_string()];
                let mut m = SequenceClassifier::new(gpu, body, labels, Pooling::Mean, SEED)?;
                m.add_lora(gpu, &lora(&["query", "key", "value", "dense"]), SEED)?;
                let layers = m.body.layers.len();
                m.set_trainable(gpu, &|name| Strategy::Lora.trains(name, layers))?;
                Model::Classifier(Box::new(m))
            }
        };
        let mut model = model;
        match &mut model {
            Model::Lm(m) => m.set_grad_checkpoint(shape.grad_checkpoint)?,
            Model::Classifier(m) => m.body.grad_checkpoint = shape.grad_checkpoint,
        }
        let opt = Optimizer::new(AdamW::default(), Some(1.0));
        Ok(StepBench { gpu, shape, model, opt, rng: RandomWeights::new("batch", SEED + 2), step: 0 })
    }

    fn token(&mut self) -> u32 {
        // Ids 3.. as PyTorch's side draws them (0-2 are special in both vocabularies).
        let u = (self.rng.next() / (0.02 * 3f32.sqrt()) + 1.0) / 2.0;
        3 + ((u * (self.shape.vocab - 3) as f32) as u32).min(self.shape.vocab as u32 - 4)
    }

    /// The memory estimate of this step, as `kiln train` prints it.
    pub fn estimate(&mut self) -> MemoryEstimate {
        let (b, t, ckpt) = (self.shape.batch, self.shape.seq, self.shape.grad_checkpoint);
        match &mut self.model {
            Model::Lm(m) => memory::estimate_lm(m.as_mut(), b, t).with_checkpointing(ckpt),
            Model::Classifier(m) => {
                // Its adapters are attached already: count them as trainable weights.
                let none = LoraConfig {
                    r: 0,
                    alpha: 0.0,
                    dropout: 0.0,
                    target_modules: vec![],
                    use_rslora: false,
                    use_dora: false,
                };
                memory::estimate_classifier(m, Strategy::Lora, &none, b, t).with_checkpointing(ckpt)
            }
        }
    }

    /// One optimizer step on a fresh random batch; returns the loss read back.
    pub fn run(&mut self) -> Result<f32> {
        let gpu = self.gpu;
        let (b, t) = (self.shape.batch, self.shape.seq);
        self.step += 1;
        let ids: Vec<u32> = (0..b * t).map(|_| self.token()).collect();
        let tape = Tape::train(gpu, SEED as u32, self.step);
        let loss = match &self.model {
            Model::Lm(m) => {
                // Next-token targets within each row; the last position predicts nothing.
                let targets: Vec<i32> =
                    (0..b * t).map(|i| if (i + 1) % t == 0 { -100 } else { ids[i + 1] as i32 }).collect();
                let input = LmInput::new(gpu, ids, b, t, None)?;
                m.loss(&tape, &input, &targets)?
            }
            Model::Classifier(m) => {
                let labels: Vec<usize> = ids.chunks(t).map(|row| row[0] as usize % 2).collect();
                let input = EncoderInput::new(gpu, ids, None, None, b, t)?;
                let logits = m.logits(&tape, &input)?;
                m.loss(&tape, &logits, &labels, None)?
            }
        };
        tape.backward(&loss, 1.0)?;
        match &self.model {
            Model::Lm(m) => self.opt.step(gpu, m.as_ref(), LR)?,
            Model::Classifier(m) => self.opt.step(gpu, m.as_ref(), LR)?,
        }
        let value = loss.read(gpu)?.0;
        self.opt.last_grad_norm(gpu)?;
        Ok(value)
    }
}

/// What one step did.
#[derive(Clone, Debug, Serialize)]
pub struct StepSample {
    pub ms: f64,
    pub loss: f32,
    pub counts: Counts,
}

/// `kiln bench --step`'s result.
#[derive(Clone, Debug, Serialize)]
pub struct StepFigure {
    pub adapter: String,
    /// The frozen base's matmul precision (`kernels::matmul_coop::describe`).
    pub precision: String,
    pub shape: StepShape,
    pub description: String,
    /// The first (warm-up) step: pipelines compiled, pools filled.
    pub first: StepSample,
    pub steps: Vec<StepSample>,
    pub median_ms: f64,
    pub tokens_per_s: f64,
    pub dispatches_per_step: u64,
    /// Host time per dispatch: the step's wall time less its waits on the GPU and its submits
    /// (on lavapipe a submit waits for the chunk before it), over its dispatches: recording,
    /// autograd and the loop's own work.
    pub host_us_per_dispatch: f64,
    /// Time inside `Gpu::dispatch` per dispatch (profiled runs only).
    pub record_us_per_dispatch: Option<f64>,
    /// The buffer pool's size after the steps: its high-water mark (it keeps what it allocates).
    pub peak_gpu_bytes: u64,
    /// The memory estimate of the same run.
    pub estimate: MemoryEstimate,
}

/// Runs `warmup` steps (the first one is reported apart), then `steps` measured ones; with
/// `profile`, each measured step is profiled (`gpu_times`: with timestamps where available).
pub fn measure(
    gpu: &Gpu,
    bench: &mut StepBench,
    warmup: usize,
    steps: usize,
    profile: Option<bool>,
) -> Result<(StepFigure, Vec<Profile>)> {
    let one = |bench: &mut StepBench, profiled: Option<bool>| -> Result<(StepSample, Option<Profile>)> {
        gpu.synchronize()?;
        let before = gpu.counts();
        if let Some(timed) = profiled {
            gpu.profile_begin(timed);
        }
        let t0 = Instant::now();
        let loss = bench.run()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let p = match profiled {
            Some(_) => Some(gpu.profile_end()?),
            None => None,
        };
        Ok((StepSample { ms, loss, counts: gpu.counts().since(&before) }, p))
    };
    let (first, _) = one(bench, None)?;
    for _ in 1..warmup {
        one(bench, None)?;
    }
    let mut samples = Vec::new();
    let mut profiles = Vec::new();
    for _ in 0..steps.max(1) {
        let (s, p) = one(bench, profile)?;
        samples.push(s);
        profiles.extend(p);
    }
    let median_ms = median(&mut samples.iter().map(|s| s.ms).collect::<Vec<_>>());
    let per = |f: &dyn Fn(&StepSample) -> f64| median(&mut samples.iter().map(f).collect::<Vec<_>>());
    let dispatches = samples.last().map_or(0, |s| s.counts.dispatches);
    let host_us = per(&|s| {
        let blocked = (s.counts.wait_ns + s.counts.submit_ns) as f64 / 1e3;
        (s.ms * 1e3 - blocked) / s.counts.dispatches.max(1) as f64
    });
    let record_us = profile.map(|_| per(&|s| s.counts.record_ns as f64 / 1e3 / s.counts.dispatches.max(1) as f64));
    let figure = StepFigure {
        adapter: gpu.describe(),
        precision: crate::kernels::matmul_coop::describe(gpu),
        description: bench.shape.describe(),
        shape: bench.shape.clone(),
        first,
        tokens_per_s: bench.shape.tokens() as f64 / (median_ms / 1e3),
        median_ms,
        dispatches_per_step: dispatches,
        host_us_per_dispatch: host_us,
        record_us_per_dispatch: record_us,
        steps: samples,
        peak_gpu_bytes: gpu.allocated_bytes(),
        estimate: bench.estimate(),
    };
    Ok((figure, profiles))
}
