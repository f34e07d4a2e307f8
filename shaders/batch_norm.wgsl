// Batch normalisation over the channels of NCHW tensors, and its backward pass.
//
//   x, y, dy, dx [N, C, S]  (S = H*W)        gamma, beta, mean, rstd, running_* [C]
//   y = (x - mean[c]) * rstd[c] * gamma[c] + beta[c]
//
//   bn_stats:    one workgroup per channel: mean and rstd = 1/sqrt(var + eps) over the N*S
//                values (biased variance, two passes: the mean first, so a large mean costs no
//                digits), and with update_running the running averages as PyTorch moves them:
//                r = (1 - momentum) r + momentum * batch, the variance unbiased (* M/(M-1)).
//   bn_apply:    y from x. With from_var the statistics bindings hold the running mean and
//                variance (evaluation and frozen BN) and rstd is formed here.
//   bn_bwd_sums: one workgroup per channel: sum_dy[c] = sum dy and sum_dyxhat[c] = sum dy*xhat
//                into sums [2, C]; these are dbeta and dgamma, added into those when bound.
//   bn_bwd_dx:   train: dx = gamma*rstd*(dy - sum_dy/M - xhat*sum_dyxhat/M) (the batch
//                statistics depend on x); fixed statistics: dx = dy*gamma*rstd.
// Sums are tree reductions in a fixed order, so results are deterministic.

struct Params {
    n: u32, c: u32, s: u32, train: u32,
    from_var: u32, update_running: u32, has_dgamma: u32, has_dbeta: u32,
    accumulate: u32, eps: f32, momentum: f32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;
// workgroup_sum(l, v): subgroup operations or a barrier tree, whichever the host picked.
// #include "workgroup_reduce.wgsl"

fn channel_of(wg: vec3<u32>, nwg: vec3<u32>) -> u32 { return wg.y * nwg.x + wg.x; }

// Element e of channel ch's N*S values.
fn at(ch: u32, e: u32) -> u32 { return ((e / p.s) * p.c + ch) * p.s + e % p.s; }

// ---- bn_stats ----
@group(0) @binding(1) var<storage, read> st_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> st_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> st_rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> st_rmean: array<f32>;
@group(0) @binding(5) var<storage, read_write> st_rvar: array<f32>;

@compute @workgroup_size(256)
fn bn_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, l: Lanes) {
    let lid = l.lid;
    let ch = channel_of(wg, nwg);
    if (ch >= p.c) { return; }
    let m = p.n * p.s;
    var s = 0.0;
    for (var e = lid; e < m; e += WG) { s += st_x[at(ch, e)]; }
    let mean = workgroup_sum(l, s) / f32(m);
    var q = 0.0;
    for (var e = lid; e < m; e += WG) {
        let d = st_x[at(ch, e)] - mean;
        q += d * d;
    }
    let var_b = workgroup_sum(l, q) / f32(m);
    if (lid == 0u) {
        st_mean[ch] = mean;
        st_rstd[ch] = inverseSqrt(var_b + p.eps);
        if (p.update_running != 0u) {
            let unbiased = var_b * f32(m) / f32(max(m, 2u) - 1u);
            st_rmean[ch] = (1.0 - p.momentum) * st_rmean[ch] + p.momentum * mean;
            st_rvar[ch] = (1.0 - p.momentum) * st_rvar[ch] + p.momentum * unbiased;
        }
    }
}

fn stats_rstd(v: f32) -> f32 {
    if (p.from_var != 0u) { return inverseSqrt(v + p.eps); }
    return v;
}

// ---- bn_apply ----
@group(0) @binding(1) var<storage, read> ap_x: array<f32>;
@group(0) @binding(2) var<storage, read> ap_mean: array<f32>;
@group(0) @binding(3) var<storage, read> ap_rstd: array<f32>;
@group(0) @binding(4) var<storage, read> ap_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> ap_beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> ap_y: array<f32>;

@compute @workgroup_size(256)
fn bn_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let total = p.n * p.c * p.s;
    for (var i = (wg.y * nwg.x + wg.x) * WG + lid; i < total; i += nwg.x * nwg.y * WG) {
        let ch = (i / p.s) % p.c;
        ap_y[i] = (ap_x[i] - ap_mean[ch]) * stats_rstd(ap_rstd[ch]) * ap_gamma[ch] + ap_beta[ch];
    }
}

// ---- bn_bwd_sums ----
@group(0) @binding(1) var<storage, read> bs_x: array<f32>;
@group(0) @binding(2) var<storage, read> bs_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bs_mean: array<f32>;
@group(0) @binding(4) var<storage, read> bs_rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> bs_sums: array<f32>;
@group(0) @binding(6) var<storage, read_write> bs_dgamma: array<f32>;
@group(0) @binding(7) var<storage, read_write> bs_dbeta: array<f32>;

@compute @workgroup_size(256)
fn bn_bwd_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, l: Lanes) {
    let lid = l.lid;
    let ch = channel_of(wg, nwg);
    if (ch >= p.c) { return; }
    let m = p.n * p.s;
    let mean = bs_mean[ch];
    let rstd = stats_rstd(bs_rstd[ch]);
    var sd = 0.0;
    var sdx = 0.0;
    for (var e = lid; e < m; e += WG) {
        let i = at(ch, e);
        let d = bs_dy[i];
        sd += d;
        sdx += d * (bs_x[i] - mean) * rstd;
    }
    let sum_dy = workgroup_sum(l, sd);
    let sum_dyxhat = workgroup_sum(l, sdx);
    if (lid == 0u) {
        bs_sums[ch] = sum_dy;
        bs_sums[p.c + ch] = sum_dyxhat;
        if (p.has_dgamma != 0u) {
            if (p.accumulate != 0u) { bs_dgamma[ch] += sum_dyxhat; } else { bs_dgamma[ch] = sum_dyxhat; }
        }
        if (p.has_dbeta != 0u) {
            if (p.accumulate != 0u) { bs_dbeta[ch] += sum_dy; } else { bs_dbeta[ch] = sum_dy; }
        }
    }
}

// ---- bn_bwd_dx ----
@group(0) @binding(1) var<storage, read> bd_x: array<f32>;
@group(0) @binding(2) var<storage, read> bd_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bd_mean: array<f32>;
@group(0) @binding(4) var<storage, read> bd_rstd: array<f32>;
@group(0) @binding(5) var<storage, read> bd_gamma: array<f32>;
@group(0) @binding(6) var<storage, read> bd_sums: array<f32>;
@group(0) @binding(7) var<storage, read_write> bd_dx: array<f32>;

@compute @workgroup_size(256)
fn bn_bwd_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let total = p.n * p.c * p.s;
    let inv_m = 1.0 / f32(p.n * p.s);
    for (var i = (wg.y * nwg.x + wg.x) * WG + lid; i < total; i += nwg.x * nwg.y * WG) {
        let ch = (i / p.s) % p.c;
        let rstd = stats_rstd(bd_rstd[ch]);
        var g = bd_dy[i];
        if (p.train != 0u) {
            let xhat = (bd_x[i] - bd_mean[ch]) * rstd;
            g = g - bd_sums[ch] * inv_m - xhat * bd_sums[p.c + ch] * inv_m;
        }
        let v = g * bd_gamma[ch] * rstd;
        if (p.accumulate != 0u) { bd_dx[i] += v; } else { bd_dx[i] = v; }
    }
}
