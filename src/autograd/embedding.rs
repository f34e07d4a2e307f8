//! Embedding lookup: out[i] = table[ids[i]]; backward scatters into the table's gradient.
//!
//! # Shapes
//! table `[V, C]`, ids `[...]` (host copy checked against V), out `[..., C]`.

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::embedding::{self as ek, GradIndex};
use crate::tensor::Tensor;

/// Rows of `table` for `ids` (already on the GPU as `ids_gpu`; `ids` is the host copy used to
/// validate them and, when the table trains, to group positions by id for the backward).
pub fn embedding(tape: &Tape, table: &Var, ids: &[u32], ids_gpu: &Tensor) -> Result<Var> {
    ek::check_ids(ids, table.value.dim(0), "token ids")?;
    let out = ek::gather(tape.gpu, &table.value, ids_gpu)?;
    // Positions grouped by id, uploaded once, only when the table trains.
    let index = match table.id() {
        Some(_) => Some(GradIndex::new(tape.gpu, ids)?),
        None => None,
    };
    Ok(tape.output(out, &[table], |out| {
        Box::new(EmbeddingOp {
            out,
            table_id: table.id(),
            table_shape: table.shape().to_vec(),
            index: index.expect("a recorded embedding has a trainable table"),
        })
    }))
}

struct EmbeddingOp {
    out: VarId,
    table_id: Option<VarId>,
    table_shape: Vec<usize>,
    index: GradIndex,
}

impl Backward for EmbeddingOp {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(dy) = g.take(self.out) else { return Ok(()) };
        if let Some(dt) = g.target_zeroed(self.table_id, &self.table_shape)? {
            ek::scatter_add(gpu, &dy, &self.index, &dt)?;
        }
        Ok(())
    }
}
