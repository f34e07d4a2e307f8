//! DoRA's per-output-feature scaling (`shaders/dora.wgsl`): the weight norm, the scaled output,
//! the magnitude gradient, and a scale by m/n used for the input gradients and the merge.
//!
//! # Shapes
//! rows = tokens, out = output features, in = input features; m, n `[out]`; p, q, y, dy
//! `[rows, out]`; V `[out, in]` or `[in, out]`.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::Result;
use crate::gpu::{Access, Binding, Gpu, KernelSpec};
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    accumulate: u32,
    by_row: u32,
    k1: f32,
    k0: f32,
    s: f32,
    has_bias: u32,
}

fn launch(
    gpu: &Gpu,
    op: &'static str,
    entry: &'static str,
    p: Params,
    access: &[Access],
    bindings: &[Binding<Tensor>],
    n: usize,
) -> Result<()> {
    let spec = KernelSpec { file: shader!("dora"), entry, header: "", access };
    gpu.dispatch(op, &spec, bytemuck::bytes_of(&p), bindings, gpu.grid_1d((n as u64).div_ceil(256)))
}

fn params(op: &'static str, rows: usize, cols: usize) -> Result<Params> {
    Ok(Params {
        rows: u32_of(op, "rows", rows)?,
        cols: u32_of(op, "columns", cols)?,
        accumulate: 0,
        by_row: 0,
        k1: 1.0,
        k0: 0.0,
        s: 1.0,
        has_bias: 0,
    })
}

/// n[j] = ||V[j, :]||: V `[out, in]` when `out_in`, else `[in, out]` (norms down the columns).
///
/// Bindings: 1 V, 2 n.
pub fn weight_norm_into(gpu: &Gpu, v: &Tensor, out_in: bool, n: &Tensor) -> Result<()> {
    const OP: &str = "dora_weight_norm";
    let (d_out, d_in) = if out_in { (v.dim(0), v.dim(1)) } else { (v.dim(1), v.dim(0)) };
    expect_numel(OP, "n", n, d_out, "one norm per output feature")?;
    let mut p = params(OP, d_out, d_in)?;
    p.by_row = out_in as u32;
    const RW: &[Access] = &[Access::Read, Access::ReadWrite];
    launch(gpu, OP, "weight_norm", p, RW, &[("v", Some(v)), ("n", Some(n))], d_out)
}

/// y (+)= (k1·m/n + k0) ⊙ u with u, y `[rows, cols]`; the factor is per row when `by_row`
/// (a weight `[out, in]`), else per column.
///
/// Bindings: 1 m, 2 n, 3 u, 4 y.
#[allow(clippy::too_many_arguments)]
pub fn scale_into(
    gpu: &Gpu,
    m: &Tensor,
    n: &Tensor,
    u: &Tensor,
    by_row: bool,
    (k1, k0): (f32, f32),
    y: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "dora_scale";
    let len = m.numel();
    expect_numel(OP, "n", n, len, "the size of m")?;
    let (rows, cols) = if by_row { (len, u.numel() / len.max(1)) } else { (u.numel() / len.max(1), len) };
    expect_numel(OP, "u", u, rows * cols, "whole rows of the factors' size")?;
    expect_numel(OP, "y", y, rows * cols, "the size of u")?;
    let mut p = params(OP, rows, cols)?;
    (p.by_row, p.k1, p.k0, p.accumulate) = (by_row as u32, k1, k0, accumulate as u32);
    const ACCESS: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::ReadWrite];
    launch(gpu, OP, "scale", p, ACCESS, &[("m", Some(m)), ("n", Some(n)), ("u", Some(u)), ("y", Some(y))], rows * cols)
}

/// y = (m/n + k0) ⊙ p + (m/n)·s ⊙ q (+ bias), all `[rows, out]`.
///
/// Bindings: 1 m, 2 n, 3 p, 4 q, 5 bias, 6 y.
#[allow(clippy::too_many_arguments)]
pub fn forward_into(
    gpu: &Gpu,
    m: &Tensor,
    n: &Tensor,
    p_in: &Tensor,
    q: &Tensor,
    bias: Option<&Tensor>,
    (s, k0): (f32, f32),
    y: &Tensor,
) -> Result<()> {
    const OP: &str = "dora_forward";
    let out = m.numel();
    expect_numel(OP, "n", n, out, "the size of m")?;
    let rows = p_in.numel() / out.max(1);
    for (name, t) in [("p", p_in), ("q", q), ("y", y)] {
        expect_numel(OP, name, t, rows * out, "[rows, out]")?;
    }
    if let Some(b) = bias {
        expect_numel(OP, "bias", b, out, "one per output feature")?;
    }
    let mut p = params(OP, rows, out)?;
    (p.s, p.k0, p.has_bias) = (s, k0, bias.is_some() as u32);
    const ACCESS: &[Access] =
        &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
    let bindings = [("m", Some(m)), ("n", Some(n)), ("p", Some(p_in)), ("q", Some(q)), ("bias", bias), ("y", Some(y))];
    launch(gpu, OP, "forward", p, ACCESS, &bindings, rows * out)
}

/// dm (+)= Σ_rows dy ⊙ (p + s·q) / n.
///
/// Bindings: 1 n, 2 dy, 3 p, 4 q, 5 dm.
#[allow(clippy::too_many_arguments)]
pub fn magnitude_grad_into(
    gpu: &Gpu,
    n: &Tensor,
    dy: &Tensor,
    p_in: &Tensor,
    q: &Tensor,
    s: f32,
    dm: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "dora_magnitude_grad";
    let out = n.numel();
    expect_numel(OP, "dm", dm, out, "the size of n")?;
    let rows = dy.numel() / out.max(1);
    for (name, t) in [("dy", dy), ("p", p_in), ("q", q)] {
        expect_numel(OP, name, t, rows * out, "[rows, out]")?;
    }
    let mut p = params(OP, rows, out)?;
    (p.s, p.accumulate) = (s, accumulate as u32);
    const ACCESS: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
    let bindings = [("n", Some(n)), ("dy", Some(dy)), ("p", Some(p_in)), ("q", Some(q)), ("dm", Some(dm))];
    launch(gpu, OP, "magnitude_grad", p, ACCESS, &bindings, out)
}
