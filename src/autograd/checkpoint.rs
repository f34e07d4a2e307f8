//! Gradient checkpointing of one block: y = f(x), keeping only x.
//!
//! Without it the tape keeps everything a block's ops save for backward (each linear's input,
//! the attention output and its log-sum-exp, the norms' statistics, ...): per layer many times
//! the hidden state. Checkpointed, the forward runs `f` on a tape that records nothing, so all
//! of that is freed as soon as the block is done, and the tape keeps one op holding x. Its
//! backward runs `f` again on a fresh recording tape (the "sub-tape"), then that tape's backward
//! from dy: parameter gradients go straight into their buffers, and dx comes back to the outer
//! walk. Only one block's saved tensors are alive at a time, at the price of a second forward.
//!
//! The rerun must compute exactly what the forward did: it sees the same input, weights and
//! dropout streams (the sub-tape starts at the dropout call the forward started at), so its
//! masks are the forward's and the gradients are those of the uncheckpointed pass.

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::tensor::Tensor;

/// A block as a function of its input. It owns what it needs (clones of the block's weights,
/// which share their GPU buffers), because its backward runs it again after the forward.
type BlockFn = Box<dyn Fn(&Tape, &Var) -> Result<Var>>;

/// y = f(x), checkpointed; on a tape that records nothing, just `f(tape, x)`. Models call it
/// for each block when their gradient checkpointing is on (`set_grad_checkpoint`, as
/// transformers' `gradient_checkpointing_enable()`).
pub fn checkpoint(tape: &Tape, x: &Var, f: impl Fn(&Tape, &Var) -> Result<Var> + 'static) -> Result<Var> {
    if !tape.recording() {
        return f(tape, x);
    }
    let (seed, step, calls) = tape.dropout_state();
    let quiet = Tape::sub(tape.gpu, false, tape.training(), seed, step, calls);
    let y = f(&quiet, &Var::constant(x.value.clone()))?;
    tape.set_dropout_calls(quiet.dropout_state().2);
    // The block needs a backward when its input or any of its weights needs a gradient.
    if x.id().is_none() && !quiet.saw_trainable() {
        return Ok(Var::constant(y.value));
    }
    let node = CheckpointOp {
        out: 0,
        x: x.value.clone(),
        x_id: x.id(),
        f: Box::new(f),
        training: tape.training(),
        dropout: (seed, step, calls),
    };
    Ok(tape.record(y.value, |out| Box::new(CheckpointOp { out, ..node })))
}

struct CheckpointOp {
    out: VarId,
    /// The block's input: all the forward keeps.
    x: Tensor,
    x_id: Option<VarId>,
    f: BlockFn,
    training: bool,
    /// (seed, step, first call) of the dropout streams the forward drew.
    dropout: (u32, u32, u32),
}

impl Backward for CheckpointOp {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        let (seed, step, calls) = self.dropout;
        let sub = Tape::sub(gpu, true, self.training, seed, step, calls);
        let x = match self.x_id {
            Some(_) => sub.leaf(self.x.clone()),
            None => Var::constant(self.x.clone()),
        };
        let y = (self.f)(&sub, &x)?;
        if let Some(dx) = sub.backward_from(&y, dy, x.id())? {
            g.add(self.x_id, &dx, true)?;
        }
        Ok(())
    }
}
