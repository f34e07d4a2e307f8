//! DoRA's output scaling on the tape (PEFT 0.21's `DoraLinearLayer.forward`):
//! y = (c + k0)·p + c·s·q (+ bias) with c = m / n per output feature.
//!
//! # Shapes
//! p = x·Wᵀ and q = x·Aᵀ·Bᵀ `[..., out]`; m (trainable magnitude), n (the detached norm of
//! W + s·B·A) and bias `[out]`. k0 = 0: the layer's output; k0 = −1: the term added to the base
//! output when LoRA dropout is on (p and q then come from the dropped-out input).

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{dora as dk, reduce};
use crate::tensor::{DType, Tensor};

/// The DoRA combination of the base and LoRA products; n gets no gradient.
#[allow(clippy::too_many_arguments)]
pub fn dora(tape: &Tape, p: &Var, q: &Var, m: &Var, n: &Tensor, bias: Option<&Var>, s: f32, k0: f32) -> Result<Var> {
    let out = m.value.numel();
    if p.shape() != q.shape() || p.value.dim(-1) != out || n.numel() != out {
        return Err(Error::invalid(
            "dora",
            format!(
                "p {:?}, q {:?}, magnitude [{out}] and norm {:?} do not fit one layer",
                p.shape(),
                q.shape(),
                n.shape()
            ),
        ));
    }
    let y = Tensor::empty(tape.gpu, p.shape(), DType::F32)?;
    dk::forward_into(tape.gpu, &m.value, n, &p.value, &q.value, bias.map(|b| &b.value), (s, k0), &y)?;
    let mut inputs = vec![p, q, m];
    if let Some(b) = bias {
        inputs.push(b);
    }
    Ok(tape.output(y, &inputs, |out_id| {
        Box::new(DoraOp {
            out: out_id,
            p: p.value.clone(),
            q: q.value.clone(),
            m: m.value.clone(),
            n: n.clone(),
            ids: [p.id(), q.id(), m.id(), bias.and_then(|b| b.id())],
            s,
            k0,
        })
    }))
}

struct DoraOp {
    out: VarId,
    p: Tensor,
    q: Tensor,
    m: Tensor,
    n: Tensor,
    /// p, q, m, bias.
    ids: [Option<VarId>; 4],
    s: f32,
    k0: f32,
}

impl Backward for DoraOp {
    fn name(&self) -> &'static str {
        "dora"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        let [p_id, q_id, m_id, bias_id] = self.ids;
        // dp = (c + k0)·dy, dq = c·s·dy.
        if let Some(dp) = g.target(p_id, self.p.shape())? {
            dk::scale_into(gpu, &self.m, &self.n, &dy, false, (1.0, self.k0), &dp.tensor, dp.accumulate)?;
        }
        if let Some(dq) = g.target(q_id, self.q.shape())? {
            dk::scale_into(gpu, &self.m, &self.n, &dy, false, (self.s, 0.0), &dq.tensor, dq.accumulate)?;
        }
        // dm = Σ_rows dy·(p + s·q) / n.
        if let Some(dm) = g.target(m_id, self.m.shape())? {
            dk::magnitude_grad_into(gpu, &self.n, &dy, &self.p, &self.q, self.s, &dm.tensor, dm.accumulate)?;
        }
        if let Some(db) = g.target(bias_id, self.m.shape())? {
            let out = self.m.numel();
            reduce::sum_rows_into(gpu, &dy.reshape(&[dy.numel() / out, out])?, &db.tensor, db.accumulate)?;
        }
        Ok(())
    }
}
