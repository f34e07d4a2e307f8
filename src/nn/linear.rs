//! A linear layer (HF `nn.Linear` or GPT-2's `Conv1D`), optionally carrying a LoRA adapter.
//!
//! # Shapes
//! x `[..., in]` → `[..., out]`; weight `[out, in]` or `[in, out]` per [`WeightLayout`].

use crate::autograd::{self, Lora, Param, Tape, Var, WeightLayout};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::matmul::{Matmul, matmul_into};
use crate::nn::{LoraAdapter, LoraConfig, Rng};
use crate::tensor::Tensor;

pub struct Linear {
    /// The module path, e.g. `transformer.h.0.attn.c_attn`; parameters are `<path>.weight`.
    pub path: String,
    pub weight: Param,
    pub bias: Option<Param>,
    pub layout: WeightLayout,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    pub fn new(path: &str, weight: Tensor, bias: Option<Tensor>, layout: WeightLayout) -> Linear {
        Linear {
            path: path.to_string(),
            weight: Param::new(format!("{path}.weight"), weight),
            bias: bias.map(|b| Param::new(format!("{path}.bias"), b)),
            layout,
            lora: None,
        }
    }

    /// (in, out).
    pub fn in_out(&self) -> (usize, usize) {
        self.layout.in_out(&self.weight.value)
    }

    pub fn forward(&self, tape: &Tape, x: &Var) -> Result<Var> {
        let w = tape.param(&self.weight);
        let b = self.bias.as_ref().map(|b| tape.param(b));
        match &self.lora {
            None => autograd::linear(tape, x, &w, self.layout, b.as_ref(), None),
            Some(l) => {
                let (a, bm) = (tape.param(&l.a), tape.param(&l.b));
                let lora = Lora { a: &a, b: &bm, scale: l.scale, dropout: l.dropout };
                autograd::linear(tape, x, &w, self.layout, b.as_ref(), Some(lora))
            }
        }
    }

    /// Attaches a fresh adapter when `cfg` targets this layer; returns whether it did.
    pub fn add_lora(&mut self, gpu: &Gpu, cfg: &LoraConfig, rng: &mut Rng) -> Result<bool> {
        if !cfg.targets(&self.path) {
            return Ok(false);
        }
        let (d_in, d_out) = self.in_out();
        self.lora = Some(LoraAdapter::init(gpu, &self.path, d_in, d_out, cfg, rng)?);
        Ok(true)
    }

    /// Folds the adapter into the weight (W += s·B·A, transposed for `[in, out]`) and drops it.
    pub fn merge_lora(&mut self, gpu: &Gpu) -> Result<()> {
        let Some(l) = self.lora.take() else { return Ok(()) };
        let (d_in, d_out) = self.in_out();
        let r = l.a.value.dim(0);
        let mm = match self.layout {
            // [out, in] += s·B[out, r]·A[r, in]
            WeightLayout::OutIn => Matmul::new(d_out, d_in, r).alpha(l.scale).accumulate(true),
            // [in, out] += s·Aᵀ·Bᵀ
            WeightLayout::InOut => {
                Matmul::new(d_in, d_out, r).trans_a(true).trans_b(true).alpha(l.scale).accumulate(true)
            }
        };
        let (a, b) = match self.layout {
            WeightLayout::OutIn => (&l.b.value, &l.a.value),
            WeightLayout::InOut => (&l.a.value, &l.b.value),
        };
        matmul_into(gpu, &mm, a, b, None, &self.weight.value)
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        if let Some(b) = &self.bias {
            f(b);
        }
        if let Some(l) = &self.lora {
            f(&l.a);
            f(&l.b);
        }
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
        if let Some(l) = &mut self.lora {
            f(&mut l.a);
            f(&mut l.b);
        }
    }
}
