// LayerNorm (BERT, GPT-2) and RMSNorm (Llama) over the last dimension, forward and backward.
//
//   x, y, dy, dx: [rows, cols]   gamma, beta, dgamma, dbeta: [cols]   mean, rstd: [rows]
//   LayerNorm: y = (x - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + eps)
//   RMSNorm:   y = x * rstd * gamma,                  rstd = 1 / sqrt(mean(x^2) + eps)
//   (`rms` selects RMSNorm; its entries ignore beta and mean.)
//   Forward with `residual`: sum = x + res is written first and normalised in place of x (a
//   residual add and the norm that reads it, in one dispatch; the backward sees sum as x).
//
// Forward and dx: one workgroup of WG invocations per row (WG from the host's header: 256 on a
// GPU, fewer on lavapipe, whose barriers switch between SIMD lane groups), its sums through
// workgroup_reduce.wgsl.
// dgamma/dbeta: one invocation per column summing over rows in order (deterministic).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    accumulate: u32,
    rms: u32,
    residual: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// workgroup_sum(l, v): subgroup operations or a barrier tree, whichever the host picked.
// #include "workgroup_reduce.wgsl"

// ---- forward ----
@group(0) @binding(1) var<storage, read> f_x: array<f32>;
@group(0) @binding(2) var<storage, read> f_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> f_beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_y: array<f32>;
@group(0) @binding(5) var<storage, read_write> f_mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> f_rstd: array<f32>;
@group(0) @binding(7) var<storage, read> f_res: array<f32>;
@group(0) @binding(8) var<storage, read_write> f_sum: array<f32>;

// Element i of the rows being normalised: x, or with `residual` the sum the first pass wrote
// (each invocation reads back only the elements it wrote itself).
fn norm_input(i: u32) -> f32 {
    if (p.residual != 0u) { return f_sum[i]; }
    return f_x[i];
}

@compute @workgroup_size(WG)
fn norm_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, l: Lanes) {
    let lid = l.lid;
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = f32(p.cols);
    if (p.residual != 0u) {
        for (var c = lid; c < p.cols; c += WG) { f_sum[base + c] = f_x[base + c] + f_res[base + c]; }
    }
    var mean = 0.0;
    if (p.rms == 0u) {
        var s = 0.0;
        for (var c = lid; c < p.cols; c += WG) { s += norm_input(base + c); }
        mean = workgroup_sum(l, s) / n;
    }
    // Second pass over (x - mean)^2 rather than E[x^2] - mean^2, which cancels badly when
    // |mean| >> std (common after residual adds).
    var s2 = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = norm_input(base + c) - mean;
        s2 += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(l, s2) / n + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        var v = (norm_input(base + c) - mean) * rstd * f_gamma[c];
        if (p.rms == 0u) { v += f_beta[c]; }
        f_y[base + c] = v;
    }
    if (lid == 0u) {
        if (p.rms == 0u) { f_mean[row] = mean; }
        f_rstd[row] = rstd;
    }
}

// ---- backward: dx ----
@group(0) @binding(1) var<storage, read> b_x: array<f32>;
@group(0) @binding(2) var<storage, read> b_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> b_dy: array<f32>;
@group(0) @binding(4) var<storage, read> b_mean: array<f32>;
@group(0) @binding(5) var<storage, read> b_rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> b_dx: array<f32>;

// With xhat = (x - mean) * rstd and g = dy * gamma:
//   LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
@compute @workgroup_size(WG)
fn norm_bwd_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, l: Lanes) {
    let lid = l.lid;
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = f32(p.cols);
    var mean = 0.0;
    if (p.rms == 0u) { mean = b_mean[row]; }
    let rstd = b_rstd[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let g = b_dy[base + c] * b_gamma[c];
        let xhat = (b_x[base + c] - mean) * rstd;
        sg += g;
        sgx += g * xhat;
    }
    var mean_g = workgroup_sum(l, sg) / n;
    let mean_gx = workgroup_sum(l, sgx) / n;
    if (p.rms != 0u) { mean_g = 0.0; }
    for (var c = lid; c < p.cols; c += WG) {
        let g = b_dy[base + c] * b_gamma[c];
        let xhat = (b_x[base + c] - mean) * rstd;
        let v = rstd * (g - mean_g - xhat * mean_gx);
        if (p.accumulate != 0u) { b_dx[base + c] += v; } else { b_dx[base + c] = v; }
    }
}

// ---- backward: dgamma, dbeta ----
@group(0) @binding(1) var<storage, read> q_x: array<f32>;
@group(0) @binding(2) var<storage, read> q_dy: array<f32>;
@group(0) @binding(3) var<storage, read> q_mean: array<f32>;
@group(0) @binding(4) var<storage, read> q_rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> q_dgamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> q_dbeta: array<f32>;

@compute @workgroup_size(256)
fn norm_bwd_params(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    var dg = 0.0;
    var db = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        var mean = 0.0;
        if (p.rms == 0u) { mean = q_mean[r]; }
        let dy = q_dy[r * p.cols + c];
        dg += dy * (q_x[r * p.cols + c] - mean) * q_rstd[r];
        db += dy;
    }
    if (p.accumulate != 0u) {
        q_dgamma[c] += dg;
        if (p.rms == 0u) { q_dbeta[c] += db; }
    } else {
        q_dgamma[c] = dg;
        if (p.rms == 0u) { q_dbeta[c] = db; }
    }
}
