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

// Params, bindings 0-4 (p, w, x, bias, out; x4), BK = 32, dequant8 and its helpers.
// #include "qmatmul_dequant.wgsl"

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
            let task = dx_task(t, n0, col0, BLOCKS, BN);
            b_tile[(task.base + lo_k(task.part)) / 4u] = task.e.lo;
            b_tile[(task.base + hi_k(task.part)) / 4u] = task.e.hi;
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
