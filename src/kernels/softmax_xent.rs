//! Fused softmax + cross-entropy (`shaders/softmax_xent.wgsl`), mean over the rows whose
//! target is not `ignore_index` (PyTorch's default -100: prompt tokens that carry no loss).
//!
//! Targets outside `[0, vocab)` that are not the ignore index are rejected on the CPU by
//! [`check_targets`] before upload; the shader also skips them, so a bad id can never read
//! out of bounds.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};

/// PyTorch's default ignore index.
pub const IGNORE_INDEX: i32 = -100;

/// The forward's results: `stats` = [mean loss, counted rows]; `lse` per row for backward.
pub struct Xent {
    pub stats: Tensor,
    pub lse: Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    ignore_index: i32,
    accumulate: u32,
}

/// Errors on a target that is neither in `[0, vocab)` nor the ignore index, naming its row.
pub fn check_targets(targets: &[i32], vocab: usize, ignore_index: i32) -> Result<()> {
    for (row, &t) in targets.iter().enumerate() {
        if t != ignore_index && (t < 0 || t as usize >= vocab) {
            return Err(Error::invalid(
                "cross_entropy",
                format!(
                    "target {t} at row {row} is outside the vocabulary [0, {vocab}) and is not the ignore index {ignore_index}"
                ),
            ));
        }
    }
    Ok(())
}

fn dims(op: &'static str, logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    if logits.rank() < 1 {
        return Err(Error::invalid(op, "logits must have a vocabulary dimension"));
    }
    targets.expect_dtype(op, DType::I32)?;
    let vocab = logits.dim(-1);
    let rows = logits.numel() / vocab.max(1);
    expect_numel(op, "targets", targets, rows, "one per row of logits")?;
    Ok((rows, vocab))
}

/// Mean cross-entropy of logits `[..., V]` against targets `[...]` (i32).
///
/// Bindings, row pass: 1 logits, 2 targets, 3 row_loss, 4 lse. Mean pass: 1 row_loss, 2 targets, 3 stats.
pub fn forward(gpu: &Gpu, logits: &Tensor, targets: &Tensor, ignore_index: i32) -> Result<Xent> {
    const OP: &str = "cross_entropy";
    let (rows, vocab) = dims(OP, logits, targets)?;
    let p = Params { rows: u32_of(OP, "rows", rows)?, vocab: u32_of(OP, "vocab", vocab)?, ignore_index, accumulate: 0 };
    u32_of(OP, "rows × vocab", rows * vocab)?;
    let row_loss = Tensor::empty(gpu, &[rows], DType::F32)?;
    let lse = Tensor::empty(gpu, &[rows], DType::F32)?;
    let stats = Tensor::empty(gpu, &[2], DType::F32)?;
    let spec = KernelSpec {
        file: shader!("softmax_xent"),
        entry: "xent_fwd",
        header: "",
        access: &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[("logits", Some(logits)), ("targets", Some(targets)), ("row_loss", Some(&row_loss)), ("lse", Some(&lse))],
        gpu.grid_1d(rows as u64),
    )?;
    let spec = KernelSpec {
        file: shader!("softmax_xent"),
        entry: "xent_mean",
        header: "",
        access: &[Access::Read, Access::Read, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[("row_loss", Some(&row_loss)), ("targets", Some(targets)), ("stats", Some(&stats))],
        [1, 1, 1],
    )?;
    Ok(Xent { stats, lse })
}

/// dlogits = (softmax − onehot)·dloss/count, written or added. `dloss` is a one-element
/// tensor on the GPU (so a scaled loss needs no readback).
///
/// Bindings: 1 logits, 2 targets, 3 lse, 4 stats, 5 dloss, 6 dlogits.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    logits: &Tensor,
    targets: &Tensor,
    fwd: &Xent,
    dloss: &Tensor,
    dlogits: &Tensor,
    ignore_index: i32,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "cross_entropy_bwd";
    let (rows, vocab) = dims(OP, logits, targets)?;
    expect_numel(OP, "dloss", dloss, 1, "a scalar")?;
    expect_numel(OP, "dlogits", dlogits, logits.numel(), "the size of logits")?;
    let p = Params { rows: rows as u32, vocab: vocab as u32, ignore_index, accumulate: accumulate as u32 };
    let spec = KernelSpec {
        file: shader!("softmax_xent"),
        entry: "xent_bwd",
        header: "",
        access: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[
            ("logits", Some(logits)),
            ("targets", Some(targets)),
            ("lse", Some(&fwd.lse)),
            ("stats", Some(&fwd.stats)),
            ("dloss", Some(dloss)),
            ("dlogits", Some(dlogits)),
        ],
        gpu.grid_1d(((rows * vocab) as u64).div_ceil(256)),
    )
}
