//! Rotary position embedding (`shaders/rope.wgsl`), Hugging Face's rotate_half pairing.
//! The cos/sin tables are built once per model on the host in f64.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};

/// cos and sin tables `[max_positions, head_dim/2]`: angle(pos, i) = pos · base^(−2i/head_dim).
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub head_dim: usize,
    pub max_positions: usize,
}

/// The angles as f64, row-major `[max_positions, head_dim/2]` (shared with the reference).
pub fn angles(head_dim: usize, max_positions: usize, base: f64) -> Vec<f64> {
    let half = head_dim / 2;
    let mut a = Vec::with_capacity(max_positions * half);
    for pos in 0..max_positions {
        for i in 0..half {
            let inv_freq = base.powf(-((2 * i) as f64) / head_dim as f64);
            a.push(pos as f64 * inv_freq);
        }
    }
    a
}

impl RopeTables {
    pub fn new(gpu: &Gpu, head_dim: usize, max_positions: usize, base: f64) -> Result<Self> {
        if !head_dim.is_multiple_of(2) || head_dim == 0 || max_positions == 0 {
            return Err(Error::invalid(
                "rope",
                format!(
                    "head_dim must be even and positive and max_positions positive, got {head_dim} and {max_positions}"
                ),
            ));
        }
        let a = angles(head_dim, max_positions, base);
        let cos: Vec<f32> = a.iter().map(|v| v.cos() as f32).collect();
        let sin: Vec<f32> = a.iter().map(|v| v.sin() as f32).collect();
        let shape = [max_positions, head_dim / 2];
        Ok(RopeTables {
            cos: Tensor::from_f32(gpu, &cos, &shape)?,
            sin: Tensor::from_f32(gpu, &sin, &shape)?,
            head_dim,
            max_positions,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    seq: u32,
    heads: u32,
    head_dim: u32,
    pos_offset: u32,
    inverse: u32,
    has_positions: u32,
    accumulate: u32,
    table_rows: u32,
    _pad: [u32; 3],
}

/// Where each token sits: `t + offset`, or explicit positions `[B, T]` (checked on the host).
pub enum Positions<'a> {
    Offset(usize),
    Explicit(&'a Tensor),
}

/// Rotates x `[B, T, H, D]` into `out` (or adds into it); `inverse` rotates back (the backward).
///
/// Bindings: 1 x, 2 cos, 3 sin, 4 positions, 5 out.
pub fn apply_into(
    gpu: &Gpu,
    tables: &RopeTables,
    x: &Tensor,
    positions: Positions,
    inverse: bool,
    out: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "rope";
    if x.rank() != 4 || x.dim(3) != tables.head_dim {
        return Err(Error::Shape {
            op: OP,
            tensor: "x",
            expected: format!("[batch, seq, heads, {}]", tables.head_dim),
            found: x.shape().to_vec(),
        });
    }
    expect_numel(OP, "out", out, x.numel(), "the size of x")?;
    let (b, t, h) = (x.dim(0), x.dim(1), x.dim(2));
    let (offset, pos_tensor) = match positions {
        Positions::Offset(o) => {
            if t + o > tables.max_positions {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "positions up to {} exceed the table's {} (max_position_embeddings)",
                        t + o,
                        tables.max_positions
                    ),
                ));
            }
            (o, None)
        }
        Positions::Explicit(pt) => {
            pt.expect_dtype(OP, DType::U32)?;
            expect_numel(OP, "positions", pt, b * t, "batch × seq")?;
            (0, Some(pt))
        }
    };
    let p = Params {
        batch: u32_of(OP, "batch", b)?,
        seq: u32_of(OP, "seq", t)?,
        heads: u32_of(OP, "heads", h)?,
        head_dim: tables.head_dim as u32,
        pos_offset: u32_of(OP, "offset", offset)?,
        inverse: inverse as u32,
        has_positions: pos_tensor.is_some() as u32,
        accumulate: accumulate as u32,
        table_rows: tables.max_positions as u32,
        _pad: [0; 3],
    };
    let pairs = u32_of(OP, "elements", x.numel())? as u64 / 2;
    let spec = KernelSpec {
        file: shader!("rope"),
        entry: "rope",
        header: "",
        access: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[
            ("x", Some(x)),
            ("cos", Some(&tables.cos)),
            ("sin", Some(&tables.sin)),
            ("positions", pos_tensor),
            ("out", Some(out)),
        ],
        gpu.grid_1d(pairs.div_ceil(256)),
    )
}

pub fn apply(gpu: &Gpu, tables: &RopeTables, x: &Tensor, positions: Positions) -> Result<Tensor> {
    let out = Tensor::empty(gpu, x.shape(), DType::F32)?;
    apply_into(gpu, tables, x, positions, false, &out, false)?;
    Ok(out)
}
