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
