//! Rotary position embedding (`shaders/rope.wgsl`), Hugging Face's rotate_half pairing, over
//! the whole head or its first `rot_dim` dims. The cos/sin tables are built once per model on
//! the host in f64, from inverse frequencies that `nn::rope_scaling` computes for scaled RoPEs.

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};

/// cos and sin tables `[max_positions, rot_dim/2]`: angle(pos, i) = pos · inv_freq[i], both
/// multiplied by `attention_factor` (YaRN and LongRoPE scale them; 1 otherwise). The first
/// `rot_dim` dims of each head rotate, the rest pass through (partial rotary).
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub head_dim: usize,
    pub rot_dim: usize,
    pub max_positions: usize,
    pub attention_factor: f64,
}

/// The default inverse frequencies of `dim` rotated dims: base^(−2i/dim), i < dim/2.
pub fn default_inv_freq(dim: usize, base: f64) -> Vec<f64> {
    (0..dim / 2).map(|i| base.powf(-((2 * i) as f64) / dim as f64)).collect()
}

/// The angles as f64, row-major `[max_positions, inv_freq.len()]` (shared with the reference).
pub fn angles_from(inv_freq: &[f64], max_positions: usize) -> Vec<f64> {
    let mut a = Vec::with_capacity(max_positions * inv_freq.len());
    for pos in 0..max_positions {
        a.extend(inv_freq.iter().map(|f| pos as f64 * f));
    }
    a
}

/// The default RoPE's angles `[max_positions, head_dim/2]`.
pub fn angles(head_dim: usize, max_positions: usize, base: f64) -> Vec<f64> {
    angles_from(&default_inv_freq(head_dim, base), max_positions)
}

impl RopeTables {
    /// The default RoPE over the whole head.
    pub fn new(gpu: &Gpu, head_dim: usize, max_positions: usize, base: f64) -> Result<Self> {
        if !head_dim.is_multiple_of(2) || head_dim == 0 {
            return Err(Error::invalid("rope", format!("head_dim must be even and positive, got {head_dim}")));
        }
        RopeTables::from_inv_freq(gpu, head_dim, &default_inv_freq(head_dim, base), 1.0, max_positions)
    }

    /// Tables for given inverse frequencies (one per rotated pair, so rot_dim = 2 · len) and
    /// attention factor, as a scaled RoPE computes them (`nn::rope_scaling`).
    pub fn from_inv_freq(
        gpu: &Gpu,
        head_dim: usize,
        inv_freq: &[f64],
        attention_factor: f64,
        max_positions: usize,
    ) -> Result<Self> {
        let rot_dim = 2 * inv_freq.len();
        if rot_dim == 0 || rot_dim > head_dim || max_positions == 0 {
            return Err(Error::invalid(
                "rope",
                format!(
                    "{} inverse frequencies rotate {rot_dim} dims: need 1..=head_dim/2 ({}) of them, and \
                     max_positions positive (got {max_positions})",
                    inv_freq.len(),
                    head_dim / 2
                ),
            ));
        }
        if !attention_factor.is_finite() || inv_freq.iter().any(|f| !f.is_finite()) {
            return Err(Error::invalid("rope", "inverse frequencies and the attention factor must be finite"));
        }
        let a = angles_from(inv_freq, max_positions);
        let cos: Vec<f32> = a.iter().map(|v| (v.cos() * attention_factor) as f32).collect();
        let sin: Vec<f32> = a.iter().map(|v| (v.sin() * attention_factor) as f32).collect();
        let shape = [max_positions, rot_dim / 2];
        Ok(RopeTables {
            cos: Tensor::from_f32(gpu, &cos, &shape)?,
            sin: Tensor::from_f32(gpu, &sin, &shape)?,
            head_dim,
            rot_dim,
            max_positions,
            attention_factor,
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
    rot_dim: u32,
    _pad: [u32; 2],
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
        rot_dim: tables.rot_dim as u32,
        _pad: [0; 2],
    };
    // One invocation per rotated pair or passed-through dim of each head.
    let slots = (tables.rot_dim / 2 + tables.head_dim - tables.rot_dim) as u64;
    let invocations = u32_of(OP, "elements", x.numel())? as u64 / tables.head_dim as u64 * slots;
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
        gpu.grid_1d(invocations.div_ceil(256)),
    )
}

pub fn apply(gpu: &Gpu, tables: &RopeTables, x: &Tensor, positions: Positions) -> Result<Tensor> {
    let out = Tensor::empty(gpu, x.shape(), DType::F32)?;
    apply_into(gpu, tables, x, positions, false, &out, false)?;
    Ok(out)
}
