//! 2-D convolution on the tape. Saves x only when w needs a gradient and w only when x does,
//! so a frozen layer at the bottom of a fine-tuned CNN keeps nothing.

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::conv2d::{self as ck, Conv2dGeometry};
use crate::tensor::Tensor;

/// y = conv(x, w) + bias. x `[N, C, H, W]`, w `[O, C/G, KH, KW]`, bias `[O]`.
pub fn conv2d(tape: &Tape, g: &Conv2dGeometry, x: &Var, w: &Var, bias: Option<&Var>) -> Result<Var> {
    let y = ck::forward(tape.gpu, g, &x.value, &w.value, bias.map(|b| &b.value))?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    Ok(tape.output(y, &inputs, |out| {
        Box::new(Conv2dOp {
            out,
            g: *g,
            x: w.requires_grad().then(|| x.value.clone()),
            w: x.requires_grad().then(|| w.value.clone()),
            ids: [x.id(), w.id(), bias.and_then(|b| b.id())],
        })
    }))
}

struct Conv2dOp {
    out: VarId,
    g: Conv2dGeometry,
    /// Kept for dW.
    x: Option<Tensor>,
    /// Kept for dX.
    w: Option<Tensor>,
    /// x, w, bias.
    ids: [Option<VarId>; 3],
}

impl Backward for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        if let Some(db) = g.target(self.ids[2], &[self.g.c_out])? {
            ck::bias_grad(gpu, &self.g, &dy, &db.tensor, db.accumulate)?;
        }
        if let (Some(dw), Some(x)) = (g.target(self.ids[1], &self.g.w_shape())?, &self.x) {
            ck::weight_grad(gpu, &self.g, x, &dy, &dw.tensor, dw.accumulate)?;
        }
        if let (Some(dx), Some(w)) = (g.target(self.ids[0], &self.g.x_shape())?, &self.w) {
            ck::input_grad(gpu, &self.g, &dy, w, &dx.tensor, dx.accumulate)?;
        }
        Ok(())
    }
}
