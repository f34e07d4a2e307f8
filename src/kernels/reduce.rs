//! Reductions (`shaders/reduce.wgsl`): column sums for bias gradients, and the squared global
//! L2 norm of many tensors for gradient clipping, kept on the GPU (AdamW reads it there).

use bytemuck::{Pod, Zeroable};

use super::workgroup_reduce::reducing;
use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec, ShaderFile};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    accumulate: u32,
}

const RW: &[Access] = &[Access::Read, Access::ReadWrite];
/// Elements each workgroup of `sum_squares_partial` reduces (CHUNK in the shader).
const CHUNK: u64 = 4096;

/// reduce.wgsl with this device's workgroup reductions, and the header that names them: every
/// entry of the file is compiled from the one module.
fn shader_file(gpu: &Gpu) -> (ShaderFile, String) {
    reducing(gpu, shader!("reduce"), "")
}

/// out[c] = Σ_r x[r, c] (or added into out): x `[..., C]`, out `[C]`.
///
/// Bindings: 1 x, 2 out.
pub fn sum_rows_into(gpu: &Gpu, x: &Tensor, out: &Tensor, accumulate: bool) -> Result<()> {
    const OP: &str = "sum_rows";
    let cols = x.shape().last().copied().unwrap_or(1);
    expect_numel(OP, "out", out, cols, "the last dimension of x")?;
    let rows = x.numel().checked_div(cols).unwrap_or(0);
    let p = Params {
        rows: u32_of(OP, "rows", rows)?,
        cols: u32_of(OP, "cols", cols)?,
        n: 0,
        accumulate: accumulate as u32,
    };
    let (file, header) = shader_file(gpu);
    let spec = KernelSpec { file, entry: "sum_rows", header: &header, access: RW };
    gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), &[("x", Some(x)), ("out", Some(out))], [p.cols.div_ceil(256), 1, 1])
}

/// Σ over tensors of Σ x², as a one-element tensor that stays on the GPU.
pub fn global_norm_squared(gpu: &Gpu, tensors: &[&Tensor]) -> Result<Tensor> {
    Ok(norms_squared(gpu, tensors)?.global)
}

/// Floats between two tensors' slots in [`NormsSquared::per_tensor`]: storage bindings must
/// start at a multiple of 256 bytes.
pub const SLOT_STRIDE: usize = 64;

/// Squared L2 norms kept on the GPU: each tensor's (for naming the first bad one when the
/// global norm is not finite) and their sum.
pub struct NormsSquared {
    /// `[n, SLOT_STRIDE]`: tensor i's Σ x² in column 0 of row i; the other columns are not
    /// cleared, and only column 0 (and its sum in `global`) is used.
    pub per_tensor: Tensor,
    /// `[1]`: the sum over tensors (column 0 of `columns`).
    pub global: Tensor,
    /// `[SLOT_STRIDE]`: `per_tensor` summed over its rows.
    columns: Tensor,
}

impl NormsSquared {
    /// Room for the norms of `n` tensors, in new buffers: an optimizer keeps them from step to
    /// step ([`norms_squared_into`]), so they never hold one of a step's recycled temporaries.
    pub fn kept(gpu: &Gpu, n: usize) -> Result<NormsSquared> {
        Self::allocate(gpu, n, Tensor::empty_kept)
    }

    fn allocate(gpu: &Gpu, n: usize, empty: fn(&Gpu, &[usize], DType) -> Result<Tensor>) -> Result<NormsSquared> {
        let per_tensor = empty(gpu, &[n.max(1), SLOT_STRIDE], DType::F32)?;
        let columns = empty(gpu, &[SLOT_STRIDE], DType::F32)?;
        Ok(NormsSquared { global: columns.narrow_rows(0, 1)?, per_tensor, columns })
    }

    /// How many tensors' norms it holds.
    pub fn tensors(&self) -> usize {
        self.per_tensor.shape()[0]
    }

    /// Tensor i's Σ x² (a readback).
    pub fn read_per_tensor(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        Ok(self.per_tensor.to_f32_vec(gpu)?.chunks(SLOT_STRIDE).map(|row| row[0]).collect())
    }
}

/// Each tensor's Σ x² and their sum, in new buffers (see [`norms_squared_into`]).
pub fn norms_squared(gpu: &Gpu, tensors: &[&Tensor]) -> Result<NormsSquared> {
    let out = NormsSquared::allocate(gpu, tensors.len(), Tensor::empty)?;
    norms_squared_into(gpu, tensors, &out)?;
    Ok(out)
}

/// Each tensor's Σ x² into its own slot of `out`, then the slots summed: one dispatch per
/// tensor for its partial sums (written at a common stride into one buffer), one for every
/// tensor's total and one for the sum of those, so a step with N trainable tensors spends
/// N + 2 dispatches here. The per-tensor values are there when something goes wrong.
pub fn norms_squared_into(gpu: &Gpu, tensors: &[&Tensor], out: &NormsSquared) -> Result<()> {
    const OP: &str = "sum_squares";
    let n = tensors.len().max(1);
    if out.tensors() != n {
        return Err(Error::invalid(OP, format!("room for {} tensors' norms, {n} given", out.tensors())));
    }
    let max_workgroups = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if n > max_workgroups {
        return Err(Error::invalid(OP, format!("{n} tensors; at most {max_workgroups} in one norm")));
    }
    let groups: Vec<u64> = tensors.iter().map(|t| (t.numel() as u64).div_ceil(CHUNK).max(1)).collect();
    // Each tensor's partials start on a storage-binding boundary (SLOT_STRIDE floats = 256 bytes).
    let stride = groups.iter().copied().max().unwrap_or(1).next_multiple_of(SLOT_STRIDE as u64) as usize;
    let partials = Tensor::zeros(gpu, &[n * stride])?;
    let (file, header) = shader_file(gpu);
    let spec = KernelSpec { file, entry: "sum_squares_partial", header: &header, access: RW };
    for (i, (t, &g)) in tensors.iter().zip(&groups).enumerate() {
        let p = Params { rows: 0, cols: 0, n: u32_of(OP, "elements", t.numel())?, accumulate: 0 };
        let slots = partials.narrow_rows(i * stride, g as usize)?;
        gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), &[("x", Some(*t)), ("partial", Some(&slots))], gpu.grid_1d(g))?;
    }
    let p = Params { rows: SLOT_STRIDE as u32, cols: u32_of(OP, "partials per tensor", stride)?, n: 0, accumulate: 0 };
    let spec = KernelSpec { file, entry: "sum_squares_segments", header: &header, access: RW };
    let per_tensor = out.per_tensor.reshape(&[n * SLOT_STRIDE])?;
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[("partial", Some(&partials)), ("per_tensor", Some(&per_tensor))],
        [n as u32, 1, 1],
    )?;
    sum_rows_into(gpu, &out.per_tensor, &out.columns, false)
}
