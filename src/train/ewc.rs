//! Elastic weight consolidation (Kirkpatrick et al. 2017): the diagonal of the empirical Fisher
//! information, the mean over retain examples of each example's squared loss gradient, tells how
//! much each weight mattered to what the model already did; training then adds λ·F·(θ − θ₀) to
//! the gradient (in the fused AdamW pass), so important weights stay near θ₀.

use std::collections::HashMap;

use crate::autograd::{Loss, Module, Tape};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::elementwise as ew;
use crate::tensor::Tensor;

/// The diagonal Fisher of every parameter `keep` accepts, over `examples` retain examples
/// whose losses `loss_of(tape, i)` computes (one example each: the squared per-example
/// gradient, not the square of a batch mean). Dropout is off. The model's trainable set is
/// put back as it was.
pub fn fisher_diagonal<M: Module + ?Sized>(
    gpu: &Gpu,
    model: &mut M,
    keep: &dyn Fn(&str) -> bool,
    examples: usize,
    loss_of: &mut dyn FnMut(&Tape, &M, usize) -> Result<Loss>,
) -> Result<HashMap<String, Tensor>> {
    if examples == 0 {
        return Err(Error::invalid("ewc", "the retain set is empty: EWC needs examples to estimate the Fisher"));
    }
    let mut was_trainable = Vec::new();
    let mut result = Ok(());
    model.visit_params_mut(&mut |p| {
        was_trainable.push(p.trainable());
        if result.is_ok() {
            result = p.set_trainable(gpu, keep(&p.name));
        }
    });
    result?;
    let mut fisher = HashMap::new();
    let mut shapes = Vec::new();
    model.visit_params(&mut |p| {
        if p.trainable() {
            shapes.push((p.name.clone(), p.value.shape().to_vec()));
        }
    });
    for (name, shape) in &shapes {
        fisher.insert(name.clone(), Tensor::zeros(gpu, shape)?);
    }
    for i in 0..examples {
        let tape = Tape::grad_only(gpu);
        let loss = loss_of(&tape, model, i)?;
        tape.backward(&loss, 1.0)?;
        let mut grads = Vec::new();
        model.visit_params(&mut |p| {
            if let Some(g) = &p.grad {
                grads.push((p.name.clone(), g.clone()));
            }
        });
        for (name, g) in grads {
            ew::mul_into(gpu, &g, &g, &fisher[&name], true)?;
            gpu.clear(&g);
        }
    }
    let mut mean = HashMap::new();
    for (name, f) in fisher {
        mean.insert(name, ew::scale(gpu, &f, 1.0 / examples as f32)?);
    }
    let mut k = 0;
    let mut result = Ok(());
    model.visit_params_mut(&mut |p| {
        if result.is_ok() {
            result = p.set_trainable(gpu, was_trainable[k]);
        }
        k += 1;
    });
    result?;
    Ok(mean)
}

/// The size of a Fisher diagonal, for choosing λ: the pull on a weight is λ·F·(θ − θ₀), next to
/// a loss gradient of the same units, so λ·mean and λ·max say how strong it is.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct FisherStats {
    pub retain_examples: usize,
    pub lambda: f32,
    pub weights: usize,
    pub mean: f64,
    pub max: f64,
}

/// The statistics of `fisher`, estimated on `retain_examples` examples, for EWC at `lambda`.
pub fn fisher_stats(
    gpu: &Gpu,
    fisher: &HashMap<String, Tensor>,
    retain_examples: usize,
    lambda: f32,
) -> Result<FisherStats> {
    let (mut weights, mut sum, mut max) = (0usize, 0.0f64, 0.0f64);
    // In name order: a map's own order changes from run to run, and with it the sum's last bits.
    let mut names: Vec<&String> = fisher.keys().collect();
    names.sort();
    for name in names {
        for x in fisher[name].to_f32_vec(gpu)? {
            weights += 1;
            sum += x as f64;
            max = max.max(x as f64);
        }
    }
    Ok(FisherStats { retain_examples, lambda, weights, mean: sum / weights.max(1) as f64, max })
}
