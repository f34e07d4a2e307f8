//! Batch normalisation on the tape, in the mode the caller chooses.

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::batch_norm::{self as bk, BnGrads, BnSaved};
use crate::tensor::Tensor;

/// Which statistics a BN layer normalises with in this pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BnStats {
    /// The batch's; the running averages move toward them (training a BN layer).
    Batch { momentum: f32 },
    /// The running ones, left unchanged (evaluation, and a frozen BN while fine-tuning).
    Running,
}

/// The running mean and variance of one BN layer (buffers, not trained).
pub struct RunningStats<'a> {
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
}

/// y = (x − μ)/√(σ² + ε)·γ + β per channel of x `[N, C, ...]`.
pub fn batch_norm(
    tape: &Tape,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    running: RunningStats,
    stats: BnStats,
    eps: f32,
) -> Result<Var> {
    let (y, saved) = match stats {
        BnStats::Batch { momentum } => bk::forward_train(
            tape.gpu,
            &x.value,
            &gamma.value,
            &beta.value,
            Some((running.mean, running.var)),
            eps,
            momentum,
        )?,
        BnStats::Running => {
            bk::forward_fixed(tape.gpu, &x.value, &gamma.value, &beta.value, running.mean, running.var, eps)?
        }
    };
    Ok(tape.output(y, &[x, gamma, beta], |out| {
        Box::new(BatchNormOp {
            out,
            x: x.value.clone(),
            gamma: gamma.value.clone(),
            saved,
            ids: [x.id(), gamma.id(), beta.id()],
        })
    }))
}

struct BatchNormOp {
    out: VarId,
    x: Tensor,
    gamma: Tensor,
    saved: BnSaved,
    /// x, gamma, beta.
    ids: [Option<VarId>; 3],
}

impl Backward for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        let c = [self.gamma.numel()];
        // gamma and beta are parameters (added into) or constants; a non-parameter that needs
        // a gradient gets a zeroed buffer so the kernel can add into it too.
        let dgamma = g.target_zeroed(self.ids[1], &c)?;
        let dbeta = g.target_zeroed(self.ids[2], &c)?;
        let dx = g.target(self.ids[0], self.x.shape())?;
        let out = BnGrads {
            dx: dx.as_ref().map(|t| (&t.tensor, t.accumulate)),
            dgamma: dgamma.as_ref(),
            dbeta: dbeta.as_ref(),
            accumulate_params: true,
        };
        bk::backward(gpu, &self.x, &self.gamma, &self.saved, &dy, out)
    }
}
