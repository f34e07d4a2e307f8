//! A linear layer (HF `nn.Linear` or GPT-2's `Conv1D`), optionally carrying a LoRA adapter.
//!
//! # Shapes
//! x `[..., in]` → `[..., out]`; weight `[out, in]` or `[in, out]` per [`WeightLayout`].
//!
//! The base weight may be kept quantized (`quant`, `[out, in]` in GGUF blocks whatever the
//! checkpoint's layout): it is then frozen, multiplied by the quantized kernels, and not one of
//! the module's parameters (`weight` holds its packed words only so the struct keeps its
//! shape; `visit_params` skips it). [`Linear::dequantize`] turns it back into an f32 weight.

use crate::autograd::{self, Lora, Param, Tape, Var, WeightLayout};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::matmul::{Matmul, matmul_into};
use crate::kernels::qmatmul::QuantTensor;
use crate::nn::{LoraAdapter, LoraConfig, Rng};
use crate::tensor::Tensor;

#[derive(Clone)]
pub struct Linear {
    /// The module path, e.g. `transformer.h.0.attn.c_attn`; parameters are `<path>.weight`.
    pub path: String,
    pub weight: Param,
    pub bias: Option<Param>,
    pub layout: WeightLayout,
    pub lora: Option<LoraAdapter>,
    /// The frozen quantized base, when the weight is kept quantized.
    pub quant: Option<QuantTensor>,
}

impl Linear {
    pub fn new(path: &str, weight: Tensor, bias: Option<Tensor>, layout: WeightLayout) -> Linear {
        Linear {
            path: path.to_string(),
            weight: Param::new(format!("{path}.weight"), weight),
            bias: bias.map(|b| Param::new(format!("{path}.bias"), b)),
            layout,
            lora: None,
            quant: None,
        }
    }

    /// A layer whose base weight stays quantized (frozen): `w` is `[out, in]`.
    pub fn quantized(path: &str, w: QuantTensor, bias: Option<Tensor>) -> Linear {
        let mut lin = Linear::new(path, w.words.clone(), bias, WeightLayout::OutIn);
        lin.quant = Some(w);
        lin
    }

    /// (in, out).
    pub fn in_out(&self) -> (usize, usize) {
        match &self.quant {
            Some(q) => (q.cols, q.rows),
            None => self.layout.in_out(&self.weight.value),
        }
    }

    /// Replaces a quantized base with its f32 values (`[out, in]`); no-op when it is f32.
    pub fn dequantize(&mut self, gpu: &Gpu) -> Result<()> {
        if let Some(q) = self.quant.take() {
            self.weight.value = q.dequantize(gpu)?;
            self.layout = WeightLayout::OutIn;
        }
        Ok(())
    }

    /// Replaces the f32 base with `w` (`[out, in]`, quantized from it).
    pub fn set_quantized(&mut self, w: QuantTensor) {
        self.weight.value = w.words.clone();
        self.weight.grad = None;
        self.layout = WeightLayout::OutIn;
        self.quant = Some(w);
    }

    pub fn forward(&self, tape: &Tape, x: &Var) -> Result<Var> {
        let b = self.bias.as_ref().map(|b| tape.param(b));
        if let Some(q) = &self.quant {
            let lora = self.lora.as_ref().map(|l| (tape.param(&l.a), tape.param(&l.b), l.scale, l.dropout));
            let lora = lora.as_ref().map(|(a, bm, scale, dropout)| Lora { a, b: bm, scale: *scale, dropout: *dropout });
            return autograd::linear_quant(tape, x, q, b.as_ref(), lora);
        }
        let w = tape.param(&self.weight);
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
    /// A quantized base is dequantized first: the merged layer is f32.
    pub fn merge_lora(&mut self, gpu: &Gpu) -> Result<()> {
        if self.lora.is_none() {
            return Ok(());
        }
        self.dequantize(gpu)?;
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
        if self.quant.is_none() {
            f(&self.weight);
        }
        if let Some(b) = &self.bias {
            f(b);
        }
        if let Some(l) = &self.lora {
            f(&l.a);
            f(&l.b);
        }
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if self.quant.is_none() {
            f(&mut self.weight);
        }
        if let Some(b) = &mut self.bias {
            f(b);
        }
        if let Some(l) = &mut self.lora {
            f(&mut l.a);
            f(&mut l.b);
        }
    }
}
