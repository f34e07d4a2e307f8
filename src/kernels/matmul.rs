//! Tiled batched matmul (`shaders/matmul.wgsl`): C = alpha·op(A)·op(B) (+ bias) (+ C).
//!
//! The transpose flags let backward passes use it directly: dX = dY·Wᵀ is `trans_b`, dW = Xᵀ·dY
//! is `trans_a`, and `accumulate` adds into an existing gradient.
//!
//! Products of at most [`SKINNY_M`] rows (token-by-token generation) take a matrix-vector
//! kernel instead (`shaders/matvec.wgsl`, same bindings and params): a workgroup owns a block
//! of columns for every row, so B is read once, with the K sum optionally split across
//! invocations ([`MatvecShape`]).
//!
//! The tile shape is a parameter: a CPU adapter (lavapipe) wants few invocations with large
//! register tiles, a GPU many with small ones. `kiln bench --tune` times [`MatmulTile::candidates`]
//! and caches the winner per adapter; without a cached result a default by device type is used.

use std::path::PathBuf;

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use super::dropout::DropoutMask;
use super::elementwise::{self as ew, Activation, ColumnBlock, GatedUnit, copy_cols};
use super::matmul_coop;
use super::{expect_numel, row_chunks, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};
use crate::util::{parse_u32_list, write_atomic};

/// One tile shape: a workgroup computes a `bm`×`bn` block of C, each invocation `tm`×`tn`,
/// stepping through K `bk` at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MatmulTile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl MatmulTile {
    pub const fn new(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> Self {
        MatmulTile { bm, bn, bk, tm, tn }
    }

    /// Shapes worth timing on any adapter, from GPU-style (256 invocations, 4×4 each) to
    /// lavapipe-style (64 invocations with 16×16 or 32×32 register tiles).
    pub fn candidates() -> Vec<MatmulTile> {
        vec![
            MatmulTile::new(64, 64, 16, 4, 4),
            MatmulTile::new(128, 128, 8, 8, 8),
            MatmulTile::new(128, 128, 16, 8, 8),
            MatmulTile::new(128, 64, 16, 8, 4),
            MatmulTile::new(64, 64, 8, 8, 8),
            MatmulTile::new(128, 128, 8, 16, 16),
            MatmulTile::new(128, 128, 16, 16, 16),
            MatmulTile::new(256, 256, 8, 32, 32),
        ]
    }

    pub fn invocations(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    pub fn workgroup_bytes(&self) -> u32 {
        4 * self.bk * (self.bm + self.bn)
    }

    /// This tile with its K slice cut to the product's depth, in powers of two down to 4: a
    /// slice deeper than K stages and multiplies zeros (LoRA's products through rank r have
    /// K = r). On lavapipe 1024×384×8 takes about a third less time with BK 8 than with 16.
    pub fn for_depth(self, k: usize) -> MatmulTile {
        let bk = k.max(4).next_power_of_two().min(self.bk as usize) as u32;
        MatmulTile { bk, ..self }
    }

    /// Whether the adapter can run this shape at all.
    pub fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.tm.is_multiple_of(4)
            && self.tn.is_multiple_of(4)
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && self.invocations() <= limits.max_compute_invocations_per_workgroup
            && self.invocations() <= limits.max_compute_workgroup_size_x
            && self.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
    }

    /// The WGSL constants the shader is specialised with.
    pub fn header(&self) -> String {
        format!(
            "const BM: u32 = {}u;\nconst BN: u32 = {}u;\nconst BK: u32 = {}u;\nconst TM: u32 = {}u;\nconst TN: u32 = {}u;\n",
            self.bm, self.bn, self.bk, self.tm, self.tn
        )
    }
}

impl std::fmt::Display for MatmulTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}/{}x{}", self.bm, self.bn, self.bk, self.tm, self.tn)
    }
}

/// The default when nothing is cached: big register tiles on a CPU adapter, small on a GPU.
/// On lavapipe 16×16 per invocation (64 invocations, 8 of K per staged slice) runs the deep
/// products 1.4–1.6× faster than 8×8 (README, "Per-shape tiles and split-K"); they spilled
/// before wgpu's loop bounding was off and the register loops unrolled.
pub fn default_tile(device_type: wgpu::DeviceType) -> MatmulTile {
    match device_type {
        wgpu::DeviceType::Cpu => MatmulTile::new(128, 128, 8, 16, 16),
        _ => MatmulTile::new(64, 64, 16, 4, 4),
    }
}

/// Products at most this deep (LoRA's through its rank, x·Aᵀ·Bᵀ and dh·A) take the shallow
/// tile ([`shallow_tile`]): with a K slice or two there is little to reuse from registers, and
/// on lavapipe the 8×8 register tile beats the 16×16 one there (1.3× at K = 8, even at 16,
/// behind from 24 on).
pub const SHALLOW_K: usize = 16;

/// The tile of products at most [`SHALLOW_K`] deep, a setting of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShallowTile(pub MatmulTile);

/// The shallow products' default: 8×8 per invocation on a CPU adapter, the deep default on a
/// GPU (where it is not yet measured).
pub fn default_shallow_tile(device_type: wgpu::DeviceType) -> ShallowTile {
    match device_type {
        wgpu::DeviceType::Cpu => ShallowTile(MatmulTile::new(128, 128, 16, 8, 8)),
        _ => ShallowTile(default_tile(device_type)),
    }
}

fn tune_file() -> PathBuf {
    crate::util::cache_dir().join("matmul_tiles.json")
}

fn shallow_tune_file() -> PathBuf {
    crate::util::cache_dir().join("matmul_tiles_shallow.json")
}

/// The tile this device's matmuls deeper than [`SHALLOW_K`] use (and the convolutions): the one
/// `kiln bench --tune` cached for the adapter, else the default (see [`tile_for_adapter`]);
/// [`set_tile`] changes it.
pub fn tile(gpu: &Gpu) -> MatmulTile {
    gpu.setting(tile_for_adapter)
}

pub fn set_tile(gpu: &Gpu, tile: MatmulTile) {
    gpu.set_setting(tile);
}

/// The tile of this device's products at most [`SHALLOW_K`] deep: `KILN_MATMUL_TILE_SHALLOW`,
/// else the one `kiln bench --tune` cached, else [`default_shallow_tile`].
pub fn shallow_tile(gpu: &Gpu) -> MatmulTile {
    gpu.setting(shallow_tile_for_adapter).0
}

pub fn set_shallow_tile(gpu: &Gpu, tile: MatmulTile) {
    gpu.set_setting(ShallowTile(tile));
}

/// The tile `mm` runs on: the shallow or the deep one, its K slice cut to the depth.
pub fn tile_for(gpu: &Gpu, mm: &Matmul) -> MatmulTile {
    let tile = if mm.k <= SHALLOW_K { shallow_tile(gpu) } else { tile(gpu) };
    tile.for_depth(mm.k)
}

/// The workgroup shape of the skinny-M path (`shaders/matvec.wgsl`) on this device.
pub fn matvec_shape(gpu: &Gpu) -> MatvecShape {
    gpu.setting(matvec_shape_for_adapter)
}

pub fn set_matvec_shape(gpu: &Gpu, shape: MatvecShape) {
    gpu.set_setting(shape);
}

/// The key a tuned tile is cached under: adapter name, backend and driver version.
pub fn adapter_key(info: &wgpu::AdapterInfo) -> String {
    format!("{} | {:?} | {} {}", info.name, info.backend, info.driver, info.driver_info)
}

/// The cached tile for this adapter if `kiln bench --tune` ran on it, else the default.
/// `KILN_MATMUL_TILE=bm,bn,bk,tm,tn` overrides both (for experiments).
pub fn tile_for_adapter(info: &wgpu::AdapterInfo) -> MatmulTile {
    tile_from_env("KILN_MATMUL_TILE")
        .or_else(|| read_cache(&tune_file()).remove(&adapter_key(info)))
        .unwrap_or_else(|| default_tile(info.device_type))
}

/// The shallow products' tile for this adapter: `KILN_MATMUL_TILE_SHALLOW`, else the cached
/// one, else [`default_shallow_tile`].
pub fn shallow_tile_for_adapter(info: &wgpu::AdapterInfo) -> ShallowTile {
    tile_from_env("KILN_MATMUL_TILE_SHALLOW")
        .map(ShallowTile)
        .or_else(|| read_cache(&shallow_tune_file()).remove(&adapter_key(info)))
        .unwrap_or_else(|| default_shallow_tile(info.device_type))
}

/// A tile from `bm,bn,bk,tm,tn` in the environment variable `name` (for experiments); a value
/// that does not parse is ignored with a warning.
fn tile_from_env(name: &str) -> Option<MatmulTile> {
    let text = std::env::var(name).ok()?;
    if let Some([bm, bn, bk, tm, tn]) = parse_u32_list(&text).as_deref() {
        return Some(MatmulTile::new(*bm, *bn, *bk, *tm, *tn));
    }
    eprintln!("warning: {name}={text:?} is not `bm,bn,bk,tm,tn`; ignored");
    None
}

/// Records the tuned tile for an adapter (written to a temporary file, then renamed).
pub fn write_tune_cache(info: &wgpu::AdapterInfo, tile: MatmulTile) -> Result<PathBuf> {
    write_cache(tune_file(), info, tile)
}

/// Records the tuned tile of shallow products for an adapter.
pub fn write_shallow_tune_cache(info: &wgpu::AdapterInfo, tile: MatmulTile) -> Result<PathBuf> {
    write_cache(shallow_tune_file(), info, ShallowTile(tile))
}

/// A per-adapter cache of tuned settings, or an empty one where the file is missing or unread.
fn read_cache<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> std::collections::BTreeMap<String, T> {
    std::fs::read_to_string(path).ok().and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
}

/// Sets this adapter's entry of the cache at `path` (written to a temporary file, then renamed).
fn write_cache<T: Serialize + serde::de::DeserializeOwned>(
    path: PathBuf,
    info: &wgpu::AdapterInfo,
    value: T,
) -> Result<PathBuf> {
    let mut cache = read_cache::<T>(&path);
    cache.insert(adapter_key(info), value);
    let dir = crate::util::cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let text = serde_json::to_string_pretty(&cache).expect("a map of plain settings serialises");
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Split-K for tiled products with too few output tiles to fill the device (a 512-row product
/// on a GPU with a hundred cores, one MiniLM e-mail of 128 tokens): the K sum is cut into
/// ranges that separate workgroups compute into a scratch of partial sums, and a second
/// dispatch adds them in a fixed order and stores the result (`matmul.wgsl`).
///
/// A product is split when its workgroups (tiles × batch) number fewer than `target_groups`:
/// into enough ranges to reach it, at most [`MAX_SPLITS`], each at least `min_depth` of K.
/// A `target_groups` of 0 never splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitK {
    pub target_groups: u32,
    pub min_depth: u32,
}

/// The most K ranges one product is split into: past it the partial sums' traffic grows
/// faster than the workgroups gained.
pub const MAX_SPLITS: u32 = 16;

/// How one product is split: `splits` ranges of `k_chunk` (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    pub splits: u32,
    pub k_chunk: u32,
}

impl SplitK {
    pub const OFF: SplitK = SplitK { target_groups: 0, min_depth: 0 };

    pub const fn new(target_groups: u32, min_depth: u32) -> Self {
        SplitK { target_groups, min_depth }
    }

    /// Policies worth timing on any adapter (`kiln bench --tune`): targets from a few
    /// workgroups per core of a CPU adapter to a few per core of a large GPU.
    pub fn candidates() -> Vec<SplitK> {
        let mut v = vec![SplitK::OFF];
        v.extend([16, 64, 128, 256, 512].map(|target| SplitK::new(target, 128)));
        v.push(SplitK::new(256, 64));
        v
    }

    /// How `mm` on `tile` is split, or None to run it whole. Ranges are whole K slices of the
    /// tile; a split the adapter could not bind or dispatch is not taken.
    pub fn plan(&self, mm: &Matmul, tile: MatmulTile, limits: &wgpu::Limits) -> Option<SplitPlan> {
        let groups = (mm.n as u64).div_ceil(tile.bn as u64) * (mm.m as u64).div_ceil(tile.bm as u64) * mm.batch as u64;
        let target = self.target_groups as u64;
        if target == 0 || groups >= target {
            return None;
        }
        let by_depth = mm.k as u64 / self.min_depth.max(1) as u64;
        let wanted = target.div_ceil(groups).min(by_depth).min(MAX_SPLITS as u64);
        if wanted < 2 {
            return None;
        }
        let k_chunk = (mm.k as u64).div_ceil(wanted).next_multiple_of(tile.bk as u64);
        let splits = (mm.k as u64).div_ceil(k_chunk);
        let partial_bytes = 4 * splits * (mm.batch * mm.m * mm.n) as u64;
        let fits = splits * mm.batch as u64 <= limits.max_compute_workgroups_per_dimension as u64
            && partial_bytes <= limits.max_storage_buffer_binding_size;
        (splits >= 2 && fits).then_some(SplitPlan { splits: splits as u32, k_chunk: k_chunk as u32 })
    }

    /// How `kiln devices` and `kiln bench` name it.
    pub fn describe(&self) -> String {
        if self.target_groups == 0 {
            "no split-K".into()
        } else {
            format!("split-K below {} workgroups (K ranges ≥ {})", self.target_groups, self.min_depth)
        }
    }
}

/// Split-K off on a CPU adapter: lavapipe runs a workgroup per thread, and a product with a
/// tile per core already keeps it busy; on a GPU, products short of 256 workgroups (two per
/// core of a 132-SM card) split, K ranges at least 128 deep. Not yet measured on a GPU:
/// `kiln bench --tune` times [`SplitK::candidates`] and caches the best per adapter.
pub fn default_split_k(device_type: wgpu::DeviceType) -> SplitK {
    match device_type {
        wgpu::DeviceType::Cpu => SplitK::OFF,
        _ => SplitK::new(256, 128),
    }
}

fn split_k_file() -> PathBuf {
    crate::util::cache_dir().join("matmul_split_k.json")
}

/// This adapter's split-K policy: `KILN_SPLIT_K=off` or `KILN_SPLIT_K=target_groups,min_depth`,
/// else the one `kiln bench --tune` cached for it, else [`default_split_k`].
pub fn split_k_for_adapter(info: &wgpu::AdapterInfo) -> SplitK {
    match std::env::var("KILN_SPLIT_K").as_deref() {
        Ok("off") => return SplitK::OFF,
        Ok(text) if !text.is_empty() => match parse_u32_list(text).as_deref() {
            Some(&[target, depth]) if depth > 0 => return SplitK::new(target, depth),
            _ => eprintln!("warning: KILN_SPLIT_K={text:?} is not `off` or `target_groups,min_depth`; ignored"),
        },
        _ => {}
    }
    read_cache(&split_k_file()).remove(&adapter_key(info)).unwrap_or_else(|| default_split_k(info.device_type))
}

/// This device's [`SplitK`].
pub fn split_k(gpu: &Gpu) -> SplitK {
    gpu.setting(split_k_for_adapter)
}

pub fn set_split_k(gpu: &Gpu, split: SplitK) {
    gpu.set_setting(split);
}

/// Records the tuned split-K policy for an adapter.
pub fn write_split_k_cache(info: &wgpu::AdapterInfo, split: SplitK) -> Result<PathBuf> {
    write_cache(split_k_file(), info, split)
}

/// Products with at most this many rows (M) take the skinny path, `shaders/matvec.wgsl`:
/// generation with a KV cache multiplies one row (or a few) by every weight matrix, and the
/// tiled kernel would compute a whole BM-row tile to keep one. On lavapipe (Mesa 25.0.7) the
/// skinny path still wins at 16 rows of [1536, 576]ᵀ (5.3 ms against 35 ms) and at 32 (12 ms
/// against 35 ms); 16 keeps the MR×TN accumulators small on a GPU too.
pub const SKINNY_M: usize = 16;

/// The workgroup shape of the skinny path: `cs` column slots of `ks` invocations that split
/// the K sum of one column, each invocation owning `tn` columns of its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatvecShape {
    pub ks: u32,
    pub cs: u32,
    pub tn: u32,
}

impl MatvecShape {
    pub const fn new(ks: u32, cs: u32, tn: u32) -> Self {
        MatvecShape { ks, cs, tn }
    }

    /// Columns each invocation owns for `m` rows: fewer as rows grow, so the MR×TN
    /// accumulators stay in registers.
    pub fn tn(&self, m: usize) -> u32 {
        (self.tn >> (m.next_power_of_two().trailing_zeros() / 2)).max(1)
    }

    /// Columns of C (column groups of 4 in `matvec_vec4n`) one workgroup computes.
    pub fn cols(&self, m: usize) -> u32 {
        self.cs * self.tn(m)
    }

    /// The WGSL constants `shaders/matvec.wgsl` is specialised with, for `m` rows: MR, the
    /// rows a pipeline has registers for, is `m` rounded up to a power of two, so one row
    /// (the common case) runs code with no row loop at all.
    pub fn header(&self, m: usize) -> String {
        format!(
            "const KS: u32 = {}u;\nconst CS: u32 = {}u;\nconst TN: u32 = {}u;\nconst MR: u32 = {}u;\n",
            self.ks,
            self.cs,
            self.tn(m),
            m.next_power_of_two()
        )
    }
}

/// The skinny path's shape by device type: on lavapipe one invocation per column slot
/// (KS = 1: its invocations are SIMD lanes that load one by one, so splitting K only adds a
/// reduction; 1,16,4 measured best among 1,{8,16,32,64},{2,4,8} and 4..16-way K splits),
/// on a GPU 64 invocations per column, reading a B row in coalesced runs (not measured here).
pub fn default_matvec_shape(device_type: wgpu::DeviceType) -> MatvecShape {
    match device_type {
        wgpu::DeviceType::Cpu => MatvecShape::new(1, 16, 4),
        _ => MatvecShape::new(64, 4, 1),
    }
}

/// The skinny path's shape for an adapter; `KILN_MATVEC=ks,cs,tn` overrides the default
/// (for experiments).
pub fn matvec_shape_for_adapter(info: &wgpu::AdapterInfo) -> MatvecShape {
    if let Ok(text) = std::env::var("KILN_MATVEC") {
        match parse_u32_list(&text).as_deref() {
            Some(&[ks, cs, tn]) if ks.is_power_of_two() && cs > 0 && tn > 0 => return MatvecShape::new(ks, cs, tn),
            _ => eprintln!("warning: KILN_MATVEC={text:?} is not `ks,cs,tn` with ks a power of two; ignored"),
        }
    }
    default_matvec_shape(info.device_type)
}

/// Sizes and flags of one (batched) matmul.
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    /// Add the product into C instead of overwriting it (gradient accumulation).
    pub accumulate: bool,
    /// A dropout mask fused into one operand, as `dropout::apply` would give it (batch 1).
    pub dropout: Option<(DropOn, DropoutMask)>,
    /// The caller accepts A and B rounded to f16 (a frozen base's forward and dX): where the
    /// device's precision is f16, a tiled product then runs on cooperative matrices
    /// ([`matmul_coop`](super::matmul_coop)).
    pub mixed_precision: bool,
}

/// Which matrix a fused dropout applies to: its element i (row-major as stored) is the one
/// `dropout::apply` on that tensor would keep or drop, so LoRA's dropout of its input needs
/// no dispatch and no copy of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropOn {
    /// A as stored (LoRA's forward: dropout(x)·Aᵀ).
    A = 1,
    /// B as stored (dA = dhᵀ·dropout(x)).
    B = 2,
    /// The product alpha·op(A)·op(B), before bias and accumulation (dx += dropout'(dh·A)).
    Product = 3,
}

impl DropOn {
    /// The same operand once A and B trade places (a product run as its transpose).
    fn swapped(self) -> DropOn {
        match self {
            DropOn::A => DropOn::B,
            DropOn::B => DropOn::A,
            DropOn::Product => DropOn::Product,
        }
    }
}

impl Matmul {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Matmul {
            m,
            n,
            k,
            batch: 1,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            accumulate: false,
            dropout: None,
            mixed_precision: false,
        }
    }
    pub fn mixed_precision(mut self, accept: bool) -> Self {
        self.mixed_precision = accept;
        self
    }
    pub fn dropout(mut self, on: DropOn, mask: DropoutMask) -> Self {
        self.dropout = Some((on, mask));
        self
    }
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    pub fn trans_a(mut self, t: bool) -> Self {
        self.trans_a = t;
        self
    }
    pub fn trans_b(mut self, t: bool) -> Self {
        self.trans_b = t;
        self
    }
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    pub fn accumulate(mut self, acc: bool) -> Self {
        self.accumulate = acc;
        self
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    has_bias: u32,
    accumulate: u32,
    alpha: f32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    /// C stored transposed (`matvec.wgsl` only; see [`matmul_into`]).
    trans_c: u32,
    offset_a: u32,
    offset_b: u32,
    offset_c: u32,
    /// What `epilogue_out` also gets (`matmul.wgsl` only): [`Epilogue::code`], 0 for nothing.
    epilogue: u32,
    drop_on: u32,
    drop_seed: u32,
    drop_step: u32,
    drop_threshold: u32,
    drop_scale: f32,
    /// Split-K (`matmul.wgsl` only; see [`SplitK`]): the batch size, the number of K ranges
    /// and the length of each.
    batch: u32,
    splits: u32,
    k_chunk: u32,
}

const OP: &str = "matmul";

/// The bindings of the tiled kernels (`matmul.wgsl`, `matmul_coop.wgsl`), which share one layout.
const TILED: &[Access] =
    &[Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::Read, Access::ReadWrite];

/// Batch stride of an operand: one matrix per batch entry, or one shared by all (stride 0).
fn batch_stride(name: &'static str, t: &Tensor, per_matrix: usize, batch: usize) -> Result<u32> {
    if t.numel() == per_matrix * batch {
        u32_of(OP, name, if batch == 1 { 0 } else { per_matrix })
    } else if t.numel() == per_matrix {
        Ok(0)
    } else {
        expect_numel(OP, name, t, per_matrix * batch, "batch × rows × cols").map(|_| 0)
    }
}

/// What a product's epilogue computes from C, beside storing it.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// f(C): the activation after a linear layer.
    Activation(Activation),
    /// unit(gate)·C: SwiGLU or GeGLU, C being the up-projection and `gate` (shaped as C) the
    /// gate projection.
    Gated(GatedUnit, &'a Tensor),
}

impl Epilogue<'_> {
    /// The number `matmul.wgsl` knows it by (its EPI_* constants).
    fn code(self) -> u32 {
        match self {
            Epilogue::Activation(Activation::GeluErf) => 1,
            Epilogue::Activation(Activation::GeluTanh) => 2,
            Epilogue::Activation(Activation::Silu) => 3,
            Epilogue::Activation(Activation::Relu) => 4,
            Epilogue::Activation(Activation::Relu6) => 5,
            Epilogue::Activation(Activation::Tanh) => 6,
            Epilogue::Gated(GatedUnit::SwiGlu, _) => 7,
            Epilogue::Gated(GatedUnit::GeGlu, _) => 8,
        }
    }
}

/// Whether [`matmul_epilogue_into`] applies its epilogue inside the tiled matmul (one dispatch)
/// or runs the elementwise kernel after the product (two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedEpilogues(pub bool);

impl FusedEpilogues {
    /// "fused" or "separate", as `kiln devices` and `kiln bench` report it.
    pub fn name(self) -> &'static str {
        if self.0 { "fused" } else { "separate" }
    }
}

/// Fused on a GPU, where the second dispatch and its pass over C cost more than the epilogue's
/// arithmetic; separate on a CPU adapter, where lavapipe ran the fused MLP up-projection with
/// GELU 2–3% slower than the product then the activation (README, "Whole training steps and
/// where their time goes"). `KILN_EPILOGUES=fused|separate` overrides it.
pub fn default_fused_epilogues(device_type: wgpu::DeviceType) -> FusedEpilogues {
    match std::env::var("KILN_EPILOGUES").as_deref() {
        Ok("fused") => FusedEpilogues(true),
        Ok("separate") => FusedEpilogues(false),
        value => {
            if let Ok(text) = value
                && !text.is_empty()
            {
                eprintln!("warning: KILN_EPILOGUES={text:?} is not `fused` or `separate`; ignored");
            }
            FusedEpilogues(device_type != wgpu::DeviceType::Cpu)
        }
    }
}

/// This device's [`FusedEpilogues`].
pub fn fused_epilogues(gpu: &Gpu) -> FusedEpilogues {
    gpu.setting(|info| default_fused_epilogues(info.device_type))
}

/// Sets whether epilogues run fused (tests run both on any adapter).
pub fn set_fused_epilogues(gpu: &Gpu, fused: FusedEpilogues) {
    gpu.set_setting(fused);
}

/// Records C = alpha·op(A)·op(B) (+ bias[N]) (+ C if accumulating) into `c`, and returns the
/// epilogue of C (a new tensor shaped as C). With [`FusedEpilogues`] on, the tiled kernel does
/// both in one dispatch; otherwise, and for a product that takes the skinny kernel (at most
/// [`SKINNY_M`] rows or columns), the elementwise kernel follows the product.
pub fn matmul_epilogue_into(
    gpu: &Gpu,
    mm: &Matmul,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    epilogue: Epilogue,
) -> Result<Tensor> {
    if let Epilogue::Gated(_, gate) = epilogue {
        gate.expect_dtype(OP, DType::F32)?;
        expect_numel(OP, "gate", gate, c.numel(), "the size of c")?;
        if gate.same_buffer(c) {
            return Err(Error::invalid(OP, "the gate must not share a buffer with the output `c`"));
        }
    }
    if mm.m <= SKINNY_M || mm.n <= SKINNY_M || !fused_epilogues(gpu).0 {
        matmul_into(gpu, mm, a, b, bias, c)?;
        return match epilogue {
            Epilogue::Activation(act) => ew::activation(gpu, act, c),
            Epilogue::Gated(unit, gate) => ew::gated(gpu, unit, gate, c),
        };
    }
    let out = Tensor::empty(gpu, c.shape(), DType::F32)?;
    product(gpu, mm, a, b, bias, c, Some((epilogue, &out)))?;
    Ok(out)
}

/// Records C = alpha·op(A)·op(B) (+ bias[N]) (+ C if accumulating) into `c`.
///
/// Bindings: 1 `a`, 2 `b`, 3 `bias` (or nothing), 4 `c`; the tiled kernel also 5
/// `epilogue_out` and 6 `gate` (see [`matmul_epilogue_into`]) and 7 `partials`, split-K's
/// scratch (see [`SplitK`]). A and B may be one matrix shared across the batch, or one per batch
/// entry; C is `[batch, M, N]`.
pub fn matmul_into(gpu: &Gpu, mm: &Matmul, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, c: &Tensor) -> Result<()> {
    product(gpu, mm, a, b, bias, c, None)
}

/// [`matmul_into`], with an epilogue on the tiled path (the caller keeps skinny products off it).
fn product(
    gpu: &Gpu,
    mm: &Matmul,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    epilogue: Option<(Epilogue, &Tensor)>,
) -> Result<()> {
    for t in [a, b, c] {
        t.expect_dtype(OP, DType::F32)?;
    }
    if mm.batch == 0 || mm.m == 0 || mm.n == 0 {
        return Ok(());
    }
    let stride_a = batch_stride("a", a, mm.m * mm.k, mm.batch)?;
    let stride_b = batch_stride("b", b, mm.k * mm.n, mm.batch)?;
    expect_numel(OP, "c", c, mm.batch * mm.m * mm.n, "batch × M × N")?;
    if let Some(bias) = bias {
        expect_numel(OP, "bias", bias, mm.n, "N")?;
    }
    if a.same_buffer(c) || b.same_buffer(c) {
        return Err(Error::invalid(OP, "the output `c` must not share a buffer with `a` or `b`"));
    }
    if let Some((_, mask)) = mm.dropout {
        if mm.batch != 1 {
            return Err(Error::invalid(OP, "a fused dropout takes one matrix, not a batch"));
        }
        mask.check(OP)?;
    }
    let (drop_on, mask) = mm.dropout.map_or((0, DropoutMask { p: 0.0, seed: 0, step: 0 }), |(on, m)| (on as u32, m));
    let params = Params {
        m: u32_of(OP, "M", mm.m)?,
        n: u32_of(OP, "N", mm.n)?,
        k: u32_of(OP, "K", mm.k)?,
        trans_a: mm.trans_a as u32,
        trans_b: mm.trans_b as u32,
        has_bias: bias.is_some() as u32,
        accumulate: mm.accumulate as u32,
        alpha: mm.alpha,
        stride_a,
        stride_b,
        stride_c: u32_of(OP, "M×N", if mm.batch == 1 { 0 } else { mm.m * mm.n })?,
        trans_c: 0,
        offset_a: 0,
        offset_b: 0,
        offset_c: 0,
        epilogue: epilogue.map_or(0, |(e, _)| e.code()),
        drop_on,
        drop_seed: mask.seed,
        drop_step: mask.step,
        drop_threshold: mask.threshold(),
        drop_scale: mask.scale(),
        batch: 0,
        splits: 1,
        k_chunk: 0,
    };
    let access = &[Access::Read, Access::Read, Access::Read, Access::ReadWrite];
    let batch = u32_of(OP, "batch", mm.batch)?;
    if epilogue.is_some() && (mm.m <= SKINNY_M || mm.n <= SKINNY_M) {
        return Err(Error::invalid(OP, "an epilogue runs on the tiled kernel only, not on a skinny product"));
    }
    if mm.m <= SKINNY_M {
        let entry = skinny_entry(mm);
        let header = matvec_shape(gpu).header(mm.m);
        let spec = KernelSpec { file: shader!("matvec"), entry, header: &header, access };
        let groups = skinny_groups(gpu, mm, entry, batch);
        let bindings = [("a", Some(a)), ("b", Some(b)), ("bias", bias), ("c", Some(c))];
        return gpu.dispatch(OP, &spec, bytemuck::bytes_of(&params), &bindings, groups);
    }
    if mm.n <= SKINNY_M {
        // Few columns (LoRA's x·Aᵀ and dh = dy·B at rank r): a tile would compute BN columns
        // to keep r of them, so the skinny kernel runs the transpose, Cᵀ = op(B)ᵀ·op(A)ᵀ, and
        // stores it transposed. op(B)ᵀ is B read with the other transpose flag, and so is A;
        // a fused dropout follows its operand to the other binding.
        let t = Matmul {
            m: mm.n,
            n: mm.m,
            trans_a: !mm.trans_b,
            trans_b: !mm.trans_a,
            dropout: mm.dropout.map(|(on, mask)| (on.swapped(), mask)),
            ..*mm
        };
        let swapped = Params {
            m: params.n,
            n: params.m,
            trans_a: t.trans_a as u32,
            trans_b: t.trans_b as u32,
            stride_a: params.stride_b,
            stride_b: params.stride_a,
            trans_c: 1,
            drop_on: t.dropout.map_or(0, |(on, _)| on as u32),
            ..params
        };
        let entry = skinny_entry(&t);
        let header = matvec_shape(gpu).header(t.m);
        let spec = KernelSpec { file: shader!("matvec"), entry, header: &header, access };
        let groups = skinny_groups(gpu, &t, entry, batch);
        let bindings = [("a", Some(b)), ("b", Some(a)), ("bias", bias), ("c", Some(c))];
        return gpu.dispatch(OP, &spec, bytemuck::bytes_of(&swapped), &bindings, groups);
    }
    let (out, gate) = match epilogue {
        None => (None, None),
        Some((Epilogue::Activation(_), out)) => (Some(out), None),
        Some((Epilogue::Gated(_, gate), out)) => (Some(out), Some(gate)),
    };
    // The bindings of a product in one dispatch (not split).
    let whole = [
        ("a", Some(a)),
        ("b", Some(b)),
        ("bias", bias),
        ("c", Some(c)),
        ("epilogue_out", out),
        ("gate", gate),
        ("partials", None),
    ];
    if mm.mixed_precision
        && let Some(shape) = matmul_coop::active(gpu)
    {
        let header = shape.header(epilogue.is_some());
        let spec = KernelSpec { file: shader!("matmul_coop"), entry: "matmul_coop", header: &header, access: TILED };
        let groups = [(mm.n as u32).div_ceil(shape.block()), (mm.m as u32).div_ceil(shape.block()), batch];
        return gpu.dispatch(OP, &spec, bytemuck::bytes_of(&params), &whole, groups);
    }
    let tile = tile_for(gpu, mm);
    let tiles = [(mm.n as u32).div_ceil(tile.bn), (mm.m as u32).div_ceil(tile.bm)];
    let split = split_k(gpu).plan(mm, tile, gpu.limits());
    // The header says whether the product has an epilogue (its code in a plain product's store
    // loop cost lavapipe 1–3%) and whether it is split: a pipeline for each combination.
    let header = format!(
        "{}const HAS_EPILOGUE: bool = {};\nconst SPLIT_K: bool = {};\n",
        tile.header(),
        epilogue.is_some(),
        split.is_some()
    );
    let spec = |entry| KernelSpec { file: shader!("matmul"), entry, header: &header, access: TILED };
    let Some(split) = split else {
        return gpu.dispatch(OP, &spec("matmul"), bytemuck::bytes_of(&params), &whole, [tiles[0], tiles[1], batch]);
    };
    let params = Params { batch, splits: split.splits, k_chunk: split.k_chunk, ..params };
    let partials = Tensor::empty(gpu, &[split.splits as usize * mm.batch * mm.m * mm.n], DType::F32)?;
    let bindings = [
        ("a", Some(a)),
        ("b", Some(b)),
        ("bias", None),
        ("c", None),
        ("epilogue_out", None),
        ("gate", None),
        ("partials", Some(&partials)),
    ];
    let groups = [tiles[0], tiles[1], batch * split.splits];
    gpu.dispatch(OP, &spec("matmul"), bytemuck::bytes_of(&params), &bindings, groups)?;
    let bindings = [
        ("a", None),
        ("b", None),
        ("bias", bias),
        ("c", Some(c)),
        ("epilogue_out", out),
        ("gate", gate),
        ("partials", Some(&partials)),
    ];
    let groups = gpu.grid_1d((mm.batch * mm.m * mm.n).div_ceil(256) as u64);
    gpu.dispatch(OP, &spec("matmul_split_sum"), bytemuck::bytes_of(&params), &bindings, groups)
}

/// The skinny path's entry point for a product of at most [`SKINNY_M`] rows. The vec4 entries
/// read whole vec4s; a fused dropout is in the scalar one only.
fn skinny_entry(mm: &Matmul) -> &'static str {
    if mm.dropout.is_some() {
        "matvec"
    } else if !mm.trans_a && mm.trans_b && mm.k > 0 && mm.k.is_multiple_of(4) {
        "matvec_vec4"
    } else if !mm.trans_a && !mm.trans_b && mm.n.is_multiple_of(4) {
        "matvec_vec4n"
    } else {
        "matvec"
    }
}

/// One workgroup per block of columns (of 4-column groups in `matvec_vec4n`), for every row at
/// once; blocks fold into x and y.
fn skinny_groups(gpu: &Gpu, mm: &Matmul, entry: &str, batch: u32) -> [u32; 3] {
    let shape = matvec_shape(gpu);
    let cols = if entry == "matvec_vec4n" { mm.n / 4 } else { mm.n };
    let [x, y, _] = gpu.grid_1d((cols as u64).div_ceil(shape.cols(mm.m) as u64));
    [x, y, batch]
}

/// C `[M, N]` = A `[M, K]` · Bᵀ for a B `[N, K]` that may exceed one storage binding (a
/// 262,144-word LM head is 671 MB in f32; lavapipe binds 128 MiB): B is bound a block of rows
/// at a time ([`row_chunks`]), each block's columns of C computed into a scratch and copied
/// into place. One plain matmul when B fits. C must fit one binding. `mixed_precision`: the
/// caller accepts f16 inputs (a frozen head; [`Matmul::mixed_precision`]).
pub fn matmul_bt_wide_into(gpu: &Gpu, a: &Tensor, b: &Tensor, c: &Tensor, mixed_precision: bool) -> Result<()> {
    const WIDE: &str = "matmul_bt_wide";
    let (n, k) = (b.dim(0), b.dim(-1));
    let m = a.numel() / k.max(1);
    expect_numel(WIDE, "a", a, m * k, "rows × K")?;
    expect_numel(WIDE, "c", c, m * n, "rows of a × rows of b")?;
    let blocks = row_chunks(WIDE, gpu, n, (k * 4) as u64)?;
    if blocks.len() == 1 {
        return matmul_into(gpu, &Matmul::new(m, n, k).trans_b(true).mixed_precision(mixed_precision), a, b, None, c);
    }
    let c2 = c.reshape(&[m, n])?;
    for (start, count) in blocks {
        let part = Tensor::empty(gpu, &[m, count], DType::F32)?;
        let mm = Matmul::new(m, count, k).trans_b(true).mixed_precision(mixed_precision);
        matmul_into(gpu, &mm, a, &b.narrow_rows(start, count)?, None, &part)?;
        copy_cols(gpu, &part, &c2, ColumnBlock { width: count, src_off: 0, dst_off: start }, false)?;
    }
    Ok(())
}

/// C = op(A)·op(B) with sizes taken from the shapes: A is `[..., M, K]` (`[..., K, M]` when
/// `trans_a`), B is `[K, N]` or `[..., K, N]` (`[N, K]` forms when `trans_b`). Leading dims of
/// A are the batch; a 2-D B is shared across it. Returns C `[..., M, N]`.
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    for (name, t) in [("a", a), ("b", b)] {
        if t.rank() < 2 {
            return Err(Error::Shape {
                op: OP,
                tensor: name,
                expected: "at least 2 dims".into(),
                found: t.shape().to_vec(),
            });
        }
    }
    let (m, k) = if trans_a { (a.dim(-1), a.dim(-2)) } else { (a.dim(-2), a.dim(-1)) };
    let (kb, n) = if trans_b { (b.dim(-1), b.dim(-2)) } else { (b.dim(-2), b.dim(-1)) };
    if k != kb {
        return Err(Error::Shape {
            op: OP,
            tensor: "b",
            expected: format!("inner dimension {k} (a is {:?}, trans_a={trans_a}, trans_b={trans_b})", a.shape()),
            found: b.shape().to_vec(),
        });
    }
    let batch_dims = &a.shape()[..a.rank() - 2];
    let batch: usize = batch_dims.iter().product();
    if b.rank() > 2 && b.numel() != batch * k * n {
        return Err(Error::Shape {
            op: OP,
            tensor: "b",
            expected: format!("{batch} matrices of {k}×{n} (or one shared)"),
            found: b.shape().to_vec(),
        });
    }
    let mut out_shape = batch_dims.to_vec();
    out_shape.extend([m, n]);
    let c = Tensor::empty(gpu, &out_shape, DType::F32)?;
    matmul_into(gpu, &Matmul::new(m, n, k).batch(batch).trans_a(trans_a).trans_b(trans_b), a, b, None, &c)?;
    Ok(c)
}
