// Batched matmul: C[b] = alpha * op(A[b]) · op(B[b]) (+ bias) (+ C[b] when accumulating).
//
//   op(A) is [M, K]: A is stored [M, K], or [K, M] when trans_a (read transposed in place).
//   op(B) is [K, N]: B is stored [K, N], or [N, K] when trans_b.
//   C is [M, N] row-major. bias is [N] (only read when has_bias).
//   Batch b starts at offset_x + b * stride_x elements; a stride of 0 broadcasts one matrix.
//
// Tiling (constants BM, BN, BK, TM, TN come from a header the host prepends, one per adapter):
// a workgroup computes a BM x BN block of C with (BM/TM)*(BN/TN) invocations; each invocation
// keeps a TM x TN block of accumulators in registers. Per BK-slice of K, the workgroup stages
// the A and B slices in workgroup memory, k-major, so an invocation reads its TM values of A
// and TN values of B as vec4s. Loads outside the matrix are zero, so any M, N, K works.

struct Params {
    m: u32, n: u32, k: u32, trans_a: u32,
    trans_b: u32, has_bias: u32, accumulate: u32, alpha: f32,
    stride_a: u32, stride_b: u32, stride_c: u32, _pad0: u32,
    offset_a: u32, offset_b: u32, offset_c: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const WG_X: u32 = BN / TN;
const WG_Y: u32 = BM / TM;
const WG: u32 = WG_X * WG_Y;
const TM4: u32 = TM / 4u;
const TN4: u32 = TN / 4u;

var<workgroup> a_tile: array<vec4<f32>, BK * BM / 4u>; // [BK][BM]
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>; // [BK][BN]

@compute @workgroup_size(WG)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let a_base = p.offset_a + wg.z * p.stride_a;
    let b_base = p.offset_b + wg.z * p.stride_b;
    let c_base = p.offset_c + wg.z * p.stride_c;

    // Element strides of op(A) along m and k, and of op(B) along k and n.
    var sam = p.k; var sak = 1u;
    if (p.trans_a != 0u) { sam = 1u; sak = p.m; }
    var sbk = p.n; var sbn = 1u;
    if (p.trans_b != 0u) { sbk = 1u; sbn = p.k; }

    var acc: array<vec4<f32>, TM * TN4>;
    for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage A[row0.., k0..] as a_tile[kk][mm]. Consecutive invocations walk the
        // dimension that is contiguous in memory, so their loads coalesce.
        for (var i = lid; i < BM * BK; i += WG) {
            var mm: u32; var kk: u32;
            if (sak == 1u) { kk = i % BK; mm = i / BK; } else { mm = i % BM; kk = i / BM; }
            let gm = row0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) { v = a[a_base + gm * sam + gk * sak]; }
            let t = kk * BM + mm;
            a_tile[t / 4u][t % 4u] = v;
        }
        for (var i = lid; i < BN * BK; i += WG) {
            var nn: u32; var kk: u32;
            if (sbn == 1u) { nn = i % BN; kk = i / BN; } else { kk = i % BK; nn = i / BK; }
            let gn = col0 + nn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < p.n && gk < p.k) { v = b[b_base + gk * sbk + gn * sbn]; }
            let t = kk * BN + nn;
            b_tile[t / 4u][t % 4u] = v;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            var bv: array<vec4<f32>, TN4>;
            for (var j = 0u; j < TN4; j++) { bv[j] = b_tile[(kk * BN + tx * TN) / 4u + j]; }
            for (var i4 = 0u; i4 < TM4; i4++) {
                let a4 = a_tile[(kk * BM + ty * TM) / 4u + i4];
                for (var j = 0u; j < TN4; j++) {
                    acc[(i4 * 4u + 0u) * TN4 + j] = fma(vec4<f32>(a4.x), bv[j], acc[(i4 * 4u + 0u) * TN4 + j]);
                    acc[(i4 * 4u + 1u) * TN4 + j] = fma(vec4<f32>(a4.y), bv[j], acc[(i4 * 4u + 1u) * TN4 + j]);
                    acc[(i4 * 4u + 2u) * TN4 + j] = fma(vec4<f32>(a4.z), bv[j], acc[(i4 * 4u + 2u) * TN4 + j]);
                    acc[(i4 * 4u + 3u) * TN4 + j] = fma(vec4<f32>(a4.w), bv[j], acc[(i4 * 4u + 3u) * TN4 + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let row = row0 + ty * TM + i;
        if (row >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + tx * TN + j;
            if (col >= p.n) { break; }
            var v = p.alpha * acc[i * TN4 + j / 4u][j % 4u];
            if (p.has_bias != 0u) { v += bias[col]; }
            let idx = c_base + row * p.n + col;
            if (p.accumulate != 0u) { v += c[idx]; }
            c[idx] = v;
        }
    }
}
