//! AdamW over every trainable parameter: one fused kernel per tensor, gradient clipping by the
//! global norm computed on the GPU (no readback), gradients zeroed after the step.

use std::collections::HashMap;

use crate::autograd::Module;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::adamw::{self, AdamW, Clip};
use crate::kernels::reduce;
use crate::tensor::Tensor;

pub struct Optimizer {
    pub cfg: AdamW,
    /// Clip the global gradient norm to this (HF Trainer's `max_grad_norm`, 1.0 by default).
    pub max_grad_norm: Option<f32>,
    /// First and second moments by parameter name.
    moments: HashMap<String, (Tensor, Tensor)>,
    /// Steps taken (AdamW's bias correction counts from 1).
    pub steps: u32,
}

impl Optimizer {
    pub fn new(cfg: AdamW, max_grad_norm: Option<f32>) -> Self {
        Optimizer { cfg, max_grad_norm, moments: HashMap::new(), steps: 0 }
    }

    /// One update of every trainable parameter of `model` at learning rate `lr`.
    pub fn step(&mut self, gpu: &Gpu, model: &dyn Module, lr: f32) -> Result<()> {
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
            let (m, v) = match self.moments.get(name) {
                Some(mv) => mv.clone(),
                None => {
                    let mv = (Tensor::zeros(gpu, value.shape())?, Tensor::zeros(gpu, value.shape())?);
                    self.moments.insert(name.clone(), mv.clone());
                    mv
                }
            };
            let clip = match (&norm_sq, self.max_grad_norm) {
                (Some(n), Some(max_norm)) => Some(Clip { norm_sq: n, max_norm }),
                _ => None,
            };
            adamw::step(gpu, &self.cfg, lr, self.steps, value, grad, &m, &v, clip, None)?;
            gpu.clear(grad);
        }
        Ok(())
    }
}
