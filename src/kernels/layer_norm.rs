//! LayerNorm and RMSNorm over the last dimension (`shaders/layer_norm.wgsl`).
//!
//! The forward returns the per-row statistics the backward needs (mean and rstd), so the
//! backward recomputes x̂ instead of storing it.

use bytemuck::{Pod, Zeroable};

use super::workgroup_reduce::reducing;
use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};

/// Which normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// (x − mean)·rstd·γ + β
    LayerNorm,
    /// x·rstd·γ, rstd from the mean square (no centring, no β)
    RmsNorm,
}

/// What the forward saves for the backward: per-row mean (LayerNorm only) and 1/std.
pub struct NormStats {
    pub mean: Option<Tensor>,
    pub rstd: Tensor,
}

/// How many invocations share one row in the forward and dx passes, summing its values through
/// a barrier tree in workgroup memory (a power of two, at most 256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowWorkgroup(pub u32);

/// A GPU wants many invocations per row (256). On lavapipe an invocation is a SIMD lane and a
/// barrier switches between the workgroup's lane groups, so a row's eight-level tree over 256
/// invocations cost more than its arithmetic: 32 made the norms of a MiniLM step 5–10× faster
/// there (README's performance section).
pub fn default_row_workgroup(device_type: wgpu::DeviceType) -> RowWorkgroup {
    match device_type {
        wgpu::DeviceType::Cpu => RowWorkgroup(32),
        _ => RowWorkgroup(256),
    }
}

/// This device's [`RowWorkgroup`]: the adapter type's default unless [`set_row_workgroup`] changed it.
pub fn row_workgroup(gpu: &Gpu) -> RowWorkgroup {
    gpu.setting(|info| default_row_workgroup(info.device_type))
}

/// Sets how many invocations share a row (tests run both kinds on any adapter).
pub fn set_row_workgroup(gpu: &Gpu, wg: RowWorkgroup) -> Result<()> {
    if !wg.0.is_power_of_two() || wg.0 > 256 {
        return Err(Error::invalid(
            "layer_norm",
            format!("{} invocations per row; expected a power of two ≤ 256", wg.0),
        ));
    }
    gpu.set_setting(wg);
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    accumulate: u32,
    rms: u32,
    residual: u32,
    _pad: [u32; 2],
}

fn rows_cols(op: &'static str, x: &Tensor, gamma: &Tensor) -> Result<(usize, usize)> {
    let cols = x.shape().last().copied().ok_or_else(|| Error::invalid(op, "x must have at least one dimension"))?;
    expect_numel(op, "gamma", gamma, cols, "the last dimension of x")?;
    Ok((x.numel().checked_div(cols).unwrap_or(0), cols))
}

fn params(op: &'static str, norm: Norm, rows: usize, cols: usize, eps: f32, accumulate: bool) -> Result<Params> {
    Ok(Params {
        rows: u32_of(op, "rows", rows)?,
        cols: u32_of(op, "cols", cols)?,
        eps,
        accumulate: accumulate as u32,
        rms: (norm == Norm::RmsNorm) as u32,
        residual: 0,
        _pad: [0; 2],
    })
}

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;

/// Runs one entry of layer_norm.wgsl; `access` says which of its bindings are written.
fn dispatch(
    gpu: &Gpu,
    op: &'static str,
    entry: &'static str,
    access: &[Access],
    p: &Params,
    bindings: &[(&'static str, Option<&Tensor>)],
    groups: [u32; 3],
) -> Result<()> {
    let (file, header) = reducing(gpu, shader!("layer_norm"), &format!("const WG: u32 = {}u;", row_workgroup(gpu).0));
    let spec = KernelSpec { file, entry, header: &header, access };
    gpu.dispatch(op, &spec, bytemuck::bytes_of(p), bindings, groups)
}

/// Normalises each row of x `[..., C]`; gamma (and beta, LayerNorm only) are `[C]`.
pub fn forward(
    gpu: &Gpu,
    norm: Norm,
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, NormStats)> {
    let (y, stats, _) = forward_rows(gpu, "norm_fwd", norm, x, None, gamma, beta, eps)?;
    Ok((y, stats))
}

/// A residual add and the norm that reads its sum, in one dispatch: returns (sum, y, stats)
/// with sum = x + res and y the norm of sum, as [`forward`] of sum would give. The backward
/// takes sum as its x.
pub fn forward_residual(
    gpu: &Gpu,
    norm: Norm,
    x: &Tensor,
    res: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, Tensor, NormStats)> {
    const OP: &str = "add_norm_fwd";
    expect_numel(OP, "res", res, x.numel(), "the size of x")?;
    let (y, stats, sum) = forward_rows(gpu, OP, norm, x, Some(res), gamma, beta, eps)?;
    Ok((sum.expect("a residual forward writes the sum"), y, stats))
}

/// Bindings: 1 x, 2 gamma, 3 beta, 4 y, 5 mean, 6 rstd, 7 res, 8 sum (the last two with a
/// residual only).
#[allow(clippy::too_many_arguments)]
fn forward_rows(
    gpu: &Gpu,
    op: &'static str,
    norm: Norm,
    x: &Tensor,
    res: Option<&Tensor>,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, NormStats, Option<Tensor>)> {
    let (rows, cols) = rows_cols(op, x, gamma)?;
    match (norm, beta) {
        (Norm::LayerNorm, Some(b)) => expect_numel(op, "beta", b, cols, "the last dimension of x")?,
        (Norm::LayerNorm, None) => return Err(Error::invalid(op, "LayerNorm needs beta")),
        (Norm::RmsNorm, _) => {}
    }
    let y = Tensor::empty(gpu, x.shape(), DType::F32)?;
    let mean = match norm {
        Norm::LayerNorm => Some(Tensor::empty(gpu, &[rows], DType::F32)?),
        Norm::RmsNorm => None,
    };
    let rstd = Tensor::empty(gpu, &[rows], DType::F32)?;
    let sum = res.map(|_| Tensor::empty(gpu, x.shape(), DType::F32)).transpose()?;
    let mut p = params(op, norm, rows, cols, eps, false)?;
    p.residual = res.is_some() as u32;
    let beta = if norm == Norm::LayerNorm { beta } else { None };
    dispatch(
        gpu,
        op,
        "norm_fwd",
        &[R, R, R, RW, RW, RW, R, RW],
        &p,
        &[
            ("x", Some(x)),
            ("gamma", Some(gamma)),
            ("beta", beta),
            ("y", Some(&y)),
            ("mean", mean.as_ref()),
            ("rstd", Some(&rstd)),
            ("res", res),
            ("sum", sum.as_ref()),
        ],
        gpu.grid_1d(rows as u64),
    )?;
    Ok((y, NormStats { mean, rstd }, sum))
}

/// Gradients of a norm: writes (or adds into) dx, and dgamma/dbeta when given.
///
/// Bindings, dx pass: 1 x, 2 gamma, 3 dy, 4 mean, 5 rstd, 6 dx.
/// Bindings, parameter pass: 1 x, 2 dy, 3 mean, 4 rstd, 5 dgamma, 6 dbeta.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    norm: Norm,
    x: &Tensor,
    gamma: &Tensor,
    stats: &NormStats,
    dy: &Tensor,
    dx: Option<&Tensor>,
    dgamma_dbeta: Option<(&Tensor, Option<&Tensor>)>,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "norm_bwd";
    let (rows, cols) = rows_cols(OP, x, gamma)?;
    expect_numel(OP, "dy", dy, x.numel(), "the size of x")?;
    expect_numel(OP, "rstd", &stats.rstd, rows, "one per row")?;
    if norm == Norm::LayerNorm && stats.mean.is_none() {
        return Err(Error::invalid(OP, "LayerNorm backward needs the saved mean"));
    }
    let p = params(OP, norm, rows, cols, 0.0, accumulate)?;
    if let Some(dx) = dx {
        expect_numel(OP, "dx", dx, x.numel(), "the size of x")?;
        dispatch(
            gpu,
            OP,
            "norm_bwd_dx",
            &[R, R, R, R, R, RW],
            &p,
            &[
                ("x", Some(x)),
                ("gamma", Some(gamma)),
                ("dy", Some(dy)),
                ("mean", stats.mean.as_ref()),
                ("rstd", Some(&stats.rstd)),
                ("dx", Some(dx)),
            ],
            gpu.grid_1d(rows as u64),
        )?;
    }
    if let Some((dgamma, dbeta)) = dgamma_dbeta {
        expect_numel(OP, "dgamma", dgamma, cols, "the last dimension of x")?;
        if let Some(db) = dbeta {
            expect_numel(OP, "dbeta", db, cols, "the last dimension of x")?;
        }
        let dbeta = if norm == Norm::LayerNorm { dbeta } else { None };
        dispatch(
            gpu,
            OP,
            "norm_bwd_params",
            &[R, R, R, R, RW, RW],
            &p,
            &[
                ("x", Some(x)),
                ("dy", Some(dy)),
                ("mean", stats.mean.as_ref()),
                ("rstd", Some(&stats.rstd)),
                ("dgamma", Some(dgamma)),
                ("dbeta", dbeta),
            ],
            [(cols as u32).div_ceil(256), 1, 1],
        )?;
    }
    Ok(())
}
