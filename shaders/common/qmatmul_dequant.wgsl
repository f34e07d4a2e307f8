// The params, bindings and dequantization of the quantized matmuls (qmatmul.wgsl,
// qmatmul_coop.wgsl), which include this file; qmatmul.wgsl's opening comment describes W's
// layout, the chunks of 32 weights and the constants the host's header gives (QTYPE, QW, SW).

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

// Task t of staging W's rows n0.. and columns col0.. for dx = dy·W (qmatmul_dx and
// qmatmul_dx_coop), into a [BK][bn] slice whose columns are `blocks` = bn / BK whole chunks:
// eight weights of one row and chunk, and `base`, where its row and chunk start in the slice
// (the weights go to base + lo_k(part) + 0..3 and base + hi_k(part) + 0..3). Zero past W.
struct DxTask {
    base: u32,
    part: u32,
    e: Eight,
}

fn dx_task(t: u32, n0: u32, col0: u32, blocks: u32, bn: u32) -> DxTask {
    let part = t % 4u;
    let bb = (t / 4u) % blocks;
    let kk = t / (4u * blocks);
    let kb = col0 / BK + bb;
    let bpr = p.k / BK;
    var e = Eight(vec4<f32>(0.0), vec4<f32>(0.0));
    if (n0 + kk < p.n && kb < bpr) { e = dequant8((n0 + kk) * bpr + kb, part); }
    return DxTask(kk * bn + bb * BK, part, e);
}
