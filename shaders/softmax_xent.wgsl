// Fused softmax + cross-entropy over large vocabularies, with an ignore index and optional
// per-row weights (PyTorch's CrossEntropyLoss(weight=w), the host expanding w[target] per row).
//
//   logits, dlogits: [rows, vocab]   targets: [rows] i32 (ignore_index rows carry no loss)
//   row_loss, lse:   [rows]          row_weights: [rows] f32 (weighted entries only)
//   stats: [2] = (mean loss over counted rows, counted rows)            unweighted
//              = (Σ w·row_loss / Σ w over counted rows, Σ w)            weighted
//   p.dloss: the upstream gradient of the mean loss (1.0 for a plain backward)
//
//   xent_fwd:           one workgroup per row. lse = log sum exp(logits); row_loss = lse - logit[target].
//   xent_mean:          one workgroup: stats = (sum row_loss / count, count).
//   xent_mean_weighted: one workgroup: stats = (sum w·row_loss / sum w, sum w).
//   xent_bwd:           one invocation per logit: dlogits = (softmax - onehot(target)) * dloss / count.
//   xent_bwd_weighted:  one invocation per logit: dlogits = (softmax - onehot(target)) * w[row] * dloss / sum w.
//
// Ignored rows (and out-of-range targets) are skipped by every entry, whatever their weight.
// The forward never materialises the softmax; the backward recomputes it from lse.

struct Params {
    rows: u32,
    vocab: u32,
    ignore_index: i32,
    accumulate: u32,
    dloss: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;
// workgroup_sum(l, v) and workgroup_max(l, v): subgroup operations or a barrier tree, whichever
// the host picked.
// #include "workgroup_reduce.wgsl"

// Whether a row with target t counts: not ignored, and a class of the vocabulary.
fn counted(t: i32) -> bool {
    return t != p.ignore_index && t >= 0 && u32(t) < p.vocab;
}

// d row_loss / d logit, times the row's `scale`: softmax (recomputed from lse) minus the one-hot
// of the target.
fn logit_grad(logit: f32, lse: f32, is_target: bool, scale: f32) -> f32 {
    let prob = exp(logit - lse);
    return (prob - select(0.0, 1.0, is_target)) * scale;
}

// ---- forward ----
@group(0) @binding(1) var<storage, read> f_logits: array<f32>;
@group(0) @binding(2) var<storage, read> f_targets: array<i32>;
@group(0) @binding(3) var<storage, read_write> f_row_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_lse: array<f32>;

@compute @workgroup_size(256)
fn xent_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, l: Lanes) {
    let lid = l.lid;
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) { return; }
    let base = row * p.vocab;
    // Online softmax: each invocation keeps a running max m and sum s of exp(x - m), rescaling
    // s when m grows, so exp never overflows and the row is read once.
    var m = -3.0e38;
    var s = 0.0;
    for (var v = lid; v < p.vocab; v += WG) {
        let x = f_logits[base + v];
        if (x > m) {
            s = s * exp(m - x) + 1.0;
            m = x;
        } else {
            s += exp(x - m);
        }
    }
    // The row's maximum, then every invocation's sum rescaled to it (an invocation that saw no
    // element has s = 0 and adds nothing).
    let row_max = workgroup_max(l, m);
    let total = workgroup_sum(l, s * exp(m - row_max));
    if (lid == 0u) {
        let lse = row_max + log(total);
        f_lse[row] = lse;
        let t = f_targets[row];
        if (!counted(t)) {
            f_row_loss[row] = 0.0;
        } else {
            f_row_loss[row] = lse - f_logits[base + u32(t)];
        }
    }
}

// ---- mean over counted rows ----
@group(0) @binding(1) var<storage, read> m_row_loss: array<f32>;
@group(0) @binding(2) var<storage, read> m_targets: array<i32>;
@group(0) @binding(3) var<storage, read_write> m_stats: array<f32>;

@compute @workgroup_size(256)
fn xent_mean(l: Lanes) {
    let lid = l.lid;
    var s = 0.0;
    var count = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let t = m_targets[r];
        if (counted(t)) {
            s += m_row_loss[r];
            count += 1.0;
        }
    }
    let total = workgroup_sum(l, s);
    let counted_rows = workgroup_sum(l, count);
    if (lid == 0u) {
        // No counted rows: the loss is 0 (not NaN), and so is every gradient.
        m_stats[0] = total / max(counted_rows, 1.0);
        m_stats[1] = counted_rows;
    }
}

// ---- backward ----
@group(0) @binding(1) var<storage, read> b_logits: array<f32>;
@group(0) @binding(2) var<storage, read> b_targets: array<i32>;
@group(0) @binding(3) var<storage, read> b_lse: array<f32>;
@group(0) @binding(4) var<storage, read> b_stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> b_dlogits: array<f32>;

@compute @workgroup_size(256)
fn xent_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if (i >= p.rows * p.vocab) { return; }
    let row = i / p.vocab;
    let v = i % p.vocab;
    let t = b_targets[row];
    var g = 0.0;
    if (counted(t)) {
        g = logit_grad(b_logits[i], b_lse[row], u32(t) == v, p.dloss / max(b_stats[1], 1.0));
    }
    if (p.accumulate != 0u) { b_dlogits[i] += g; } else { b_dlogits[i] = g; }
}

// ---- weighted mean over counted rows ----
@group(0) @binding(1) var<storage, read> mw_row_loss: array<f32>;
@group(0) @binding(2) var<storage, read> mw_targets: array<i32>;
@group(0) @binding(3) var<storage, read> mw_weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> mw_stats: array<f32>;

@compute @workgroup_size(256)
fn xent_mean_weighted(l: Lanes) {
    let lid = l.lid;
    var s = 0.0;
    var wsum = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let t = mw_targets[r];
        if (counted(t)) {
            let w = mw_weights[r];
            s += w * mw_row_loss[r];
            wsum += w;
        }
    }
    let weighted_loss = workgroup_sum(l, s);
    let total = workgroup_sum(l, wsum);
    if (lid == 0u) {
        // Weights may sum to less than 1, so no max(·, 1) here; a zero sum (every counted row
        // weighted 0, or none counted) gives loss 0 rather than PyTorch's NaN.
        var mean = 0.0;
        if (total > 0.0) { mean = weighted_loss / total; }
        mw_stats[0] = mean;
        mw_stats[1] = total;
    }
}

// ---- weighted backward ----
@group(0) @binding(1) var<storage, read> bw_logits: array<f32>;
@group(0) @binding(2) var<storage, read> bw_targets: array<i32>;
@group(0) @binding(3) var<storage, read> bw_weights: array<f32>;
@group(0) @binding(4) var<storage, read> bw_lse: array<f32>;
@group(0) @binding(5) var<storage, read> bw_stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> bw_dlogits: array<f32>;

@compute @workgroup_size(256)
fn xent_bwd_weighted(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if (i >= p.rows * p.vocab) { return; }
    let row = i / p.vocab;
    let v = i % p.vocab;
    let t = bw_targets[row];
    let total = bw_stats[1];
    var g = 0.0;
    // total > 0 matches the forward's zero loss when no weight is counted.
    if (counted(t) && total > 0.0) {
        g = logit_grad(bw_logits[i], bw_lse[row], u32(t) == v, bw_weights[row] * p.dloss / total);
    }
    if (p.accumulate != 0u) { bw_dlogits[i] += g; } else { bw_dlogits[i] = g; }
}
