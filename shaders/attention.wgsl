// Scaled dot-product attention with causal and key-padding masks and grouped-query attention,
// in the FlashAttention manner: the forward keeps only the log-sum-exp per query row, and the
// backward recomputes the probabilities from it. Memory grows with T, never T^2.
//
//   q, dq, out, dout:  [B, T, Hq, D]    (the layout of the projections; no transposes)
//   k, v, dk, dv:      [B, T, Hkv, D]   query head h reads key/value head h / (Hq / Hkv)
//   key_mask:          [B, T] u32       1 = attend, 0 = padding (only read when has_mask); with
//                                       `segments` (sequence packing) the example each token
//                                       belongs to, 1, 2, ... (0 = padding): a query then sees
//                                       only keys of its own example (block-diagonal causal)
//   stats:             [2, B, Hq, T]    row 0: lse = log sum_j exp(s_ij); row 1: delta
//                                       (delta_i = dout_i . out_i, filled by attn_delta)
//   s_ij = scale * q_i . k_j, masked keys (padding, or j > i + q_offset when causal) are skipped.
//   With a sliding window W > 0 (causal only), key j is also skipped when i + q_offset - j >= W:
//   each query sees itself and the W - 1 keys before it (transformers' `kv_idx > q_idx - W`).
//   With segments, key j is also skipped when query i's segment is not 0 and differs from j's
//   (a padding query, segment 0, sees every real key as it does without packing; its loss is
//   masked anyway).
//
// For decoding with a KV cache the forward also takes keys that differ from the queries: k and v
// are [B, kv_seq, Hkv, D] with the first kv_len rows in use, and query t sits at position
// t + q_offset (the cached tokens before it). Training passes have kv_seq = kv_len = T, q_offset 0.
//
// D (head dim) is a constant from the host-prepended header, so the per-row arrays live in
// registers. Workgroups take 64 rows of one (batch, head) and stage 16 keys (or queries) at a
// time in workgroup memory, 2 * 16 * D floats.

struct Params {
    batch: u32,
    seq: u32,
    hq: u32,
    hkv: u32,
    causal: u32,
    has_mask: u32,
    accumulate: u32,
    scale: f32,
    kv_seq: u32,
    kv_len: u32,
    q_offset: u32,
    window: u32,
    segments: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;
const KT: u32 = 16u;

var<workgroup> tile_a: array<f32, KT * D>;
var<workgroup> tile_b: array<f32, KT * D>;
// Per staged key: 0 if it may not be attended to, else its segment (1 without packing).
var<workgroup> tile_valid: array<u32, KT>;
// Per staged query (dk/dv pass): its segment, 0 when it may see every key.
var<workgroup> tile_qseg: array<u32, KT>;
var<workgroup> tile_s0: array<f32, KT>;
var<workgroup> tile_s1: array<f32, KT>;

fn q_index(b: u32, t: u32, h: u32) -> u32 { return ((b * p.seq + t) * p.hq + h) * D; }
fn kv_index(b: u32, t: u32, h: u32) -> u32 { return ((b * p.kv_seq + t) * p.hkv + h) * D; }
fn stat_index(b: u32, h: u32, t: u32) -> u32 { return (b * p.hq + h) * p.seq + t; }

// Bindings 1-4 are the same in the forward and both backward passes.
@group(0) @binding(1) var<storage, read> q_in: array<f32>;
@group(0) @binding(2) var<storage, read> k_in: array<f32>;
@group(0) @binding(3) var<storage, read> v_in: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<u32>;

// Whether query position `pos` (counted among the keys) may see key j under the causal mask and
// the sliding window.
fn in_reach(pos: u32, j: u32) -> bool {
    if (p.causal == 0u) { return true; }
    if (j > pos) { return false; }
    return p.window == 0u || pos - j < p.window;
}

// The first key any query at positions >= first_pos can see: keys before it are never loaded.
fn first_key(first_pos: u32) -> u32 {
    if (p.causal == 0u || p.window == 0u || first_pos + 1u < p.window) { return 0u; }
    return first_pos + 1u - p.window;
}

// 0 when key j may not be attended to (past the end, padding), else its segment tag.
fn key_valid(b: u32, j: u32) -> u32 {
    if (j >= p.kv_len) { return 0u; }
    if (p.has_mask != 0u) { return key_mask[b * p.kv_seq + j]; }
    return 1u;
}

// The segment the query at key position `pos` must stay in; 0 = no restriction.
fn query_segment(b: u32, pos: u32) -> u32 {
    if (p.segments == 0u || pos >= p.kv_len) { return 0u; }
    return key_mask[b * p.kv_seq + pos];
}

// Whether a key tagged `tag` (from key_valid) is visible to a query of segment `seg`.
fn visible(tag: u32, seg: u32) -> bool {
    return tag != 0u && (seg == 0u || tag == seg);
}

// Stages keys j0 .. j0+KT of key/value head hk: K into tile_a, V into tile_b (zeros past the
// end), and whether each may be attended to into tile_valid. Call between barriers.
fn load_kv_tile(b: u32, hk: u32, j0: u32, lid: u32) {
    for (var i = lid; i < KT * D; i += WG) {
        let j = j0 + i / D;
        var kv = 0.0;
        var vv = 0.0;
        if (j < p.kv_len) {
            kv = k_in[kv_index(b, j, hk) + i % D];
            vv = v_in[kv_index(b, j, hk) + i % D];
        }
        tile_a[i] = kv;
        tile_b[i] = vv;
    }
    if (lid < KT) { tile_valid[lid] = key_valid(b, j0 + lid); }
}

// The query row one invocation of attn_fwd or attn_bwd_dq owns: batch b, query head h, the
// key/value head hk it reads, position t (valid: t < seq).
struct QueryRow {
    b: u32,
    h: u32,
    hk: u32,
    t: u32,
    valid: bool,
}

fn query_row(wg: vec3<u32>, lid: u32) -> QueryRow {
    let h = wg.y % p.hq;
    let t = wg.x * WG + lid;
    return QueryRow(wg.y / p.hq, h, h / (p.hq / p.hkv), t, t < p.seq);
}

// The query row times the scale (zeros past the end), as both passes over query rows hold it.
fn scaled_query(r: QueryRow) -> array<f32, D> {
    var q: array<f32, D>;
    for (var d = 0u; d < D; d++) {
        q[d] = 0.0;
        if (r.valid) { q[d] = q_in[q_index(r.b, r.t, r.h) + d] * p.scale; }
    }
    return q;
}

// The backward's recomputed probability of one (query, key) pair and its score gradient, the
// same in the dq and the dk/dv pass: s = x . tile_a[row] (the scaled query against a staged
// key, or the scaled key against a staged query), p = exp(s - lse), dp = y . tile_b[row] (dout
// against a staged value, or the value against a staged dout), ds = p (dp - delta).
// Returns (p, ds).
fn prob_and_ds(x: ptr<function, array<f32, D>>, y: ptr<function, array<f32, D>>, row: u32, lse: f32, delta: f32) -> vec2<f32> {
    var s = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < D; d++) {
        s = fma((*x)[d], tile_a[row * D + d], s);
        dp = fma((*y)[d], tile_b[row * D + d], dp);
    }
    let pr = exp(s - lse);
    return vec2(pr, pr * (dp - delta));
}

// ---- forward ----
@group(0) @binding(5) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> f_stats: array<f32>;

@compute @workgroup_size(64)
fn attn_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = query_row(wg, lid);
    var q = scaled_query(r);
    var acc: array<f32, D>;
    for (var d = 0u; d < D; d++) { acc[d] = 0.0; }
    var m = -3.0e38;
    var l = 0.0;
    var seg = 0u;
    if (r.valid) { seg = query_segment(r.b, r.t + p.q_offset); }
    var key_end = p.kv_len;
    if (p.causal != 0u) { key_end = min(p.kv_len, (wg.x + 1u) * WG + p.q_offset); }
    // Tiles start at a multiple of KT at or before the block's first reachable key.
    for (var j0 = first_key(wg.x * WG + p.q_offset) / KT * KT; j0 < key_end; j0 += KT) {
        workgroupBarrier();
        load_kv_tile(r.b, r.hk, j0, lid);
        workgroupBarrier();
        if (r.valid) {
            for (var jj = 0u; jj < KT; jj++) {
                let j = j0 + jj;
                if (!visible(tile_valid[jj], seg) || !in_reach(r.t + p.q_offset, j)) { continue; }
                var s = 0.0;
                for (var d = 0u; d < D; d++) { s = fma(q[d], tile_a[jj * D + d], s); }
                // Online softmax: rescale what was summed under the old max.
                let m_new = max(m, s);
                let corr = exp(m - m_new);
                let e = exp(s - m_new);
                l = l * corr + e;
                for (var d = 0u; d < D; d++) { acc[d] = acc[d] * corr + e * tile_b[jj * D + d]; }
                m = m_new;
            }
        }
    }
    if (!r.valid) { return; }
    // A row with no key to attend to (all padding) outputs zeros; its lse is never used,
    // since every pass skips the same keys.
    var inv_l = 0.0;
    var lse = 0.0;
    if (l > 0.0) { inv_l = 1.0 / l; lse = m + log(l); }
    for (var d = 0u; d < D; d++) { f_out[q_index(r.b, r.t, r.h) + d] = acc[d] * inv_l; }
    f_stats[stat_index(r.b, r.h, r.t)] = lse;
}

// ---- backward: delta_i = dout_i . out_i ----
@group(0) @binding(1) var<storage, read> d_dout: array<f32>;
@group(0) @binding(2) var<storage, read> d_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_stats: array<f32>;

@compute @workgroup_size(64)
fn attn_delta(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.y / p.hq;
    let h = wg.y % p.hq;
    let t = wg.x * WG + lid;
    if (t >= p.seq) { return; }
    var s = 0.0;
    for (var d = 0u; d < D; d++) { s += d_dout[q_index(b, t, h) + d] * d_out[q_index(b, t, h) + d]; }
    d_stats[p.batch * p.hq * p.seq + stat_index(b, h, t)] = s;
}

// ---- backward: dq, per query row ----
// ds_ij = p_ij (dout_i . v_j - delta_i);  dq_i = scale * sum_j ds_ij k_j
@group(0) @binding(5) var<storage, read> q_dout: array<f32>;
@group(0) @binding(6) var<storage, read> q_stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> q_dq: array<f32>;

@compute @workgroup_size(64)
fn attn_bwd_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = query_row(wg, lid);
    var q = scaled_query(r);
    var dout: array<f32, D>;
    var dq: array<f32, D>;
    var lse = 0.0;
    var delta = 0.0;
    for (var d = 0u; d < D; d++) {
        dout[d] = 0.0;
        dq[d] = 0.0;
        if (r.valid) { dout[d] = q_dout[q_index(r.b, r.t, r.h) + d]; }
    }
    var seg = 0u;
    if (r.valid) {
        lse = q_stats[stat_index(r.b, r.h, r.t)];
        delta = q_stats[p.batch * p.hq * p.seq + stat_index(r.b, r.h, r.t)];
        seg = query_segment(r.b, r.t);
    }
    var key_end = p.seq;
    if (p.causal != 0u) { key_end = min(p.seq, (wg.x + 1u) * WG); }
    for (var j0 = first_key(wg.x * WG) / KT * KT; j0 < key_end; j0 += KT) {
        workgroupBarrier();
        load_kv_tile(r.b, r.hk, j0, lid);
        workgroupBarrier();
        if (r.valid) {
            for (var jj = 0u; jj < KT; jj++) {
                let j = j0 + jj;
                if (!visible(tile_valid[jj], seg) || !in_reach(r.t, j)) { continue; }
                let ds = prob_and_ds(&q, &dout, jj, lse, delta).y;
                for (var d = 0u; d < D; d++) { dq[d] = fma(ds, tile_a[jj * D + d], dq[d]); }
            }
        }
    }
    if (!r.valid) { return; }
    for (var d = 0u; d < D; d++) {
        let idx = q_index(r.b, r.t, r.h) + d;
        let v = dq[d] * p.scale;
        if (p.accumulate != 0u) { q_dq[idx] += v; } else { q_dq[idx] = v; }
    }
}

// ---- backward: dk, dv, per key row of one key/value head ----
// dv_j = sum_{h in group, i} p_ij dout_i;  dk_j = scale * sum_{h in group, i} ds_ij q_i
@group(0) @binding(5) var<storage, read> k_dout: array<f32>;
@group(0) @binding(6) var<storage, read> k_stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> k_dk: array<f32>;
@group(0) @binding(8) var<storage, read_write> k_dv: array<f32>;

@compute @workgroup_size(64)
fn attn_bwd_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.y / p.hkv;
    let hk = wg.y % p.hkv;
    let group = p.hq / p.hkv;
    let j = wg.x * WG + lid;
    let tag = key_valid(b, j);
    let this_key_valid = tag != 0u;

    var k: array<f32, D>;
    var v: array<f32, D>;
    var dk: array<f32, D>;
    var dv: array<f32, D>;
    for (var d = 0u; d < D; d++) {
        k[d] = 0.0;
        v[d] = 0.0;
        dk[d] = 0.0;
        dv[d] = 0.0;
        if (this_key_valid) {
            k[d] = k_in[kv_index(b, j, hk) + d] * p.scale;
            v[d] = v_in[kv_index(b, j, hk) + d];
        }
    }
    // Causal: queries before this block's first key never see any of its keys; with a window,
    // neither do queries W or more past its last key.
    var q_start = 0u;
    var q_end = p.seq;
    if (p.causal != 0u) { q_start = wg.x * WG; }
    if (p.causal != 0u && p.window != 0u) { q_end = min(p.seq, (wg.x + 1u) * WG - 1u + p.window); }
    let n_stats = p.batch * p.hq * p.seq;
    for (var g = 0u; g < group; g++) {
        let h = hk * group + g;
        for (var i0 = q_start; i0 < q_end; i0 += KT) {
            workgroupBarrier();
            for (var x = lid; x < KT * D; x += WG) {
                let i = i0 + x / D;
                var qv = 0.0;
                var dov = 0.0;
                if (i < p.seq) {
                    qv = q_in[q_index(b, i, h) + x % D];
                    dov = k_dout[q_index(b, i, h) + x % D];
                }
                tile_a[x] = qv;
                tile_b[x] = dov;
            }
            if (lid < KT) {
                let i = i0 + lid;
                var lse = 0.0;
                var delta = 0.0;
                if (i < p.seq) {
                    lse = k_stats[stat_index(b, h, i)];
                    delta = k_stats[n_stats + stat_index(b, h, i)];
                }
                tile_s0[lid] = lse;
                tile_s1[lid] = delta;
                tile_qseg[lid] = query_segment(b, i);
            }
            workgroupBarrier();
            if (this_key_valid) {
                for (var ii = 0u; ii < KT; ii++) {
                    let i = i0 + ii;
                    if (i >= p.seq || !visible(tag, tile_qseg[ii]) || !in_reach(i, j)) { continue; }
                    let pds = prob_and_ds(&k, &v, ii, tile_s0[ii], tile_s1[ii]);
                    for (var d = 0u; d < D; d++) {
                        dv[d] = fma(pds.x, tile_b[ii * D + d], dv[d]);
                        dk[d] = fma(pds.y, tile_a[ii * D + d], dk[d]);
                    }
                }
            }
        }
    }
    if (j >= p.seq) { return; }
    for (var d = 0u; d < D; d++) {
        let idx = kv_index(b, j, hk) + d;
        let dkv = dk[d] * p.scale;
        if (p.accumulate != 0u) {
            k_dk[idx] += dkv;
            k_dv[idx] += dv[d];
        } else {
            k_dk[idx] = dkv;
            k_dv[idx] = dv[d];
        }
    }
}
