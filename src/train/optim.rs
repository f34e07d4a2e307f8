//! AdamW over every trainable parameter: one fused kernel per tensor, gradient clipping by the
//! global norm computed on the GPU (no readback), gradients zeroed after the step.

use std::collections::HashMap;

use crate::autograd::Module;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::adamw::{self, AdamW, Clip, Ewc};
use crate::kernels::reduce;
use crate::tensor::Tensor;

struct Moments {
    m: Tensor,
    v: Tensor,
    steps: u32,
}

/// One parameter's AdamW state on the host: (name, m, v, shape, steps taken).
pub type SavedMoments = (String, Vec<f32>, Vec<f32>, Vec<usize>, u32);

/// λ and, by parameter name, (importance, anchor): the gradient gains λ·F·(θ − θ*).
struct Penalty {
    lambda: f32,
    anchors: HashMap<String, (Tensor, Tensor)>,
}

pub struct Optimizer {
    pub cfg: AdamW,
    /// Clip the global gradient norm to this (HF Trainer's `max_grad_norm`, 1.0 by default).
    pub max_grad_norm: Option<f32>,
    /// First and second moments and the steps taken, by parameter name. Each parameter counts
    /// its own steps (as PyTorch's AdamW state does), so one unfrozen late starts its bias
    /// correction from 1.
    moments: HashMap<String, Moments>,
    /// Steps taken (AdamW's bias correction counts from 1).
    pub steps: u32,
    /// The squared global gradient norm of the last step (before clipping), on the GPU: always
    /// computed, since clipping needs it and the curves show it.
    last_norm_sq: Option<Tensor>,
    /// The last step's gradients' names and squared norms, read only when the global norm
    /// was not finite.
    last_norms: Option<(Vec<String>, reduce::NormsSquared)>,
    /// A pull towards starting weights (L2-SP, EWC).
    penalty: Option<Penalty>,
}

/// Whether weight decay applies to a parameter: not to biases and not to normalisation weights
/// (LayerNorm, RMSNorm: `ln_1`, `input_layernorm`, `model.norm`, BERT's `LayerNorm`), as
/// Hugging Face's Trainer excludes them.
pub fn decays(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    let last = parts.next().unwrap_or("");
    let module = parts.next().unwrap_or("").to_ascii_lowercase();
    !(last == "bias" || module.contains("norm") || module.starts_with("ln_"))
}

impl Optimizer {
    pub fn new(cfg: AdamW, max_grad_norm: Option<f32>) -> Self {
        Optimizer {
            cfg,
            max_grad_norm,
            moments: HashMap::new(),
            steps: 0,
            last_norm_sq: None,
            last_norms: None,
            penalty: None,
        }
    }

    /// L2-SP (Li et al. 2018): every later step adds λ·(θ − θ₀) to the gradient of each
    /// parameter `keep` accepts, θ₀ being its value now (call before training). The same term as
    /// EWC with every importance 1, folded into the fused AdamW pass.
    pub fn anchor_l2sp(
        &mut self,
        gpu: &Gpu,
        model: &dyn Module,
        lambda: f32,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<()> {
        let mut params = Vec::new();
        model.visit_params(&mut |p| {
            if keep(&p.name) {
                params.push((p.name.clone(), p.value.clone()));
            }
        });
        let mut anchors = HashMap::new();
        for (name, value) in params {
            let anchor = Tensor::empty(gpu, value.shape(), value.dtype())?;
            gpu.copy(&value, &anchor)?;
            let ones = Tensor::from_f32(gpu, &vec![1.0; value.numel()], value.shape())?;
            anchors.insert(name, (ones, anchor));
        }
        self.penalty = Some(Penalty { lambda, anchors });
        Ok(())
    }

    /// EWC: every later step adds λ·F·(θ − θ₀) to the gradient of each parameter `fisher` has,
    /// θ₀ being its value now (call before training).
    pub fn anchor_ewc(
        &mut self,
        gpu: &Gpu,
        model: &dyn Module,
        lambda: f32,
        fisher: HashMap<String, Tensor>,
    ) -> Result<()> {
        let mut params = Vec::new();
        model.visit_params(&mut |p| {
            if fisher.contains_key(&p.name) {
                params.push((p.name.clone(), p.value.clone()));
            }
        });
        let mut anchors = HashMap::new();
        for (name, value) in params {
            let anchor = Tensor::empty(gpu, value.shape(), value.dtype())?;
            gpu.copy(&value, &anchor)?;
            anchors.insert(name.clone(), (fisher[&name].clone(), anchor));
        }
        self.penalty = Some(Penalty { lambda, anchors });
        Ok(())
    }

    /// One update of every trainable parameter of `model` at learning rate `lr`.
    pub fn step(&mut self, gpu: &Gpu, model: &dyn Module, lr: f32) -> Result<()> {
        self.step_scaled(gpu, model, lr, &|_| 1.0)
    }

    /// One update where each parameter's learning rate is `lr` times `scale(name)`
    /// (discriminative learning rates: lower for the blocks nearer the input).
    pub fn step_scaled(&mut self, gpu: &Gpu, model: &dyn Module, lr: f32, scale: &dyn Fn(&str) -> f32) -> Result<()> {
        let mut params = Vec::new();
        model.visit_params(&mut |p| {
            if let Some(g) = &p.grad {
                params.push((p.name.clone(), p.value.clone(), g.clone()));
            }
        });
        if params.is_empty() {
            return Err(Error::invalid("optimizer", "no trainable parameters"));
        }
        self.steps += 1;
        // The norms are written into the previous step's buffers (so its bind groups are found
        // again); new ones only when the number of trainable tensors changed.
        self.last_norm_sq = None;
        let norms = match self.last_norms.take() {
            Some((_, kept)) if kept.tensors() == params.len() => kept,
            _ => reduce::NormsSquared::kept(gpu, params.len())?,
        };
        let grads: Vec<&Tensor> = params.iter().map(|p| &p.2).collect();
        reduce::norms_squared_into(gpu, &grads, &norms)?;
        let norm_sq = norms.global.clone();
        for (name, value, grad) in &params {
            if !self.moments.contains_key(name) {
                let fresh = Moments {
                    m: Tensor::zeros_kept(gpu, value.shape())?,
                    v: Tensor::zeros_kept(gpu, value.shape())?,
                    steps: 0,
                };
                self.moments.insert(name.clone(), fresh);
            }
            let state = self.moments.get_mut(name).expect("inserted above");
            state.steps += 1;
            let clip = self.max_grad_norm.map(|max_norm| Clip { norm_sq: &norm_sq, max_norm });
            let cfg = if decays(name) { self.cfg } else { AdamW { weight_decay: 0.0, ..self.cfg } };
            let pull = self
                .penalty
                .as_ref()
                .and_then(|p| p.anchors.get(name).map(|(fisher, anchor)| Ewc { lambda: p.lambda, fisher, anchor }));
            adamw::step(gpu, &cfg, lr * scale(name), state.steps, value, grad, &state.m, &state.v, clip, pull)?;
            gpu.clear(grad);
        }
        self.last_norm_sq = Some(norm_sq);
        self.last_norms = Some((params.into_iter().map(|p| p.0).collect(), norms));
        Ok(())
    }

    /// The moments as host tensors, for a checkpoint, sorted by name.
    pub fn export_state(&self, gpu: &Gpu) -> Result<Vec<SavedMoments>> {
        let mut names: Vec<&String> = self.moments.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let s = &self.moments[n];
                Ok((n.clone(), s.m.to_f32_vec(gpu)?, s.v.to_f32_vec(gpu)?, s.m.shape().to_vec(), s.steps))
            })
            .collect()
    }

    /// Puts back one parameter's moments from a checkpoint.
    pub fn import_state(
        &mut self,
        gpu: &Gpu,
        name: &str,
        m: &[f32],
        v: &[f32],
        shape: &[usize],
        steps: u32,
    ) -> Result<()> {
        let state = Moments { m: Tensor::from_f32(gpu, m, shape)?, v: Tensor::from_f32(gpu, v, shape)?, steps };
        self.moments.insert(name.to_string(), state);
        Ok(())
    }

    /// The parameters whose last gradient held a NaN or an infinity, in backward order (the
    /// nearest the loss first, where such a value usually starts); a readback.
    pub fn non_finite_grads(&self, gpu: &Gpu) -> Result<Vec<String>> {
        let Some((names, norms)) = &self.last_norms else { return Ok(Vec::new()) };
        let per_tensor = norms.read_per_tensor(gpu)?;
        Ok(names.iter().zip(per_tensor).rev().filter(|(_, n)| !n.is_finite()).map(|(name, _)| name.clone()).collect())
    }

    /// The global gradient norm of the last step, before clipping (a readback).
    pub fn last_grad_norm(&self, gpu: &Gpu) -> Result<Option<f32>> {
        match &self.last_norm_sq {
            Some(t) => Ok(Some(t.to_f32_vec(gpu)?[0].sqrt())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decays;

    #[test]
    fn weight_decay_skips_biases_and_norms() {
        for name in [
            "bert.encoder.layer.0.attention.self.query.weight",
            "model.layers.3.mlp.down_proj.weight",
            "transformer.h.0.attn.c_attn.lora_A.weight",
            "bert.embeddings.word_embeddings.weight",
            "classifier.weight",
        ] {
            assert!(decays(name), "{name}");
        }
        for name in [
            "classifier.bias",
            "bert.encoder.layer.0.output.LayerNorm.weight",
            "bert.embeddings.LayerNorm.bias",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.norm.weight",
            "transformer.h.0.ln_1.weight",
            "transformer.ln_f.weight",
        ] {
            assert!(!decays(name), "{name}");
        }
    }
}
