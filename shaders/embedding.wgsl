// Embedding lookup and its gradient.
//
//   gather:       out[n, c] (+)= table[ids[n], c]     ids [N] u32, table [V, C], out [N, C]
//                 (token, position and token-type embeddings: gather, then gather with
//                  accumulate into the same output)
//   scatter_add:  dtable[uid[u], c] += sum over positions[offsets[u] .. offsets[u+1]] of dout[pos, c]
//                 The host groups the (CPU-known) ids by value, so each output row is summed by
//                 one invocation in a fixed order: deterministic, no float atomics.
//
// A table larger than one storage binding is bound in row chunks: `table` is then rows
// row_start .. row_start + vocab of the whole table, and each dispatch handles the ids that
// fall in its chunk (gather adds zero for the others, so the host zeroes `out` first).

struct Params {
    rows: u32,
    cols: u32,
    vocab: u32,
    accumulate: u32,
    row_start: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The flat index of this invocation in the [rows, cols] grid of both entries.
fn element(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}

// Whether token `id` has its row in the bound chunk of the table (rows row_start..+vocab).
fn in_chunk(id: u32) -> bool {
    return id >= p.row_start && id - p.row_start < p.vocab;
}

@group(0) @binding(1) var<storage, read> g_table: array<f32>;
@group(0) @binding(2) var<storage, read> g_ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> g_out: array<f32>;

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, nwg, lid);
    if (i >= p.rows * p.cols) { return; }
    let n = i / p.cols;
    let c = i % p.cols;
    let id = g_ids[n];
    // Ids are validated on the host; an out-of-range one reads zero, never out of bounds.
    var v = 0.0;
    if (in_chunk(id)) { v = g_table[(id - p.row_start) * p.cols + c]; }
    if (p.accumulate != 0u) { g_out[i] += v; } else { g_out[i] = v; }
}

@group(0) @binding(1) var<storage, read> s_dout: array<f32>;
@group(0) @binding(2) var<storage, read> s_uids: array<u32>;
@group(0) @binding(3) var<storage, read> s_offsets: array<u32>;
@group(0) @binding(4) var<storage, read> s_positions: array<u32>;
@group(0) @binding(5) var<storage, read_write> s_dtable: array<f32>;

// p.rows here is the number of distinct ids.
@compute @workgroup_size(256)
fn scatter_add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, nwg, lid);
    if (i >= p.rows * p.cols) { return; }
    let u = i / p.cols;
    let c = i % p.cols;
    let id = s_uids[u];
    if (!in_chunk(id)) { return; }
    var s = 0.0;
    for (var k = s_offsets[u]; k < s_offsets[u + 1u]; k++) {
        s += s_dout[s_positions[k] * p.cols + c];
    }
    s_dtable[(id - p.row_start) * p.cols + c] += s;
}
