// Spatial pooling of NCHW tensors (P = N*C planes of H x W).
//
//   max_pool:        y, argmax [P, OH, OW] from x [P, H, W]: the largest value of each k x k
//                    window (stride, padding as -inf) and its index h*W + w within the plane;
//                    ties keep the first in row-major window order (PyTorch's choice).
//   max_pool_bwd:    dx [P, H, W] from dy and argmax: each input element gathers the gradient
//                    of every output whose window covers it and took it (windows overlap when
//                    stride < k; a gather instead of a scatter needs no atomics).
//   global_avg:      y [P] = mean of each plane of x [P, S]; one invocation per plane.
//   global_avg_bwd:  dx [P, S] = dy[p] / S.
// With `accumulate` results are added into the output.

struct Params {
    planes: u32, h: u32, w: u32, k: u32,
    stride: u32, pad: u32, oh: u32, ow: u32,
    accumulate: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}

fn grid_stride(nwg: vec3<u32>) -> u32 {
    return nwg.x * nwg.y * 256u;
}

// ---- max_pool ----
@group(0) @binding(1) var<storage, read> mp_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mp_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> mp_arg: array<u32>;

@compute @workgroup_size(256)
fn max_pool(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let total = p.planes * p.oh * p.ow;
    for (var e = flat_index(wg, nwg, lid); e < total; e += grid_stride(nwg)) {
        let j = e % p.ow;
        let i = (e / p.ow) % p.oh;
        let plane = e / (p.ow * p.oh);
        // Windows never lie wholly in the padding (pad <= k/2 is checked on the host), so
        // every window has a real element and best is always replaced.
        var best = -3.4028235e38;
        var at = 0u;
        var found = false;
        for (var a = 0u; a < p.k; a++) {
            let hi = i32(i * p.stride + a) - i32(p.pad);
            if (hi < 0 || hi >= i32(p.h)) { continue; }
            for (var b = 0u; b < p.k; b++) {
                let wi = i32(j * p.stride + b) - i32(p.pad);
                if (wi < 0 || wi >= i32(p.w)) { continue; }
                let idx = u32(hi) * p.w + u32(wi);
                let v = mp_x[plane * p.h * p.w + idx];
                if (!found || v > best) {
                    best = v;
                    at = idx;
                    found = true;
                }
            }
        }
        if (p.accumulate != 0u) { mp_y[e] += best; } else { mp_y[e] = best; }
        mp_arg[e] = at;
    }
}

// ---- max_pool_bwd ----
@group(0) @binding(1) var<storage, read> mb_dy: array<f32>;
@group(0) @binding(2) var<storage, read> mb_arg: array<u32>;
@group(0) @binding(3) var<storage, read_write> mb_dx: array<f32>;

// The outputs whose window covers position x (0..len) along one axis: o*stride - pad <= x <
// o*stride - pad + k, i.e. o in [ceil((x + pad - k + 1) / stride), (x + pad) / stride].
fn first_out(x: u32) -> u32 {
    let lo = i32(x + p.pad) - i32(p.k) + 1;
    if (lo <= 0) { return 0u; }
    return (u32(lo) + p.stride - 1u) / p.stride;
}

@compute @workgroup_size(256)
fn max_pool_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let total = p.planes * p.h * p.w;
    for (var e = flat_index(wg, nwg, lid); e < total; e += grid_stride(nwg)) {
        let x = e % p.w;
        let y = (e / p.w) % p.h;
        let plane = e / (p.w * p.h);
        let idx = y * p.w + x;
        var s = 0.0;
        let i_end = min((y + p.pad) / p.stride + 1u, p.oh);
        let j_end = min((x + p.pad) / p.stride + 1u, p.ow);
        for (var i = first_out(y); i < i_end; i++) {
            for (var j = first_out(x); j < j_end; j++) {
                let o = (plane * p.oh + i) * p.ow + j;
                if (mb_arg[o] == idx) { s += mb_dy[o]; }
            }
        }
        if (p.accumulate != 0u) { mb_dx[e] += s; } else { mb_dx[e] = s; }
    }
}

// ---- global average pooling (S = h * w) ----
@group(0) @binding(1) var<storage, read> ga_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ga_y: array<f32>;

@compute @workgroup_size(256)
fn global_avg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = p.h * p.w;
    for (var plane = flat_index(wg, nwg, lid); plane < p.planes; plane += grid_stride(nwg)) {
        var acc = 0.0;
        for (var i = 0u; i < s; i++) { acc += ga_x[plane * s + i]; }
        let v = acc / f32(s);
        if (p.accumulate != 0u) { ga_y[plane] += v; } else { ga_y[plane] = v; }
    }
}

@compute @workgroup_size(256)
fn global_avg_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = p.h * p.w;
    for (var e = flat_index(wg, nwg, lid); e < p.planes * s; e += grid_stride(nwg)) {
        let v = ga_x[e / s] / f32(s);
        if (p.accumulate != 0u) { ga_y[e] += v; } else { ga_y[e] = v; }
    }
}
