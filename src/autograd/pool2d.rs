//! Spatial pooling on the tape: max-pool (backward through the saved argmax) and global
//! average pooling (`[N, C, H, W]` → `[N, C]`).

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::pool2d::{self as pk, PoolGeometry};
use crate::tensor::Tensor;

/// k×k max-pool with `stride` and `pad` of x `[N, C, H, W]`.
pub fn max_pool2d(tape: &Tape, x: &Var, k: usize, stride: usize, pad: usize) -> Result<Var> {
    let (y, argmax, g) = pk::max_pool(tape.gpu, &x.value, k, stride, pad)?;
    Ok(tape.output(y, &[x], |out| Box::new(MaxPoolOp { out, g, argmax, x_id: x.id(), x_shape: x.shape().to_vec() })))
}

struct MaxPoolOp {
    out: VarId,
    g: PoolGeometry,
    argmax: Tensor,
    x_id: Option<VarId>,
    x_shape: Vec<usize>,
}

impl Backward for MaxPoolOp {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        if let Some(dx) = g.target(self.x_id, &self.x_shape)? {
            pk::max_pool_backward(gpu, &self.g, &self.argmax, &dy, &dx.tensor, dx.accumulate)?;
        }
        Ok(())
    }
}

/// The mean over each channel's positions: x `[N, C, H, W]` → `[N, C]`.
pub fn global_avg_pool(tape: &Tape, x: &Var) -> Result<Var> {
    let y = pk::global_avg(tape.gpu, &x.value)?;
    Ok(tape.output(y, &[x], |out| Box::new(GlobalAvgOp { out, x_id: x.id(), x_shape: x.shape().to_vec() })))
}

struct GlobalAvgOp {
    out: VarId,
    x_id: Option<VarId>,
    x_shape: Vec<usize>,
}

impl Backward for GlobalAvgOp {
    fn name(&self) -> &'static str {
        "global_avg_pool"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        if let Some(dx) = g.target(self.x_id, &self.x_shape)? {
            pk::global_avg_backward(gpu, &dy, &dx.tensor, dx.accumulate)?;
        }
        Ok(())
    }
}
