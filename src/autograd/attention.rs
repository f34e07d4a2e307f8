//! Scaled dot-product attention (causal and/or key padding mask, grouped-query heads).

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::attention::{self as ak, AttentionOutput, AttentionSpec};
use crate::tensor::{DType, Tensor};

/// softmax(q·kᵀ·scale + masks)·v. q `[B, T, Hq, D]`, k and v `[B, T, Hkv, D]`, key_mask `[B, T]`
/// u32 (1 attend, 0 padding). Returns `[B, T, Hq, D]`.
pub fn attention(
    tape: &Tape,
    spec: &AttentionSpec,
    q: &Var,
    k: &Var,
    v: &Var,
    key_mask: Option<&Tensor>,
) -> Result<Var> {
    let fwd = ak::forward(tape.gpu, spec, &q.value, &k.value, &v.value, key_mask)?;
    let out = fwd.out.clone();
    Ok(tape.output(out, &[q, k, v], |out| {
        Box::new(AttentionOp {
            out,
            spec: *spec,
            qkv: [q.value.clone(), k.value.clone(), v.value.clone()],
            ids: [q.id(), k.id(), v.id()],
            key_mask: key_mask.cloned(),
            fwd,
        })
    }))
}

struct AttentionOp {
    out: VarId,
    spec: AttentionSpec,
    qkv: [Tensor; 3],
    ids: [Option<VarId>; 3],
    key_mask: Option<Tensor>,
    fwd: AttentionOutput,
}

impl Backward for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        // The kernel writes dq, dk and dv with one accumulate flag: a gradient nobody needs gets
        // scratch space, and a fresh buffer is zeroed when another one must be added into.
        let mut targets = Vec::with_capacity(3);
        for (id, t) in self.ids.iter().zip(&self.qkv) {
            targets.push(match g.target(*id, t.shape())? {
                Some(t) => (t.tensor, t.accumulate),
                None => (Tensor::empty(gpu, t.shape(), DType::F32)?, false),
            });
        }
        let accumulate = targets.iter().any(|t| t.1);
        if accumulate {
            for (t, acc) in &targets {
                if !acc {
                    gpu.clear(t);
                }
            }
        }
        let [q, k, v] = &self.qkv;
        let dy = dy.reshape(q.shape())?;
        let d = (&targets[0].0, &targets[1].0, &targets[2].0);
        ak::backward(gpu, &self.spec, q, k, v, self.key_mask.as_ref(), &self.fwd, &dy, d, accumulate)
    }
}
