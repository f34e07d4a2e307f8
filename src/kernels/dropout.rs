//! Dropout by a counter-based hash of (seed, step, element) (`shaders/dropout.wgsl`).
//! Forward and backward are the same kernel: the mask is recomputed, never stored.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};

/// Which mask: the same (seed, step) gives the same mask in forward and backward. Give each
/// dropout site of a step its own `seed` (e.g. run seed + site index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    pub p: f32,
    pub seed: u32,
    pub step: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    seed: u32,
    step: u32,
    threshold: u32,
    scale: f32,
    accumulate: u32,
    _pad: [u32; 2],
}

impl DropoutMask {
    /// Elements whose hash is below this are dropped: p·2³².
    pub fn threshold(&self) -> u32 {
        (self.p as f64 * 4294967296.0).round().min(u32::MAX as f64) as u32
    }

    /// What a kept element is multiplied by: 1/(1−p).
    pub fn scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }

    /// The probability is in [0, 1); `op` names the kernel in the error.
    pub fn check(&self, op: &'static str) -> Result<()> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::invalid(op, format!("dropout probability must be in [0, 1), got {}", self.p)));
        }
        Ok(())
    }
}

/// out (+)= x·mask/(1−p). Used for the forward (x) and the backward (dy) alike.
///
/// Bindings: 1 x, 2 out.
pub fn apply_into(gpu: &Gpu, mask: DropoutMask, x: &Tensor, out: &Tensor, accumulate: bool) -> Result<()> {
    const OP: &str = "dropout";
    mask.check(OP)?;
    expect_numel(OP, "out", out, x.numel(), "the size of x")?;
    let p = Params {
        n: u32_of(OP, "elements", x.numel())?,
        seed: mask.seed,
        step: mask.step,
        threshold: mask.threshold(),
        scale: mask.scale(),
        accumulate: accumulate as u32,
        _pad: [0; 2],
    };
    let spec = KernelSpec {
        file: shader!("dropout"),
        entry: "dropout",
        header: "",
        access: &[Access::Read, Access::ReadWrite],
    };
    gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), &[("x", Some(x)), ("out", Some(out))], gpu.grid_stride(p.n as u64))
}

pub fn apply(gpu: &Gpu, mask: DropoutMask, x: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty(gpu, x.shape(), DType::F32)?;
    apply_into(gpu, mask, x, &out, false)?;
    Ok(out)
}
