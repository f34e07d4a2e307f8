// Skinny matmul, for M ≤ MR rows (one token at a time with a KV cache, a short prompt):
//   C[b] = alpha * op(A[b]) · op(B[b]) (+ bias) (+ C[b] when accumulating).
// With p.trans_c, C is stored transposed ([N, M]) and the bias is indexed by row: the host runs
// a product with few columns (LoRA's x·Aᵀ and dh = dy·B at rank r) as its transpose here.
//
//   Same bindings, params and layouts as matmul.wgsl:
//   op(A) is [M, K]: A is stored [M, K], or [K, M] when trans_a.
//   op(B) is [K, N]: B is stored [K, N], or [N, K] when trans_b (nn.Linear weights, LM heads).
//   C is [M, N] row-major. bias is [N] (only read when has_bias).
//   Batch b starts at offset_x + b * stride_x elements; a stride of 0 broadcasts one matrix.
//
// The work is bound by reading B once, and the tiled kernel would compute a whole BM-row tile
// to keep M rows of it. Here a workgroup owns a block of output columns for every row at once,
// so B is read once whatever M is. Its WG = KS*CS invocations are CS column slots of KS
// invocations each: the KS invocations of a slot split the K sum between them (strided by KS,
// so together they read contiguous runs of a B row when trans_b) and then add their partial
// sums in a workgroup-memory tree. Each invocation owns TN columns (TN column groups of 4 in
// `matvec_vec4n`) of its slot, and keeps MR×TN accumulators in registers.
//
// Constants KS (a power of two), CS, TN and MR come from a header the host prepends. A GPU
// wants KS of a few dozen (coalesced loads, many invocations per column); lavapipe, whose
// invocations are SIMD lanes that load one by one, wants KS = 1: no reduction at all.
// MR is the smallest power of two ≥ M; rows M..MR-1 repeat row M-1 and are never stored, so
// the row loops have constant bounds and unroll.
//
// Entry points (the host picks one; every one handles any M ≤ MR, N, K and batch):
//   matvec        scalar loads through the element strides of any layout.
//   matvec_vec4   !trans_a, trans_b, K % 4 == 0: A rows and B rows read as vec4s along K.
//   matvec_vec4n  !trans_a, !trans_b, N % 4 == 0: B rows read as vec4s of 4 adjacent columns.
// In both vec4 cases every row of the vec4-read operands starts 16-byte aligned.

// Params (src/kernels/matmul.rs's Params) and bindings 0-4: p, a, b, bias, c; `dropped`
// (a fused dropout: the host picks the scalar `matvec` entry when one is on).
// #include "dropout_hash.wgsl"
// #include "matmul_params.wgsl"
// The same buffers seen as vec4s, for the vec4 entry points (an entry point uses one view of
// a binding, never both).
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;

const WG: u32 = KS * CS;

// Partial sums of one row of the block: red[(j * CS + cs) * KS + ks].
var<workgroup> red: array<f32, WG * TN>;

// The column block of this workgroup; blocks are folded into x and y (`Gpu::grid_1d`) so a
// large N passes the per-dimension workgroup limit.
fn block_of(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y * nwg.x + wg.x;
}

// Adds the KS partial sums of each of the invocation's TN columns for row m, and stores the
// row's outputs (columns at or past N are skipped). Every invocation of the workgroup calls
// it, in uniform control flow: it holds barriers.
fn reduce_and_store(m: u32, part: array<f32, TN>, cols: array<u32, TN>, ks: u32, cs: u32, c_base: u32) {
    var sum = part;
    if (KS > 1u) {
        workgroupBarrier(); // the previous row's reads of `red` are done
        for (var j = 0u; j < TN; j++) { red[(j * CS + cs) * KS + ks] = part[j]; }
        // Pairwise tree: every sum adds partials of similar size, so the rounding error grows
        // like log2(KS) ulps, not KS.
        for (var s = KS / 2u; s > 0u; s >>= 1u) {
            workgroupBarrier();
            if (ks < s) {
                for (var j = 0u; j < TN; j++) {
                    let i = (j * CS + cs) * KS + ks;
                    red[i] += red[i + s];
                }
            }
        }
        workgroupBarrier();
        for (var j = 0u; j < TN; j++) { sum[j] = red[(j * CS + cs) * KS]; }
    }
    if (ks != 0u) { return; }
    for (var j = 0u; j < TN; j++) {
        let col = cols[j];
        if (col < p.n) {
            // Stored transposed, C[m][col] is element (col, m) of the [N, M] product the caller
            // asked for: its dropout index and its bias are that product's.
            var at = m * p.n + col;
            var bias_at = col;
            if (p.trans_c != 0u) { at = col * p.m + m; bias_at = m; }
            var v = dropped(3u, p.alpha * sum[j], at);
            if (p.has_bias != 0u) { v += bias[bias_at]; }
            let idx = c_base + at;
            if (p.accumulate != 0u) { v += c[idx]; }
            c[idx] = v;
        }
    }
}

@compute @workgroup_size(WG)
fn matvec(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col0 = block_of(wg, nwg) * CS * TN;
    if (col0 >= p.n) { return; } // a whole workgroup past the end (the folded grid's tail)
    let ks = lid % KS;
    let cs = (lid / KS) % CS; // `% CS` lets a one-slot workgroup fold its slot to 0
    let a_base = p.offset_a + wg.z * p.stride_a;
    let b_base = p.offset_b + wg.z * p.stride_b;
    let c_base = p.offset_c + wg.z * p.stride_c;
    let s = op_strides();

    // Columns past N read column N-1 (in bounds, never stored), so the K loop has no guard.
    var cols: array<u32, TN>;
    var boff: array<u32, TN>;
    for (var j = 0u; j < TN; j++) {
        cols[j] = col0 + j * CS + cs;
        boff[j] = b_base + min(cols[j], p.n - 1u) * s.bn;
    }
    var aoff: array<u32, MR>;
    for (var m = 0u; m < MR; m++) { aoff[m] = a_base + min(m, p.m - 1u) * s.am; }

    var acc: array<f32, MR * TN>;
    for (var i = 0u; i < MR * TN; i++) { acc[i] = 0.0; }
    for (var k = ks; k < p.k; k += KS) {
        var w: array<f32, TN>;
        for (var j = 0u; j < TN; j++) {
            let bi = boff[j] + k * s.bk;
            w[j] = dropped(2u, b[bi], bi - b_base);
        }
        for (var m = 0u; m < MR; m++) {
            let ai = aoff[m] + k * s.ak;
            let x = dropped(1u, a[ai], ai - a_base);
            for (var j = 0u; j < TN; j++) { acc[m * TN + j] = fma(x, w[j], acc[m * TN + j]); }
        }
    }
    for (var m = 0u; m < p.m; m++) {
        var part: array<f32, TN>;
        for (var j = 0u; j < TN; j++) { part[j] = acc[m * TN + j]; }
        reduce_and_store(m, part, cols, ks, cs, c_base);
    }
}

@compute @workgroup_size(WG)
fn matvec_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col0 = block_of(wg, nwg) * CS * TN;
    if (col0 >= p.n) { return; }
    let ks = lid % KS;
    let cs = (lid / KS) % CS;
    let k4 = p.k / 4u;
    // Offsets and batch strides are multiples of K elements, so exact in vec4 units.
    let a_base = (p.offset_a + wg.z * p.stride_a) / 4u;
    let b_base = (p.offset_b + wg.z * p.stride_b) / 4u;
    let c_base = p.offset_c + wg.z * p.stride_c;

    var cols: array<u32, TN>;
    var boff: array<u32, TN>;
    for (var j = 0u; j < TN; j++) {
        cols[j] = col0 + j * CS + cs;
        boff[j] = b_base + min(cols[j], p.n - 1u) * k4;
    }
    var aoff: array<u32, MR>;
    for (var m = 0u; m < MR; m++) { aoff[m] = a_base + min(m, p.m - 1u) * k4; }

    // The vec4 lanes hold sums over k ≡ 0, 1, 2, 3 (mod 4), added together at the end.
    var acc: array<vec4<f32>, MR * TN>;
    for (var i = 0u; i < MR * TN; i++) { acc[i] = vec4<f32>(0.0); }
    for (var k = ks; k < k4; k += KS) {
        var w: array<vec4<f32>, TN>;
        for (var j = 0u; j < TN; j++) { w[j] = b4[boff[j] + k]; }
        for (var m = 0u; m < MR; m++) {
            let x = a4[aoff[m] + k];
            for (var j = 0u; j < TN; j++) { acc[m * TN + j] = fma(x, w[j], acc[m * TN + j]); }
        }
    }
    for (var m = 0u; m < p.m; m++) {
        var part: array<f32, TN>;
        for (var j = 0u; j < TN; j++) {
            let v = acc[m * TN + j];
            part[j] = (v.x + v.y) + (v.z + v.w);
        }
        reduce_and_store(m, part, cols, ks, cs, c_base);
    }
}

@compute @workgroup_size(WG)
fn matvec_vec4n(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Column groups of 4: group g is columns 4g..4g+3.
    let g0 = block_of(wg, nwg) * CS * TN;
    let n4 = p.n / 4u;
    if (g0 >= n4) { return; }
    let ks = lid % KS;
    let cs = (lid / KS) % CS;
    let a_base = p.offset_a + wg.z * p.stride_a;
    // Offsets and batch strides are multiples of N elements, so exact in vec4 units.
    let b_base = (p.offset_b + wg.z * p.stride_b) / 4u;
    let c_base = p.offset_c + wg.z * p.stride_c;

    var g: array<u32, TN>;
    var boff: array<u32, TN>;
    for (var j = 0u; j < TN; j++) {
        g[j] = g0 + j * CS + cs;
        boff[j] = b_base + min(g[j], n4 - 1u);
    }
    var aoff: array<u32, MR>;
    for (var m = 0u; m < MR; m++) { aoff[m] = a_base + min(m, p.m - 1u) * p.k; }

    // acc[m * TN + j] holds row m of the 4 columns of group g[j].
    var acc: array<vec4<f32>, MR * TN>;
    for (var i = 0u; i < MR * TN; i++) { acc[i] = vec4<f32>(0.0); }
    for (var k = ks; k < p.k; k += KS) {
        var w: array<vec4<f32>, TN>;
        for (var j = 0u; j < TN; j++) { w[j] = b4[boff[j] + k * n4]; }
        for (var m = 0u; m < MR; m++) {
            let x = vec4<f32>(a[aoff[m] + k]);
            for (var j = 0u; j < TN; j++) { acc[m * TN + j] = fma(x, w[j], acc[m * TN + j]); }
        }
    }
    // One reduction per column of the groups: component e of every group is one TN-wide set.
    for (var m = 0u; m < p.m; m++) {
        for (var e = 0u; e < 4u; e++) {
            var part: array<f32, TN>;
            var cols: array<u32, TN>;
            for (var j = 0u; j < TN; j++) {
                part[j] = acc[m * TN + j][e];
                cols[j] = select(4u * g[j] + e, p.n, g[j] >= n4);
            }
            reduce_and_store(m, part, cols, ks, cs, c_base);
        }
    }
}
