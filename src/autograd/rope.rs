//! Rotary position embedding on q or k; backward is the inverse rotation.

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::rope::{self as rk, Positions, RopeTables};
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

/// Rotates x `[B, T, H, D]` by the positions `offset..offset + T` of each sequence.
pub fn rope(tape: &Tape, tables: &Arc<RopeTables>, x: &Var, offset: usize) -> Result<Var> {
    rotate(tape, tables, x, offset, None)
}

/// Rotates x `[B, T, H, D]` by explicit positions `[B, T]` u32 (packed sequences, where each
/// example's positions start again at 0).
pub fn rope_at(tape: &Tape, tables: &Arc<RopeTables>, x: &Var, positions: &Tensor) -> Result<Var> {
    rotate(tape, tables, x, 0, Some(positions))
}

fn rotate(tape: &Tape, tables: &Arc<RopeTables>, x: &Var, offset: usize, positions: Option<&Tensor>) -> Result<Var> {
    let out = Tensor::empty(tape.gpu, x.shape(), DType::F32)?;
    let at = match positions {
        Some(p) => Positions::Explicit(p),
        None => Positions::Offset(offset),
    };
    rk::apply_into(tape.gpu, tables, &x.value, at, false, &out, false)?;
    Ok(tape.output(out, &[x], |out| {
        Box::new(RopeOp {
            out,
            tables: tables.clone(),
            x_id: x.id(),
            shape: x.shape().to_vec(),
            offset,
            positions: positions.cloned(),
        })
    }))
}

struct RopeOp {
    out: VarId,
    tables: Arc<RopeTables>,
    x_id: Option<VarId>,
    shape: Vec<usize>,
    offset: usize,
    positions: Option<Tensor>,
}

impl Backward for RopeOp {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        if let Some(dx) = g.target(self.x_id, &self.shape)? {
            // A rotation's transpose is its inverse.
            let dy = dy.reshape(&self.shape)?;
            let positions = match &self.positions {
                Some(p) => Positions::Explicit(p),
                None => Positions::Offset(self.offset),
            };
            rk::apply_into(gpu, &self.tables, &dy, positions, true, &dx.tensor, dx.accumulate)?;
        }
        Ok(())
    }
}
