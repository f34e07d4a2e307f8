//! LayerNorm and RMSNorm over the last dimension, with learned gamma (and beta).

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::layer_norm::{self as ln, Norm, NormStats};
use crate::tensor::Tensor;

/// y = norm(x)·gamma (+ beta). x `[..., C]`, gamma and beta `[C]`.
pub fn norm(tape: &Tape, kind: Norm, x: &Var, gamma: &Var, beta: Option<&Var>, eps: f32) -> Result<Var> {
    let (y, stats) = ln::forward(tape.gpu, kind, &x.value, &gamma.value, beta.map(|b| &b.value), eps)?;
    Ok(record_norm(tape, kind, y, stats, x, gamma, beta))
}

/// s = x + r and y = norm(s)·gamma (+ beta), returned as (s, y): a residual add and the norm
/// that reads its sum in one dispatch. The tape records the add and the norm as the two ops
/// they are, so gradients flow exactly as through `add` then [`norm`].
pub fn add_norm(
    tape: &Tape,
    kind: Norm,
    x: &Var,
    r: &Var,
    gamma: &Var,
    beta: Option<&Var>,
    eps: f32,
) -> Result<(Var, Var)> {
    let (s, y, stats) =
        ln::forward_residual(tape.gpu, kind, &x.value, &r.value, &gamma.value, beta.map(|b| &b.value), eps)?;
    let s = super::elementwise::record_add(tape, s, x, r);
    let y = record_norm(tape, kind, y, stats, &s, gamma, beta);
    Ok((s, y))
}

fn record_norm(tape: &Tape, kind: Norm, y: Tensor, stats: NormStats, x: &Var, gamma: &Var, beta: Option<&Var>) -> Var {
    let mut inputs = vec![x, gamma];
    if let Some(b) = beta {
        inputs.push(b);
    }
    tape.output(y, &inputs, |out| {
        Box::new(NormOp {
            out,
            kind,
            x: x.value.clone(),
            gamma: gamma.value.clone(),
            stats,
            ids: [x.id(), gamma.id(), beta.and_then(|b| b.id())],
        })
    })
}

struct NormOp {
    out: VarId,
    kind: Norm,
    x: Tensor,
    gamma: Tensor,
    stats: NormStats,
    /// x, gamma, beta.
    ids: [Option<VarId>; 3],
}

impl Backward for NormOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Norm::LayerNorm => "layer_norm",
            Norm::RmsNorm => "rms_norm",
        }
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        let (k, x, gamma, st) = (self.kind, &self.x, &self.gamma, &self.stats);
        if let Some(dx) = g.target(self.ids[0], x.shape())? {
            ln::backward(gpu, k, x, gamma, st, &dy, Some(&dx.tensor), None, dx.accumulate)?;
        }
        // gamma and beta are parameters (always added into) or absent.
        let dgamma = g.target(self.ids[1], gamma.shape())?;
        let dbeta = g.target(self.ids[2], gamma.shape())?;
        match (dgamma, dbeta) {
            (None, None) => {}
            (dg, db) => {
                // The kernel's parameter pass writes both; a frozen one gets a scratch buffer.
                let dg = match dg {
                    Some(t) => t.tensor,
                    None => Tensor::zeros(gpu, gamma.shape())?,
                };
                let db = db.map(|t| t.tensor);
                let db = match (k, db) {
                    (Norm::LayerNorm, None) => Some(Tensor::zeros(gpu, gamma.shape())?),
                    (_, db) => db,
                };
                ln::backward(gpu, k, x, gamma, st, &dy, None, Some((&dg, db.as_ref())), true)?;
            }
        }
        Ok(())
    }
}
