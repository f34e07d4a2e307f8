//! Embedding gather and its deterministic scatter-add gradient (`shaders/embedding.wgsl`).
//!
//! Token ids come from the CPU, so the backward groups them there ([`GradIndex`]): every
//! distinct id gets the list of positions that used it, and one invocation per (id, column)
//! sums them in order. No float atomics, the same bits on every run.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, row_chunks, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    vocab: u32,
    accumulate: u32,
    row_start: u32,
    _pad: [u32; 3],
}

/// Errors on an id outside the table, naming its position.
pub fn check_ids(ids: &[u32], vocab: usize, what: &str) -> Result<()> {
    if let Some((pos, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
        return Err(Error::invalid(
            "embedding",
            format!("{what} id {id} at position {pos} is outside the table of {vocab} rows"),
        ));
    }
    Ok(())
}

/// out (+)= table[ids]: table `[V, C]`, ids `[...]` u32, out `[..., C]`. A table larger
/// than one storage binding (GPT-2's on lavapipe) is gathered in row chunks.
///
/// Bindings: 1 table (or a chunk of its rows), 2 ids, 3 out.
pub fn gather_into(gpu: &Gpu, table: &Tensor, ids: &Tensor, out: &Tensor, accumulate: bool) -> Result<()> {
    const OP: &str = "embedding";
    if table.rank() != 2 {
        return Err(Error::Shape {
            op: OP,
            tensor: "table",
            expected: "[vocab, dim]".into(),
            found: table.shape().to_vec(),
        });
    }
    ids.expect_dtype(OP, DType::U32)?;
    let (vocab, cols) = (table.dim(0), table.dim(1));
    expect_numel(OP, "out", out, ids.numel() * cols, "ids × embedding dim")?;
    let n = u32_of(OP, "ids × dim", ids.numel() * cols)? as u64;
    u32_of(OP, "vocab", vocab)?;
    let chunks = row_chunks(OP, gpu, vocab, (cols * 4) as u64)?;
    // Each id is in exactly one chunk and the others add zero for it, so several chunks
    // accumulate into a zeroed output.
    let accumulate = if chunks.len() > 1 && !accumulate {
        gpu.clear(out);
        true
    } else {
        accumulate
    };
    let spec = KernelSpec {
        file: shader!("embedding"),
        entry: "gather",
        header: "",
        access: &[Access::Read, Access::Read, Access::ReadWrite],
    };
    for (start, count) in chunks {
        let chunk = table.narrow_rows(start, count)?;
        let p = Params {
            rows: ids.numel() as u32,
            cols: cols as u32,
            vocab: count as u32,
            accumulate: accumulate as u32,
            row_start: start as u32,
            _pad: [0; 3],
        };
        let bindings = [("table", Some(&chunk)), ("ids", Some(ids)), ("out", Some(out))];
        gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), &bindings, gpu.grid_1d(n.div_ceil(256)))?;
    }
    Ok(())
}

/// table[ids] as a new `[..., C]` tensor.
pub fn gather(gpu: &Gpu, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let mut shape = ids.shape().to_vec();
    shape.push(table.dim(-1));
    let out = Tensor::empty(gpu, &shape, DType::F32)?;
    gather_into(gpu, table, ids, &out, false)?;
    Ok(out)
}

/// The ids of a batch grouped by value, uploaded once and used by every backward of it.
pub struct GradIndex {
    uids: Tensor,
    offsets: Tensor,
    positions: Tensor,
    distinct: usize,
}

impl GradIndex {
    pub fn new(gpu: &Gpu, ids: &[u32]) -> Result<Self> {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        // Stable, so positions of one id stay in ascending order: a fixed summation order.
        order.sort_by_key(|&i| ids[i as usize]);
        let (mut uids, mut offsets) = (Vec::new(), Vec::new());
        for (k, &pos) in order.iter().enumerate() {
            let id = ids[pos as usize];
            if uids.last() != Some(&id) {
                uids.push(id);
                offsets.push(k as u32);
            }
        }
        offsets.push(order.len() as u32);
        let distinct = uids.len();
        let n = order.len();
        Ok(GradIndex {
            uids: Tensor::from_u32(gpu, &uids, &[distinct])?,
            offsets: Tensor::from_u32(gpu, &offsets, &[distinct + 1])?,
            positions: Tensor::from_u32(gpu, &order, &[n])?,
            distinct,
        })
    }
}

/// dtable[id] += Σ dout[positions of id]: dout `[N, C]`, dtable `[V, C]` (bound in row
/// chunks when larger than one storage binding).
///
/// Bindings: 1 dout, 2 uids, 3 offsets, 4 positions, 5 dtable (or a chunk of its rows).
pub fn scatter_add(gpu: &Gpu, dout: &Tensor, index: &GradIndex, dtable: &Tensor) -> Result<()> {
    const OP: &str = "embedding_bwd";
    if dtable.rank() != 2 {
        return Err(Error::Shape {
            op: OP,
            tensor: "dtable",
            expected: "[vocab, dim]".into(),
            found: dtable.shape().to_vec(),
        });
    }
    let (vocab, cols) = (dtable.dim(0), dtable.dim(1));
    expect_numel(OP, "dout", dout, index.positions.numel() * cols, "ids × embedding dim")?;
    u32_of(OP, "dim", cols)?;
    u32_of(OP, "vocab", vocab)?;
    let n = (index.distinct * cols) as u64;
    let spec = KernelSpec {
        file: shader!("embedding"),
        entry: "scatter_add",
        header: "",
        access: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
    };
    for (start, count) in row_chunks(OP, gpu, vocab, (cols * 4) as u64)? {
        let chunk = dtable.narrow_rows(start, count)?;
        let p = Params {
            rows: index.distinct as u32,
            cols: cols as u32,
            vocab: count as u32,
            accumulate: 1,
            row_start: start as u32,
            _pad: [0; 3],
        };
        let bindings = [
            ("dout", Some(dout)),
            ("uids", Some(&index.uids)),
            ("offsets", Some(&index.offsets)),
            ("positions", Some(&index.positions)),
            ("dtable", Some(&chunk)),
        ];
        gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), &bindings, gpu.grid_1d(n.div_ceil(256)))?;
    }
    Ok(())
}
