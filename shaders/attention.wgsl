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
// registers. Rows are held as D4 = ceil(D / 4) vec4s (zeros past D): one load from workgroup
// memory then feeds four multiply-adds. Workgroups take 64 rows of one (batch, head) and stage
// 16 keys (or queries) at a time in workgroup memory, 2 * 16 * D4 vec4s.

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
const D4: u32 = (D + 3u) / 4u;
// The score of a key a query may not see, below any real score.
const NO_KEY: f32 = -3.0e38;

var<workgroup> tile_a: array<vec4<f32>, KT * D4>;
var<workgroup> tile_b: array<vec4<f32>, KT * D4>;
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

// Elements 4c .. 4c+3 of a row that starts at `base`, zeros past D. One function per binding:
// WGSL passes no pointers to storage buffers.
fn q4(base: u32, c: u32) -> vec4<f32> {
    var x = vec4(0.0);
    for (var e = 0u; e < 4u; e++) { if (4u * c + e < D) { x[e] = q_in[base + 4u * c + e]; } }
    return x;
}

fn k4(base: u32, c: u32) -> vec4<f32> {
    var x = vec4(0.0);
    for (var e = 0u; e < 4u; e++) { if (4u * c + e < D) { x[e] = k_in[base + 4u * c + e]; } }
    return x;
}

fn v4(base: u32, c: u32) -> vec4<f32> {
    var x = vec4(0.0);
    for (var e = 0u; e < 4u; e++) { if (4u * c + e < D) { x[e] = v_in[base + 4u * c + e]; } }
    return x;
}

// Stages keys j0 .. j0+KT of key/value head hk: K into tile_a, V into tile_b (zeros past the
// end), and whether each may be attended to into tile_valid. Call between barriers.
fn load_kv_tile(b: u32, hk: u32, j0: u32, lid: u32) {
    for (var i = lid; i < KT * D4; i += WG) {
        let j = j0 + i / D4;
        var kv = vec4(0.0);
        var vv = vec4(0.0);
        if (j < p.kv_len) {
            kv = k4(kv_index(b, j, hk), i % D4);
            vv = v4(kv_index(b, j, hk), i % D4);
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
fn scaled_query(r: QueryRow) -> array<vec4<f32>, D4> {
    var q: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        q[c] = vec4(0.0);
        if (r.valid) { q[c] = q4(q_index(r.b, r.t, r.h), c) * p.scale; }
    }
    return q;
}

// The backward's recomputed probability of one (query, key) pair and its score gradient, the
// same in the dq and the dk/dv pass: s = x . tile_a[row] (the scaled query against a staged
// key, or the scaled key against a staged query), p = exp(s - lse), dp = y . tile_b[row] (dout
// against a staged value, or the value against a staged dout), ds = p (dp - delta).
// Returns (p, ds).
fn prob_and_ds(x: ptr<function, array<vec4<f32>, D4>>, y: ptr<function, array<vec4<f32>, D4>>, row: u32, lse: f32, delta: f32) -> vec2<f32> {
    var s = vec4(0.0);
    var dp = vec4(0.0);
    for (var c = 0u; c < D4; c++) {
        s = fma((*x)[c], tile_a[row * D4 + c], s);
        dp = fma((*y)[c], tile_b[row * D4 + c], dp);
    }
    let pr = exp(s.x + s.y + s.z + s.w - lse);
    return vec2(pr, pr * (dp.x + dp.y + dp.z + dp.w - delta));
}

// ---- forward ----
@group(0) @binding(5) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> f_stats: array<f32>;

@compute @workgroup_size(64)
fn attn_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = query_row(wg, lid);
    var q = scaled_query(r);
    var acc: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) { acc[c] = vec4(0.0); }
    var m = NO_KEY;
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
        // The tile's scores first, then one rescale under the tile's max (online softmax); a key
        // this query may not see scores NO_KEY. Rows past the end run on zeros and are not
        // written.
        var s: array<f32, KT>;
        var m_new = m;
        for (var jj = 0u; jj < KT; jj++) {
            var dot4 = vec4(0.0);
            for (var c = 0u; c < D4; c++) { dot4 = fma(q[c], tile_a[jj * D4 + c], dot4); }
            let seen = visible(tile_valid[jj], seg) && in_reach(r.t + p.q_offset, j0 + jj);
            s[jj] = select(NO_KEY, dot4.x + dot4.y + dot4.z + dot4.w, seen);
            m_new = max(m_new, s[jj]);
        }
        let corr = exp(m - m_new);
        l *= corr;
        for (var c = 0u; c < D4; c++) { acc[c] *= corr; }
        for (var jj = 0u; jj < KT; jj++) {
            let e = select(0.0, exp(s[jj] - m_new), s[jj] > NO_KEY);
            l += e;
            for (var c = 0u; c < D4; c++) { acc[c] = fma(vec4(e), tile_b[jj * D4 + c], acc[c]); }
        }
        m = m_new;
    }
    if (!r.valid) { return; }
    // A row with no key to attend to (all padding) outputs zeros; its lse is never used,
    // since every pass skips the same keys.
    var inv_l = 0.0;
    var lse = 0.0;
    if (l > 0.0) { inv_l = 1.0 / l; lse = m + log(l); }
    let base = q_index(r.b, r.t, r.h);
    for (var d = 0u; d < D; d++) { f_out[base + d] = acc[d / 4u][d % 4u] * inv_l; }
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

// Bindings 5 and 6 are the same in both passes over queries and keys: dout and the statistics.
@group(0) @binding(5) var<storage, read> b_dout: array<f32>;
@group(0) @binding(6) var<storage, read> b_stats: array<f32>;

fn dout4(base: u32, c: u32) -> vec4<f32> {
    var x = vec4(0.0);
    for (var e = 0u; e < 4u; e++) { if (4u * c + e < D) { x[e] = b_dout[base + 4u * c + e]; } }
    return x;
}

// ---- backward: dq, per query row ----
// ds_ij = p_ij (dout_i . v_j - delta_i);  dq_i = scale * sum_j ds_ij k_j
@group(0) @binding(7) var<storage, read_write> q_dq: array<f32>;

@compute @workgroup_size(64)
fn attn_bwd_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = query_row(wg, lid);
    var q = scaled_query(r);
    var dout: array<vec4<f32>, D4>;
    var dq: array<vec4<f32>, D4>;
    var lse = 0.0;
    var delta = 0.0;
    let base = q_index(r.b, r.t, r.h);
    for (var c = 0u; c < D4; c++) {
        dout[c] = vec4(0.0);
        dq[c] = vec4(0.0);
        if (r.valid) { dout[c] = dout4(base, c); }
    }
    var seg = 0u;
    if (r.valid) {
        lse = b_stats[stat_index(r.b, r.h, r.t)];
        delta = b_stats[p.batch * p.hq * p.seq + stat_index(r.b, r.h, r.t)];
        seg = query_segment(r.b, r.t);
    }
    var key_end = p.seq;
    if (p.causal != 0u) { key_end = min(p.seq, (wg.x + 1u) * WG); }
    for (var j0 = first_key(wg.x * WG) / KT * KT; j0 < key_end; j0 += KT) {
        workgroupBarrier();
        load_kv_tile(r.b, r.hk, j0, lid);
        workgroupBarrier();
        for (var jj = 0u; jj < KT; jj++) {
            let seen = visible(tile_valid[jj], seg) && in_reach(r.t, j0 + jj);
            let ds = select(0.0, prob_and_ds(&q, &dout, jj, lse, delta).y, seen);
            for (var c = 0u; c < D4; c++) { dq[c] = fma(vec4(ds), tile_a[jj * D4 + c], dq[c]); }
        }
    }
    if (!r.valid) { return; }
    for (var d = 0u; d < D; d++) {
        let idx = base + d;
        let v = dq[d / 4u][d % 4u] * p.scale;
        if (p.accumulate != 0u) { q_dq[idx] += v; } else { q_dq[idx] = v; }
    }
}

// ---- backward: dk, dv, per key row of one key/value head ----
// dv_j = sum_{h in group, i} p_ij dout_i;  dk_j = scale * sum_{h in group, i} ds_ij q_i
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

    var k: array<vec4<f32>, D4>;
    var v: array<vec4<f32>, D4>;
    var dk: array<vec4<f32>, D4>;
    var dv: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        k[c] = vec4(0.0);
        v[c] = vec4(0.0);
        dk[c] = vec4(0.0);
        dv[c] = vec4(0.0);
        if (this_key_valid) {
            k[c] = k4(kv_index(b, j, hk), c) * p.scale;
            v[c] = v4(kv_index(b, j, hk), c);
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
            for (var x = lid; x < KT * D4; x += WG) {
                let i = i0 + x / D4;
                var qv = vec4(0.0);
                var dov = vec4(0.0);
                if (i < p.seq) {
                    qv = q4(q_index(b, i, h), x % D4);
                    dov = dout4(q_index(b, i, h), x % D4);
                }
                tile_a[x] = qv;
                tile_b[x] = dov;
            }
            if (lid < KT) {
                let i = i0 + lid;
                var lse = 0.0;
                var delta = 0.0;
                if (i < p.seq) {
                    lse = b_stats[stat_index(b, h, i)];
                    delta = b_stats[n_stats + stat_index(b, h, i)];
                }
                tile_s0[lid] = lse;
                tile_s1[lid] = delta;
                tile_qseg[lid] = query_segment(b, i);
            }
            workgroupBarrier();
            for (var ii = 0u; ii < KT; ii++) {
                let i = i0 + ii;
                let seen = this_key_valid && i < p.seq && visible(tag, tile_qseg[ii]) && in_reach(i, j);
                let pds = select(vec2(0.0), prob_and_ds(&k, &v, ii, tile_s0[ii], tile_s1[ii]), seen);
                for (var c = 0u; c < D4; c++) {
                    dv[c] = fma(vec4(pds.x), tile_b[ii * D4 + c], dv[c]);
                    dk[c] = fma(vec4(pds.y), tile_a[ii * D4 + c], dk[c]);
                }
            }
        }
    }
    if (j >= p.seq) { return; }
    let base = kv_index(b, j, hk);
    for (var d = 0u; d < D; d++) {
        let idx = base + d;
        let dkv = dk[d / 4u][d % 4u] * p.scale;
        let dvv = dv[d / 4u][d % 4u];
        if (p.accumulate != 0u) {
            k_dk[idx] += dkv;
            k_dv[idx] += dvv;
        } else {
            k_dk[idx] = dkv;
            k_dv[idx] = dvv;
        }
    }
}
