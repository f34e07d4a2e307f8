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

    pub fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        if let Some(b) = &self.bias {
            f(b);
        }
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}
