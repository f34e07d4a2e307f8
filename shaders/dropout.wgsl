// Inverted dropout with a counter-based mask: element i is kept when
// hash(seed, step, i) >= threshold (threshold = p * 2^32), and kept values are scaled by
// 1 / (1 - p). The mask is never stored: the backward pass runs this same entry on dy with
// the same (seed, step) and gets the same mask. Runs are reproducible from the seed.
//
//   x, out: [n]

struct Params {
    n: u32,
    seed: u32,
    step: u32,
    threshold: u32,
    scale: f32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// pcg, dropout_keeps.
// #include "dropout_hash.wgsl"

@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Grid-stride loop over a host-capped number of workgroups (see elementwise.wgsl).
    for (var i = (wg.y * nwg.x + wg.x) * 256u + lid; i < p.n; i += nwg.x * nwg.y * 256u) {
        var v = 0.0;
        if (dropout_keeps(p.seed, p.step, p.threshold, i)) { v = x[i] * p.scale; }
        if (p.accumulate != 0u) { out[i] += v; } else { out[i] = v; }
    }
}
