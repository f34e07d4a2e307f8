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
use crate::kernels::dora;
use crate::kernels::elementwise::{Activation, GatedUnit};
use crate::kernels::matmul::{Matmul, matmul_into};
use crate::kernels::qmatmul::QuantTensor;
use crate::nn::{LoraAdapter, LoraConfig, Rng};
use crate::tensor::{DType, Tensor};

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
        if let Some(l) = &self.lora
            && let Some(m) = &l.magnitude
        {
            return self.forward_dora(tape, x, l, m);
        }
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

    /// act(self(x)): in one dispatch when the layer is a plain f32 product (no adapter, not
    /// quantized) whose product takes the tiled matmul, else the layer then the activation.
    pub fn forward_activation(&self, tape: &Tape, x: &Var, act: Activation) -> Result<Var> {
        if self.lora.is_some() || self.quant.is_some() {
            return autograd::activation(tape, act, &self.forward(tape, x)?);
        }
        let (w, b) = (tape.param(&self.weight), self.bias.as_ref().map(|b| tape.param(b)));
        Ok(autograd::linear_activation(tape, x, &w, self.layout, b.as_ref(), act)?.1)
    }

    /// unit(gate)·self(x), this layer being the up-projection of a gated MLP: in one dispatch
    /// when the layer is a plain f32 product, as [`Linear::forward_activation`].
    pub fn forward_gated(&self, tape: &Tape, x: &Var, unit: GatedUnit, gate: &Var) -> Result<Var> {
        if self.lora.is_some() || self.quant.is_some() {
            return autograd::gated(tape, unit, gate, &self.forward(tape, x)?);
        }
        let (w, b) = (tape.param(&self.weight), self.bias.as_ref().map(|b| tape.param(b)));
        Ok(autograd::linear_gated(tape, x, &w, self.layout, b.as_ref(), unit, gate)?.1)
    }

    /// DoRA as PEFT 0.21 computes it: with c = m / n and n = ||W + s·B·A|| per output feature
    /// (computed here, outside the tape: detached), y = c ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) + b. With LoRA
    /// dropout on while training, PEFT adds (c − 1) ⊙ xd·Wᵀ + c·s ⊙ xd·Aᵀ·Bᵀ to the base output
    /// x·Wᵀ + b, xd the dropped-out input; so does this.
    fn forward_dora(&self, tape: &Tape, x: &Var, l: &LoraAdapter, m: &Param) -> Result<Var> {
        let n = self.dora_norm(tape.gpu, l)?;
        let m = tape.param(m);
        let bias = self.bias.as_ref().map(|b| tape.param(b));
        let w = tape.param(&self.weight);
        let base = |input: &Var, bias: Option<&Var>| match &self.quant {
            Some(q) => autograd::linear_quant(tape, input, q, bias, None),
            None => autograd::linear(tape, input, &w, self.layout, bias, None),
        };
        let (a, b) = (tape.param(&l.a), tape.param(&l.b));
        let xd = autograd::dropout(tape, x, l.dropout)?;
        let h = autograd::linear(tape, &xd, &a, WeightLayout::OutIn, None, None)?;
        let q = autograd::linear(tape, &h, &b, WeightLayout::OutIn, None, None)?;
        if tape.training() && l.dropout > 0.0 {
            let full = base(x, bias.as_ref())?;
            let pd = base(&xd, None)?;
            let extra = autograd::dora(tape, &pd, &q, &m, &n, None, l.scale, -1.0)?;
            autograd::add(tape, &full, &extra)
        } else {
            let p = base(x, None)?;
            autograd::dora(tape, &p, &q, &m, &n, bias.as_ref(), l.scale, 0.0)
        }
    }

    /// ||W + s·B·A|| per output feature `[out]`, from the f32 weight or the dequantized base.
    fn dora_norm(&self, gpu: &Gpu, l: &LoraAdapter) -> Result<Tensor> {
        let (v, layout) = match &self.quant {
            Some(q) => (q.dequantize(gpu)?, WeightLayout::OutIn),
            None => {
                let v = Tensor::empty(gpu, self.weight.value.shape(), DType::F32)?;
                gpu.copy(&self.weight.value, &v)?;
                (v, self.layout)
            }
        };
        add_lora_delta(gpu, &v, layout, l)?;
        let n = Tensor::empty(gpu, &[self.in_out().1], DType::F32)?;
        dora::weight_norm_into(gpu, &v, layout == WeightLayout::OutIn, &n)?;
        Ok(n)
    }

    /// Attaches a fresh adapter when `cfg` targets this layer; returns whether it did. With DoRA
    /// the magnitude starts at ||W|| per output feature (PEFT's init; B = 0 so W + s·B·A = W).
    pub fn add_lora(&mut self, gpu: &Gpu, cfg: &LoraConfig, rng: &mut Rng) -> Result<bool> {
        if !cfg.targets(&self.path) {
            return Ok(false);
        }
        let (d_in, d_out) = self.in_out();
        let mut l = LoraAdapter::init(gpu, &self.path, d_in, d_out, cfg, rng)?;
        if cfg.use_dora {
            let mut m = Param::new(format!("{}.lora_magnitude_vector", self.path), self.dora_norm(gpu, &l)?);
            m.set_trainable(gpu, true)?;
            l.magnitude = Some(m);
        }
        self.lora = Some(l);
        Ok(true)
    }

    /// Folds the adapter into the weight (W += s·B·A, transposed for `[in, out]`) and drops it;
    /// with DoRA, W' = m/||W + s·B·A|| ⊙ (W + s·B·A) per output feature (PEFT's merge).
    /// A quantized base is dequantized first: the merged layer is f32.
    pub fn merge_lora(&mut self, gpu: &Gpu) -> Result<()> {
        if self.lora.is_none() {
            return Ok(());
        }
        self.dequantize(gpu)?;
        let Some(l) = self.lora.take() else { return Ok(()) };
        add_lora_delta(gpu, &self.weight.value, self.layout, &l)?;
        if let Some(m) = &l.magnitude {
            let out_in = self.layout == WeightLayout::OutIn;
            let n = Tensor::empty(gpu, m.value.shape(), DType::F32)?;
            dora::weight_norm_into(gpu, &self.weight.value, out_in, &n)?;
            let merged = Tensor::empty(gpu, self.weight.value.shape(), DType::F32)?;
            dora::scale_into(gpu, &m.value, &n, &self.weight.value, out_in, (1.0, 0.0), &merged, false)?;
            self.weight.value = merged;
        }
        Ok(())
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
            if let Some(m) = &l.magnitude {
                f(m);
            }
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
            if let Some(m) = &mut l.magnitude {
                f(m);
            }
        }
    }
}

/// w += s·B·A (`[out, in]`), or s·Aᵀ·Bᵀ for a weight stored `[in, out]`.
fn add_lora_delta(gpu: &Gpu, w: &Tensor, layout: WeightLayout, l: &LoraAdapter) -> Result<()> {
    let (d_in, d_out) = layout.in_out(w);
    let r = l.a.value.dim(0);
    let mm = match layout {
        // [out, in] += s·B[out, r]·A[r, in]
        WeightLayout::OutIn => Matmul::new(d_out, d_in, r).alpha(l.scale).accumulate(true),
        // [in, out] += s·Aᵀ·Bᵀ
        WeightLayout::InOut => Matmul::new(d_in, d_out, r).trans_a(true).trans_b(true).alpha(l.scale).accumulate(true),
    };
    let (a, b) = match layout {
        WeightLayout::OutIn => (&l.b.value, &l.a.value),
        WeightLayout::InOut => (&l.a.value, &l.b.value),
    };
    matmul_into(gpu, &mm, a, b, None, w)
}
