//! AdamW over every trainable parameter: one fused kernel per tensor, gradient clipping by the
//! global norm computed on the GPU (no readback), gradients zeroed after the step.

use std::collections::HashMap;

use crate::autograd::Module;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::adamw::{self, AdamW, Clip};
use crate::kernels::reduce;
use crate::tensor::Tensor;

struct Moments {
    m: Tensor,
    v: Tensor,
    steps: u32,
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
}

impl Optimizer {
    pub fn new(cfg: AdamW, max_grad_norm: Option<f32>) -> Self {
        Optimizer { cfg, max_grad_norm, moments: HashMap::new(), steps: 0 }
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
        let norm_sq = match self.max_grad_norm {
            Some(_) => {
                let grads: Vec<&Tensor> = params.iter().map(|p| &p.2).collect();
                Some(reduce::global_norm_squared(gpu, &grads)?)
            }
            None => None,
        };
        for (name, value, grad) in &params {
            if !self.moments.contains_key(name) {
                let fresh =
                    Moments { m: Tensor::zeros(gpu, value.shape())?, v: Tensor::zeros(gpu, value.shape())?, steps: 0 };
                self.moments.insert(name.clone(), fresh);
            }
            let state = self.moments.get_mut(name).expect("inserted above");
            state.steps += 1;
            let clip = match (&norm_sq, self.max_grad_norm) {
                (Some(n), Some(max_norm)) => Some(Clip { norm_sq: n, max_norm }),
                _ => None,
            };
            adamw::step(gpu, &self.cfg, lr * scale(name), state.steps, value, grad, &state.m, &state.v, clip, None)?;
            gpu.clear(grad);
        }
        Ok(())
    }
}
