//! Linear layers, optionally with a LoRA branch: y = x·W (+ b) + s·dropout(x)·Aᵀ·Bᵀ.
//!
//! # Shapes
//! x `[..., in]`, y `[..., out]`; W `[out, in]` (HF `nn.Linear`) or `[in, out]` (GPT-2's `Conv1D`),
//! b `[out]`; LoRA A `[r, in]`, B `[out, r]` (PEFT's layout whatever the base layout), s = α/r.

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::dropout::DropoutMask;
use crate::kernels::elementwise::{Activation, GatedUnit};
use crate::kernels::matmul::{DropOn, Epilogue, Matmul, matmul_epilogue_into, matmul_into};
use crate::kernels::qmatmul::QuantTensor;
use crate::kernels::qmatmul::{qmatmul_dx_into, qmatmul_into};
use crate::kernels::reduce;
use crate::tensor::{DType, Tensor};

/// How a weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`: PyTorch's `nn.Linear` (BERT, Llama).
    OutIn,
    /// `[in, out]`: GPT-2's `Conv1D` (PEFT's `fan_in_fan_out`).
    InOut,
}

impl WeightLayout {
    /// (in, out) of a weight stored this way.
    pub fn in_out(self, w: &Tensor) -> (usize, usize) {
        match self {
            WeightLayout::OutIn => (w.dim(1), w.dim(0)),
            WeightLayout::InOut => (w.dim(0), w.dim(1)),
        }
    }
}

/// The LoRA branch of one linear: its two matrices, scale and dropout probability.
pub struct Lora<'a> {
    pub a: &'a Var,
    pub b: &'a Var,
    pub scale: f32,
    pub dropout: f32,
}

fn expect_matrix(w: &Var) -> Result<()> {
    if w.value.rank() != 2 {
        return Err(Error::Shape {
            op: "linear",
            tensor: "weight",
            expected: "a matrix".into(),
            found: w.shape().to_vec(),
        });
    }
    Ok(())
}

/// y = x·W (+ b) (+ the LoRA branch).
pub fn linear(
    tape: &Tape,
    x: &Var,
    w: &Var,
    layout: WeightLayout,
    bias: Option<&Var>,
    lora: Option<Lora>,
) -> Result<Var> {
    expect_matrix(w)?;
    Ok(linear_impl(tape, x, Base::Dense { w, layout }, bias, lora, None)?.0)
}

/// h = x·W (+ b) and f(h), returned as (h, f(h)): a linear layer and the activation after it in
/// one dispatch where the matmul's tiled kernel runs (the product and the activation otherwise).
/// The tape records the linear and the activation as the two ops they are.
pub fn linear_activation(
    tape: &Tape,
    x: &Var,
    w: &Var,
    layout: WeightLayout,
    bias: Option<&Var>,
    act: Activation,
) -> Result<(Var, Var)> {
    let (h, out) = linear_epilogue(tape, x, w, layout, bias, Epilogue::Activation(act))?;
    let y = super::elementwise::record_activation(tape, out, &h, act);
    Ok((h, y))
}

/// up = x·W (+ b) and unit(gate)·up, returned as (up, unit(gate)·up): the up-projection and
/// the gated unit after it (SwiGLU, GeGLU) in one dispatch where the matmul's tiled kernel
/// runs. The tape records the linear and the gated unit as the two ops they are.
pub fn linear_gated(
    tape: &Tape,
    x: &Var,
    w: &Var,
    layout: WeightLayout,
    bias: Option<&Var>,
    unit: GatedUnit,
    gate: &Var,
) -> Result<(Var, Var)> {
    let (up, out) = linear_epilogue(tape, x, w, layout, bias, Epilogue::Gated(unit, &gate.value))?;
    let y = super::elementwise::record_gated(tape, out, unit, gate, &up);
    Ok((up, y))
}

fn linear_epilogue(
    tape: &Tape,
    x: &Var,
    w: &Var,
    layout: WeightLayout,
    bias: Option<&Var>,
    epilogue: Epilogue,
) -> Result<(Var, Tensor)> {
    expect_matrix(w)?;
    let (y, out) = linear_impl(tape, x, Base::Dense { w, layout }, bias, None, Some(epilogue))?;
    Ok((y, out.expect("a dense product with an epilogue returns its output")))
}

/// y = x·Wᵀ (+ b) (+ the LoRA branch) with W `[out, in]` frozen and quantized.
pub fn linear_quant(tape: &Tape, x: &Var, w: &QuantTensor, bias: Option<&Var>, lora: Option<Lora>) -> Result<Var> {
    Ok(linear_impl(tape, x, Base::Quant(w), bias, lora, None)?.0)
}

/// The base weight of a linear: an f32 matrix (maybe trainable) or a frozen quantized one.
enum Base<'a> {
    Dense { w: &'a Var, layout: WeightLayout },
    Quant(&'a QuantTensor),
}

/// The product (and its LoRA branch), recorded; with an epilogue (a dense base without LoRA
/// only), also the epilogue's output, which the caller records.
fn linear_impl(
    tape: &Tape,
    x: &Var,
    base: Base,
    bias: Option<&Var>,
    lora: Option<Lora>,
    epilogue: Option<Epilogue>,
) -> Result<(Var, Option<Tensor>)> {
    const OP: &str = "linear";
    let gpu = tape.gpu;
    let (d_in, d_out) = match &base {
        Base::Dense { w, layout } => layout.in_out(&w.value),
        Base::Quant(q) => (q.cols, q.rows),
    };
    if x.value.dim(-1) != d_in {
        return Err(Error::Shape {
            op: OP,
            tensor: "x",
            expected: format!("[..., {d_in}] (the weight's input size)"),
            found: x.shape().to_vec(),
        });
    }
    let rows = x.value.numel() / d_in;
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = d_out;
    let y = Tensor::empty(gpu, &out_shape, DType::F32)?;
    let mut epilogue_out = None;
    match (&base, epilogue) {
        (Base::Dense { w, layout }, epilogue) => {
            // A frozen weight's product may round to f16 (the device's precision decides).
            let mm = Matmul::new(rows, d_out, d_in)
                .trans_b(*layout == WeightLayout::OutIn)
                .mixed_precision(!w.requires_grad());
            let bias = bias.map(|b| &b.value);
            match epilogue {
                None => matmul_into(gpu, &mm, &x.value, &w.value, bias, &y)?,
                // The LoRA branch adds into y after the product, so the epilogue would see
                // the base alone.
                Some(_) if lora.is_some() => {
                    return Err(Error::invalid(OP, "an epilogue after a layer with a LoRA branch"));
                }
                Some(e) => epilogue_out = Some(matmul_epilogue_into(gpu, &mm, &x.value, &w.value, bias, &y, e)?),
            }
        }
        (Base::Quant(_), Some(_)) => return Err(Error::invalid(OP, "an epilogue after a quantized product")),
        (Base::Quant(q), None) => qmatmul_into(gpu, &x.value, q, bias.map(|b| &b.value), &y, 1.0, false)?,
    }

    let mut saved_lora = None;
    if let Some(l) = &lora {
        let r = l.a.value.dim(0);
        if l.a.shape() != [r, d_in] || l.b.shape() != [d_out, r] {
            return Err(Error::invalid(
                OP,
                format!(
                    "LoRA A {:?} and B {:?} do not fit a {d_in}→{d_out} layer (want [r, {d_in}] and [{d_out}, r])",
                    l.a.shape(),
                    l.b.shape()
                ),
            ));
        }
        let mask = if tape.training() && l.dropout > 0.0 {
            let (seed, step) = tape.next_dropout_stream();
            Some(DropoutMask { p: l.dropout, seed, step })
        } else {
            None
        };
        // h = dropout(x)·Aᵀ [rows, r], the mask fused into the matmul's reads of x; y += s·h·Bᵀ.
        let h = Tensor::empty(gpu, &[rows, r], DType::F32)?;
        let mut down = Matmul::new(rows, r, d_in).trans_b(true);
        if let Some(m) = mask {
            down = down.dropout(DropOn::A, m);
        }
        matmul_into(gpu, &down, &x.value, &l.a.value, None, &h)?;
        let up = Matmul::new(rows, d_out, r).trans_b(true).alpha(l.scale).accumulate(true);
        matmul_into(gpu, &up, &h, &l.b.value, None, &y)?;
        saved_lora = Some(SavedLora {
            a: l.a.value.clone(),
            b: l.b.value.clone(),
            a_id: l.a.id(),
            b_id: l.b.id(),
            scale: l.scale,
            mask,
            x: x.value.clone(),
            h,
        });
    }

    let mut inputs = vec![x];
    if let Base::Dense { w, .. } = &base {
        inputs.push(w);
    }
    if let Some(b) = bias {
        inputs.push(b);
    }
    if let Some(l) = &lora {
        inputs.push(l.a);
        inputs.push(l.b);
    }
    let y = tape.output(y, &inputs, |out| {
        Box::new(LinearOp {
            out,
            x: x.value.clone(),
            x_id: x.id(),
            w: match base {
                Base::Dense { w, layout } => SavedBase::Dense { w: w.value.clone(), w_id: w.id(), layout },
                Base::Quant(q) => SavedBase::Quant(q.clone()),
            },
            bias_id: bias.and_then(|b| b.id()),
            rows,
            d_in,
            d_out,
            lora: saved_lora,
        })
    });
    Ok((y, epilogue_out))
}

struct SavedLora {
    a: Tensor,
    b: Tensor,
    a_id: Option<VarId>,
    b_id: Option<VarId>,
    scale: f32,
    mask: Option<DropoutMask>,
    /// x (its dropout is recomputed from `mask` where it is read) and h = dropout(x)·Aᵀ.
    x: Tensor,
    h: Tensor,
}

enum SavedBase {
    Dense {
        w: Tensor,
        w_id: Option<VarId>,
        layout: WeightLayout,
    },
    /// Frozen: only dx flows through it.
    Quant(QuantTensor),
}

struct LinearOp {
    out: VarId,
    x: Tensor,
    x_id: Option<VarId>,
    w: SavedBase,
    bias_id: Option<VarId>,
    rows: usize,
    d_in: usize,
    d_out: usize,
    lora: Option<SavedLora>,
}

impl Backward for LinearOp {
    fn name(&self) -> &'static str {
        if self.lora.is_some() { "linear+lora" } else { "linear" }
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        let (rows, d_in, d_out) = (self.rows, self.d_in, self.d_out);

        // dW: [out, in] = dyᵀ·x, or [in, out] = xᵀ·dy.
        if let SavedBase::Dense { w, w_id, layout } = &self.w
            && let Some(dw) = g.target(*w_id, w.shape())?
        {
            let (mm, a, b) = if *layout == WeightLayout::OutIn {
                (Matmul::new(d_out, d_in, rows).trans_a(true), &dy, &self.x)
            } else {
                (Matmul::new(d_in, d_out, rows).trans_a(true), &self.x, &dy)
            };
            matmul_into(gpu, &mm.accumulate(dw.accumulate), a, b, None, &dw.tensor)?;
        }
        if let Some(db) = g.target(self.bias_id, &[d_out])? {
            reduce::sum_rows_into(gpu, &dy.reshape(&[rows, d_out])?, &db.tensor, db.accumulate)?;
        }

        let dx = g.target(self.x_id, self.x.shape())?;
        if let Some(dx) = &dx {
            // dx = dy·W for [out, in], dy·Wᵀ for [in, out].
            match &self.w {
                SavedBase::Dense { w, layout, w_id } => {
                    let out_in = *layout == WeightLayout::OutIn;
                    let mm = Matmul::new(rows, d_in, d_out)
                        .trans_b(!out_in)
                        .accumulate(dx.accumulate)
                        .mixed_precision(w_id.is_none());
                    matmul_into(gpu, &mm, &dy, w, None, &dx.tensor)?;
                }
                SavedBase::Quant(q) => qmatmul_dx_into(gpu, &dy, q, &dx.tensor, 1.0, dx.accumulate)?,
            }
        }

        if let Some(l) = &self.lora {
            let r = l.a.dim(0);
            // dB [out, r] += s·dyᵀ·h.
            if let Some(db) = g.target(l.b_id, l.b.shape())? {
                let mm = Matmul::new(d_out, r, rows).trans_a(true).alpha(l.scale).accumulate(db.accumulate);
                matmul_into(gpu, &mm, &dy, &l.h, None, &db.tensor)?;
            }
            let need_dh = l.a_id.is_some() || dx.is_some();
            if need_dh {
                // dh [rows, r] = s·dy·B.
                let dh = Tensor::empty(gpu, &[rows, r], DType::F32)?;
                matmul_into(gpu, &Matmul::new(rows, r, d_out).alpha(l.scale), &dy, &l.b, None, &dh)?;
                // dA [r, in] += dhᵀ·dropout(x), the mask fused into the reads of x.
                if let Some(da) = g.target(l.a_id, l.a.shape())? {
                    let mut mm = Matmul::new(r, d_in, rows).trans_a(true).accumulate(da.accumulate);
                    if let Some(mask) = l.mask {
                        mm = mm.dropout(DropOn::B, mask);
                    }
                    matmul_into(gpu, &mm, &dh, &l.x, None, &da.tensor)?;
                }
                // dx += dropout'(dh·A): the mask again, scaled by 1/(1-p), on the product.
                if let Some(dx) = &dx {
                    let mut mm = Matmul::new(rows, d_in, r).accumulate(true);
                    if let Some(mask) = l.mask {
                        mm = mm.dropout(DropOn::Product, mask);
                    }
                    matmul_into(gpu, &mm, &dh, &l.a, None, &dx.tensor)?;
                }
            }
        }
        Ok(())
    }
}
