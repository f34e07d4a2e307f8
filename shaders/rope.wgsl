// Rotary position embedding, Hugging Face's rotate_half pairing: dimension i pairs with
// i + D/2 (not 2i with 2i+1, which is the original paper's and llama.cpp's layout).
//
//   x, out:   [B, T, H, D]   (the natural layout of a q/k projection's output)
//   cos, sin: [P, D/2]       tables for positions 0..P, computed on the host in f64
//   positions: [B, T] u32    (optional; else position = t + pos_offset)
//
//   out[i]       = x[i] cos - x[i+D/2] sin
//   out[i+D/2]   = x[i+D/2] cos + x[i] sin
// The backward is the inverse rotation (sin negated): `inverse` = 1.

struct Params {
    batch: u32,
    seq: u32,
    heads: u32,
    head_dim: u32,
    pos_offset: u32,
    inverse: u32,
    has_positions: u32,
    accumulate: u32,
    table_rows: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let half = p.head_dim / 2u;
    let i = (wg.y * nwg.x + wg.x) * 256u + lid; // one invocation per (b, t, h, pair)
    if (i >= p.batch * p.seq * p.heads * half) { return; }
    let pair = i % half;
    let row = i / half;                 // (b * T + t) * H + h
    let bt = row / p.heads;             // b * T + t
    var pos = bt % p.seq + p.pos_offset;
    if (p.has_positions != 0u) { pos = positions[bt]; }
    pos = min(pos, p.table_rows - 1u); // the host checks positions; never read past the table
    let c = cos_t[pos * half + pair];
    var s = sin_t[pos * half + pair];
    if (p.inverse != 0u) { s = -s; }
    let lo = row * p.head_dim + pair;
    let hi = lo + half;
    let x_lo = x[lo];
    let x_hi = x[hi];
    let o_lo = x_lo * c - x_hi * s;
    let o_hi = x_hi * c + x_lo * s;
    if (p.accumulate != 0u) {
        out[lo] += o_lo;
        out[hi] += o_hi;
    } else {
        out[lo] = o_lo;
        out[hi] = o_hi;
    }
}
