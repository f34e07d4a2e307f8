// The quantized and 16-bit bases' matmuls on cooperative matrices: qmatmul.wgsl's qmatmul and
// qmatmul_dx (same params, bindings and results), with the f32 operand and the dequantized
// (widened) W rounded to f16 as they are staged in workgroup memory, multiplied on CS x CS
// fragments and accumulated in f32. The host runs them where the device's precision is f16
// (src/kernels/qmatmul.rs, src/kernels/matmul_coop.rs): these bases are frozen, and an F16 base
// reaches the fragments unrounded.
//
// The header gives what matmul_coop.wgsl's does (the f16 and wgpu_cooperative_matrix enables,
// CS, SG, FragA, FragB, FragC) and qmatmul's QTYPE, QW and SW. Tiling as in matmul_coop.wgsl:
// a workgroup of 2 x 2 subgroups, each with 2 x 2 fragments, computes a BM x BN block; the
// reduction steps one chunk of BK = 32 weights at a time (BN, 32 or 64, is whole chunks).

// Params, bindings 0-4 (p, w, x, bias, out), BK = 32, dequant8 and its helpers.
// #include "qmatmul_dequant.wgsl"

// WG, BM, BN, a_half, b_half, c_stage, subgroup_block, multiply_staged, stage_fragment.
// #include "coop_tiles.wgsl"

// Stores the subgroup's four fragments into out [rows, cols] through its stage: alpha, bias
// (qmatmul only), accumulate, as qmatmul.wgsl's store.
fn store_fragments(sid: u32, lane: u32, row0: u32, col0: u32, rows: u32, cols: u32, with_bias: bool,
                   acc: ptr<function, array<FragC, 4>>) {
    for (var f = 0u; f < 4u; f++) {
        stage_fragment(sid, f, acc);
        for (var e = lane; e < CS * CS; e += SG) {
            let row = row0 + (f / 2u) * CS + e / CS;
            let col = col0 + (f % 2u) * CS + e % CS;
            if (row < rows && col < cols) {
                var v = p.alpha * c_stage[sid * CS * CS + e];
                if (with_bias) { v += bias[col]; }
                let idx = row * cols + col;
                if (p.accumulate != 0u) { v += out[idx]; }
                out[idx] = v;
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn qmatmul_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = wg.y * BM; // rows of x and y
    let col0 = wg.x * BN; // rows of W = columns of y
    let bpr = p.k / BK;
    let block = subgroup_block(sid);
    var acc = array<FragC, 4>(FragC(), FragC(), FragC(), FragC());

    for (var kb = 0u; kb < bpr; kb++) {
        for (var i = lid; i < BM * BK; i += WG) {
            let gm = row0 + i / BK;
            var v = 0.0;
            if (gm < p.m) { v = x[gm * p.k + kb * BK + i % BK]; }
            a_half[i] = f16(v);
        }
        // Block kb of W's rows col0.. as b_half[kk][nn]: four tasks of eight weights per row.
        for (var t = lid; t < BN * 4u; t += WG) {
            let nn = t / 4u;
            let part = t % 4u;
            var e = Eight(vec4<f32>(0.0), vec4<f32>(0.0));
            if (col0 + nn < p.n) { e = dequant8((col0 + nn) * bpr + kb, part); }
            for (var i = 0u; i < 4u; i++) {
                b_half[(lo_k(part) + i) * BN + nn] = f16(e.lo[i]);
                b_half[(hi_k(part) + i) * BN + nn] = f16(e.hi[i]);
            }
        }
        workgroupBarrier();
        multiply_staged(block, &acc);
        workgroupBarrier();
    }
    store_fragments(sid, lane, row0 + block.x, col0 + block.y, p.m, p.n, p.has_bias != 0u, &acc);
}

// dx = dy·W: the output's columns are W's columns (K); the sum runs over W's rows (N), 32 at a
// time.
@compute @workgroup_size(WG)
fn qmatmul_dx_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = wg.y * BM; // rows of dy and dx
    let col0 = wg.x * BN; // columns of W and dx
    const BLOCKS: u32 = BN / BK; // blocks of a W row in this workgroup's columns
    let block = subgroup_block(sid);
    var acc = array<FragC, 4>(FragC(), FragC(), FragC(), FragC());

    for (var n0 = 0u; n0 < p.n; n0 += BK) {
        for (var i = lid; i < BM * BK; i += WG) {
            let gm = row0 + i / BK;
            let gn = n0 + i % BK;
            var v = 0.0;
            if (gm < p.m && gn < p.n) { v = x[gm * p.n + gn]; }
            a_half[i] = f16(v);
        }
        for (var t = lid; t < BK * BLOCKS * 4u; t += WG) {
            let task = dx_task(t, n0, col0, BLOCKS, BN);
            for (var i = 0u; i < 4u; i++) {
                b_half[task.base + lo_k(task.part) + i] = f16(task.e.lo[i]);
                b_half[task.base + hi_k(task.part) + i] = f16(task.e.hi[i]);
            }
        }
        workgroupBarrier();
        multiply_staged(block, &acc);
        workgroupBarrier();
    }
    store_fragments(sid, lane, row0 + block.x, col0 + block.y, p.m, p.k, false, &acc);
}
