//! Batch normalisation over channels (PyTorch's `nn.BatchNorm2d`): learned `weight` (γ) and
//! `bias` (β), and the running statistics `running_mean`, `running_var` (buffers, never
//! trained).
//!
//! Which statistics a pass uses is the model's choice ([`BnMode`]): while training with
//! `BnMode::Train`, the batch's (and the running ones move, as in PyTorch's `model.train()`);
//! otherwise the running ones (`model.eval()`, and the frozen BN that fine-tuning a pretrained
//! CNN on small batches usually wants, whose γ and β may still train).
//!
//! # Shapes
//! x `[N, C, ...]` → the same; every tensor of the layer `[C]`.

use crate::autograd::{self, BnStats, Param, RunningStats, Tape, Var};
use crate::error::Result;
use crate::tensor::Tensor;

/// How BN layers behave while training (`--bn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Batch statistics while training; running ones in evaluation.
    Train,
    /// Running statistics always; they never change.
    #[default]
    Frozen,
}

pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f32,
    pub momentum: f32,
}

impl BatchNorm2d {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1.
    pub fn new(path: &str, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor) -> Self {
        BatchNorm2d {
            weight: Param::new(format!("{path}.weight"), weight),
            bias: Param::new(format!("{path}.bias"), bias),
            running_mean,
            running_var,
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Batch statistics exactly when `mode` is Train and the tape is a training pass.
    pub fn forward(&self, tape: &Tape, x: &Var, mode: BnMode) -> Result<Var> {
        let stats = if mode == BnMode::Train && tape.training() {
            BnStats::Batch { momentum: self.momentum }
        } else {
            BnStats::Running
        };
        let running = RunningStats { mean: &self.running_mean, var: &self.running_var };
        autograd::batch_norm(tape, x, &tape.param(&self.weight), &tape.param(&self.bias), running, stats, self.eps)
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        f(&self.bias);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}
