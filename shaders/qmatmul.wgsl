// Matmul through a frozen block-quantized weight W [N, K] (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
// Q3_K, Q4_K, Q5_K or Q6_K) or a frozen 16-bit one (F16, BF16), dequantized (widened) in the
// inner loop; W is never expanded to f32. Products and sums are f32 whatever W's type.
//
//   qmatmul     y  [M, N] = alpha * x [M, K] · Wᵀ (+ bias [N]) (+ y when accumulating)
//   qmatmul_dx  dx [M, K] = alpha * dy [M, N] · W               (+ dx when accumulating)
//   qmatvec     as qmatmul, for M ≤ MR rows (generation)
//
// W's layout (src/quant/codec.rs): GGUF's blocks along K (32 weights; 256 for the K-quants'
// super-blocks), repacked into u32 words with the same bits, in three regions:
//   quants  block i's quant bytes at word i*QW, in file order;
//   scales  from word p.scale_off, block i's whole scale words at p.scale_off + i*SW;
//   halves  from word p.half_off, a lone f16 field (the d of Q4_0, Q5_0, Q8_0, Q3_K, Q6_K),
//           two blocks per word, block i in half i % 2.
// Block i is row i / (K/B), block i % (K/B) of that row. WGSL has no f16 storage type without
// the `f16` extension (not every adapter has it), so f16 fields are read as u32 words and split
// with unpack2x16float, and quants are read as words and split with shifts. K is a multiple of
// 32 (of 256 for the K-quants).
//
// The kernels walk K in chunks of 32 weights: a 32-weight block, or sub-block c % 8 of the
// K-quant super-block c / 8. dequant8(c, part) gives eight weights of chunk c.
//
// F16 and BF16 are "blocks" of 32 values, 16 quant words each: word j holds values 2j (low
// half) and 2j + 1 (high half); no scales, no halves region.
//
// Constants from the host's header: QTYPE (GGUF's type number: 1 = F16, 30 = BF16, 2 = Q4_0, 3 = Q4_1, 6 = Q5_0,
// 7 = Q5_1, 8 = Q8_0, 10 = Q2_K, 11 = Q3_K, 12 = Q4_K, 13 = Q5_K, 14 = Q6_K; branches on it
// fold away), QW, SW, and
// BM, BN, TM, TN (tiled entries) or MR (qmatvec).
//
// Tiling, as in matmul.wgsl: a workgroup computes a BM x BN block of the output with
// (BM/TM)*(BN/TN) invocations, each keeping TM x TN accumulators in registers. The reduction
// steps BK = 32 at a time, one chunk: per step the workgroup stages the f32 operand and the
// dequantized W slice in workgroup memory (k-major), then every invocation reads TM and TN
// values as vec4s. Dequantizing while staging costs once per element of W per workgroup row,
// like a load, and the multiply-adds never see quantized data. Outside the matrix: zeros.

struct Params {
    m: u32, n: u32, k: u32, alpha: f32,
    has_bias: u32, accumulate: u32, scale_off: u32, half_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// x as vec4s, for qmatvec (K % 32 == 0, so every row starts 16-byte aligned).
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;

const BK: u32 = 32u;
const BYTE_SHIFTS: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

// The f16 field of block `blk` kept in the halves region.
fn half_of(blk: u32) -> f32 {
    let pair = unpack2x16float(w[p.half_off + blk / 2u]);
    return select(pair.x, pair.y, (blk & 1u) == 1u);
}

// Byte i of the words from `word0` on.
fn byte_at(word0: u32, i: u32) -> u32 {
    return (w[word0 + i / 4u] >> (8u * (i % 4u))) & 255u;
}

// Byte i of block `blk`'s scale words.
fn scale_byte(blk: u32, i: u32) -> u32 {
    return (w[p.scale_off + blk * SW + i / 4u] >> (8u * (i % 4u))) & 255u;
}

// The four bytes of word `v`, each shifted right by `s` more bits and masked to `mask`.
fn fields(v: u32, s: u32, mask: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> (BYTE_SHIFTS + vec4<u32>(s))) & vec4<u32>(mask);
}

// Eight weights of chunk `c`, part 0..3: `lo` is the weights at k offsets lo_k(part)+0..3
// of the chunk, `hi` those at hi_k(part)+0..3.
struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// Q4/Q5 blocks: quant word `part` of the nibbles holds bytes 4·part..4·part+3, whose low
// nibbles are weights 4·part+0..3 and high nibbles weights 16+4·part+0..3. Q8_0 and the
// K-quants: two words hold eight consecutive weights 8·part+0..7.
fn lo_k(part: u32) -> u32 {
    if (QTYPE == 1u || QTYPE == 8u || QTYPE >= 10u) { return 8u * part; }
    return 4u * part;
}

fn hi_k(part: u32) -> u32 {
    if (QTYPE == 1u || QTYPE == 8u || QTYPE >= 10u) { return 8u * part + 4u; }
    return 16u + 4u * part;
}

fn dequant8(c: u32, part: u32) -> Eight {
    if (QTYPE == 1u || QTYPE == 30u) {
        // Values 8·part..8·part+7 are words 4·part..4·part+3 of the block.
        let i = c * QW + 4u * part;
        let ws = vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
        if (QTYPE == 1u) {
            return Eight(vec4<f32>(unpack2x16float(ws.x), unpack2x16float(ws.y)),
                         vec4<f32>(unpack2x16float(ws.z), unpack2x16float(ws.w)));
        }
        // A bf16 is the top half of an f32: shift the low value up, mask the high one.
        let lo = bitcast<vec4<f32>>(ws << vec4<u32>(16u));
        let hi = bitcast<vec4<f32>>(ws & vec4<u32>(0xffff0000u));
        return Eight(vec4<f32>(lo.x, hi.x, lo.y, hi.y), vec4<f32>(lo.z, hi.z, lo.w, hi.w));
    }
    if (QTYPE == 8u) {
        // Shift each byte to the top, then an arithmetic shift back sign-extends it.
        let d = half_of(c);
        let up = vec4<u32>(24u, 16u, 8u, 0u);
        let q0 = bitcast<vec4<i32>>(vec4<u32>(w[c * QW + 2u * part]) << up) >> vec4<u32>(24u);
        let q1 = bitcast<vec4<i32>>(vec4<u32>(w[c * QW + 2u * part + 1u]) << up) >> vec4<u32>(24u);
        return Eight(d * vec4<f32>(q0), d * vec4<f32>(q1));
    }
    if (QTYPE == 2u || QTYPE == 3u || QTYPE == 6u || QTYPE == 7u) {
        // Q5: word 0 of the quants is the fifth bits (bit j for weight j), nibbles follow.
        var nib = c * QW + part;
        if (QTYPE >= 6u) { nib += 1u; }
        var lo = fields(w[nib], 0u, 15u);
        var hi = fields(w[nib], 4u, 15u);
        if (QTYPE >= 6u) {
            let qh = vec4<u32>(w[c * QW]);
            let bits = vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(4u * part);
            lo |= ((qh >> bits) & vec4<u32>(1u)) << vec4<u32>(4u);
            hi |= ((qh >> (bits + vec4<u32>(16u))) & vec4<u32>(1u)) << vec4<u32>(4u);
        }
        if (QTYPE == 2u || QTYPE == 6u) {
            // Symmetric: w = d·(q − 8) or d·(q − 16).
            let d = half_of(c);
            let mid = select(8.0, 16.0, QTYPE == 6u);
            return Eight(d * (vec4<f32>(lo) - mid), d * (vec4<f32>(hi) - mid));
        }
        // With a min: w = d·q + m.
        let s = unpack2x16float(w[p.scale_off + c * SW]);
        return Eight(fma(vec4<f32>(s.x), vec4<f32>(lo), vec4<f32>(s.y)), fma(vec4<f32>(s.x), vec4<f32>(hi), vec4<f32>(s.y)));
    }
    // K-quants: chunk c is sub-block j of super-block sb.
    let sb = c / 8u;
    let j = c % 8u;
    if (QTYPE == 10u || QTYPE == 11u) {
        // 16 groups of 16 (this part's group: 2j + part / 2). The 2-bit quants of weight
        // 32j + l sit in byte 32·(j / 4) + l at bits 2·(j % 4), after Q2_K's 16 bytes of scales
        // or Q3_K's 32 bytes of high bits.
        let blk = sb * QW;
        let g = 2u * j + part / 2u;
        let qw = blk + select(4u, 8u, QTYPE == 11u) + 8u * (j / 4u) + 2u * part;
        let q0 = fields(w[qw], 2u * (j % 4u), 3u);
        let q1 = fields(w[qw + 1u], 2u * (j % 4u), 3u);
        if (QTYPE == 10u) {
            // Q2_K: scale byte g = 4-bit scale | 4-bit min << 4; w = d·sc·q − dmin·mn.
            let sc = byte_at(blk, g);
            let dd = unpack2x16float(w[p.scale_off + sb * SW]);
            let dl = dd.x * f32(sc & 15u);
            let ml = dd.y * f32(sc >> 4u);
            return Eight(dl * vec4<f32>(q0) - ml, dl * vec4<f32>(q1) - ml);
        }
        // Q3_K: q − 4 unless the high bit (bit j of hmask byte l) is set; the 6-bit scale (low
        // nibble in byte 96 + g % 8 at 4·(g / 8), top bits in byte 104 + g % 4 at 2·(g / 4))
        // minus 32; w = d·sc·q.
        let h0 = vec4<f32>(fields(w[blk + 2u * part], j, 1u));
        let h1 = vec4<f32>(fields(w[blk + 2u * part + 1u], j, 1u));
        let lo = (byte_at(blk, 96u + g % 8u) >> (4u * (g / 8u))) & 15u;
        let hi = (byte_at(blk, 104u + g % 4u) >> (2u * (g / 4u))) & 3u;
        let dl = half_of(sb) * f32(i32(lo | (hi << 4u)) - 32);
        return Eight(dl * (vec4<f32>(q0) - 4.0 * (1.0 - h0)), dl * (vec4<f32>(q1) - 4.0 * (1.0 - h1)));
    }
    if (QTYPE == 12u || QTYPE == 13u) {
        // Scale words: d and dmin, then 12 bytes of 6-bit scales and mins (bytes 4..15): for
        // j < 4 the low 6 bits of bytes 4 + j (scale) and 8 + j (min); for j ≥ 4 the nibbles
        // of byte 8 + j with the top 2 bits of bytes j (scale) and 4 + j (min).
        let dd = unpack2x16float(w[p.scale_off + sb * SW]);
        var sc: u32;
        var mn: u32;
        if (j < 4u) {
            sc = scale_byte(sb, 4u + j) & 63u;
            mn = scale_byte(sb, 8u + j) & 63u;
        } else {
            sc = (scale_byte(sb, 8u + j) & 15u) | ((scale_byte(sb, j) >> 6u) << 4u);
            mn = (scale_byte(sb, 8u + j) >> 4u) | ((scale_byte(sb, 4u + j) >> 6u) << 4u);
        }
        let dl = dd.x * f32(sc);
        let ml = dd.y * f32(mn);
        // Sub-blocks 2h, 2h + 1 share 32 bytes of nibbles (low, high); Q5_K's 32 bytes of
        // fifth bits come first, weight l of sub-block j at bit j of byte l.
        var nib = sb * QW + 8u * (j / 2u) + 2u * part;
        if (QTYPE == 13u) { nib += 8u; }
        var q0 = fields(w[nib], 4u * (j % 2u), 15u);
        var q1 = fields(w[nib + 1u], 4u * (j % 2u), 15u);
        if (QTYPE == 13u) {
            q0 |= fields(w[sb * QW + 2u * part], j, 1u) << vec4<u32>(4u);
            q1 |= fields(w[sb * QW + 2u * part + 1u], j, 1u) << vec4<u32>(4u);
        }
        // d·sc·q is exact in f32; the subtraction rounds once, as in ggml.
        return Eight(dl * vec4<f32>(q0) - ml, dl * vec4<f32>(q1) - ml);
    }
    // Q6_K: in 128-half h, sub-block j = 4h + cc takes its low nibbles from quant bytes
    // 64h + 32(cc % 2).. (nibble cc / 2) and its top two bits from bytes 128 + 32h.. (bits 2cc);
    // one int8 scale per 16 weights (group 2j + part / 2), d in the halves region.
    let h = j / 4u;
    let cc = j % 4u;
    let lo_w = sb * QW + 16u * h + 8u * (cc % 2u) + 2u * part;
    let hi_w = sb * QW + 32u + 8u * h + 2u * part;
    let g = 2u * j + part / 2u;
    let sc = extractBits(bitcast<i32>(w[p.scale_off + sb * SW + g / 4u]), 8u * (g % 4u), 8u);
    let dl = half_of(sb) * f32(sc);
    let q0 = fields(w[lo_w], 4u * (cc / 2u), 15u) | (fields(w[hi_w], 2u * cc, 3u) << vec4<u32>(4u));
    let q1 = fields(w[lo_w + 1u], 4u * (cc / 2u), 15u) | (fields(w[hi_w + 1u], 2u * cc, 3u) << vec4<u32>(4u));
    return Eight(dl * (vec4<f32>(q0) - 32.0), dl * (vec4<f32>(q1) - 32.0));
}

// ---- tiled entries ----

// a_tile (the f32 operand) and b_tile (dequantized W), multiply_tiles.
// #include "matmul_tiles.wgsl"

// Writes the invocation's TM x TN outputs of a [rows, cols] result (bias only for qmatmul).
fn store(row0: u32, col0: u32, rows: u32, cols: u32, with_bias: bool, acc: ptr<function, array<vec4<f32>, TM * TN4>>) {
    for (var i = 0u; i < TM; i++) {
        let row = row0 + i;
        if (row >= rows) { break; }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + j;
            if (col >= cols) { break; }
            var v = p.alpha * (*acc)[i * TN4 + j / 4u][j % 4u];
            if (with_bias) { v += bias[col]; }
            let idx = row * cols + col;
            if (p.accumulate != 0u) { v += out[idx]; }
            out[idx] = v;
        }
    }
}

@compute @workgroup_size(WG)
fn qmatmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let row0 = wg.y * BM; // rows of x and y
    let col0 = wg.x * BN; // rows of W = columns of y
    let bpr = p.k / BK;

    var acc: array<vec4<f32>, TM * TN4>;
    for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }

    for (var kb = 0u; kb < bpr; kb++) {
        // x[row0.., kb·32..] as a_tile[kk][mm]; consecutive invocations read along a row of x.
        for (var i = lid; i < BM * BK; i += WG) {
            let kk = i % BK;
            let gm = row0 + i / BK;
            var v = 0.0;
            if (gm < p.m) { v = x[gm * p.k + kb * BK + kk]; }
            set_a(kk * BM + i / BK, v);
        }
        // Block kb of W's rows col0.. as b_tile[kk][nn]: four tasks of eight weights per row.
        for (var t = lid; t < BN * 4u; t += WG) {
            let nn = t / 4u;
            let part = t % 4u;
            var e = Eight(vec4<f32>(0.0), vec4<f32>(0.0));
            if (col0 + nn < p.n) { e = dequant8((col0 + nn) * bpr + kb, part); }
            let kl = lo_k(part);
            let kh = hi_k(part);
            for (var i = 0u; i < 4u; i++) {
                set_b((kl + i) * BN + nn, e.lo[i]);
                set_b((kh + i) * BN + nn, e.hi[i]);
            }
        }
        workgroupBarrier();
        multiply_tiles(tx, ty, &acc);
        workgroupBarrier();
    }
    store(row0 + ty * TM, col0 + tx * TN, p.m, p.n, p.has_bias != 0u, &acc);
}

// dx = dy·W: the output's columns are W's columns (K), and the sum runs over W's rows (N), 32
// rows per step. BN is a multiple of 32, so a workgroup's columns are whole blocks.
@compute @workgroup_size(WG)
fn qmatmul_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let row0 = wg.y * BM; // rows of dy and dx
    let col0 = wg.x * BN; // columns of W and dx
    let bpr = p.k / BK;
    const BLOCKS: u32 = BN / BK; // blocks of a W row in this workgroup's columns

    var acc: array<vec4<f32>, TM * TN4>;
    for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }

    for (var n0 = 0u; n0 < p.n; n0 += BK) {
        // dy[row0.., n0..] as a_tile[kk][mm].
        for (var i = lid; i < BM * BK; i += WG) {
            let kk = i % BK;
            let gm = row0 + i / BK;
            var v = 0.0;
            if (gm < p.m && n0 + kk < p.n) { v = x[gm * p.n + n0 + kk]; }
            set_a(kk * BM + i / BK, v);
        }
        // W[n0.., col0..] as b_tile[kk][jj]: four consecutive k are four adjacent columns, so
        // each half of a task is one aligned vec4 store.
        for (var t = lid; t < BK * BLOCKS * 4u; t += WG) {
            let part = t % 4u;
            let bb = (t / 4u) % BLOCKS;
            let kk = t / (4u * BLOCKS);
            let kb = col0 / BK + bb;
            var e = Eight(vec4<f32>(0.0), vec4<f32>(0.0));
            if (n0 + kk < p.n && kb < bpr) { e = dequant8((n0 + kk) * bpr + kb, part); }
            let base = kk * BN + bb * BK;
            b_tile[(base + lo_k(part)) / 4u] = e.lo;
            b_tile[(base + hi_k(part)) / 4u] = e.hi;
        }
        workgroupBarrier();
        multiply_tiles(tx, ty, &acc);
        workgroupBarrier();
    }
    store(row0 + ty * TM, col0 + tx * TN, p.m, p.k, false, &acc);
}

// ---- skinny entry: M ≤ MR rows (one token at a time with a KV cache) ----
// One invocation per output column: it walks its W row block by block, dequantizes eight
// weights at a time and multiplies them into every row of x (read as vec4s), so W is read once
// whatever M is. MR is M rounded up to a power of two; rows M..MR-1 repeat row M-1 and are
// never stored, so the row loops have constant bounds.
const MV_WG: u32 = 64u;

@compute @workgroup_size(MV_WG)
fn qmatvec(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col = (wg.y * nwg.x + wg.x) * MV_WG + lid;
    if (col >= p.n) { return; }
    let bpr = p.k / BK;
    let k4 = p.k / 4u;
    var xrow: array<u32, MR>;
    for (var m = 0u; m < MR; m++) { xrow[m] = min(m, p.m - 1u) * k4; }
    var acc: array<f32, MR>;
    for (var m = 0u; m < MR; m++) { acc[m] = 0.0; }
    for (var kb = 0u; kb < bpr; kb++) {
        for (var part = 0u; part < 4u; part++) {
            let e = dequant8(col * bpr + kb, part);
            let il = (kb * BK + lo_k(part)) / 4u;
            let ih = (kb * BK + hi_k(part)) / 4u;
            for (var m = 0u; m < MR; m++) {
                acc[m] += dot(e.lo, x4[xrow[m] + il]) + dot(e.hi, x4[xrow[m] + ih]);
            }
        }
    }
    for (var m = 0u; m < p.m; m++) {
        var v = p.alpha * acc[m];
        if (p.has_bias != 0u) { v += bias[col]; }
        let idx = m * p.n + col;
        if (p.accumulate != 0u) { v += out[idx]; }
        out[idx] = v;
    }
}
