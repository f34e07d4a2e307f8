// Rotary position embedding, Hugging Face's rotate_half pairing: within the rotated part of a
// head, dimension i pairs with i + R/2 (not 2i with 2i+1, which is the original paper's and
// llama.cpp's layout). Partial rotary (Phi-3's partial_rotary_factor) rotates only the first
// R = rot_dim dimensions of each head and passes the other D - R through unchanged.
//
//   x, out:   [B, T, H, D]   (the natural layout of a q/k projection's output)
//   cos, sin: [P, R/2]       tables for positions 0..P, computed on the host in f64, already
//                            multiplied by the attention factor (YaRN, LongRoPE; 1 otherwise)
//   positions: [B, T] u32    (optional; else position = t + pos_offset)
//
//   out[i]       = x[i] cos - x[i+R/2] sin          for i < R/2
//   out[i+R/2]   = x[i+R/2] cos + x[i] sin
//   out[j]       = x[j]                             for R <= j < D
// The backward is the transposed map: sin negated (`inverse` = 1), the pass-through copied.

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
    rot_dim: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

fn put(idx: u32, v: f32) {
    if (p.accumulate != 0u) { out[idx] += v; } else { out[idx] = v; }
}

@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let half = p.rot_dim / 2u;
    // One invocation per (b, t, h, slot): slots 0..half are rotated pairs, the rest one
    // pass-through dimension each.
    let slots = half + p.head_dim - p.rot_dim;
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if (i >= p.batch * p.seq * p.heads * slots) { return; }
    let slot = i % slots;
    let row = i / slots;                // (b * T + t) * H + h
    if (slot >= half) {
        let idx = row * p.head_dim + p.rot_dim + (slot - half);
        put(idx, x[idx]);
        return;
    }
    let bt = row / p.heads;             // b * T + t
    var pos = bt % p.seq + p.pos_offset;
    if (p.has_positions != 0u) { pos = positions[bt]; }
    pos = min(pos, p.table_rows - 1u); // the host checks positions; never read past the table
    let c = cos_t[pos * half + slot];
    var s = sin_t[pos * half + slot];
    if (p.inverse != 0u) { s = -s; }
    let lo = row * p.head_dim + slot;
    let hi = lo + half;
    let x_lo = x[lo];
    let x_hi = x[hi];
    put(lo, x_lo * c - x_hi * s);
    put(hi, x_hi * c + x_lo * s);
}
