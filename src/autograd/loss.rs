//! Losses: cross-entropy over logits, and the language-model head fused with cross-entropy in
//! row chunks so that a `[tokens, vocab]` logits matrix never has to exist whole.
//!
//! The loss stays on the GPU ([`Loss::stats`], one `[mean, denominator]` pair per chunk) and is
//! read back once per step by [`Loss::read`].

use super::{Backward, Grads, Tape, Var, VarId};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::elementwise::{ColumnBlock, copy_cols};
use crate::kernels::matmul::{Matmul, matmul_bt_wide_into, matmul_into};
use crate::kernels::row_chunks;
use crate::kernels::softmax_xent::{self as xk, IGNORE_INDEX, Xent};
use crate::tensor::{DType, Tensor};

/// A scalar loss: the mean over counted (non-ignored) rows, or for [`cross_entropy_weighted`]
/// the class-weighted mean.
pub struct Loss {
    /// Carries the tape id; its value is the per-chunk statistics.
    pub var: Var,
    /// `[chunks, 2]`: each chunk's mean and the denominator of that mean (counted rows, or the
    /// sum of the counted rows' weights for a weighted loss).
    pub stats: Tensor,
    /// Rows counted (targets not ignored; a row whose class weight is 0 still counts), known on
    /// the host.
    pub count: usize,
}

impl Loss {
    /// Reads the loss back (the one readback of a training step): (mean, counted rows). The
    /// mean is Σ mean·denominator / Σ denominator over chunks, which is the plain mean for an
    /// unweighted loss and the weighted mean for a weighted one; 0 when the denominators sum to 0.
    pub fn read(&self, gpu: &Gpu) -> Result<(f32, usize)> {
        let s = self.stats.to_f32_vec(gpu)?;
        let total: f64 = s.chunks(2).map(|c| c[0] as f64 * c[1] as f64).sum();
        let denominator: f64 = s.chunks(2).map(|c| c[1] as f64).sum();
        let mean = if denominator > 0.0 { (total / denominator) as f32 } else { 0.0 };
        Ok((mean, self.count))
    }
}

fn counted(targets: &[i32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

/// Mean cross-entropy of logits `[N, V]` against targets `[N]` (−100 ignored).
pub fn cross_entropy(tape: &Tape, logits: &Var, targets: &[i32]) -> Result<Loss> {
    cross_entropy_op(tape, "cross_entropy", logits, targets, None)
}

/// Class-weighted mean cross-entropy, PyTorch's `CrossEntropyLoss(weight=class_weights)`:
/// Σᵢ w[yᵢ]·nllᵢ / Σᵢ w[yᵢ] over the rows whose target is not −100. logits `[N, V]`, targets
/// `[N]`, class_weights `[V]` (finite, ≥ 0). Where the counted weights sum to 0 the loss and its
/// gradient are 0 (PyTorch gives NaN).
///
/// [`Loss::read`] returns the weighted mean; [`Loss::count`] is still the number of rows not
/// ignored.
pub fn cross_entropy_weighted(tape: &Tape, logits: &Var, targets: &[i32], class_weights: &[f32]) -> Result<Loss> {
    cross_entropy_op(tape, "cross_entropy_weighted", logits, targets, Some(class_weights))
}

fn cross_entropy_op(
    tape: &Tape,
    op: &'static str,
    logits: &Var,
    targets: &[i32],
    class_weights: Option<&[f32]>,
) -> Result<Loss> {
    let vocab = logits.value.dim(-1);
    let rows = logits.value.numel() / vocab.max(1);
    if targets.len() != rows {
        return Err(Error::invalid(op, format!("{} targets for {rows} rows of logits", targets.len())));
    }
    xk::check_targets(targets, vocab, IGNORE_INDEX)?;
    let logits2 = logits.value.reshape(&[rows, vocab])?;
    let t = Tensor::from_i32(tape.gpu, targets, &[rows])?;
    let fwd = match class_weights {
        None => xk::forward(tape.gpu, &logits2, &t, IGNORE_INDEX)?,
        Some(cw) => {
            xk::check_class_weights(op, cw, vocab)?;
            let w = Tensor::from_f32(tape.gpu, &xk::row_weights(targets, cw, IGNORE_INDEX), &[rows])?;
            xk::forward_weighted(tape.gpu, &logits2, &t, &w, IGNORE_INDEX)?
        }
    };
    let stats = fwd.stats.reshape(&[1, 2])?;
    let count = counted(targets);
    let var = tape.output(stats.clone(), &[logits], |out| {
        Box::new(CrossEntropyOp { op, out, logits: logits2, logits_id: logits.id(), targets: t, fwd })
    });
    Ok(Loss { var, stats, count })
}

struct CrossEntropyOp {
    op: &'static str,
    out: VarId,
    logits: Tensor,
    logits_id: Option<VarId>,
    targets: Tensor,
    /// Weighted or not; the backward kernel follows it.
    fwd: Xent,
}

impl Backward for CrossEntropyOp {
    fn name(&self) -> &'static str {
        self.op
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(seed) = g.take_seed(self.out) else { return Ok(()) };
        if let Some(dl) = g.target(self.logits_id, self.logits.shape())? {
            xk::backward(gpu, &self.logits, &self.targets, &self.fwd, seed, &dl.tensor, IGNORE_INDEX, dl.accumulate)?;
        }
        Ok(())
    }
}

/// Logits held at once by [`linear_cross_entropy`]: above this the forward keeps nothing and the
/// backward recomputes each chunk's logits.
const KEEP_LOGITS_BYTES: u64 = 256 << 20;

/// Cross-entropy of h·Wᵀ against targets, without the whole logits matrix: h `[N, C]`, W `[V, C]`
/// (an LM head, or the tied input embedding), targets `[N]` (−100 ignored).
pub fn linear_cross_entropy(tape: &Tape, h: &Var, w: &Var, targets: &[i32]) -> Result<Loss> {
    const OP: &str = "linear_cross_entropy";
    let gpu = tape.gpu;
    let (vocab, c) = (w.value.dim(0), w.value.dim(1));
    if h.value.dim(-1) != c {
        return Err(Error::Shape { op: OP, tensor: "h", expected: format!("[..., {c}]"), found: h.shape().to_vec() });
    }
    let rows = h.value.numel() / c;
    if targets.len() != rows {
        return Err(Error::invalid(OP, format!("{} targets for {rows} rows", targets.len())));
    }
    xk::check_targets(targets, vocab, IGNORE_INDEX)?;
    let h2 = h.value.reshape(&[rows, c])?;
    let targets_gpu = Tensor::from_i32(gpu, targets, &[rows])?;
    let chunk = chunk_rows(gpu, vocab, rows);
    let n_chunks = rows.div_ceil(chunk);
    let stats = Tensor::empty(gpu, &[n_chunks, 2], DType::F32)?;
    // Logits are kept only for a backward that will use them.
    let needs_grad = h.requires_grad() || w.requires_grad();
    let keep = needs_grad && (rows * vocab * 4) as u64 <= KEEP_LOGITS_BYTES;
    let mut chunks = Vec::with_capacity(n_chunks);
    for i in 0..n_chunks {
        let (start, len) = (i * chunk, chunk.min(rows - i * chunk));
        let hc = h2.narrow_rows(start, len)?;
        let tc = targets_gpu.narrow_rows(start, len)?;
        let logits = Tensor::empty(gpu, &[len, vocab], DType::F32)?;
        // A frozen head (LoRA's tied embedding) may round to f16 (the precision decides).
        matmul_bt_wide_into(gpu, &hc, &w.value, &logits, !w.requires_grad())?;
        let fwd = xk::forward(gpu, &logits, &tc, IGNORE_INDEX)?;
        gpu.copy(&fwd.stats, &stats.narrow_rows(i, 1)?)?;
        let count = counted(&targets[start..start + len]);
        chunks.push(Chunk { start, len, count, h: hc, targets: tc, logits: keep.then_some(logits), fwd });
    }
    let count = counted(targets);
    let var = tape.output(stats.clone(), &[h, w], |out| {
        Box::new(LinearXentOp {
            out,
            h_id: h.id(),
            h_shape: h.shape().to_vec(),
            w: w.value.clone(),
            w_id: w.id(),
            chunks,
            total: count,
        })
    });
    Ok(Loss { var, stats, count })
}

/// Rows per chunk: logits of one chunk fit one storage binding (and 64 MiB), and chunk starts
/// stay 256-byte aligned (a multiple of 64 rows of 4-byte targets).
fn chunk_rows(gpu: &Gpu, vocab: usize, rows: usize) -> usize {
    let limit = gpu.limits().max_storage_buffer_binding_size.min(64 << 20);
    let fit = (limit / (vocab as u64 * 4)).max(64) as usize;
    let chunk = (fit / 64 * 64).max(64);
    chunk.min(rows.max(1))
}

struct Chunk {
    start: usize,
    len: usize,
    count: usize,
    h: Tensor,
    targets: Tensor,
    logits: Option<Tensor>,
    fwd: Xent,
}

struct LinearXentOp {
    out: VarId,
    h_id: Option<VarId>,
    h_shape: Vec<usize>,
    w: Tensor,
    w_id: Option<VarId>,
    chunks: Vec<Chunk>,
    total: usize,
}

impl Backward for LinearXentOp {
    fn name(&self) -> &'static str {
        "linear_cross_entropy"
    }

    fn backward(&self, gpu: &Gpu, g: &mut Grads) -> Result<()> {
        let Some(seed) = g.take_seed(self.out) else { return Ok(()) };
        let (vocab, c) = (self.w.dim(0), self.w.dim(1));
        let rows: usize = self.chunks.iter().map(|ch| ch.len).sum();
        let dh = g.target(self.h_id, &self.h_shape)?;
        let dh2 = match &dh {
            Some(t) => Some(t.tensor.reshape(&[rows, c])?),
            None => None,
        };
        let dw = g.target(self.w_id, self.w.shape())?;
        let mut dw_acc = dw.as_ref().is_some_and(|t| t.accumulate);
        // W's rows a storage binding can hold at once (one block unless the vocabulary is huge).
        let blocks = row_chunks("linear_cross_entropy", gpu, vocab, (c * 4) as u64)?;
        for ch in &self.chunks {
            let logits = match &ch.logits {
                Some(l) => l.clone(),
                None => {
                    let l = Tensor::empty(gpu, &[ch.len, vocab], DType::F32)?;
                    matmul_bt_wide_into(gpu, &ch.h, &self.w, &l, self.w_id.is_none())?;
                    l
                }
            };
            // The kernel divides by the chunk's own count; the objective divides by the total.
            let share = if self.total > 0 { ch.count as f32 / self.total as f32 } else { 0.0 };
            let dlogits = Tensor::empty(gpu, &[ch.len, vocab], DType::F32)?;
            xk::backward(gpu, &logits, &ch.targets, &ch.fwd, seed * share, &dlogits, IGNORE_INDEX, false)?;
            for (i, &(v0, vc)) in blocks.iter().enumerate() {
                // This block's columns of dlogits, copied out when W is split.
                let dl = if blocks.len() == 1 {
                    dlogits.clone()
                } else {
                    let part = Tensor::empty(gpu, &[ch.len, vc], DType::F32)?;
                    copy_cols(gpu, &dlogits, &part, ColumnBlock { width: vc, src_off: v0, dst_off: 0 }, false)?;
                    part
                };
                if let (Some(dh), Some(t)) = (&dh2, &dh) {
                    // dh += dlogits[:, block]·W[block].
                    let mm = Matmul::new(ch.len, c, vc)
                        .accumulate(t.accumulate || i > 0)
                        .mixed_precision(self.w_id.is_none());
                    matmul_into(gpu, &mm, &dl, &self.w.narrow_rows(v0, vc)?, None, &dh.narrow_rows(ch.start, ch.len)?)?;
                }
                if let Some(t) = &dw {
                    // dW[block] [vc, C] += dlogits[:, block]ᵀ·h.
                    let mm = Matmul::new(vc, c, ch.len).trans_a(true).accumulate(dw_acc);
                    matmul_into(gpu, &mm, &dl, &ch.h, None, &t.tensor.narrow_rows(v0, vc)?)?;
                }
            }
            dw_acc = true;
        }
        Ok(())
    }
}
