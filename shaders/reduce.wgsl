// Reductions.
//
//   sum_rows:            out[c] (+)= sum_r x[r, c]       x [rows, cols], out [cols]
//                        (bias gradients). One invocation per column walks the rows in order,
//                        so the result is deterministic; neighbours read neighbouring columns.
//   sum_squares_partial:  partial[g] = sum of x[i]^2 over chunk g (CHUNK elements per workgroup)
//   sum_squares_segments: out[t * rows] = sum of partial[t * cols .. (t + 1) * cols), one
//                         workgroup per tensor t: every tensor's partials, written at a stride
//                         of `cols` (zero-padded), summed in one dispatch. Together: each
//                         tensor's squared L2 norm for gradient clipping, in a fixed order.

struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- sum_rows ----
@group(0) @binding(1) var<storage, read> sr_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sr_out: array<f32>;

@compute @workgroup_size(256)
fn sum_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    var s = 0.0;
    for (var r = 0u; r < p.rows; r++) { s += sr_x[r * p.cols + c]; }
    if (p.accumulate != 0u) { sr_out[c] += s; } else { sr_out[c] = s; }
}

// ---- squared L2 norm ----
const WG: u32 = 256u;
const CHUNK: u32 = 4096u; // elements per workgroup: 16 per invocation

@group(0) @binding(1) var<storage, read> sq_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sq_partial: array<f32>;

// workgroup_sum(l, v): subgroup operations or a barrier tree, whichever the host picked.
// #include "workgroup_reduce.wgsl"

@compute @workgroup_size(256)
fn sum_squares_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, l: Lanes) {
    let lid = l.lid;
    let g = wg.y * nwg.x + wg.x;
    let start = g * CHUNK;
    // A 2-D grid's last row may hold workgroups past the end (uniform per workgroup, so the
    // early return is before every barrier of this workgroup).
    if (g > 0u && start >= p.n) { return; }
    var s = 0.0;
    for (var i = start + lid; i < min(start + CHUNK, p.n); i += WG) {
        let v = sq_x[i];
        s += v * v;
    }
    let total = workgroup_sum(l, s);
    if (lid == 0u) { sq_partial[g] = total; }
}

@group(0) @binding(1) var<storage, read> seg_partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> seg_out: array<f32>;

@compute @workgroup_size(256)
fn sum_squares_segments(@builtin(workgroup_id) wg: vec3<u32>, l: Lanes) {
    let lid = l.lid;
    let base = wg.x * p.cols;
    var s = 0.0;
    for (var i = lid; i < p.cols; i += WG) { s += seg_partial[base + i]; }
    let total = workgroup_sum(l, s);
    if (lid == 0u) { seg_out[wg.x * p.rows] = total; }
}
