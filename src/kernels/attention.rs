//! Scaled dot-product attention (`shaders/attention.wgsl`): causal and key-padding masks,
//! packed sequences (block-diagonal causal masks from segment ids), sliding windows, grouped-query attention, a forward that saves only the log-sum-exp per row, and a
//! backward that recomputes the probabilities (memory O(T) per head, not O(T²)).

use bytemuck::{Pod, Zeroable};

use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::tensor::{DType, Tensor};

/// Shapes and options of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSpec {
    pub batch: usize,
    pub seq: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    /// Multiplies q·k; usually 1/√head_dim.
    pub scale: f32,
    /// Key/value rows stored per sequence (the KV cache's capacity); `seq` when training.
    pub kv_seq: usize,
    /// Key/value rows in use (cached tokens plus the new ones); `seq` when training.
    pub kv_len: usize,
    /// Position of query 0 among the keys (tokens already cached); 0 when training.
    pub q_offset: usize,
    /// Sliding window (causal only): a query sees itself and the `window - 1` keys before it,
    /// as Mistral's `sliding_window` and transformers' `kv_idx > q_idx - window`. None: all.
    pub window: Option<usize>,
    /// Sequence packing: the key mask holds each token's example (1, 2, ...; 0 = padding) and a
    /// query attends only to keys of its own example (block-diagonal causal attention).
    pub segments: bool,
}

impl AttentionSpec {
    pub fn new(batch: usize, seq: usize, q_heads: usize, kv_heads: usize, head_dim: usize, causal: bool) -> Self {
        let scale = 1.0 / (head_dim as f32).sqrt();
        AttentionSpec {
            batch,
            seq,
            q_heads,
            kv_heads,
            head_dim,
            causal,
            scale,
            kv_seq: seq,
            kv_len: seq,
            q_offset: 0,
            window: None,
            segments: false,
        }
    }

    /// Packed rows: `key_mask` tells each token's example and attention stays inside it.
    pub fn with_segments(mut self, segments: bool) -> Self {
        self.segments = segments;
        self
    }

    /// Restricts each query to the last `window` keys up to and including its own position.
    pub fn with_window(mut self, window: Option<usize>) -> Self {
        self.window = window;
        self
    }

    /// Decoding with a KV cache: `seq` new queries at positions `q_offset..`, keys and values
    /// `[batch, kv_seq, kv_heads, head_dim]` of which the first `q_offset + seq` are in use.
    pub fn with_cache(mut self, kv_seq: usize, q_offset: usize) -> Self {
        self.kv_seq = kv_seq;
        self.kv_len = q_offset + self.seq;
        self.q_offset = q_offset;
        self
    }

    /// Multiply-adds of the forward (two matmuls of T×T×D per head, halved when causal, and
    /// T×W when a window W shorter than the sequence bounds the keys).
    pub fn forward_flops(&self) -> f64 {
        let full = 4.0 * (self.batch * self.q_heads * self.seq * self.seq * self.head_dim) as f64;
        match self.window {
            Some(w) if self.causal && w < self.seq => full * w as f64 / self.seq as f64,
            _ if self.causal => full / 2.0,
            _ => full,
        }
    }
}

/// The forward's output and what the backward needs: `stats` = [lse; delta] `[2, B, Hq, T]`.
pub struct AttentionOutput {
    pub out: Tensor,
    pub stats: Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    seq: u32,
    hq: u32,
    hkv: u32,
    causal: u32,
    has_mask: u32,
    accumulate: u32,
    scale: f32,
    kv_seq: u32,
    kv_len: u32,
    q_offset: u32,
    window: u32,
    segments: u32,
    _pad: [u32; 3],
}

/// Head dims the shader is compiled for (it keeps rows of D floats in registers).
const MAX_HEAD_DIM: usize = 256;
const ROWS_PER_GROUP: u32 = 64;

fn check(
    op: &'static str,
    s: &AttentionSpec,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
) -> Result<Params> {
    if s.q_heads == 0 || s.kv_heads == 0 || !s.q_heads.is_multiple_of(s.kv_heads) {
        return Err(Error::invalid(
            op,
            format!("query heads ({}) must be a positive multiple of key/value heads ({})", s.q_heads, s.kv_heads),
        ));
    }
    if s.head_dim == 0 || s.head_dim > MAX_HEAD_DIM {
        return Err(Error::invalid(op, format!("head_dim {} is outside 1..={MAX_HEAD_DIM}", s.head_dim)));
    }
    let qn = s.batch * s.seq * s.q_heads * s.head_dim;
    if s.kv_len > s.kv_seq || s.q_offset + s.seq != s.kv_len {
        return Err(Error::invalid(
            op,
            format!(
                "{} cached + {} new keys do not fit a cache of {} rows (kv_len {})",
                s.q_offset, s.seq, s.kv_seq, s.kv_len
            ),
        ));
    }
    match s.window {
        Some(0) => return Err(Error::invalid(op, "a sliding window of 0 keys lets no query attend to anything")),
        Some(_) if !s.causal => {
            return Err(Error::invalid(op, "a sliding window is implemented for causal attention only"));
        }
        _ => {}
    }
    let kn = s.batch * s.kv_seq * s.kv_heads * s.head_dim;
    expect_numel(op, "q", q, qn, "batch × seq × q_heads × head_dim")?;
    expect_numel(op, "k", k, kn, "batch × seq × kv_heads × head_dim")?;
    expect_numel(op, "v", v, kn, "batch × seq × kv_heads × head_dim")?;
    if s.segments && key_mask.is_none() {
        return Err(Error::invalid(op, "packed attention (segments) needs the key mask that holds the segment ids"));
    }
    if let Some(m) = key_mask {
        m.expect_dtype(op, DType::U32)?;
        expect_numel(op, "key_mask", m, s.batch * s.kv_seq, "batch × kv_seq")?;
    }
    u32_of(op, "q elements", qn)?;
    u32_of(op, "k elements", kn)?;
    Ok(Params {
        batch: s.batch as u32,
        seq: s.seq as u32,
        hq: s.q_heads as u32,
        hkv: s.kv_heads as u32,
        causal: s.causal as u32,
        has_mask: key_mask.is_some() as u32,
        accumulate: 0,
        scale: s.scale,
        kv_seq: s.kv_seq as u32,
        kv_len: s.kv_len as u32,
        q_offset: s.q_offset as u32,
        window: u32_of(op, "window", s.window.unwrap_or(0))?,
        segments: s.segments as u32,
        _pad: [0; 3],
    })
}

fn header(s: &AttentionSpec) -> String {
    format!("const D: u32 = {}u;\n", s.head_dim)
}

fn groups(gpu: &Gpu, s: &AttentionSpec, heads: usize) -> Result<[u32; 3]> {
    let blocks = (s.seq as u32).div_ceil(ROWS_PER_GROUP);
    let planes = u32_of("attention", "batch × heads", s.batch * heads)?;
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if planes > max {
        return Err(Error::DispatchTooLarge { op: "attention", groups: planes as u64, limit: max });
    }
    Ok([blocks, planes, 1])
}

/// softmax(scale·q·kᵀ + masks)·v. q `[B, T, Hq, D]`, k and v `[B, T, Hkv, D]`, key_mask
/// `[B, T]` u32 (1 attend, 0 padding). Returns out `[B, T, Hq, D]` and the row statistics.
///
/// Bindings: 1 q, 2 k, 3 v, 4 key_mask, 5 out, 6 stats.
pub fn forward(
    gpu: &Gpu,
    s: &AttentionSpec,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
) -> Result<AttentionOutput> {
    const OP: &str = "attention";
    let p = check(OP, s, q, k, v, key_mask)?;
    let out = Tensor::empty(gpu, &[s.batch, s.seq, s.q_heads, s.head_dim], DType::F32)?;
    let stats = Tensor::zeros(gpu, &[2, s.batch, s.q_heads, s.seq])?;
    let header = header(s);
    let spec = KernelSpec {
        file: shader!("attention"),
        entry: "attn_fwd",
        header: &header,
        access: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &spec,
        bytemuck::bytes_of(&p),
        &[
            ("q", Some(q)),
            ("k", Some(k)),
            ("v", Some(v)),
            ("key_mask", key_mask),
            ("out", Some(&out)),
            ("stats", Some(&stats)),
        ],
        groups(gpu, s, s.q_heads)?,
    )?;
    Ok(AttentionOutput { out, stats })
}

/// Gradients of attention given dout: writes (or adds into) dq, dk, dv.
///
/// Bindings, delta pass: 1 dout, 2 out, 3 stats. dq pass: 1 q, 2 k, 3 v, 4 key_mask, 5 dout,
/// 6 stats, 7 dq. dk/dv pass: the same, then 7 dk, 8 dv.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    s: &AttentionSpec,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
    fwd: &AttentionOutput,
    dout: &Tensor,
    (dq, dk, dv): (&Tensor, &Tensor, &Tensor),
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "attention_bwd";
    let mut p = check(OP, s, q, k, v, key_mask)?;
    if s.kv_seq != s.seq || s.q_offset != 0 {
        return Err(Error::invalid(OP, "the backward takes keys of the same tokens as the queries (no KV cache)"));
    }
    expect_numel(OP, "dout", dout, q.numel(), "the size of q")?;
    expect_numel(OP, "dq", dq, q.numel(), "the size of q")?;
    expect_numel(OP, "dk", dk, k.numel(), "the size of k")?;
    expect_numel(OP, "dv", dv, v.numel(), "the size of v")?;
    if gpu.limits().max_storage_buffers_per_shader_stage < 8 {
        return Err(Error::invalid(
            OP,
            "the adapter allows fewer than 8 storage buffers per shader stage; attention backward needs 8",
        ));
    }
    let header = header(s);
    let file = shader!("attention");
    let delta = KernelSpec {
        file,
        entry: "attn_delta",
        header: &header,
        access: &[Access::Read, Access::Read, Access::ReadWrite],
    };
    gpu.dispatch(
        OP,
        &delta,
        bytemuck::bytes_of(&p),
        &[("dout", Some(dout)), ("out", Some(&fwd.out)), ("stats", Some(&fwd.stats))],
        groups(gpu, s, s.q_heads)?,
    )?;
    p.accumulate = accumulate as u32;
    let read6 = [Access::Read; 6];
    let mut access = read6.to_vec();
    access.push(Access::ReadWrite);
    // Both passes read the same six buffers (bindings 1-6) and differ only in what they write.
    let inputs: &[(&str, Option<&Tensor>)] = &[
        ("q", Some(q)),
        ("k", Some(k)),
        ("v", Some(v)),
        ("key_mask", key_mask),
        ("dout", Some(dout)),
        ("stats", Some(&fwd.stats)),
    ];
    let dq_spec = KernelSpec { file, entry: "attn_bwd_dq", header: &header, access: &access };
    gpu.dispatch(
        OP,
        &dq_spec,
        bytemuck::bytes_of(&p),
        &[inputs, &[("dq", Some(dq))]].concat(),
        groups(gpu, s, s.q_heads)?,
    )?;
    access.push(Access::ReadWrite);
    let dkv_spec = KernelSpec { file, entry: "attn_bwd_dkv", header: &header, access: &access };
    gpu.dispatch(
        OP,
        &dkv_spec,
        bytemuck::bytes_of(&p),
        &[inputs, &[("dk", Some(dk)), ("dv", Some(dv))]].concat(),
        groups(gpu, s, s.kv_heads)?,
    )
}
