// DoRA (weight-decomposed LoRA, as PEFT 0.21 computes it). With V = W + s·B·A (the adapted
// weight, one row per output feature j) the layer's output is scaled per output feature by
// c[j] = m[j] / n[j], where m is the trainable magnitude and n[j] = ||V[j, :]|| is treated as
// a constant (detached, DoRA paper §4.3).
//
//   weight_norm:    n[j] = sqrt(sum_i V[j, i]^2)          V [out, in] (by_row = 1) or [in, out]
//                   (by_row = 0: GPT-2's Conv1D layout; then n[j] runs down column j)
//   scale:          y[r, k] (+)= (k1 * m[f] / n[f] + k0) * u[r, k]
//                   f = r when by_row = 1 (a weight [out, in] scaled per row), else f = k
//                   (activations [rows, out]); the gradients of p and q and the merge use it
//   forward:        y[r, j] = (c[j] + k0) * p[r, j] + c[j] * s * q[r, j] (+ bias[j] if has_bias)
//                   p = x·Wᵀ (no bias), q = (x·Aᵀ)·Bᵀ, all [rows, out]; k0 = 0 gives PEFT's
//                   output without dropout, k0 = -1 its extra term with dropout on the LoRA input
//   magnitude_grad: dm[j] (+)= sum_r dy[r, j] * (p[r, j] + s * q[r, j]) / n[j]
//
// One invocation per output element (the grid folded into y past the per-dimension limit), or
// per output feature for the two reductions, which walk their rows in order so results are
// deterministic.

struct Params {
    rows: u32,
    cols: u32,
    accumulate: u32,
    by_row: u32,
    k1: f32,
    k0: f32,
    s: f32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}

// ---- weight_norm: rows = out features, cols = in features ----
@group(0) @binding(1) var<storage, read> wn_v: array<f32>;
@group(0) @binding(2) var<storage, read_write> wn_n: array<f32>;

@compute @workgroup_size(256)
fn weight_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = flat_index(wg, nwg, lid);
    if (j >= p.rows) { return; }
    var s = 0.0;
    for (var i = 0u; i < p.cols; i++) {
        var v: f32;
        if (p.by_row != 0u) { v = wn_v[j * p.cols + i]; } else { v = wn_v[i * p.rows + j]; }
        s += v * v;
    }
    wn_n[j] = sqrt(s);
}

// ---- scale: u, y [rows, cols] ----
@group(0) @binding(1) var<storage, read> sc_m: array<f32>;
@group(0) @binding(2) var<storage, read> sc_n: array<f32>;
@group(0) @binding(3) var<storage, read> sc_u: array<f32>;
@group(0) @binding(4) var<storage, read_write> sc_y: array<f32>;

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.rows * p.cols) { return; }
    var f = i % p.cols;
    if (p.by_row != 0u) { f = i / p.cols; }
    let v = (p.k1 * sc_m[f] / sc_n[f] + p.k0) * sc_u[i];
    if (p.accumulate != 0u) { sc_y[i] += v; } else { sc_y[i] = v; }
}

// ---- forward: p, q, y [rows, cols = out] ----
@group(0) @binding(1) var<storage, read> fw_m: array<f32>;
@group(0) @binding(2) var<storage, read> fw_n: array<f32>;
@group(0) @binding(3) var<storage, read> fw_p: array<f32>;
@group(0) @binding(4) var<storage, read> fw_q: array<f32>;
@group(0) @binding(5) var<storage, read> fw_bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> fw_y: array<f32>;

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.rows * p.cols) { return; }
    let j = i % p.cols;
    let c = fw_m[j] / fw_n[j];
    var v = (c + p.k0) * fw_p[i] + c * p.s * fw_q[i];
    if (p.has_bias != 0u) { v += fw_bias[j]; }
    fw_y[i] = v;
}

// ---- magnitude_grad: dy, p, q [rows, cols = out]; dm [out] ----
@group(0) @binding(1) var<storage, read> mg_n: array<f32>;
@group(0) @binding(2) var<storage, read> mg_dy: array<f32>;
@group(0) @binding(3) var<storage, read> mg_p: array<f32>;
@group(0) @binding(4) var<storage, read> mg_q: array<f32>;
@group(0) @binding(5) var<storage, read_write> mg_dm: array<f32>;

@compute @workgroup_size(256)
fn magnitude_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = flat_index(wg, nwg, lid);
    if (j >= p.cols) { return; }
    var s = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let i = r * p.cols + j;
        s += mg_dy[i] * (mg_p[i] + p.s * mg_q[i]);
    }
    // Divided once at the end: n is constant over the rows.
    let v = s / mg_n[j];
    if (p.accumulate != 0u) { mg_dm[j] += v; } else { mg_dm[j] = v; }
}
