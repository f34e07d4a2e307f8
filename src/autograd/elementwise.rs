//! Tape entries for the elementwise kernels: residual add, scale, activations, SwiGLU/GeGLU, dropout, and
//! the column split of a fused projection.

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::dropout::{self as dk, DropoutMask};
use crate::kernels::elementwise::{self as ew, Activation, ColumnBlock, GatedUnit};
use crate::tensor::{DType, Tensor};

/// a + b (same shape). Backward hands dy to a without a copy and adds it into b.
pub fn add(tape: &Tape, a: &Var, b: &Var) -> Result<Var> {
    let y = ew::add(tape.gpu, &a.value, &b.value)?;
    Ok(record_add(tape, y, a, b))
}

/// Records `sum`, computed elsewhere as a + b (a kernel that fuses the add with what reads
/// it), as the add it is.
pub(super) fn record_add(tape: &Tape, sum: Tensor, a: &Var, b: &Var) -> Var {
    tape.output(sum, &[a, b], |out| Box::new(AddOp { out, a: a.id(), b: b.id() }))
}

struct AddOp {
    out: VarId,
    a: Option<VarId>,
    b: Option<VarId>,
}

impl Backward for AddOp {
    fn name(&self) -> &'static str {
        "add"
    }

    fn backward(&self, _gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        // b first: it copies or adds dy; then a may keep dy itself.
        g.add(self.b, &dy, false)?;
        g.add(self.a, &dy, true)
    }
}

/// alpha·x (Gemma's embeddings times √hidden). Backward: dx += alpha·dy.
pub fn scale(tape: &Tape, x: &Var, alpha: f32) -> Result<Var> {
    let y = ew::scale(tape.gpu, &x.value, alpha)?;
    Ok(tape.output(y, &[x], |out| Box::new(ScaleOp { out, alpha, x_id: x.id() })))
}

struct ScaleOp {
    out: VarId,
    alpha: f32,
    x_id: Option<VarId>,
}

impl Backward for ScaleOp {
    fn name(&self) -> &'static str {
        "scale"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        let dx = ew::scale(gpu, &dy, self.alpha)?;
        g.add(self.x_id, &dx, true)
    }
}

/// act(x) elementwise.
pub fn activation(tape: &Tape, act: Activation, x: &Var) -> Result<Var> {
    let y = ew::activation(tape.gpu, act, &x.value)?;
    Ok(record_activation(tape, y, x, act))
}

/// Records `y`, computed elsewhere as act(x) (the matmul's epilogue), as the activation it is.
pub(super) fn record_activation(tape: &Tape, y: Tensor, x: &Var, act: Activation) -> Var {
    tape.output(y, &[x], |out| Box::new(ActivationOp { out, act, x: x.value.clone(), x_id: x.id() }))
}

struct ActivationOp {
    out: VarId,
    act: Activation,
    x: Tensor,
    x_id: Option<VarId>,
}

impl Backward for ActivationOp {
    fn name(&self) -> &'static str {
        self.act.name()
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        if let Some(dx) = g.target(self.x_id, self.x.shape())? {
            ew::activation_backward(gpu, self.act, &self.x, &dy, &dx.tensor, dx.accumulate)?;
        }
        Ok(())
    }
}

/// silu(gate)·up (Llama's MLP).
pub fn swiglu(tape: &Tape, gate: &Var, up: &Var) -> Result<Var> {
    gated(tape, GatedUnit::SwiGlu, gate, up)
}

/// act(gate)·up: SwiGLU or GeGLU.
pub fn gated(tape: &Tape, unit: GatedUnit, gate: &Var, up: &Var) -> Result<Var> {
    let y = ew::gated(tape.gpu, unit, &gate.value, &up.value)?;
    Ok(record_gated(tape, y, unit, gate, up))
}

/// Records `y`, computed elsewhere as unit(gate)·up (the matmul's epilogue), as the gated unit
/// it is.
pub(super) fn record_gated(tape: &Tape, y: Tensor, unit: GatedUnit, gate: &Var, up: &Var) -> Var {
    tape.output(y, &[gate, up], |out| {
        Box::new(GatedOp { out, unit, gate: gate.value.clone(), up: up.value.clone(), ids: [gate.id(), up.id()] })
    })
}

struct GatedOp {
    out: VarId,
    unit: GatedUnit,
    gate: Tensor,
    up: Tensor,
    ids: [Option<VarId>; 2],
}

impl Backward for GatedOp {
    fn name(&self) -> &'static str {
        self.unit.name()
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        // One kernel writes both; both must then agree on accumulate (zero a fresh one if not).
        let dgate = g.target(self.ids[0], self.gate.shape())?;
        let dup = g.target(self.ids[1], self.up.shape())?;
        let scratch = |t: &Option<super::Target>| -> Result<(Tensor, bool)> {
            match t {
                Some(t) => Ok((t.tensor.clone(), t.accumulate)),
                None => Ok((Tensor::empty(gpu, self.gate.shape(), DType::F32)?, false)),
            }
        };
        let ((dg, acc_g), (du, acc_u)) = (scratch(&dgate)?, scratch(&dup)?);
        let accumulate = acc_g || acc_u;
        if accumulate && !acc_g {
            gpu.clear(&dg);
        }
        if accumulate && !acc_u {
            gpu.clear(&du);
        }
        ew::gated_backward(gpu, self.unit, &self.gate, &self.up, &dy, &dg, &du, accumulate)
    }
}

/// Inverted dropout with probability `p` while training; the identity otherwise.
pub fn dropout(tape: &Tape, x: &Var, p: f32) -> Result<Var> {
    if !tape.training() || p == 0.0 {
        return Ok(x.clone());
    }
    let (seed, step) = tape.next_dropout_stream();
    let mask = DropoutMask { p, seed, step };
    let y = dk::apply(tape.gpu, mask, &x.value)?;
    Ok(tape.output(y, &[x], |out| Box::new(DropoutOp { out, mask, x_id: x.id(), shape: x.shape().to_vec() })))
}

struct DropoutOp {
    out: VarId,
    mask: DropoutMask,
    x_id: Option<VarId>,
    shape: Vec<usize>,
}

impl Backward for DropoutOp {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        if let Some(dx) = g.target(self.x_id, &self.shape)? {
            // The same mask and 1/(1-p) scale: the kernel recomputes it from (seed, step, index).
            dk::apply_into(gpu, self.mask, &dy, &dx.tensor, dx.accumulate)?;
        }
        Ok(())
    }
}

/// Splits x `[..., sum(widths)]` into contiguous parts `[..., widths[i]]` (GPT-2's fused q|k|v).
pub fn split_cols(tape: &Tape, x: &Var, widths: &[usize]) -> Result<Vec<Var>> {
    let cols = x.value.dim(-1);
    if widths.iter().sum::<usize>() != cols {
        return Err(Error::invalid("split_cols", format!("parts {widths:?} do not add up to the {cols} columns of x")));
    }
    let rows = x.value.numel() / cols;
    let flat = x.value.reshape(&[rows, cols])?;
    let mut parts = Vec::with_capacity(widths.len());
    let mut off = 0;
    for &width in widths {
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = width;
        let part = Tensor::empty(tape.gpu, &[rows, width], DType::F32)?;
        ew::copy_cols(tape.gpu, &flat, &part, ColumnBlock { width, src_off: off, dst_off: 0 }, false)?;
        let part = part.reshape(&shape)?;
        let (src_off, x_shape) = (off, x.shape().to_vec());
        parts.push(
            tape.output(part, &[x], |out| Box::new(SplitOp { out, x_id: x.id(), x_shape, rows, cols, width, src_off })),
        );
        off += width;
    }
    Ok(parts)
}

/// The backward of one part of a split: its gradient goes back into its columns.
struct SplitOp {
    out: VarId,
    x_id: Option<VarId>,
    x_shape: Vec<usize>,
    rows: usize,
    cols: usize,
    width: usize,
    src_off: usize,
}

impl Backward for SplitOp {
    fn name(&self) -> &'static str {
        "split_cols"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        // Each part writes only its own columns, so the buffer must start zeroed.
        if let Some(dx) = g.target_zeroed(self.x_id, &self.x_shape)? {
            let block = ColumnBlock { width: self.width, src_off: 0, dst_off: self.src_off };
            let dy = dy.reshape(&[self.rows, self.width])?;
            ew::copy_cols(gpu, &dy, &dx.reshape(&[self.rows, self.cols])?, block, true)?;
        }
        Ok(())
    }
}
