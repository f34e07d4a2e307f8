//! Elementwise ops (`shaders/elementwise.wgsl`): add/scale/mul/bias, the activations GELU
//! (erf and tanh forms), SiLU, ReLU, ReLU6, SwiGLU and GeGLU, and their backward passes.
//!
//! Backward functions write `dx` (or add into it with `accumulate`), so the autograd tape can
//! sum gradients from several uses of a tensor without extra kernels.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Binding, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};

/// The activations with a forward and a backward entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x·Φ(x) with the exact erf (BERT's "gelu").
    GeluErf,
    /// The tanh approximation (GPT-2's "gelu_new").
    GeluTanh,
    /// x·sigmoid(x) (Llama's "silu").
    Silu,
    /// max(x, 0) (ResNet's).
    Relu,
    /// min(max(x, 0), 6) (MobileNet's and EfficientNet-Lite's).
    Relu6,
}

impl Activation {
    fn entries(self) -> (&'static str, &'static str) {
        match self {
            Activation::GeluErf => ("gelu_erf", "gelu_erf_bwd"),
            Activation::GeluTanh => ("gelu_tanh", "gelu_tanh_bwd"),
            Activation::Silu => ("silu", "silu_bwd"),
            Activation::Relu => ("relu", "relu_bwd"),
            Activation::Relu6 => ("relu6", "relu6_bwd"),
        }
    }

    /// The kernel's name: `gelu_erf`, `gelu_tanh`, `silu`, `relu` or `relu6`.
    pub fn name(self) -> &'static str {
        self.entries().0
    }

    /// The Hugging Face `hidden_act` / `activation_function` name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "silu" | "swish" => Some(Activation::Silu),
            "relu" => Some(Activation::Relu),
            "relu6" => Some(Activation::Relu6),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    alpha: f32,
    beta: f32,
    accumulate: u32,
    _pad: [u32; 3],
}

const THREE: &[Access] = &[Access::Read, Access::Read, Access::ReadWrite];

fn launch(
    gpu: &Gpu,
    op: &'static str,
    entry: &'static str,
    params: Params,
    access: &[Access],
    bindings: &[Binding<Tensor>],
) -> Result<()> {
    let spec = KernelSpec { file: shader!("elementwise"), entry, header: "", access };
    let groups = gpu.grid_stride(params.n as u64);
    gpu.dispatch(op, &spec, bytemuck::bytes_of(&params), bindings, groups)
}

fn params(op: &'static str, n: usize, alpha: f32, beta: f32, accumulate: bool) -> Result<Params> {
    Ok(Params { n: u32_of(op, "element count", n)?, cols: 1, alpha, beta, accumulate: accumulate as u32, _pad: [0; 3] })
}

fn same_numel(op: &'static str, names: [&'static str; 2], a: &Tensor, b: &Tensor) -> Result<()> {
    if a.numel() != b.numel() {
        return Err(Error::Shape {
            op,
            tensor: names[1],
            expected: format!("{:?} (the shape of `{}`)", a.shape(), names[0]),
            found: b.shape().to_vec(),
        });
    }
    Ok(())
}

fn output_like(gpu: &Gpu, t: &Tensor) -> Result<Tensor> {
    Tensor::empty(gpu, t.shape(), DType::F32)
}

/// out = alpha·x + beta·y (x and y of one shape) written into `out`, or added when `accumulate`.
pub fn add_into(
    gpu: &Gpu,
    x: &Tensor,
    y: &Tensor,
    alpha: f32,
    beta: f32,
    out: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "add";
    same_numel(OP, ["x", "y"], x, y)?;
    same_numel(OP, ["x", "out"], x, out)?;
    let p = params(OP, x.numel(), alpha, beta, accumulate)?;
    launch(gpu, OP, "add", p, THREE, &[("x", Some(x)), ("y", Some(y)), ("out", Some(out))])
}

/// x + y (residual connections).
pub fn add(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let out = output_like(gpu, x)?;
    add_into(gpu, x, y, 1.0, 1.0, &out, false)?;
    Ok(out)
}

/// out += alpha·x (gradient accumulation, SGD-like updates).
pub fn axpy(gpu: &Gpu, alpha: f32, x: &Tensor, out: &Tensor) -> Result<()> {
    const OP: &str = "axpy";
    same_numel(OP, ["x", "out"], x, out)?;
    let p = params(OP, x.numel(), alpha, 0.0, true)?;
    launch(gpu, OP, "scale", p, THREE, &[("x", Some(x)), ("y", None), ("out", Some(out))])
}

/// alpha·x.
pub fn scale(gpu: &Gpu, x: &Tensor, alpha: f32) -> Result<Tensor> {
    let out = output_like(gpu, x)?;
    let p = params("scale", x.numel(), alpha, 0.0, false)?;
    launch(gpu, "scale", "scale", p, THREE, &[("x", Some(x)), ("y", None), ("out", Some(&out))])?;
    Ok(out)
}

/// x·y elementwise, into `out` (or added).
pub fn mul_into(gpu: &Gpu, x: &Tensor, y: &Tensor, out: &Tensor, accumulate: bool) -> Result<()> {
    const OP: &str = "mul";
    same_numel(OP, ["x", "y"], x, y)?;
    same_numel(OP, ["x", "out"], x, out)?;
    let p = params(OP, x.numel(), 1.0, 0.0, accumulate)?;
    launch(gpu, OP, "mul", p, THREE, &[("x", Some(x)), ("y", Some(y)), ("out", Some(out))])
}

/// x + bias broadcast over rows: x `[..., C]`, bias `[C]`.
pub fn add_bias(gpu: &Gpu, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "add_bias";
    let cols = x.shape().last().copied().unwrap_or(1);
    expect_numel(OP, "bias", bias, cols, "the last dimension of x")?;
    let out = output_like(gpu, x)?;
    let mut p = params(OP, x.numel(), 1.0, 1.0, false)?;
    p.cols = u32_of(OP, "columns", cols.max(1))?;
    launch(gpu, OP, "add_bias", p, THREE, &[("x", Some(x)), ("bias", Some(bias)), ("out", Some(&out))])?;
    Ok(out)
}

/// f(x) for an activation f.
pub fn activation(gpu: &Gpu, act: Activation, x: &Tensor) -> Result<Tensor> {
    let (entry, _) = act.entries();
    let out = output_like(gpu, x)?;
    let p = params(entry, x.numel(), 1.0, 0.0, false)?;
    launch(gpu, entry, entry, p, THREE, &[("x", Some(x)), ("y", None), ("out", Some(&out))])?;
    Ok(out)
}

/// dx = dy·f'(x), written or added into `dx`.
pub fn activation_backward(
    gpu: &Gpu,
    act: Activation,
    x: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let (_, entry) = act.entries();
    same_numel(entry, ["x", "dy"], x, dy)?;
    same_numel(entry, ["x", "dx"], x, dx)?;
    let p = params(entry, x.numel(), 1.0, 0.0, accumulate)?;
    launch(gpu, entry, entry, p, THREE, &[("x", Some(x)), ("dy", Some(dy)), ("dx", Some(dx))])
}

/// A gated MLP's product of an activated gate and the up projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatedUnit {
    /// silu(gate)·up (Llama's MLP).
    SwiGlu,
    /// gelu_tanh(gate)·up (Gemma's MLP, `gelu_pytorch_tanh`).
    GeGlu,
}

impl GatedUnit {
    fn entries(self) -> (&'static str, &'static str) {
        match self {
            GatedUnit::SwiGlu => ("swiglu", "swiglu_bwd"),
            GatedUnit::GeGlu => ("geglu", "geglu_bwd"),
        }
    }

    /// The kernel's name: `swiglu` or `geglu`.
    pub fn name(self) -> &'static str {
        self.entries().0
    }
}

/// act(gate)·up for the unit's activation.
pub fn gated(gpu: &Gpu, unit: GatedUnit, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let op = unit.entries().0;
    same_numel(op, ["gate", "up"], gate, up)?;
    let out = output_like(gpu, gate)?;
    let p = params(op, gate.numel(), 1.0, 0.0, false)?;
    launch(gpu, op, op, p, THREE, &[("gate", Some(gate)), ("up", Some(up)), ("out", Some(&out))])?;
    Ok(out)
}

/// dgate = dy·up·act'(gate), dup = dy·act(gate), written or added.
///
/// Bindings: 1 gate, 2 up, 3 dy, 4 dgate, 5 dup.
#[allow(clippy::too_many_arguments)]
pub fn gated_backward(
    gpu: &Gpu,
    unit: GatedUnit,
    gate: &Tensor,
    up: &Tensor,
    dy: &Tensor,
    dgate: &Tensor,
    dup: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let op = unit.entries().1;
    for (name, t) in [("up", up), ("dy", dy), ("dgate", dgate), ("dup", dup)] {
        same_numel(op, ["gate", name], gate, t)?;
    }
    let p = params(op, gate.numel(), 1.0, 0.0, accumulate)?;
    let access = &[Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite];
    launch(
        gpu,
        op,
        op,
        p,
        access,
        &[("gate", Some(gate)), ("up", Some(up)), ("dy", Some(dy)), ("dgate", Some(dgate)), ("dup", Some(dup))],
    )
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SliceParams {
    rows: u32,
    width: u32,
    src_cols: u32,
    src_off: u32,
    dst_cols: u32,
    dst_off: u32,
    accumulate: u32,
    _pad: u32,
}

/// A block of columns between two row-major matrices with the same number of rows.
#[derive(Clone, Copy, Debug)]
pub struct ColumnBlock {
    /// Columns copied from each row.
    pub width: usize,
    /// First column read in `x` `[rows, x_cols]`.
    pub src_off: usize,
    /// First column written in `out` `[rows, out_cols]`.
    pub dst_off: usize,
}

/// out[r, dst_off + c] = x[r, src_off + c] for c < width, written or added. Splits a fused
/// projection (GPT-2's q|k|v) into its parts; the same call with the roles swapped is the backward.
///
/// Bindings: 1 x, 2 unused, 3 out.
pub fn copy_cols(gpu: &Gpu, x: &Tensor, out: &Tensor, block: ColumnBlock, accumulate: bool) -> Result<()> {
    const OP: &str = "copy_cols";
    let (x_cols, out_cols) = (x.dim(-1), out.dim(-1));
    let rows = x.numel() / x_cols.max(1);
    expect_numel(OP, "out", out, rows * out_cols, "as many rows as x")?;
    if block.src_off + block.width > x_cols || block.dst_off + block.width > out_cols {
        return Err(Error::invalid(
            OP,
            format!(
                "columns {}..{} of x (width {x_cols}) to {}..{} of out (width {out_cols}) are out of range",
                block.src_off,
                block.src_off + block.width,
                block.dst_off,
                block.dst_off + block.width
            ),
        ));
    }
    let p = SliceParams {
        rows: u32_of(OP, "rows", rows)?,
        width: u32_of(OP, "width", block.width)?,
        src_cols: x_cols as u32,
        src_off: block.src_off as u32,
        dst_cols: out_cols as u32,
        dst_off: block.dst_off as u32,
        accumulate: accumulate as u32,
        _pad: 0,
    };
    u32_of(OP, "rows × width", rows * block.width)?;
    let spec = KernelSpec { file: shader!("elementwise"), entry: OP, header: "", access: THREE };
    let groups = gpu.grid_stride((rows * block.width) as u64);
    gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), &[("x", Some(x)), ("y", None), ("out", Some(out))], groups)
}
