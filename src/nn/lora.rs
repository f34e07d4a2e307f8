//! LoRA (Hu et al. 2021) as PEFT does it: W stays frozen, ΔW = s·B·A with A `[r, in]`
//! Kaiming-uniform, B `[out, r]` zero (so training starts from the base model), s = α/r
//! (α/√r with rsLoRA). With DoRA (Liu et al. 2024, PEFT's `use_dora`) each output feature is
//! also rescaled by a trainable magnitude over the detached norm of W + s·B·A (see `nn::linear`).

use crate::autograd::Param;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::Rng;
use crate::tensor::Tensor;

/// Which layers get adapters and how they are shaped (PEFT's `LoraConfig` fields).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// Module names matched against the last component of a layer's path (`q_proj`, `c_attn`).
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    /// DoRA (PEFT's `use_dora`): a trainable magnitude per output feature on top of LoRA.
    pub use_dora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.use_rslora { self.alpha / (self.r as f32).sqrt() } else { self.alpha / self.r as f32 }
    }

    /// Whether the layer at `path` (e.g. `model.layers.0.self_attn.q_proj`) is targeted: as in
    /// PEFT, a target names the whole path or a suffix of it at a dot (`q_proj`,
    /// `attention.output.dense`).
    pub fn targets(&self, path: &str) -> bool {
        self.target_modules.iter().any(|t| {
            path == t
                || (path.len() > t.len() && path.ends_with(t.as_str()) && path[..path.len() - t.len()].ends_with('.'))
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::invalid("lora", "rank r must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid("lora", format!("dropout {} is outside [0, 1)", self.dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(Error::invalid("lora", "no target modules given"));
        }
        Ok(())
    }
}

/// The two trainable matrices of one adapted layer.
#[derive(Clone)]
pub struct LoraAdapter {
    /// `[r, in]`, named `<path>.lora_A.weight`.
    pub a: Param,
    /// `[out, r]`, named `<path>.lora_B.weight`.
    pub b: Param,
    pub scale: f32,
    pub dropout: f32,
    /// DoRA's magnitude m `[out]`, named `<path>.lora_magnitude_vector` (PEFT's saved key); the
    /// layer then computes m/||W + s·B·A|| ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ). None for plain LoRA.
    pub magnitude: Option<Param>,
}

impl LoraAdapter {
    /// A fresh adapter initialised like PEFT: A ~ U(±1/√in) (kaiming_uniform with a = √5), B = 0.
    /// DoRA's magnitude is set by the layer, which has the weight ([`crate::nn::Linear::add_lora`]).
    pub fn init(gpu: &Gpu, path: &str, d_in: usize, d_out: usize, cfg: &LoraConfig, rng: &mut Rng) -> Result<Self> {
        let a = rng.uniform(cfg.r * d_in, 1.0 / (d_in as f32).sqrt());
        let mut a = Param::new(format!("{path}.lora_A.weight"), Tensor::from_f32(gpu, &a, &[cfg.r, d_in])?);
        let mut b = Param::new(format!("{path}.lora_B.weight"), Tensor::zeros(gpu, &[d_out, cfg.r])?);
        a.set_trainable(gpu, true)?;
        b.set_trainable(gpu, true)?;
        Ok(LoraAdapter { a, b, scale: cfg.scale(), dropout: cfg.dropout, magnitude: None })
    }
}
