//! 2-D convolution (`shaders/conv2d.wgsl`): forward, dX, dW and dbias, NCHW.
//!
//! Ordinary and grouped convolutions run as an implicit GEMM on the matmul's tile shape (the
//! adapter's [`crate::kernels::matmul::MatmulTile`], one pipeline per direction); depthwise
//! ones (groups = C = O) take direct kernels, whose work per output is only KH·KW.
//! See [`Conv2dGeometry`] for the shapes.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Binding, Gpu, KernelSpec};
use crate::kernels::matmul::MatmulTile;
pub use crate::reference::conv2d::Conv2dGeometry;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    groups: u32,
    has_bias: u32,
    accumulate: u32,
    _pad: [u32; 2],
}

const OP: &str = "conv2d";
/// The most filter taps `dw_dw_channel` keeps in registers (shaders/conv2d.wgsl's DW_TAPS).
const DW_TAPS: usize = 25;
const ACCESS: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::ReadWrite];

/// The implicit GEMM's three directions (the shader's MODE).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward = 0,
    InputGrad = 1,
    WeightGrad = 2,
}

fn params(g: &Conv2dGeometry, has_bias: bool, accumulate: bool) -> Result<Params> {
    if let Some(problem) = g.problem() {
        return Err(Error::invalid(OP, format!("{g}: {problem}")));
    }
    let (oh, ow) = g.out_hw();
    // Every flat index the shader forms must fit in u32.
    for (what, v) in [
        ("input elements", g.n * g.c_in * g.h * g.w),
        ("output elements", g.n * g.c_out * oh * ow),
        ("weight elements", g.c_out * g.c_in / g.groups * g.kh * g.kw),
    ] {
        u32_of(OP, what, v)?;
    }
    let u = |v: usize| v as u32;
    Ok(Params {
        n: u(g.n),
        c: u(g.c_in),
        h: u(g.h),
        w: u(g.w),
        o: u(g.c_out),
        kh: u(g.kh),
        kw: u(g.kw),
        oh: u(oh),
        ow: u(ow),
        sh: u(g.stride.0),
        sw: u(g.stride.1),
        ph: u(g.pad_begin.0),
        pw: u(g.pad_begin.1),
        dh: u(g.dilation.0),
        dw: u(g.dilation.1),
        groups: u(g.groups),
        has_bias: has_bias as u32,
        accumulate: accumulate as u32,
        _pad: [0; 2],
    })
}

/// The adapter's matmul tile with its register block cut to at most 8×8 (K slices of 16 then),
/// and its row count halved (and rows per invocation with it, so the workgroup keeps its size)
/// while the GEMM's M still fits: a stem's dX has M = 3 input channels, which a 128-row tile
/// would compute 40 times over. With lavapipe's 16×16 matmul blocks, the gathered loads of the
/// implicit GEMM ran ResNet's layer4 3×3 forward 2× slower and the 1×1 dX 1.5× slower.
fn tile_for(gpu: &Gpu, m: usize) -> MatmulTile {
    let mut t = conv_tile(gpu);
    while t.tm > 1 && (t.bm / 2) as usize >= m.max(1) {
        t.bm /= 2;
        t.tm /= 2;
    }
    t
}

/// The matmul tile with register blocks of at most 8×8 (see [`tile_for`]).
fn conv_tile(gpu: &Gpu) -> MatmulTile {
    let t = super::matmul::tile(gpu);
    let capped = MatmulTile::new(t.bm, t.bn, t.bk.max(16), t.tm.min(8), t.tn.min(8));
    if (t.tm > 8 || t.tn > 8) && capped.fits(gpu.limits()) { capped } else { t }
}

fn header(tile: &MatmulTile, mode: Mode) -> String {
    format!("{}const MODE: u32 = {}u;\n", tile.header(), mode as u32)
}

fn check(g: &Conv2dGeometry, tensors: [(&'static str, &Tensor, &[usize]); 3]) -> Result<()> {
    for (name, t, shape) in tensors {
        t.expect_dtype(OP, DType::F32)?;
        expect_numel(OP, name, t, shape.iter().product(), &format!("{shape:?} for {g}"))?;
    }
    Ok(())
}

/// The GEMM's (M, N) for a direction, per group.
fn gemm_mn(g: &Conv2dGeometry, mode: Mode) -> (usize, usize) {
    let (oh, ow) = g.out_hw();
    let (cg, og, taps) = (g.c_in / g.groups, g.c_out / g.groups, g.kh * g.kw);
    match mode {
        Mode::Forward => (og, g.n * oh * ow),
        Mode::InputGrad => (cg, g.n * g.h * g.w),
        Mode::WeightGrad => (og, cg * taps),
    }
}

fn gemm(gpu: &Gpu, g: &Conv2dGeometry, mode: Mode, p: Params, bindings: &[Binding<Tensor>]) -> Result<()> {
    let (m, n) = gemm_mn(g, mode);
    let tile = tile_for(gpu, m);
    let header = header(&tile, mode);
    let spec = KernelSpec { file: shader!("conv2d"), entry: "conv2d_gemm", header: &header, access: ACCESS };
    let groups = [(n as u32).div_ceil(tile.bn), (m as u32).div_ceil(tile.bm), g.groups as u32];
    gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), bindings, groups)
}

fn direct(gpu: &Gpu, entry: &'static str, p: Params, bindings: &[Binding<Tensor>], groups: [u32; 3]) -> Result<()> {
    let header = header(&conv_tile(gpu), Mode::Forward);
    let spec = KernelSpec { file: shader!("conv2d"), entry, header: &header, access: ACCESS };
    gpu.dispatch(entry, &spec, bytemuck::bytes_of(&p), bindings, groups)
}

/// y = conv(x, w) + bias, written into `y` (or added when `accumulate`).
///
/// Bindings: 1 x, 2 w, 3 bias (or nothing), 4 y. x `[N, C, H, W]`, w `[O, C/G, KH, KW]`,
/// bias `[O]`, y `[N, O, OH, OW]`.
pub fn forward_into(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let p = params(g, bias.is_some(), accumulate)?;
    check(g, [("x", x, &g.x_shape()), ("w", w, &g.w_shape()), ("y", y, &g.y_shape())])?;
    if let Some(b) = bias {
        expect_numel(OP, "bias", b, g.c_out, "one per output channel")?;
    }
    let bindings = [("x", Some(x)), ("w", Some(w)), ("bias", bias), ("y", Some(y))];
    if g.is_depthwise() {
        direct(gpu, "dw_forward", p, &bindings, gpu.grid_stride(y.numel() as u64))
    } else {
        gemm(gpu, g, Mode::Forward, p, &bindings)
    }
}

/// A new y `[N, O, OH, OW]`.
pub fn forward(gpu: &Gpu, g: &Conv2dGeometry, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = Tensor::empty(gpu, &g.y_shape(), DType::F32)?;
    forward_into(gpu, g, x, w, bias, &y, false)?;
    Ok(y)
}

/// dx = the transposed convolution of dy with w, written or added into `dx`.
///
/// Bindings: 1 dy, 2 w, 3 nothing, 4 dx.
pub fn input_grad(gpu: &Gpu, g: &Conv2dGeometry, dy: &Tensor, w: &Tensor, dx: &Tensor, accumulate: bool) -> Result<()> {
    let p = params(g, false, accumulate)?;
    check(g, [("dy", dy, &g.y_shape()), ("w", w, &g.w_shape()), ("dx", dx, &g.x_shape())])?;
    let bindings = [("dy", Some(dy)), ("w", Some(w)), ("bias", None), ("dx", Some(dx))];
    if g.is_depthwise() {
        direct(gpu, "dw_dx", p, &bindings, gpu.grid_stride(dx.numel() as u64))
    } else {
        gemm(gpu, g, Mode::InputGrad, p, &bindings)
    }
}

/// dw = Σ over the batch and positions of dy ⊗ im2col(x), written or added into `dw`.
///
/// Bindings: 1 x, 2 dy, 3 nothing, 4 dw.
pub fn weight_grad(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let p = params(g, false, accumulate)?;
    check(g, [("x", x, &g.x_shape()), ("dy", dy, &g.y_shape()), ("dw", dw, &g.w_shape())])?;
    let bindings = [("x", Some(x)), ("dy", Some(dy)), ("bias", None), ("dw", Some(dw))];
    if g.is_depthwise() && g.kh * g.kw <= DW_TAPS {
        direct(gpu, "dw_dw_channel", p, &bindings, gpu.grid_1d(g.c_in as u64))
    } else if g.is_depthwise() {
        direct(gpu, "dw_dw", p, &bindings, gpu.grid_1d(dw.numel() as u64))
    } else {
        gemm(gpu, g, Mode::WeightGrad, p, &bindings)
    }
}

/// dbias[o] = Σ dy[n, o, i, j], written or added into `db`.
///
/// Bindings: 1 dy, 2 nothing, 3 nothing, 4 db.
pub fn bias_grad(gpu: &Gpu, g: &Conv2dGeometry, dy: &Tensor, db: &Tensor, accumulate: bool) -> Result<()> {
    let p = params(g, false, accumulate)?;
    expect_numel(OP, "dy", dy, g.y_shape().iter().product(), "[N, O, OH, OW]")?;
    expect_numel(OP, "dbias", db, g.c_out, "one per output channel")?;
    let bindings = [("dy", Some(dy)), ("w", None), ("bias", None), ("dbias", Some(db))];
    direct(gpu, "bias_grad", p, &bindings, gpu.grid_1d(g.c_out as u64))
}
