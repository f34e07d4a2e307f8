//! Fused softmax + cross-entropy (`shaders/softmax_xent.wgsl`), mean over the rows whose
//! target is not `ignore_index` (PyTorch's default -100: prompt tokens that carry no loss).
//!
//! [`forward_weighted`] is PyTorch's `CrossEntropyLoss(weight=w)`: the kernel takes one weight
//! per row (the host expands class weights with [`row_weights`]) and divides by their sum over
//! counted rows. [`backward`] follows whichever forward made its [`Xent`].
//!
//! Targets outside `[0, vocab)` that are not the ignore index are rejected on the CPU by
//! [`check_targets`] before upload; the shader also skips them, so a bad id can never read
//! out of bounds.

use bytemuck::{Pod, Zeroable};

use super::workgroup_reduce::reducing;
use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec, ShaderFile};
use crate::tensor::{DType, Tensor};

/// PyTorch's default ignore index.
pub const IGNORE_INDEX: i32 = -100;

/// The forward's results, kept for backward.
pub struct Xent {
    /// `[2]`: [mean loss, counted rows]; from [`forward_weighted`], [weighted mean, Σ weight
    /// over counted rows]. Either way `stats[0]·stats[1]` is the chunk's summed (weighted) loss.
    pub stats: Tensor,
    /// `[rows]`: log-sum-exp of each row's logits.
    pub lse: Tensor,
    /// `[rows]`: the row weights of a weighted forward (None for [`forward`]).
    pub row_weights: Option<Tensor>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    ignore_index: i32,
    accumulate: u32,
    /// The upstream gradient of the loss (backward only).
    dloss: f32,
    _pad: [u32; 3],
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

/// Errors unless there is one finite, non-negative weight per class (`vocab` of them).
pub fn check_class_weights(op: &'static str, class_weights: &[f32], vocab: usize) -> Result<()> {
    if class_weights.len() != vocab {
        return Err(Error::Shape {
            op,
            tensor: "class_weights",
            expected: format!("[{vocab}] (one weight per class: the last dim of logits)"),
            found: vec![class_weights.len()],
        });
    }
    for (class, &w) in class_weights.iter().enumerate() {
        if !w.is_finite() || w < 0.0 {
            return Err(Error::invalid(op, format!("class weight {w} at class {class} must be finite and >= 0")));
        }
    }
    Ok(())
}

/// The per-row weights [`forward_weighted`] takes: `class_weights[target]` per row, 0 for an
/// ignored row. Targets must have passed [`check_targets`].
pub fn row_weights(targets: &[i32], class_weights: &[f32], ignore_index: i32) -> Vec<f32> {
    targets.iter().map(|&t| if t == ignore_index { 0.0 } else { class_weights[t as usize] }).collect()
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
    let p = params(OP, rows, vocab, ignore_index)?;
    let (row_loss, lse) = row_pass(gpu, OP, &p, logits, targets)?;
    let stats = Tensor::empty(gpu, &[2], DType::F32)?;
    let (file, header) = shader_file(gpu);
    let spec = KernelSpec {
        file,
        entry: "xent_mean",
        header: &header,
        access: &[Access::Read, Access::Read, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[("row_loss", Some(&row_loss)), ("targets", Some(targets)), ("stats", Some(&stats))],
        [1, 1, 1],
    )?;
    Ok(Xent { stats, lse, row_weights: None })
}

/// Weighted mean cross-entropy: Σ w·loss / Σ w over the counted rows, with `row_weights`
/// `[rows]` f32 (see [`row_weights`]; a weight on an ignored row is never read). A zero weight
/// sum gives loss 0.
///
/// Bindings, row pass: 1 logits, 2 targets, 3 row_loss, 4 lse. Mean pass: 1 row_loss, 2 targets,
/// 3 row_weights, 4 stats.
pub fn forward_weighted(
    gpu: &Gpu,
    logits: &Tensor,
    targets: &Tensor,
    row_weights: &Tensor,
    ignore_index: i32,
) -> Result<Xent> {
    const OP: &str = "cross_entropy_weighted";
    let (rows, vocab) = dims(OP, logits, targets)?;
    row_weights.expect_dtype(OP, DType::F32)?;
    expect_numel(OP, "row_weights", row_weights, rows, "one per row of logits")?;
    let p = params(OP, rows, vocab, ignore_index)?;
    let (row_loss, lse) = row_pass(gpu, OP, &p, logits, targets)?;
    let stats = Tensor::empty(gpu, &[2], DType::F32)?;
    let (file, header) = shader_file(gpu);
    let spec = KernelSpec {
        file,
        entry: "xent_mean_weighted",
        header: &header,
        access: &[Access::Read, Access::Read, Access::Read, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[
            ("row_loss", Some(&row_loss)),
            ("targets", Some(targets)),
            ("row_weights", Some(row_weights)),
            ("stats", Some(&stats)),
        ],
        [1, 1, 1],
    )?;
    Ok(Xent { stats, lse, row_weights: Some(row_weights.clone()) })
}

/// softmax_xent.wgsl with this device's workgroup reductions, and the header that names them:
/// every entry of the file is compiled from the one module.
fn shader_file(gpu: &Gpu) -> (ShaderFile, String) {
    reducing(gpu, shader!("softmax_xent"), "")
}

fn params(op: &'static str, rows: usize, vocab: usize, ignore_index: i32) -> Result<Params> {
    u32_of(op, "rows × vocab", rows * vocab)?;
    Ok(Params {
        rows: u32_of(op, "rows", rows)?,
        vocab: u32_of(op, "vocab", vocab)?,
        ignore_index,
        accumulate: 0,
        dloss: 0.0,
        _pad: [0; 3],
    })
}

/// The row pass shared by both forwards: (row_loss, lse), each `[rows]`.
fn row_pass(gpu: &Gpu, op: &'static str, p: &Params, logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let rows = p.rows as usize;
    let row_loss = Tensor::empty(gpu, &[rows], DType::F32)?;
    let lse = Tensor::empty(gpu, &[rows], DType::F32)?;
    let (file, header) = shader_file(gpu);
    let spec = KernelSpec {
        file,
        entry: "xent_fwd",
        header: &header,
        access: &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
    };
    gpu.dispatch(
        op,
        &spec,
        bytemuck::bytes_of(p),
        &[("logits", Some(logits)), ("targets", Some(targets)), ("row_loss", Some(&row_loss)), ("lse", Some(&lse))],
        gpu.grid_1d(rows as u64),
    )?;
    Ok((row_loss, lse))
}

/// dlogits = (softmax − onehot)·dloss/count, written or added; after [`forward_weighted`],
/// (softmax − onehot)·w[row]·dloss/Σw. `dloss`, the backward's seed, is known on the host, so it
/// goes in the parameters: no buffer is uploaded for it.
///
/// Bindings: 1 logits, 2 targets, 3 lse, 4 stats, 5 dlogits; weighted: 1 logits, 2 targets,
/// 3 row_weights, 4 lse, 5 stats, 6 dlogits.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    logits: &Tensor,
    targets: &Tensor,
    fwd: &Xent,
    dloss: f32,
    dlogits: &Tensor,
    ignore_index: i32,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "cross_entropy_bwd";
    let (rows, vocab) = dims(OP, logits, targets)?;
    expect_numel(OP, "dlogits", dlogits, logits.numel(), "the size of logits")?;
    let p = Params {
        rows: rows as u32,
        vocab: vocab as u32,
        ignore_index,
        accumulate: accumulate as u32,
        dloss,
        _pad: [0; 3],
    };
    let groups = gpu.grid_1d(((rows * vocab) as u64).div_ceil(256));
    let Some(row_weights) = &fwd.row_weights else {
        let (file, header) = shader_file(gpu);
        let spec = KernelSpec {
            file,
            entry: "xent_bwd",
            header: &header,
            access: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
        };
        return gpu.dispatch(
            OP,
            &spec,
            bytemuck::bytes_of(&p),
            &[
                ("logits", Some(logits)),
                ("targets", Some(targets)),
                ("lse", Some(&fwd.lse)),
                ("stats", Some(&fwd.stats)),
                ("dlogits", Some(dlogits)),
            ],
            groups,
        );
    };
    expect_numel(OP, "row_weights", row_weights, rows, "one per row of logits")?;
    let (file, header) = shader_file(gpu);
    let spec = KernelSpec {
        file,
        entry: "xent_bwd_weighted",
        header: &header,
        access: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[
            ("logits", Some(logits)),
            ("targets", Some(targets)),
            ("row_weights", Some(row_weights)),
            ("lse", Some(&fwd.lse)),
            ("stats", Some(&fwd.stats)),
            ("dlogits", Some(dlogits)),
        ],
        groups,
    )
}
