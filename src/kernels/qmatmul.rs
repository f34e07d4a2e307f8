//! Matmul through a frozen quantized or 16-bit (F16/BF16) weight (`shaders/qmatmul.wgsl`),
//! dequantizing (widening) in the inner loop: the forward y = x·Wᵀ of a linear layer whose W
//! `[out, in]` is a [`QuantTensor`], and the backward dx = dy·W. W never gets a gradient.
//!
//! Up to [`SKINNY_M`] rows (generation) the forward takes `qmatvec`, one invocation per output
//! column reading W once; more rows take the tiled `qmatmul`. The tile is BK = 32 (one block)
//! deep; on a GPU 64×64 wide with 256 invocations of 4×4 (the two staged slices then take
//! exactly the 16 KiB of workgroup memory every adapter has), on a CPU adapter 128×128 with 64
//! invocations of 16×16, as the f32 matmul's deep tile there (32 KiB). See [`tile`];
//! `KILN_QMATMUL_TILE=bm,bn,tm,tn` overrides it (not tuned per adapter yet).

use bytemuck::{Pod, Zeroable};

use super::matmul::SKINNY_M;
use super::matmul_coop;
use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::quant::{BLOCK, QuantType, QuantWeights, repack, unpack};
use crate::tensor::{DType, Tensor};

/// A frozen `[rows, cols]` weight matrix (`[out, in]`, blocks along `in`) on the GPU in the
/// repacked block layout. It never gets a gradient.
#[derive(Clone)]
pub struct QuantTensor {
    pub kind: QuantType,
    pub rows: usize,
    pub cols: usize,
    /// The repacked words (`DType::U32`).
    pub words: Tensor,
    /// Word index where the scale words start.
    pub scale_offset: usize,
    /// Word index where the paired f16 fields start (after the scale words).
    pub half_offset: usize,
}

impl std::fmt::Debug for QuantTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantTensor({}, [{}, {}])", self.kind, self.rows, self.cols)
    }
}

impl QuantTensor {
    pub fn upload(gpu: &Gpu, w: &QuantWeights) -> Result<QuantTensor> {
        let (words, scale_offset) = repack(w);
        let n = words.len();
        let blocks = w.rows * w.cols / w.kind.block_weights();
        Ok(QuantTensor {
            kind: w.kind,
            rows: w.rows,
            cols: w.cols,
            words: Tensor::from_u32(gpu, &words, &[n])?,
            scale_offset,
            half_offset: scale_offset + blocks * w.kind.gpu_layout().scale_words(),
        })
    }

    /// The blocks back on the CPU, as the file had them.
    pub fn download(&self, gpu: &Gpu) -> Result<QuantWeights> {
        let words = self.words.to_u32_vec(gpu)?;
        Ok(QuantWeights {
            kind: self.kind,
            rows: self.rows,
            cols: self.cols,
            blocks: unpack(self.kind, self.rows, self.cols, &words),
        })
    }

    /// The matrix dequantized into a new f32 tensor `[rows, cols]` (through the CPU: for
    /// exports and merges, not for the hot path).
    pub fn dequantize(&self, gpu: &Gpu) -> Result<Tensor> {
        Tensor::from_f32(gpu, &self.download(gpu)?.dequantize(), &[self.rows, self.cols])
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Bytes on the GPU.
    pub fn byte_len(&self) -> u64 {
        debug_assert_eq!(self.words.dtype(), DType::U32);
        self.words.byte_len()
    }
}

const OP: &str = "qmatmul";

/// A tile of the tiled entries: a workgroup computes `bm`×`bn` outputs, each invocation
/// `tm`×`tn`; the reduction steps one block (32) at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QTile {
    pub bm: u32,
    pub bn: u32,
    pub tm: u32,
    pub tn: u32,
}

impl QTile {
    pub const fn new(bm: u32, bn: u32, tm: u32, tn: u32) -> Self {
        QTile { bm, bn, tm, tn }
    }

    pub fn invocations(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Whether the adapter can run it (and the shader's assumptions hold: `bn` whole blocks,
    /// register tiles of vec4s).
    pub fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.tm.is_multiple_of(4)
            && self.tn.is_multiple_of(4)
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && self.bn.is_multiple_of(BLOCK as u32)
            && self.invocations() <= limits.max_compute_invocations_per_workgroup
            && self.invocations() <= limits.max_compute_workgroup_size_x
            && 4 * BLOCK as u32 * (self.bm + self.bn) <= limits.max_compute_workgroup_storage_size
    }
}

/// This device's tile ([`set_tile`] changes it): `KILN_QMATMUL_TILE`, else the first of the
/// device type's defaults the adapter can run. On lavapipe 128×128 with 16×16 per invocation
/// runs 256×1024×1024 through Q4_0 in 24–26 ms against 45–47 ms with the former 64×64 of 8×8
/// (README, "Per-shape tiles"); 64×64 of 8×8 remains for a CPU adapter with less than 32 KiB of
/// workgroup memory, and 32×32 of 4×4 for any adapter.
pub fn tile(gpu: &Gpu) -> QTile {
    gpu.setting(|info| tile_for_adapter(info, gpu.limits()))
}

pub fn set_tile(gpu: &Gpu, tile: QTile) {
    gpu.set_setting(tile);
}

/// `tile` with its rows halved (and rows per invocation with them, so the workgroup keeps its
/// size) while `m` rows still fill it, down to 4 rows per invocation: a 32-token batch would
/// compute a 128-row tile four times over. On lavapipe the small SmolLM2 step on a Q4_0 base
/// ran 322 ms with 64×64 tiles of 8×8 and 360 ms with 128×128 of 16×16 before this.
pub fn tile_for_rows(tile: QTile, m: usize) -> QTile {
    let mut t = tile;
    while t.tm > 4 && (t.bm / 2) as usize >= m.max(1) {
        t.bm /= 2;
        t.tm /= 2;
    }
    t
}

fn tile_for_adapter(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> QTile {
    let fallback = QTile::new(32, 32, 4, 4);
    if let Ok(text) = std::env::var("KILN_QMATMUL_TILE") {
        match crate::util::parse_u32_list(&text).as_deref() {
            Some(&[bm, bn, tm, tn]) if QTile::new(bm, bn, tm, tn).fits(limits) => return QTile::new(bm, bn, tm, tn),
            _ => eprintln!("warning: KILN_QMATMUL_TILE={text:?} is not `bm,bn,tm,tn` that this adapter runs; ignored"),
        }
    }
    let defaults: &[QTile] = match info.device_type {
        wgpu::DeviceType::Cpu => &[QTile::new(128, 128, 16, 16), QTile::new(64, 64, 8, 8)],
        _ => &[QTile::new(64, 64, 4, 4)],
    };
    defaults.iter().copied().find(|t| t.fits(limits)).unwrap_or(fallback)
}

fn header(w: &QuantTensor, tile: QTile, mr: usize) -> String {
    format!(
        "{}const BM: u32 = {}u;\nconst BN: u32 = {}u;\nconst TM: u32 = {}u;\nconst TN: u32 = {}u;\nconst MR: u32 = {}u;\n",
        format_header(w),
        tile.bm,
        tile.bn,
        tile.tm,
        tile.tn,
        mr
    )
}

/// The header's part that names W's format: QTYPE, QW, SW (all that `qmatmul_coop.wgsl` takes
/// besides the cooperative-matrix shape).
fn format_header(w: &QuantTensor) -> String {
    format!(
        "const QTYPE: u32 = {}u;\nconst QW: u32 = {}u;\nconst SW: u32 = {}u;\n",
        w.kind.shader_id(),
        w.kind.quant_words(),
        w.kind.gpu_layout().scale_words()
    )
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    alpha: f32,
    has_bias: u32,
    accumulate: u32,
    scale_off: u32,
    half_off: u32,
}

fn params(w: &QuantTensor, m: usize, alpha: f32, has_bias: bool, accumulate: bool) -> Result<Params> {
    Ok(Params {
        m: u32_of(OP, "M", m)?,
        n: u32_of(OP, "N (W's rows)", w.rows)?,
        k: u32_of(OP, "K (W's columns)", w.cols)?,
        alpha,
        has_bias: has_bias as u32,
        accumulate: accumulate as u32,
        scale_off: u32_of(OP, "W's words", w.scale_offset)?,
        half_off: u32_of(OP, "W's words", w.half_offset)?,
    })
}

const ACCESS: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::ReadWrite];

/// Records y = alpha·x·Wᵀ (+ bias) (+ y when `accumulate`): x `[M, K]` (any shape with K
/// last), W `[N, K]`, y `[M, N]`, bias `[N]`.
///
/// Bindings: 1 `w` (u32 words), 2 `x`, 3 `bias` (or nothing), 4 `y`.
pub fn qmatmul_into(
    gpu: &Gpu,
    x: &Tensor,
    w: &QuantTensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    for t in [x, y] {
        t.expect_dtype(OP, DType::F32)?;
    }
    if !x.numel().is_multiple_of(k) {
        return Err(Error::Shape {
            op: OP,
            tensor: "x",
            expected: format!("[..., {k}] (W's columns)"),
            found: x.shape().to_vec(),
        });
    }
    let m = x.numel() / k;
    expect_numel(OP, "y", y, m * n, "M × N")?;
    if let Some(b) = bias {
        expect_numel(OP, "bias", b, n, "N")?;
    }
    if x.same_buffer(y) {
        return Err(Error::invalid(OP, "the output `y` must not share a buffer with `x`"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let p = params(w, m, alpha, bias.is_some(), accumulate)?;
    let (header, entry, groups);
    let bindings = [("w", Some(&w.words)), ("x", Some(x)), ("bias", bias), ("y", Some(y))];
    if m > SKINNY_M
        && let Some(done) = try_coop(gpu, (OP, "qmatmul_coop"), w, &p, &bindings, [n, m])
    {
        return done;
    }
    if m <= SKINNY_M {
        // `qmatvec` reads none of the tile's constants: one header for any tile keeps one
        // pipeline per format and row count.
        header = self::header(w, QTile::new(32, 32, 4, 4), m.next_power_of_two());
        entry = "qmatvec";
        groups = gpu.grid_1d((n as u64).div_ceil(64));
    } else {
        let tile = tile_for_rows(tile(gpu), m);
        header = self::header(w, tile, 1);
        entry = "qmatmul";
        groups = [(n as u32).div_ceil(tile.bn), (m as u32).div_ceil(tile.bm), 1];
    }
    let spec = KernelSpec { file: shader!("qmatmul"), entry, header: &header, access: ACCESS };
    gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), &bindings, groups)
}

/// Records `entry` of `qmatmul_coop.wgsl` (f16 on cooperative matrices, f32 accumulation) for
/// an output of `[rows, cols]`, where the device's precision is f16; None where it is f32.
fn try_coop(
    gpu: &Gpu,
    (op, entry): (&'static str, &'static str),
    w: &QuantTensor,
    p: &Params,
    bindings: &[(&'static str, Option<&Tensor>); 4],
    [cols, rows]: [usize; 2],
) -> Option<Result<()>> {
    let shape = matmul_coop::active(gpu)?;
    let header = format!("{}{}", shape.header(false), format_header(w));
    let spec = KernelSpec { file: shader!("qmatmul_coop"), entry, header: &header, access: ACCESS };
    let groups = [(cols as u32).div_ceil(shape.block()), (rows as u32).div_ceil(shape.block()), 1];
    Some(gpu.dispatch(op, &spec, bytemuck::bytes_of(p), bindings, groups))
}

/// Records dx = alpha·dy·W (+ dx when `accumulate`): dy `[M, N]`, W `[N, K]`, dx `[M, K]`.
///
/// Bindings: 1 `w` (u32 words), 2 `dy`, 3 nothing, 4 `dx`.
pub fn qmatmul_dx_into(
    gpu: &Gpu,
    dy: &Tensor,
    w: &QuantTensor,
    dx: &Tensor,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "qmatmul_dx";
    let (n, k) = (w.rows, w.cols);
    for t in [dy, dx] {
        t.expect_dtype(OP, DType::F32)?;
    }
    if !dy.numel().is_multiple_of(n) {
        return Err(Error::Shape {
            op: OP,
            tensor: "dy",
            expected: format!("[..., {n}] (W's rows)"),
            found: dy.shape().to_vec(),
        });
    }
    let m = dy.numel().checked_div(n).unwrap_or(0);
    expect_numel(OP, "dx", dx, m * k, "M × K")?;
    if dy.same_buffer(dx) {
        return Err(Error::invalid(OP, "the output `dx` must not share a buffer with `dy`"));
    }
    if m == 0 {
        return Ok(());
    }
    let p = params(w, m, alpha, false, accumulate)?;
    let bindings = [("w", Some(&w.words)), ("dy", Some(dy)), ("bias", None), ("dx", Some(dx))];
    if let Some(done) = try_coop(gpu, (OP, "qmatmul_dx_coop"), w, &p, &bindings, [k, m]) {
        return done;
    }
    let tile = tile_for_rows(tile(gpu), m);
    let header = header(w, tile, 1);
    let spec = KernelSpec { file: shader!("qmatmul"), entry: "qmatmul_dx", header: &header, access: ACCESS };
    let groups = [(k as u32).div_ceil(tile.bn), (m as u32).div_ceil(tile.bm), 1];
    gpu.dispatch(OP, &spec, bytemuck::bytes_of(&p), &bindings, groups)
}

/// y = x·Wᵀ, shaped `[..., N]` like x with its last dim replaced.
pub fn qmatmul(gpu: &Gpu, x: &Tensor, w: &QuantTensor) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    match shape.last_mut() {
        Some(last) if *last == w.cols => *last = w.rows,
        _ => {
            return Err(Error::Shape {
                op: OP,
                tensor: "x",
                expected: format!("[..., {}] (W's columns)", w.cols),
                found: x.shape().to_vec(),
            });
        }
    }
    let y = Tensor::empty(gpu, &shape, DType::F32)?;
    qmatmul_into(gpu, x, w, None, &y, 1.0, false)?;
    Ok(y)
}
