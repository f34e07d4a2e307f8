//! Spatial pooling (`shaders/pool2d.wgsl`): max-pool with its argmax, and global average
//! pooling, with their backward passes. See [`PoolGeometry`] for the shapes.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
pub use crate::reference::pool2d::PoolGeometry;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    planes: u32,
    h: u32,
    w: u32,
    k: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

const RW3: &[Access] = &[Access::Read, Access::ReadWrite, Access::ReadWrite];
const R2W: &[Access] = &[Access::Read, Access::Read, Access::ReadWrite];
const RW: &[Access] = &[Access::Read, Access::ReadWrite];

fn params(op: &'static str, g: &PoolGeometry, accumulate: bool) -> Result<Params> {
    if let Some(problem) = g.problem() {
        return Err(Error::invalid(op, problem));
    }
    let (oh, ow) = g.out_hw();
    u32_of(op, "input elements", g.planes * g.h * g.w)?;
    let u = |v: usize| v as u32;
    Ok(Params {
        planes: u(g.planes),
        h: u(g.h),
        w: u(g.w),
        k: u(g.k),
        stride: u(g.stride),
        pad: u(g.pad),
        oh: u(oh),
        ow: u(ow),
        accumulate: accumulate as u32,
        _pad: [0; 3],
    })
}

fn spec(entry: &'static str, access: &'static [Access]) -> KernelSpec<'static> {
    KernelSpec { file: shader!("pool2d"), entry, header: "", access }
}

/// Max-pool of x `[N, C, H, W]`: returns y `[N, C, OH, OW]` and the argmax (u32, same shape)
/// that backward routes gradients through.
///
/// Bindings: 1 x, 2 y, 3 argmax.
pub fn max_pool(gpu: &Gpu, x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<(Tensor, Tensor, PoolGeometry)> {
    const OP: &str = "max_pool2d";
    if x.rank() != 4 {
        return Err(Error::Shape { op: OP, tensor: "x", expected: "[N, C, H, W]".into(), found: x.shape().to_vec() });
    }
    x.expect_dtype(OP, DType::F32)?;
    let g = PoolGeometry { planes: x.dim(0) * x.dim(1), h: x.dim(2), w: x.dim(3), k, stride, pad };
    let p = params(OP, &g, false)?;
    let (oh, ow) = g.out_hw();
    let shape = [x.dim(0), x.dim(1), oh, ow];
    let y = Tensor::empty(gpu, &shape, DType::F32)?;
    let arg = Tensor::empty(gpu, &shape, DType::U32)?;
    gpu.dispatch(
        OP,
        &spec("max_pool", RW3),
        bytemuck::bytes_of(&p),
        &[("x", Some(x)), ("y", Some(&y)), ("argmax", Some(&arg))],
        gpu.grid_stride(y.numel() as u64),
    )?;
    Ok((y, arg, g))
}

/// dx from dy and the forward's argmax, written or added into `dx` `[N, C, H, W]`.
///
/// Bindings: 1 dy, 2 argmax, 3 dx.
pub fn max_pool_backward(
    gpu: &Gpu,
    g: &PoolGeometry,
    argmax: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "max_pool2d_bwd";
    let p = params(OP, g, accumulate)?;
    let (oh, ow) = g.out_hw();
    expect_numel(OP, "dy", dy, g.planes * oh * ow, "[N, C, OH, OW]")?;
    expect_numel(OP, "argmax", argmax, g.planes * oh * ow, "[N, C, OH, OW]")?;
    expect_numel(OP, "dx", dx, g.planes * g.h * g.w, "[N, C, H, W]")?;
    gpu.dispatch(
        OP,
        &spec("max_pool_bwd", R2W),
        bytemuck::bytes_of(&p),
        &[("dy", Some(dy)), ("argmax", Some(argmax)), ("dx", Some(dx))],
        gpu.grid_stride(dx.numel() as u64),
    )
}

fn plane_geometry(op: &'static str, x_shape: &[usize]) -> Result<PoolGeometry> {
    if x_shape.len() != 4 {
        return Err(Error::Shape { op, tensor: "x", expected: "[N, C, H, W]".into(), found: x_shape.to_vec() });
    }
    let (h, w) = (x_shape[2], x_shape[3]);
    Ok(PoolGeometry { planes: x_shape[0] * x_shape[1], h, w, k: h.max(1), stride: 1, pad: 0 })
}

/// The mean of each channel: x `[N, C, H, W]` → `[N, C]`.
///
/// Bindings: 1 x, 2 y.
pub fn global_avg(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "global_avg_pool";
    x.expect_dtype(OP, DType::F32)?;
    let g = plane_geometry(OP, x.shape())?;
    let p = params(OP, &g, false)?;
    let y = Tensor::empty(gpu, &[x.dim(0), x.dim(1)], DType::F32)?;
    gpu.dispatch(
        OP,
        &spec("global_avg", RW),
        bytemuck::bytes_of(&p),
        &[("x", Some(x)), ("y", Some(&y))],
        gpu.grid_stride(g.planes as u64),
    )?;
    Ok(y)
}

/// dx `[N, C, H, W]` = dy `[N, C]` / (H·W), written or added.
///
/// Bindings: 1 dy, 2 dx.
pub fn global_avg_backward(gpu: &Gpu, dy: &Tensor, dx: &Tensor, accumulate: bool) -> Result<()> {
    const OP: &str = "global_avg_pool_bwd";
    let g = plane_geometry(OP, dx.shape())?;
    let p = params(OP, &g, accumulate)?;
    expect_numel(OP, "dy", dy, g.planes, "[N, C]")?;
    gpu.dispatch(
        OP,
        &spec("global_avg_bwd", RW),
        bytemuck::bytes_of(&p),
        &[("dy", Some(dy)), ("dx", Some(dx))],
        gpu.grid_stride(dx.numel() as u64),
    )
}
