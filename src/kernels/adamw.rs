//! Fused AdamW (`shaders/adamw.wgsl`): gradient clipping by a GPU-resident global norm,
//! decoupled weight decay, both moments, bias correction, the update, and optionally the EWC
//! penalty's gradient, in one pass per tensor.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::Tensor;

/// Hyperparameters (PyTorch's names and defaults, but weight decay 0.0 like HF's Trainer).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Elastic weight consolidation: pull θ toward θ* with strength λ·F (diagonal Fisher).
pub struct Ewc<'a> {
    pub lambda: f32,
    pub fisher: &'a Tensor,
    pub anchor: &'a Tensor,
}

/// Gradient clipping: the global squared norm (from `reduce::global_norm_squared`) and the
/// largest norm allowed.
pub struct Clip<'a> {
    pub norm_sq: &'a Tensor,
    pub max_norm: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2: f32,
    max_norm: f32,
    ewc_lambda: f32,
    has_ewc: u32,
    _pad: u32,
}

/// One AdamW step (`step` counts from 1) on `param` with `grad`, updating moments `m`, `v`.
///
/// Bindings: 1 grad, 2 norm_sq, 3 fisher, 4 anchor, 5 param, 6 m, 7 v.
#[allow(clippy::too_many_arguments)]
pub fn step(
    gpu: &Gpu,
    cfg: &AdamW,
    lr: f32,
    step: u32,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    clip: Option<Clip>,
    ewc: Option<Ewc>,
) -> Result<()> {
    const OP: &str = "adamw";
    if step == 0 {
        return Err(Error::invalid(OP, "steps count from 1 (bias correction divides by 1 - beta^step)"));
    }
    let n = param.numel();
    for (name, t) in [("grad", grad), ("m", m), ("v", v)] {
        expect_numel(OP, name, t, n, "the size of the parameter")?;
    }
    if let Some(c) = &clip {
        expect_numel(OP, "norm_sq", c.norm_sq, 1, "a scalar")?;
    }
    if let Some(e) = &ewc {
        expect_numel(OP, "fisher", e.fisher, n, "the size of the parameter")?;
        expect_numel(OP, "anchor", e.anchor, n, "the size of the parameter")?;
    }
    let p = Params {
        n: u32_of(OP, "elements", n)?,
        lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
        bc1: 1.0 - (cfg.beta1 as f64).powi(step as i32) as f32,
        bc2: 1.0 - (cfg.beta2 as f64).powi(step as i32) as f32,
        max_norm: clip.as_ref().map_or(0.0, |c| c.max_norm),
        ewc_lambda: ewc.as_ref().map_or(0.0, |e| e.lambda),
        has_ewc: ewc.is_some() as u32,
        _pad: 0,
    };
    let spec = KernelSpec {
        file: shader!("adamw"),
        entry: "adamw",
        header: "",
        access: &[
            Access::Read,
            Access::Read,
            Access::Read,
            Access::Read,
            Access::ReadWrite,
            Access::ReadWrite,
            Access::ReadWrite,
        ],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[
            ("grad", Some(grad)),
            ("norm_sq", clip.as_ref().map(|c| c.norm_sq)),
            ("fisher", ewc.as_ref().map(|e| e.fisher)),
            ("anchor", ewc.as_ref().map(|e| e.anchor)),
            ("param", Some(param)),
            ("m", Some(m)),
            ("v", Some(v)),
        ],
        gpu.grid_stride(n as u64),
    )
}
