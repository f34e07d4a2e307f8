//! How much GPU memory LoRA fine-tuning of a causal LM will take, estimated from shapes before
//! the first step, and whether the adapter can hold it: `kiln train` prints the table and
//! refuses early with a message that says what to lower, instead of a driver error mid-run.
//!
//! The estimate counts
//!   weights      every parameter by its dtype (f32), plus quantized and 16-bit bases at their
//!                block size, plus tables the model keeps (RoPE cos/sin, under `weights f32`);
//!   trainable    LoRA (and any other trainable) parameters: the weights themselves are in
//!                `weights`; here their gradients (f32) and AdamW's two moments (f32 each);
//!   activations  what the tape saves for backward, per token: each linear's input and output
//!                (B·T·(in + out) floats; shared inputs such as q/k/v's counted once per layer
//!                by the generous side), DoRA's dropout copy of each adapted input (LoRA's
//!                dropout is fused into its matmuls and keeps none), and per
//!                layer four hidden-size tensors for the norms and residual adds;
//!                With gradient checkpointing the tape keeps only each block's input
//!                (B·T·C per layer) and, during backward, one block's saved tensors at a time;
//!   logits       the LM head's logits, kept whole when they fit 256 MiB (as
//!                `linear_cross_entropy` does), else one 64 MiB chunk, twice (the logits and
//!                their gradient). Against the binding limit only 64 rows count: the loss
//!                binds its logits in chunks of rows that fit.
//! The buffer pool rounds each buffer up by at most a fifth, so the measured peak
//! (`peak_gpu_bytes`) can be up to 20% above the sum; `total_with_pool` allows for it.
//!
//! What wgpu can tell: the largest buffer (`max_buffer_size`) and the largest binding of one
//! kernel (`max_storage_buffer_binding_size`), checked against the largest tensor. What it can
//! not: the device's memory (no wgpu API reports VRAM). On a CPU adapter (lavapipe) GPU memory
//! is system memory, so `MemAvailable` from /proc/meminfo stands in; elsewhere the budget is
//! the user's `--gpu-memory` (MiB), or unchecked.

use crate::error::{Error, Result};
use crate::models::CausalLm;

/// The estimate, in bytes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MemoryEstimate {
    pub weights_f32: u64,
    pub weights_quantized: u64,
    /// Frozen F16/BF16 base weights (kept 16-bit on the GPU).
    pub weights_16bit: u64,
    pub trainable_params: u64,
    pub gradients: u64,
    pub optimizer: u64,
    /// What the tape keeps: `activations_plain` or, checkpointed, `activations_checkpointed`.
    pub activations: u64,
    pub activations_plain: u64,
    pub activations_checkpointed: u64,
    pub grad_checkpoint: bool,
    pub logits: u64,
    /// The largest single tensor (weights, the logits chunk, one activation) and its name.
    pub largest_tensor: (String, u64),
    /// The largest embedding or LM head: kernels bind these a block of rows at a time, so only
    /// `max_buffer_size` limits them (Gemma 3's 262,144 × 640 table is 640 MiB in f32).
    pub largest_table: (String, u64),
    pub batch: usize,
    pub seq: usize,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights_f32
            + self.weights_quantized
            + self.weights_16bit
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
    }

    /// The total with the pool's rounding (buckets waste at most a fifth of a buffer).
    pub fn total_with_pool(&self) -> u64 {
        self.total() + self.total() / 5
    }

    /// The same run with gradient checkpointing on or off.
    pub fn with_checkpointing(mut self, on: bool) -> Self {
        self.grad_checkpoint = on;
        self.activations = if on { self.activations_checkpointed } else { self.activations_plain };
        self
    }

    /// The table printed before training.
    pub fn table(&self) -> String {
        let mib = |b: u64| format!("{:>9.1} MiB", b as f64 / 1048576.0);
        let mut s = String::from("  GPU memory (estimate)\n");
        for (what, b) in [
            ("weights f32", self.weights_f32),
            ("weights quantized", self.weights_quantized),
            ("weights 16-bit", self.weights_16bit),
            ("LoRA/trainable grads", self.gradients),
            ("AdamW moments", self.optimizer),
            (
                &*format!(
                    "activations B={} T={}{}",
                    self.batch,
                    self.seq,
                    if self.grad_checkpoint { " ckpt" } else { "" }
                ),
                self.activations,
            ),
            ("logits", self.logits),
        ] {
            s.push_str(&format!("    {what:<26}{}\n", mib(b)));
            if what.starts_with("activations") && self.grad_checkpoint {
                let plain = format!("{})", mib(self.activations_plain).trim());
                s.push_str(&format!("    {:<26}{plain:>13}\n", "  (without checkpointing"));
            }
        }
        s.push_str(&format!(
            "    {:<26}{} (up to {} with the pool's rounding)",
            "total",
            mib(self.total()),
            mib(self.total_with_pool()).trim()
        ));
        s
    }
}

/// Estimates LoRA training of `model` at `batch` sequences of `seq` tokens (the model as it
/// will train: adapters attached, trainable set chosen).
pub fn estimate_lm(model: &mut dyn CausalLm, batch: usize, seq: usize) -> MemoryEstimate {
    let mut e = MemoryEstimate { batch, seq, ..Default::default() };
    let mut largest = (String::new(), 0u64);
    let mut bigger = |name: &str, bytes: u64| {
        if bytes > largest.1 {
            largest = (name.to_string(), bytes);
        }
    };
    let mut table = (String::new(), 0u64);
    model.visit_params(&mut |p| {
        let bytes = p.value.byte_len();
        e.weights_f32 += bytes;
        if p.name.ends_with("embed_tokens.weight") || p.name.ends_with("lm_head.weight") {
            if bytes > table.1 {
                table = (p.name.clone(), bytes);
            }
        } else {
            bigger(&p.name, bytes);
        }
        if p.trainable() {
            e.trainable_params += p.numel() as u64;
        }
    });
    e.weights_f32 += model.table_bytes();
    e.gradients = 4 * e.trainable_params;
    e.optimizer = 8 * e.trainable_params;
    let tokens = (batch * seq) as u64;
    let shape = model.shape();
    let mut per_token = 4 * shape.layers as u64 * shape.hidden as u64 + shape.hidden as u64;
    let mut widest = shape.hidden as u64;
    for lin in model.linears_mut() {
        if let Some(q) = &lin.quant {
            if q.kind.is_16bit() {
                e.weights_16bit += q.byte_len();
            } else {
                e.weights_quantized += q.byte_len();
            }
            bigger(&format!("{}.weight", lin.path), q.byte_len());
        }
        let (d_in, d_out) = lin.in_out();
        per_token += (d_in + d_out) as u64;
        // LoRA's dropout is fused into its matmuls; DoRA's still keeps a dropped-out copy.
        if lin.lora.as_ref().is_some_and(|l| l.dropout > 0.0 && l.magnitude.is_some()) {
            per_token += d_in as u64;
        }
        widest = widest.max(d_out as u64);
    }
    e.activations_plain = 4 * tokens * per_token;
    e.activations_checkpointed =
        4 * tokens * checkpointed_per_token(per_token, shape.layers as u64, shape.hidden as u64);
    e.activations = e.activations_plain;
    bigger("one activation [B·T, widest]", 4 * tokens * widest);
    let logits = 4 * tokens * shape.vocab as u64;
    let chunk = if logits <= 256 << 20 { logits } else { logits.min(64 << 20) };
    e.logits = 2 * chunk;
    // What one kernel binds: `linear_cross_entropy` computes (and keeps) the logits in chunks
    // of rows that fit the binding, down to 64 rows, so only 64 rows too wide for it can not run.
    bigger("logits (64 rows of the LM head)", logits.min(64 * 4 * shape.vocab as u64));
    e.largest_tensor = largest;
    e.largest_table = table;
    e
}

/// Estimates training a classifier under `strategy` (LoRA's adapters, not attached yet, counted
/// from `lora`) at `batch` texts of `seq` tokens. `head` trains on features computed once without
/// a tape, so it keeps no body activations; the other strategies are counted as if every layer's
/// activations were kept (an upper bound for `top:N`, whose frozen lower layers record nothing).
pub fn estimate_classifier(
    model: &mut crate::models::classifier::SequenceClassifier,
    strategy: super::classify::Strategy,
    lora: &crate::nn::LoraConfig,
    batch: usize,
    seq: usize,
) -> MemoryEstimate {
    use super::classify::Strategy;
    use crate::autograd::Module;
    let mut e = MemoryEstimate { batch, seq, ..Default::default() };
    let mut largest = (String::new(), 0u64);
    let layers = model.max_depth().saturating_sub(1);
    model.visit_params(&mut |p| {
        let bytes = p.value.byte_len();
        e.weights_f32 += bytes;
        if bytes > largest.1 {
            largest = (p.name.clone(), bytes);
        }
        if strategy.trains(&p.name, layers) {
            e.trainable_params += p.numel() as u64;
        }
    });
    let hidden = model.body.hidden_size() as u64;
    let tokens = (batch * seq) as u64;
    let mut per_token = 4 * layers as u64 * hidden + hidden;
    for lin in model.body.linears_mut() {
        let (d_in, d_out) = lin.in_out();
        per_token += (d_in + d_out) as u64;
        if strategy == Strategy::Lora && lora.targets(&lin.path) {
            let adapter = (lora.r * (d_in + d_out)) as u64;
            e.weights_f32 += 4 * adapter;
            e.trainable_params += adapter;
            if lora.dropout > 0.0 && lora.use_dora {
                per_token += d_in as u64;
            }
        }
    }
    e.gradients = 4 * e.trainable_params;
    e.optimizer = 8 * e.trainable_params;
    e.activations_plain = if strategy == Strategy::Head { 4 * batch as u64 * hidden } else { 4 * tokens * per_token };
    // `head` keeps no body activations whether or not blocks are checkpointed.
    e.activations_checkpointed = if strategy == Strategy::Head {
        e.activations_plain
    } else {
        4 * tokens * checkpointed_per_token(per_token, layers as u64, hidden)
    };
    e.activations = e.activations_plain;
    e.logits = 2 * 4 * (batch * model.num_labels()) as u64;
    e.largest_tensor = largest;
    e
}

/// Floats kept per token with checkpointing, from `plain` (L·(4C + the block's linears) + C):
/// each block's input (L·C), the final hidden state (C), and one block's saved tensors while
/// it is rerun in backward.
fn checkpointed_per_token(plain: u64, layers: u64, hidden: u64) -> u64 {
    let one_block = plain.saturating_sub(hidden) / layers.max(1);
    layers * hidden + hidden + one_block
}

/// Gradient checkpointing for a run: as `flag` says (`--grad-checkpoint`), or, when not given,
/// on exactly when the run would not fit `budget` without it (if it does not fit with it
/// either, `check_fits` then says what else to lower). Returns the
/// estimate for the choice and, when it was made for the user, a line saying why.
pub fn choose_checkpointing(
    e: MemoryEstimate,
    flag: Option<bool>,
    budget: Option<(u64, &str)>,
) -> (MemoryEstimate, Option<String>) {
    if let Some(on) = flag {
        return (e.with_checkpointing(on), None);
    }
    let plain = e.clone().with_checkpointing(false);
    let ckpt = e.with_checkpointing(true);
    match budget {
        Some((b, source)) if plain.total() > b => {
            let mib = |x: u64| x as f64 / 1048576.0;
            let line = format!(
                "gradient checkpointing on (--grad-checkpoint): without it training needs about {:.0} MiB, over the {:.0} MiB {source} allows; with it {:.0} MiB",
                mib(plain.total()),
                mib(b),
                mib(ckpt.total())
            );
            (ckpt, Some(line))
        }
        _ => (plain, None),
    }
}

/// The memory kiln may use on this adapter, if anything can tell: the user's budget, else
/// MemAvailable on a CPU adapter. None when unknown.
pub fn device_budget(device_type: wgpu::DeviceType, user_mib: Option<u64>) -> Option<(u64, &'static str)> {
    if let Some(m) = user_mib {
        return Some((m << 20, "--gpu-memory"));
    }
    if device_type == wgpu::DeviceType::Cpu {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        return Some((kb << 10, "system MemAvailable (a CPU adapter's memory)"));
    }
    None
}

/// Refuses a run the adapter cannot hold, saying what to lower. `quantized` says whether the
/// base is already quantized (else `--quantize` is suggested).
pub fn check_fits(
    e: &MemoryEstimate,
    limits: &wgpu::Limits,
    budget: Option<(u64, &str)>,
    quantized: bool,
) -> Result<()> {
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / 1048576.0);
    let advice = format!(
        "lower --batch-size (now {}) or --max-len (now {}){}{}",
        e.batch,
        e.seq,
        if e.grad_checkpoint { "" } else { ", or recompute activations (--grad-checkpoint)" },
        if quantized { "" } else { ", or keep the base quantized (--quantize q4_1)" }
    );
    let (name, bytes) = &e.largest_tensor;
    let (table, table_bytes) = &e.largest_table;
    for (name, bytes, limit_name, limit) in [
        (table, table_bytes, "max_buffer_size", limits.max_buffer_size),
        (name, bytes, "max_buffer_size", limits.max_buffer_size),
        (name, bytes, "max_storage_buffer_binding_size", limits.max_storage_buffer_binding_size),
    ] {
        if *bytes > limit && name.starts_with("logits") {
            // Fewer rows would not help: 64 rows is the least the loss binds at once.
            return Err(Error::invalid(
                "memory",
                format!(
                    "`{name}` needs {} in one binding, over this adapter's {limit_name} of {}: the model's \
                     vocabulary is too wide for this adapter at any --batch-size or --max-len; choose an \
                     adapter with larger limits (--adapter)",
                    mib(*bytes),
                    mib(limit)
                ),
            ));
        }
        if *bytes > limit {
            return Err(Error::invalid(
                "memory",
                format!(
                    "`{name}` needs {} in one buffer, over this adapter's {limit_name} of {}: {advice}",
                    mib(*bytes),
                    mib(limit)
                ),
            ));
        }
    }
    if let Some((budget, source)) = budget
        && e.total() > budget
    {
        return Err(Error::invalid(
            "memory",
            format!(
                "training needs about {} of GPU memory (weights {}, activations {}, logits {}), over the {} that {source} allows: {advice}",
                mib(e.total()),
                mib(e.weights_f32 + e.weights_quantized + e.weights_16bit),
                mib(e.activations),
                mib(e.logits),
                mib(budget)
            ),
        ));
    }
    Ok(())
}
