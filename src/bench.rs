//! Kernel benchmarks, shared by `kiln bench` and `benches/kernels.rs` (criterion).
//!
//! [`cases`] builds one [`Case`] per kernel and shape, with its inputs already on the GPU and
//! the useful work it does (flops, or bytes that must move at least once). [`measure`] takes
//! the median of several repetitions, each `iters` dispatches recorded into one submit and
//! waited on. Rooflines are measured in the same run: a device copy for bandwidth, the best
//! matmul seen for compute.

pub mod plot;
pub mod step;

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::adamw::{self, AdamW, Clip};
use crate::kernels::attention::{self, AttentionSpec};
use crate::kernels::dropout::{self, DropoutMask};
use crate::kernels::elementwise::{self, Activation};
use crate::kernels::embedding;
use crate::kernels::layer_norm::{self, Norm};
use crate::kernels::matmul::{Matmul, MatmulTile, matmul_into};
use crate::kernels::reduce;
use crate::kernels::rope::{self, Positions, RopeTables};
use crate::kernels::softmax_xent::{self, IGNORE_INDEX};
use crate::tensor::{DType, Tensor};

/// What a case's figure is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Bound {
    Compute,
    Memory,
}

/// One kernel at one shape, ready to run.
pub struct Case<'g> {
    pub kernel: String,
    pub shape: String,
    /// Floating-point operations per run (compute-bound kernels).
    pub flops: f64,
    /// Bytes that must be read or written at least once per run.
    pub bytes: f64,
    pub bound: Bound,
    pub run: Box<dyn FnMut() -> Result<()> + 'g>,
}

/// One row of `kiln bench`'s output.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub kernel: String,
    pub shape: String,
    pub median_ms: f64,
    pub bound: Bound,
    /// Set when the case counts flops (skinny matmuls count both flops and bytes).
    pub gflops: Option<f64>,
    /// Set when the case counts bytes.
    pub gbps: Option<f64>,
    /// Percent of the roofline measured in this run: copy bandwidth for memory-bound kernels,
    /// the best compute-bound matmul for compute-bound ones.
    pub roofline_pct: Option<f64>,
}

/// How big the cases are: `Small` finishes in a minute or two on lavapipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    Small,
    Full,
}

impl Scale {
    /// Small on a CPU adapter, full on a GPU.
    pub fn auto(gpu: &Gpu) -> Scale {
        if gpu.info().device_type == wgpu::DeviceType::Cpu { Scale::Small } else { Scale::Full }
    }
}

/// Median seconds per call of `f`, over `reps` repetitions of `iters` calls each.
pub fn time_it(gpu: &Gpu, reps: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        gpu.synchronize()?;
        times.push(start.elapsed().as_secs_f64() / iters as f64);
    }
    Ok(median(&mut times))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Times a case: a probe run sizes the repetitions to about 50 ms each, 5 repetitions.
pub fn measure(gpu: &Gpu, case: &mut Case) -> Result<Figure> {
    let probe = time_it(gpu, 1, 1, &mut case.run)?;
    let iters = (0.05 / probe.max(1e-6)).clamp(1.0, 100.0) as usize;
    let secs = time_it(gpu, 5, iters, &mut case.run)?;
    Ok(Figure {
        kernel: case.kernel.clone(),
        shape: case.shape.clone(),
        median_ms: secs * 1e3,
        bound: case.bound,
        gflops: (case.flops > 0.0).then(|| case.flops / secs / 1e9),
        gbps: (case.bytes > 0.0).then(|| case.bytes / secs / 1e9),
        roofline_pct: None,
    })
}

/// Fills in `roofline_pct` from the copy bandwidth and the best compute-bound matmul among
/// `figures`.
pub fn apply_rooflines(figures: &mut [Figure], copy_gbps: f64) -> f64 {
    let best = figures
        .iter()
        .filter(|f| f.kernel.starts_with("matmul") && f.bound == Bound::Compute)
        .filter_map(|f| f.gflops)
        .fold(0.0, f64::max);
    for f in figures.iter_mut() {
        f.roofline_pct = match (f.bound, f.gflops, f.gbps) {
            (Bound::Compute, Some(g), _) if best > 0.0 => Some(100.0 * g / best),
            (Bound::Memory, _, Some(b)) => Some(100.0 * b / copy_gbps),
            _ => None,
        };
    }
    best
}

fn random(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_f32(gpu, &data, shape)
}

const F32: f64 = 4.0;

/// The device copy, the memory roofline.
pub fn copy_case(gpu: &Gpu, bytes: usize) -> Result<Case<'_>> {
    let n = bytes / 4;
    let src = Tensor::zeros(gpu, &[n])?;
    let dst = Tensor::empty(gpu, &[n], DType::F32)?;
    Ok(Case {
        kernel: "copy".into(),
        shape: format!("{} MiB", bytes >> 20),
        flops: 0.0,
        bytes: 2.0 * (n * 4) as f64,
        bound: Bound::Memory,
        run: Box::new(move || gpu.copy(&src, &dst)),
    })
}

/// A matmul at `mm`. A skinny one (M ≤ [`SKINNY_BENCH_M`], token-by-token generation) is
/// memory-bound: its bytes are A, B and C moved once, and it is held to the copy roofline.
pub fn matmul_case(gpu: &Gpu, mm: Matmul) -> Result<Case<'_>> {
    let a = Tensor::zeros(gpu, &[mm.batch * mm.m * mm.k])?;
    let b = Tensor::zeros(gpu, &[mm.batch * mm.k * mm.n])?;
    let c = Tensor::empty(gpu, &[mm.batch * mm.m * mm.n], DType::F32)?;
    let t = |f: bool, s: &'static str| if f { s } else { "" };
    Ok(Case {
        kernel: format!("matmul{}{}", t(mm.trans_a, "_tA"), t(mm.trans_b, "_tB")),
        shape: if mm.batch > 1 {
            format!("{}x{}x{}x{}", mm.batch, mm.m, mm.n, mm.k)
        } else {
            format!("{}x{}x{}", mm.m, mm.n, mm.k)
        },
        flops: mm.flops(),
        bytes: F32 * (mm.batch * (mm.m * mm.k + mm.k * mm.n + mm.m * mm.n)) as f64,
        bound: if mm.m <= SKINNY_BENCH_M { Bound::Memory } else { Bound::Compute },
        run: Box::new(move || matmul_into(gpu, &mm, &a, &b, None, &c)),
    })
}

/// Products with too few output tiles to fill a GPU, where split-K could help: the LoRA step's
/// at 512 tokens (SmolLM2's q/o and down projections, the up-projection, a full fine-tune's
/// weight gradient) and one 128-token MiniLM e-mail's. The same at every scale: these are the
/// steps' own shapes.
pub fn split_k_shapes() -> Vec<Matmul> {
    vec![
        Matmul::new(512, 576, 576).trans_b(true),
        Matmul::new(512, 576, 1536).trans_b(true),
        Matmul::new(512, 1536, 576).trans_b(true),
        Matmul::new(576, 576, 512).trans_a(true),
        Matmul::new(128, 384, 384).trans_b(true),
        Matmul::new(128, 384, 1536).trans_b(true),
    ]
}

/// Each of [`split_k_shapes`] twice: `matmul_split_k` under a GPU's default split-K policy
/// whatever the adapter's, and `matmul_whole` with split-K off. The pairs show what splitting
/// gains on this adapter; `kiln bench --tune` picks the policy from the same products.
pub fn split_k_cases(gpu: &Gpu) -> Result<Vec<Case<'_>>> {
    use crate::kernels::matmul::{SplitK, default_split_k};
    let mut cases = Vec::new();
    for mm in split_k_shapes() {
        for (kernel, policy) in
            [("matmul_split_k", default_split_k(wgpu::DeviceType::DiscreteGpu)), ("matmul_whole", SplitK::OFF)]
        {
            let mut case = under_split_k(gpu, policy, matmul_case(gpu, mm)?);
            case.kernel = kernel.into();
            cases.push(case);
        }
    }
    Ok(cases)
}

/// How a device setting is read and written (`matmul::split_k` and `set_split_k`, ...).
type SettingAccess<T> = (fn(&Gpu) -> T, fn(&Gpu, T) -> Result<()>);

/// `case` run with a device setting at `value` (and put back after each run).
fn under_setting<'g, T: Copy + 'g>(
    gpu: &'g Gpu,
    value: T,
    (get, set): SettingAccess<T>,
    mut case: Case<'g>,
) -> Case<'g> {
    let mut run = std::mem::replace(&mut case.run, Box::new(|| Ok(())));
    case.run = Box::new(move || {
        let saved = get(gpu);
        set(gpu, value)?;
        let done = run();
        set(gpu, saved)?;
        done
    });
    case
}

/// `case` run with the device's split-K policy set to `policy`.
fn under_split_k<'g>(gpu: &'g Gpu, policy: crate::kernels::matmul::SplitK, case: Case<'g>) -> Case<'g> {
    use crate::kernels::matmul::{set_split_k, split_k};
    let set = |gpu: &Gpu, policy| {
        set_split_k(gpu, policy);
        Ok(())
    };
    under_setting(gpu, policy, (split_k, set), case)
}

/// `case` run with the device's matmul precision set to `precision`, whatever its default.
fn under_precision<'g>(gpu: &'g Gpu, precision: crate::kernels::matmul_coop::Precision, case: Case<'g>) -> Case<'g> {
    use crate::kernels::matmul_coop::{precision as current, set_precision};
    under_setting(gpu, precision, (current, set_precision), case)
}

/// The cooperative-matrix kernels (f16 inputs, f32 accumulation): `matmul_coop` on the square
/// products and the MLP up-projection's forward and dX of [`matmul_shapes`], beside their f32
/// `matmul` rows; `qmatmul_coop_*` and `qmatmul_dx_coop_*` on the tiled [`qmatmul_cases`] of an
/// F16, a Q4_0 and a Q4_K base, beside their f32 rows. None where the adapter cannot run them.
pub fn coop_cases(gpu: &Gpu, scale: Scale) -> Result<Vec<Case<'_>>> {
    use crate::kernels::matmul::{SHALLOW_K, SKINNY_M};
    use crate::kernels::matmul_coop::{Precision, coop_shape};
    use crate::quant::QuantType;
    if coop_shape(gpu).is_err() {
        return Ok(Vec::new());
    }
    let mut cases = Vec::new();
    // The tiled products (the skinny and the shallow ones stay f32: LoRA's, generation's).
    let tiled = |mm: &Matmul| mm.m > SKINNY_M && mm.n > SKINNY_M && mm.k > SHALLOW_K;
    for mm in matmul_shapes(scale).into_iter().filter(tiled) {
        let mut case = matmul_case(gpu, mm.mixed_precision(true))?;
        case.kernel = case.kernel.replacen("matmul", "matmul_coop", 1);
        cases.push(under_precision(gpu, Precision::F16, case));
    }
    let formats = [QuantType::F16, QuantType::Q4_0, QuantType::Q4_K];
    for case in qmatmul_cases_of(gpu, scale, &formats, Precision::F16)? {
        if case.bound == Bound::Compute {
            cases.push(case);
        }
    }
    Ok(cases)
}

/// Times [`split_k_shapes`] under each of [`SplitK::candidates`] and returns the policies
/// ranked by the products' total time, fastest first. Three rounds go through every policy in
/// turn, so a slow spell of the machine hits them alike; a product's time is its median over
/// the rounds. `progress` sees each policy's total in ms, or its error.
///
/// [`SplitK::candidates`]: crate::kernels::matmul::SplitK::candidates
pub fn tune_split_k(
    gpu: &Gpu,
    mut progress: impl FnMut(crate::kernels::matmul::SplitK, &Result<f64>),
) -> Vec<(crate::kernels::matmul::SplitK, f64)> {
    use crate::kernels::matmul::SplitK;
    const ROUNDS: usize = 3;
    let policies = SplitK::candidates();
    let shapes = split_k_shapes();
    // times[policy][shape]: one entry per round, or the policy's first error.
    let mut times: Vec<Result<Vec<Vec<f64>>>> = policies.iter().map(|_| Ok(vec![Vec::new(); shapes.len()])).collect();
    for _ in 0..ROUNDS {
        for (policy, slot) in policies.iter().zip(&mut times) {
            let Ok(per_shape) = slot else { continue };
            for (mm, runs) in shapes.iter().zip(per_shape.iter_mut()) {
                match matmul_case(gpu, *mm).and_then(|c| measure(gpu, &mut under_split_k(gpu, *policy, c))) {
                    Ok(figure) => runs.push(figure.median_ms),
                    Err(e) => {
                        *slot = Err(e);
                        break;
                    }
                }
            }
            gpu.trim_pool();
        }
    }
    let mut results = Vec::new();
    for (policy, slot) in policies.into_iter().zip(times) {
        let total = slot.map(|per_shape| per_shape.into_iter().map(|mut runs| median(&mut runs)).sum::<f64>());
        progress(policy, &total);
        if let Ok(ms) = total {
            results.push((policy, ms));
        }
    }
    results.sort_by(|a, b| a.1.total_cmp(&b.1));
    results
}

/// The MLP up-projection (tokens × 384 → 1536, with its bias) and a GELU after it: in one
/// dispatch through the matmul's epilogue, and as the product then the activation kernel
/// ([`FusedEpilogues`] picks between them per adapter type; these rows decide it).
pub fn epilogue_cases(gpu: &Gpu, scale: Scale) -> Result<Vec<Case<'_>>> {
    use crate::kernels::matmul::{
        Epilogue, FusedEpilogues, fused_epilogues, matmul_epilogue_into, set_fused_epilogues,
    };
    let tokens = if scale == Scale::Small { 1024 } else { 4096 };
    let mm = Matmul::new(tokens, 1536, 384).trans_b(true);
    let x = Tensor::zeros(gpu, &[tokens, 384])?;
    let w = Tensor::zeros(gpu, &[1536, 384])?;
    let bias = Tensor::zeros(gpu, &[1536])?;
    let c = Tensor::empty(gpu, &[tokens, 1536], DType::F32)?;
    let shape = format!("{tokens}x1536x384");
    let (x1, w1, bias1, c1) = (x.clone(), w.clone(), bias.clone(), c.clone());
    let gelu = Activation::GeluErf;
    Ok(vec![
        Case {
            kernel: "matmul_gelu".into(),
            shape: shape.clone(),
            flops: mm.flops(),
            bytes: 0.0,
            bound: Bound::Compute,
            // Fused whatever the adapter's default, which is what this row measures.
            run: Box::new(move || {
                let saved = fused_epilogues(gpu);
                set_fused_epilogues(gpu, FusedEpilogues(true));
                let done = matmul_epilogue_into(gpu, &mm, &x1, &w1, Some(&bias1), &c1, Epilogue::Activation(gelu));
                set_fused_epilogues(gpu, saved);
                done.map(drop)
            }),
        },
        Case {
            kernel: "matmul_then_gelu".into(),
            shape,
            flops: mm.flops(),
            bytes: 0.0,
            bound: Bound::Compute,
            run: Box::new(move || {
                matmul_into(gpu, &mm, &x, &w, Some(&bias), &c)?;
                elementwise::activation(gpu, gelu, &c).map(drop)
            }),
        },
    ])
}

/// The quantized matmul of a frozen base weight W `[n, k]` in every block format kiln keeps on
/// the GPU: the tiled forward and dX at `m` rows, and the skinny forward at one row (generation,
/// memory-bound: W's blocks are most of its bytes). W is quantized on the CPU first.
pub fn qmatmul_cases(gpu: &Gpu, scale: Scale) -> Result<Vec<Case<'_>>> {
    use crate::kernels::matmul_coop::Precision;
    qmatmul_cases_of(gpu, scale, &crate::quant::QuantType::ALL, Precision::F32)
}

/// [`qmatmul_cases`] for `formats`, run at `precision` (f16's rows named `qmatmul_coop_*`).
fn qmatmul_cases_of<'g>(
    gpu: &'g Gpu,
    scale: Scale,
    formats: &[crate::quant::QuantType],
    precision: crate::kernels::matmul_coop::Precision,
) -> Result<Vec<Case<'g>>> {
    use crate::kernels::matmul_coop::Precision;
    use crate::kernels::qmatmul::{QuantTensor, qmatmul_dx_into, qmatmul_into};
    use crate::quant::QuantWeights;
    let (m, n, k) = match scale {
        Scale::Small => (256, 1024, 1024),
        Scale::Full => (512, 4096, 4096),
    };
    let data = random(gpu, &[n, k], 7)?.to_f32_vec(gpu)?;
    let tag = if precision == Precision::F16 { "_coop" } else { "" };
    let mut cases = Vec::new();
    for &kind in formats {
        let w = QuantTensor::upload(gpu, &QuantWeights::quantize(kind, &data, n, k, "bench")?)?;
        for rows in [m, 1] {
            let x = Tensor::zeros(gpu, &[rows, k])?;
            let y = Tensor::empty(gpu, &[rows, n], DType::F32)?;
            let bytes = F32 * (rows * (k + n)) as f64 + w.byte_len() as f64;
            let flops = 2.0 * (rows * n * k) as f64;
            let bound = if rows <= SKINNY_BENCH_M { Bound::Memory } else { Bound::Compute };
            let shape = format!("{rows}x{n}x{k}");
            if rows > 1 {
                let (dy, dx, w) = (y.clone(), Tensor::empty(gpu, &[rows, k], DType::F32)?, w.clone());
                let case = Case {
                    kernel: format!("qmatmul_dx{tag}_{kind}"),
                    shape: shape.clone(),
                    flops,
                    bytes,
                    bound,
                    run: Box::new(move || qmatmul_dx_into(gpu, &dy, &w, &dx, 1.0, false)),
                };
                cases.push(under_precision(gpu, precision, case));
            }
            let w = w.clone();
            let case = Case {
                kernel: format!("qmatmul{tag}_{kind}"),
                shape,
                flops,
                bytes,
                bound,
                run: Box::new(move || qmatmul_into(gpu, &x, &w, None, &y, 1.0, false)),
            };
            cases.push(under_precision(gpu, precision, case));
        }
    }
    Ok(cases)
}

/// Rows up to which a benchmarked matmul counts as skinny (memory-bound).
pub const SKINNY_BENCH_M: usize = 16;

/// Square matmul sizes and transformer shapes for a scale, then skinny products.
pub fn matmul_shapes(scale: Scale) -> Vec<Matmul> {
    let squares: &[usize] = match scale {
        Scale::Small => &[256, 512, 1024],
        Scale::Full => &[256, 512, 1024, 2048, 4096],
    };
    let tokens = if scale == Scale::Small { 1024 } else { 4096 };
    let mut v: Vec<Matmul> = squares.iter().map(|&s| Matmul::new(s, s, s)).collect();
    // An MLP up-projection (tokens × 384 → 1536, MiniLM's), and its two backward matmuls.
    v.push(Matmul::new(tokens, 1536, 384));
    v.push(Matmul::new(tokens, 384, 1536).trans_b(true));
    v.push(Matmul::new(384, 1536, tokens).trans_a(true));
    // LoRA at rank 8 on a 384 → 384 linear: x·Aᵀ, dh = dy·B and dB = dyᵀ·h, products with 8
    // columns and a row per token (run as their transposes on the skinny kernel).
    v.push(Matmul::new(tokens, 8, 384).trans_b(true));
    v.push(Matmul::new(tokens, 8, 384));
    v.push(Matmul::new(384, 8, tokens).trans_a(true));
    // The LoRA products with K = 8 and a full tile of outputs: the forward's (x·Aᵀ)·Bᵀ and the
    // backward's dx += dh·A.
    v.push(Matmul::new(tokens, 384, 8).trans_b(true));
    v.push(Matmul::new(tokens, 384, 8));
    // Generation with a KV cache: x[M, C]·Wᵀ with W stored [out, in] (nn.Linear), SmolLM2-135M
    // sizes: the LM head, the MLP up and down projections, and a few rows at once; then one
    // with W stored [in, out] (GPT-2's Conv1D).
    v.push(Matmul::new(1, 49_152, 576).trans_b(true));
    v.push(Matmul::new(1, 1536, 576).trans_b(true));
    v.push(Matmul::new(1, 576, 1536).trans_b(true));
    v.push(Matmul::new(8, 1536, 576).trans_b(true));
    v.push(Matmul::new(16, 1536, 576).trans_b(true));
    v.push(Matmul::new(1, 1536, 576));
    v
}

/// One attention benchmark: the shape, whether it is causal, and whether keys are padded.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub seq: usize,
    pub head_dim: usize,
    pub causal: bool,
    /// A key mask with padding: row b keeps its first `seq - 4b` tokens, as a batch of
    /// e-mails of different lengths does.
    pub padded: bool,
}

impl AttentionShape {
    fn decoder(seq: usize) -> Self {
        AttentionShape { batch: 1, heads: 12, seq, head_dim: 64, causal: true, padded: false }
    }

    fn describe(&self) -> String {
        let AttentionShape { batch: b, heads: h, seq: t, head_dim: d, .. } = *self;
        let kind = if self.causal { " causal" } else { "" };
        let mask = if self.padded { " padded" } else { "" };
        format!("b{b} h{h} t{t} d{d}{kind}{mask}")
    }
}

/// The main job's attention (MiniLM: 8 e-mails of 64 tokens, 12 heads of 32, padded keys), then
/// a decoder's (12 heads of 64, causal) at growing lengths.
pub fn attention_shapes(scale: Scale) -> Vec<AttentionShape> {
    let minilm = AttentionShape { batch: 8, heads: 12, seq: 64, head_dim: 32, causal: false, padded: true };
    let lengths: &[usize] = match scale {
        Scale::Small => &[128, 512],
        Scale::Full => &[128, 512, 1024, 2048],
    };
    std::iter::once(minilm).chain(lengths.iter().map(|&t| AttentionShape::decoder(t))).collect()
}

/// Attention forward and backward at one shape.
pub fn attention_cases(gpu: &Gpu, shape: AttentionShape) -> Result<Vec<Case<'_>>> {
    let AttentionShape { batch: b, heads: h, seq: t, head_dim: d, .. } = shape;
    let spec = AttentionSpec::new(b, t, h, h, d, shape.causal);
    let q = random(gpu, &[b, t, h, d], 1)?;
    let k = random(gpu, &[b, t, h, d], 2)?;
    let v = random(gpu, &[b, t, h, d], 3)?;
    let mask = if shape.padded {
        let keep: Vec<u32> = (0..b * t).map(|i| u32::from(i % t < t.saturating_sub(4 * (i / t)).max(1))).collect();
        Some(Tensor::from_u32(gpu, &keep, &[b, t])?)
    } else {
        None
    };
    let fwd = attention::forward(gpu, &spec, &q, &k, &v, mask.as_ref())?;
    let dout = random(gpu, &[b, t, h, d], 4)?;
    let grads = [
        Tensor::empty(gpu, &[b, t, h, d], DType::F32)?,
        Tensor::empty(gpu, &[b, t, h, d], DType::F32)?,
        Tensor::empty(gpu, &[b, t, h, d], DType::F32)?,
    ];
    let described = shape.describe();
    let flops = spec.forward_flops();
    let (q2, k2, v2, mask2) = (q.clone(), k.clone(), v.clone(), mask.clone());
    Ok(vec![
        Case {
            kernel: "attention_fwd".into(),
            shape: described.clone(),
            flops,
            bytes: 0.0,
            bound: Bound::Compute,
            run: Box::new(move || attention::forward(gpu, &spec, &q, &k, &v, mask.as_ref()).map(drop)),
        },
        Case {
            kernel: "attention_bwd".into(),
            shape: described,
            // FlashAttention's convention: the backward does 2.5× the forward's work.
            flops: 2.5 * flops,
            bytes: 0.0,
            bound: Bound::Compute,
            run: Box::new(move || {
                attention::backward(
                    gpu,
                    &spec,
                    &q2,
                    &k2,
                    &v2,
                    mask2.as_ref(),
                    &fwd,
                    &dout,
                    (&grads[0], &grads[1], &grads[2]),
                    false,
                )
            }),
        },
    ])
}

/// The memory-bound kernels at `rows × cols` activations (and a vocabulary for the loss).
pub fn memory_cases(gpu: &Gpu, scale: Scale) -> Result<Vec<Case<'_>>> {
    let (rows, cols) = match scale {
        Scale::Small => (1024, 768),
        Scale::Full => (8192, 768),
    };
    let (xent_rows, vocab) = match scale {
        Scale::Small => (128, 50_257),
        Scale::Full => (1024, 50_257),
    };
    let params = match scale {
        Scale::Small => 4 << 20,
        Scale::Full => 64 << 20,
    };
    let n = (rows * cols) as f64;
    let shape = format!("{rows}x{cols}");
    let mut cases = Vec::new();

    let x = random(gpu, &[rows, cols], 5)?;
    let gamma = random(gpu, &[cols], 6)?;
    let beta = random(gpu, &[cols], 7)?;
    let dy = random(gpu, &[rows, cols], 8)?;
    for norm in [Norm::LayerNorm, Norm::RmsNorm] {
        let name = if norm == Norm::LayerNorm { "layer_norm" } else { "rms_norm" };
        let (x1, g1, b1) = (x.clone(), gamma.clone(), beta.clone());
        cases.push(Case {
            kernel: format!("{name}_fwd"),
            shape: shape.clone(),
            flops: 0.0,
            bytes: 2.0 * n * F32,
            bound: Bound::Memory,
            run: Box::new(move || layer_norm::forward(gpu, norm, &x1, &g1, Some(&b1), 1e-5).map(drop)),
        });
        // A residual add and the norm of its sum: in one dispatch, and as two.
        for (kernel, fused) in [(format!("add_{name}_fwd"), true), (format!("add_then_{name}_fwd"), false)] {
            let (x1, r1, g1, b1) = (x.clone(), dy.clone(), gamma.clone(), beta.clone());
            cases.push(Case {
                kernel,
                shape: shape.clone(),
                flops: 0.0,
                // x and the residual read, the sum and y written.
                bytes: 4.0 * n * F32,
                bound: Bound::Memory,
                run: Box::new(move || {
                    if fused {
                        return layer_norm::forward_residual(gpu, norm, &x1, &r1, &g1, Some(&b1), 1e-5).map(drop);
                    }
                    let sum = elementwise::add(gpu, &x1, &r1)?;
                    layer_norm::forward(gpu, norm, &sum, &g1, Some(&b1), 1e-5).map(drop)
                }),
            });
        }
        let (_, stats) = layer_norm::forward(gpu, norm, &x, &gamma, Some(&beta), 1e-5)?;
        let (x2, g2, dy2) = (x.clone(), gamma.clone(), dy.clone());
        let dx = Tensor::empty(gpu, &[rows, cols], DType::F32)?;
        let dg = Tensor::empty(gpu, &[cols], DType::F32)?;
        let db = Tensor::empty(gpu, &[cols], DType::F32)?;
        cases.push(Case {
            kernel: format!("{name}_bwd"),
            shape: shape.clone(),
            flops: 0.0,
            // x and dy read, dx written: the parameter pass re-reads x and dy from cache or
            // memory, but the minimum is one pass.
            bytes: 3.0 * n * F32,
            bound: Bound::Memory,
            run: Box::new(move || {
                layer_norm::backward(gpu, norm, &x2, &g2, &stats, &dy2, Some(&dx), Some((&dg, Some(&db))), false)
            }),
        });
    }
    for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Silu] {
        let x1 = x.clone();
        cases.push(Case {
            kernel: format!("{}_fwd", act.name()),
            shape: shape.clone(),
            flops: 0.0,
            bytes: 2.0 * n * F32,
            bound: Bound::Memory,
            run: Box::new(move || elementwise::activation(gpu, act, &x1).map(drop)),
        });
    }
    let (x1, dy1) = (x.clone(), dy.clone());
    let dx = Tensor::empty(gpu, &[rows, cols], DType::F32)?;
    cases.push(Case {
        kernel: "gelu_erf_bwd".into(),
        shape: shape.clone(),
        flops: 0.0,
        bytes: 3.0 * n * F32,
        bound: Bound::Memory,
        run: Box::new(move || elementwise::activation_backward(gpu, Activation::GeluErf, &x1, &dy1, &dx, false)),
    });
    let x1 = x.clone();
    cases.push(Case {
        kernel: "dropout".into(),
        shape: shape.clone(),
        flops: 0.0,
        bytes: 2.0 * n * F32,
        bound: Bound::Memory,
        run: Box::new(move || dropout::apply(gpu, DropoutMask { p: 0.1, seed: 1, step: 1 }, &x1).map(drop)),
    });
    let heads = cols / 64;
    let tables = RopeTables::new(gpu, 64, rows, 10_000.0)?;
    let xr = x.reshape(&[1, rows, heads, 64])?;
    cases.push(Case {
        kernel: "rope".into(),
        shape: shape.clone(),
        flops: 0.0,
        bytes: 2.0 * n * F32,
        bound: Bound::Memory,
        run: Box::new(move || rope::apply(gpu, &tables, &xr, Positions::Offset(0)).map(drop)),
    });
    let table = random(gpu, &[50_257, cols], 9)?;
    let ids: Vec<u32> = (0..rows as u32).map(|i| (i * 7919) % 50_257).collect();
    let ids_t = Tensor::from_u32(gpu, &ids, &[rows])?;
    cases.push(Case {
        kernel: "embedding_gather".into(),
        shape: format!("{rows} ids, 50257x{cols}"),
        flops: 0.0,
        bytes: 2.0 * n * F32,
        bound: Bound::Memory,
        run: Box::new(move || embedding::gather(gpu, &table, &ids_t).map(drop)),
    });

    let logits = random(gpu, &[xent_rows, vocab], 10)?;
    let targets: Vec<i32> = (0..xent_rows as i32).map(|i| (i * 31) % vocab as i32).collect();
    let targets = Tensor::from_i32(gpu, &targets, &[xent_rows])?;
    let ln = (xent_rows * vocab) as f64;
    let (l1, t1) = (logits.clone(), targets.clone());
    cases.push(Case {
        kernel: "softmax_xent_fwd".into(),
        shape: format!("{xent_rows}x{vocab}"),
        flops: 0.0,
        bytes: ln * F32,
        bound: Bound::Memory,
        run: Box::new(move || softmax_xent::forward(gpu, &l1, &t1, IGNORE_INDEX).map(drop)),
    });
    let fwd = softmax_xent::forward(gpu, &logits, &targets, IGNORE_INDEX)?;
    let dlogits = Tensor::empty(gpu, &[xent_rows, vocab], DType::F32)?;
    cases.push(Case {
        kernel: "softmax_xent_bwd".into(),
        shape: format!("{xent_rows}x{vocab}"),
        flops: 0.0,
        bytes: 2.0 * ln * F32,
        bound: Bound::Memory,
        run: Box::new(move || softmax_xent::backward(gpu, &logits, &targets, &fwd, 1.0, &dlogits, IGNORE_INDEX, false)),
    });

    let grad = random(gpu, &[params], 11)?;
    let param = random(gpu, &[params], 12)?;
    let m = Tensor::zeros(gpu, &[params])?;
    let v = Tensor::zeros(gpu, &[params])?;
    let g1 = grad.clone();
    cases.push(Case {
        kernel: "global_norm".into(),
        shape: format!("{params}"),
        flops: 0.0,
        bytes: params as f64 * F32,
        bound: Bound::Memory,
        run: Box::new(move || reduce::global_norm_squared(gpu, &[&g1]).map(drop)),
    });
    let norm_sq = reduce::global_norm_squared(gpu, &[&grad])?;
    let mut step = 0;
    cases.push(Case {
        kernel: "adamw".into(),
        shape: format!("{params}"),
        flops: 0.0,
        // grad, param, m, v read; param, m, v written.
        bytes: 7.0 * params as f64 * F32,
        bound: Bound::Memory,
        run: Box::new(move || {
            step += 1;
            let clip = Some(Clip { norm_sq: &norm_sq, max_norm: 1.0 });
            adamw::step(gpu, &AdamW::default(), 1e-4, step, &param, &grad, &m, &v, clip, None)
        }),
    });
    Ok(cases)
}

/// Times the matmul tile candidates on `mm` for one class of products, the deep ones
/// ([`matmul::tile`]) or those at most [`matmul::SHALLOW_K`] deep ([`matmul::shallow_tile`]),
/// and returns them ranked, fastest first. `progress` sees each tile's GFLOP/s, or its error.
///
/// [`matmul::tile`]: crate::kernels::matmul::tile
/// [`matmul::SHALLOW_K`]: crate::kernels::matmul::SHALLOW_K
/// [`matmul::shallow_tile`]: crate::kernels::matmul::shallow_tile
pub fn tune_matmul(
    gpu: &Gpu,
    mm: Matmul,
    mut progress: impl FnMut(MatmulTile, &Result<f64>),
) -> Vec<(MatmulTile, f64)> {
    use crate::kernels::matmul::{SHALLOW_K, set_shallow_tile, set_tile, shallow_tile, tile};
    let shallow = mm.k <= SHALLOW_K;
    let set = |t| if shallow { set_shallow_tile(gpu, t) } else { set_tile(gpu, t) };
    let saved = if shallow { shallow_tile(gpu) } else { tile(gpu) };
    let mut results = Vec::new();
    for candidate in MatmulTile::candidates().into_iter().filter(|t| t.fits(gpu.limits())) {
        set(candidate);
        let r = matmul_case(gpu, mm).and_then(|mut c| measure(gpu, &mut c)).map(|f| f.gflops.unwrap_or(0.0));
        progress(candidate, &r);
        if let Ok(g) = r {
            results.push((candidate, g));
        }
        gpu.trim_pool();
    }
    set(saved);
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    results
}

/// Convolutions at ResNet-50 and EfficientNet shapes (batch 2 on the small scale, 32 on the
/// full one): each forward, dX and dW, counted as 2·MACs of the forward (each direction does
/// the same number). Depthwise convolutions do ~9 MACs per element and are held to the copy
/// roofline (x, w and y moved once).
pub fn conv_cases(gpu: &Gpu, scale: Scale) -> Result<Vec<Case<'_>>> {
    type Run<'g> = Box<dyn FnMut() -> Result<()> + 'g>;
    use crate::kernels::conv2d::{self as conv, Conv2dGeometry};
    let n = if scale == Scale::Small { 2 } else { 32 };
    let shapes = [
        ("stem 7x7/2", Conv2dGeometry::new(n, 3, (224, 224), 64, 7, 2, 3)),
        ("3x3 layer1", Conv2dGeometry::new(n, 64, (56, 56), 64, 3, 1, 1)),
        ("1x1 256->64", Conv2dGeometry::new(n, 256, (56, 56), 64, 1, 1, 0)),
        ("3x3 layer4", Conv2dGeometry::new(n, 512, (7, 7), 512, 3, 1, 1)),
        ("dw 3x3 144ch", Conv2dGeometry::new(n, 144, (56, 56), 144, 3, 1, 1).groups(144)),
    ];
    let mut cases = Vec::new();
    for (seed, (name, g)) in shapes.into_iter().enumerate() {
        let x = random(gpu, &g.x_shape(), 100 + seed as u64)?;
        let w = random(gpu, &g.w_shape(), 200 + seed as u64)?;
        let dy = random(gpu, &g.y_shape(), 300 + seed as u64)?;
        let y = Tensor::empty(gpu, &g.y_shape(), DType::F32)?;
        let dx = Tensor::empty(gpu, &g.x_shape(), DType::F32)?;
        let dw = Tensor::empty(gpu, &g.w_shape(), DType::F32)?;
        let numel = |s: [usize; 4]| s.iter().product::<usize>() as f64;
        let bytes = F32 * (numel(g.x_shape()) + numel(g.w_shape()) + numel(g.y_shape()));
        let bound = if g.is_depthwise() { Bound::Memory } else { Bound::Compute };
        let case = |dir: &str, run| Case {
            kernel: format!("conv2d{dir}"),
            shape: format!("{name} n{n}"),
            flops: g.flops(),
            bytes,
            bound,
            run,
        };
        let (x1, w1, dy1, w2, x2, dy2) = (x.clone(), w.clone(), dy.clone(), w.clone(), x.clone(), dy.clone());
        let runs: [(&str, Run); 3] = [
            ("", Box::new(move || conv::forward_into(gpu, &g, &x1, &w1, None, &y, false))),
            ("_dx", Box::new(move || conv::input_grad(gpu, &g, &dy1, &w2, &dx, false))),
            ("_dw", Box::new(move || conv::weight_grad(gpu, &g, &x2, &dy2, &dw, false))),
        ];
        for (dir, run) in runs {
            // Images need no gradient: a stem's dX is never computed.
            if !(dir == "_dx" && g.c_in == 3) {
                cases.push(case(dir, run));
            }
        }
    }
    Ok(cases)
}

/// Batch norm and pooling at ResNet-50 shapes (batch 2 on the small scale, 32 on the full one),
/// held to the copy roofline: each reads its inputs and writes its outputs once at least.
/// Batch norm in training mode (batch statistics, running averages moved) and its backward
/// (dX, dγ, dβ); the stem's 3×3/2 max-pool and its backward through the argmax; the global
/// average pool of the last stage.
pub fn cnn_cases(gpu: &Gpu, scale: Scale) -> Result<Vec<Case<'_>>> {
    use crate::kernels::{batch_norm as bn, pool2d};
    let n = if scale == Scale::Small { 2 } else { 32 };
    let numel = |s: &[usize]| s.iter().product::<usize>() as f64;
    let mut cases = Vec::new();
    for (seed, (name, shape)) in
        [("layer1 256ch", [n, 256, 56, 56]), ("layer4 2048ch", [n, 2048, 7, 7])].into_iter().enumerate()
    {
        let c = shape[1];
        let x = random(gpu, &shape, 400 + seed as u64)?;
        let dy = random(gpu, &shape, 500 + seed as u64)?;
        let (gamma, beta) = (random(gpu, &[c], 600)?, random(gpu, &[c], 601)?);
        let (rm, rv) = (Tensor::zeros(gpu, &[c])?, Tensor::from_f32(gpu, &vec![1.0; c], &[c])?);
        let (_, saved) = bn::forward_train(gpu, &x, &gamma, &beta, Some((&rm, &rv)), 1e-5, 0.1)?;
        let (dx, dgamma, dbeta) =
            (Tensor::empty(gpu, &shape, DType::F32)?, Tensor::zeros(gpu, &[c])?, Tensor::zeros(gpu, &[c])?);
        let x2 = x.clone();
        // Statistics (one read of x), then y (one read, one write).
        cases.push(Case {
            kernel: "batch_norm".into(),
            shape: format!("{name} n{n}"),
            flops: 0.0,
            bytes: F32 * 3.0 * numel(&shape),
            bound: Bound::Memory,
            run: Box::new(move || bn::forward_train(gpu, &x, &gamma, &beta, Some((&rm, &rv)), 1e-5, 0.1).map(|_| ())),
        });
        let gamma2 = random(gpu, &[c], 600)?;
        // Sums (x and dy read), then dX (x and dy read, dx written).
        cases.push(Case {
            kernel: "batch_norm_bwd".into(),
            shape: format!("{name} n{n}"),
            flops: 0.0,
            bytes: F32 * 5.0 * numel(&shape),
            bound: Bound::Memory,
            run: Box::new(move || {
                let out = bn::BnGrads {
                    dx: Some((&dx, false)),
                    dgamma: Some(&dgamma),
                    dbeta: Some(&dbeta),
                    accumulate_params: true,
                };
                bn::backward(gpu, &x2, &gamma2, &saved, &dy, out)
            }),
        });
    }
    let stem = [n, 64, 112, 112];
    let x = random(gpu, &stem, 700)?;
    let (y, argmax, g) = pool2d::max_pool(gpu, &x, 3, 2, 1)?;
    let dy = random(gpu, y.shape(), 701)?;
    let dx = Tensor::empty(gpu, &stem, DType::F32)?;
    let out = numel(y.shape());
    cases.push(Case {
        kernel: "max_pool".into(),
        shape: format!("stem 3x3/2 64ch n{n}"),
        flops: 0.0,
        bytes: F32 * (numel(&stem) + 2.0 * out),
        bound: Bound::Memory,
        run: Box::new(move || pool2d::max_pool(gpu, &x, 3, 2, 1).map(|_| ())),
    });
    cases.push(Case {
        kernel: "max_pool_bwd".into(),
        shape: format!("stem 3x3/2 64ch n{n}"),
        flops: 0.0,
        bytes: F32 * (2.0 * out + numel(&stem)),
        bound: Bound::Memory,
        run: Box::new(move || pool2d::max_pool_backward(gpu, &g, &argmax, &dy, &dx, false)),
    });
    let last = [n, 2048, 7, 7];
    let x = random(gpu, &last, 702)?;
    cases.push(Case {
        kernel: "global_avg_pool".into(),
        shape: format!("layer4 2048ch n{n}"),
        flops: 0.0,
        bytes: F32 * (numel(&last) + (n * 2048) as f64),
        bound: Bound::Memory,
        run: Box::new(move || pool2d::global_avg(gpu, &x).map(|_| ())),
    });
    Ok(cases)
}
