//! Weighted pooling over the tokens of each sequence: out[b] = Σ_t w[b, t]·x[b, t]. Masked mean
//! pooling (w = mask / Σ mask) and CLS pooling (w = one-hot at t = 0) are both this op.
//!
//! # Shapes
//! x `[B, T, C]`, weights `[B, T]` (constant), out `[B, C]`. Both directions are one batched
//! matmul: out[b] = w[b]·x[b] (1×T by T×C); dx[b] = w[b]ᵀ·dout[b] (T×1 by 1×C).

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::matmul::{Matmul, matmul_into};
use crate::tensor::{DType, Tensor};

pub fn pool(tape: &Tape, x: &Var, weights: &[f32]) -> Result<Var> {
    if x.value.rank() != 3 {
        return Err(Error::Shape { op: "pool", tensor: "x", expected: "[B, T, C]".into(), found: x.shape().to_vec() });
    }
    let (b, t, c) = (x.value.dim(0), x.value.dim(1), x.value.dim(2));
    if weights.len() != b * t {
        return Err(Error::invalid("pool", format!("{} weights for {b} sequences of {t} tokens", weights.len())));
    }
    let w = Tensor::from_f32(tape.gpu, weights, &[b, 1, t])?;
    let out = Tensor::empty(tape.gpu, &[b, c], DType::F32)?;
    matmul_into(tape.gpu, &Matmul::new(1, c, t).batch(b), &w, &x.value, None, &out)?;
    Ok(tape.output(out, &[x], |out| Box::new(PoolOp { out, x_id: x.id(), x_shape: [b, t, c], weights: w })))
}

/// Weights of masked mean pooling: 1/n over the n real tokens of each sequence.
pub fn mean_weights(mask: &[u32], batch: usize, seq: usize) -> Vec<f32> {
    let mut w = vec![0.0; batch * seq];
    for b in 0..batch {
        let row = &mask[b * seq..(b + 1) * seq];
        // sentence-transformers clamps the count at 1e-9; a fully padded row pools to zero.
        let n = row.iter().filter(|&&m| m != 0).count().max(1) as f32;
        for (t, &m) in row.iter().enumerate() {
            if m != 0 {
                w[b * seq + t] = 1.0 / n;
            }
        }
    }
    w
}

/// Weights of CLS pooling: the first token of each sequence.
pub fn first_token_weights(batch: usize, seq: usize) -> Vec<f32> {
    let mut w = vec![0.0; batch * seq];
    for b in 0..batch {
        w[b * seq] = 1.0;
    }
    w
}

struct PoolOp {
    out: VarId,
    x_id: Option<VarId>,
    x_shape: [usize; 3],
    weights: Tensor,
}

impl Backward for PoolOp {
    fn name(&self) -> &'static str {
        "pool"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        let [b, t, c] = self.x_shape;
        if let Some(dx) = g.target(self.x_id, &self.x_shape)? {
            let mm = Matmul::new(t, c, 1).batch(b).trans_a(true).accumulate(dx.accumulate);
            matmul_into(gpu, &mm, &self.weights, &dy, None, &dx.tensor)?;
        }
        Ok(())
    }
}
