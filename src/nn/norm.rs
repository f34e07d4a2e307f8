//! LayerNorm (weight and bias) and RMSNorm (weight only) over the last dimension.

use crate::autograd::{self, Param, Tape, Var};
use crate::error::Result;
use crate::kernels::layer_norm::Norm;

#[derive(Clone)]
pub struct NormLayer {
    pub kind: Norm,
    /// `[C]`, named `<path>.weight`.
    pub weight: Param,
    /// `[C]`, LayerNorm only.
    pub bias: Option<Param>,
    pub eps: f32,
}

impl NormLayer {
    pub fn forward(&self, tape: &Tape, x: &Var) -> Result<Var> {
        let w = tape.param(&self.weight);
        let b = self.bias.as_ref().map(|b| tape.param(b));
        autograd::norm(tape, self.kind, x, &w, b.as_ref(), self.eps)
    }

    /// (x + r, the norm of x + r): a residual add and this norm of its sum, in one dispatch.
    pub fn forward_add(&self, tape: &Tape, x: &Var, r: &Var) -> Result<(Var, Var)> {
        let w = tape.param(&self.weight);
        let b = self.bias.as_ref().map(|b| tape.param(b));
        autograd::add_norm(tape, self.kind, x, r, &w, b.as_ref(), self.eps)
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        std::iter::once(&self.weight).chain(&self.bias).for_each(f);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        std::iter::once(&mut self.weight).chain(&mut self.bias).for_each(f);
    }
}

/// The residual stream between pre-norm blocks: its sum so far, or that sum and a block's
/// output not yet added to it, so that the next block's norm adds it in its own dispatch
/// ([`NormLayer::forward_add`]) instead of a separate add before it.
pub enum Residual {
    Sum(Var),
    Pending(Var, Var),
}

impl Residual {
    /// (the stream's sum, `norm` of it): with an output pending, the add and the norm in one
    /// dispatch.
    pub fn norm(self, tape: &Tape, norm: &NormLayer) -> Result<(Var, Var)> {
        match self {
            Residual::Sum(x) => {
                let y = norm.forward(tape, &x)?;
                Ok((x, y))
            }
            Residual::Pending(x, m) => norm.forward_add(tape, &x, &m),
        }
    }

    /// The stream's sum (one add, with an output pending): where a single tensor must cross a
    /// boundary, such as a checkpointed block's output.
    pub fn sum(self, tape: &Tape) -> Result<Var> {
        match self {
            Residual::Sum(x) => Ok(x),
            Residual::Pending(x, m) => autograd::add(tape, &x, &m),
        }
    }
}
