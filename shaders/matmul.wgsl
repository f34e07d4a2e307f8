// Batched matmul: C[b] = alpha * op(A[b]) · op(B[b]) (+ bias) (+ C[b] when accumulating).
//
//   op(A) is [M, K]: A is stored [M, K], or [K, M] when trans_a (read transposed in place).
//   op(B) is [K, N]: B is stored [K, N], or [N, K] when trans_b.
//   C is [M, N] row-major. bias is [N] (only read when has_bias).
//   Batch b starts at offset_x + b * stride_x elements; a stride of 0 broadcasts one matrix.
//
// Epilogue (HAS_EPILOGUE, from the host's header, and p.epilogue, not 0): beside C, epilogue_out gets f(C) for an activation f, or
// unit(gate)·C for a gated unit (C being the up-projection), gate and epilogue_out shaped as C:
// the activation after a linear layer, or SwiGLU/GeGLU after the up-projection, in the same
// dispatch. C keeps the pre-activation value the backward needs. A plain product's pipeline is
// compiled with HAS_EPILOGUE false, so its store loop carries no epilogue code.
//
// Split-K (SPLIT_K, from the host's header): a product with too few output tiles to fill the
// GPU (a 512-row product, a weight gradient with K = tokens) splits its K sum into p.splits
// ranges of p.k_chunk (a multiple of BK). Workgroup z = split * batch + b computes its range's
// partial sums into `partials` ([splits, batch, M, N], raw: before alpha), and a second
// dispatch, `matmul_split_sum`, adds them in split order (so the result does not depend on
// scheduling) and does the store: alpha, a product dropout, bias, accumulate, the epilogue.
//
// Tiling (constants BM, BN, BK, TM, TN come from a header the host prepends, one per adapter):
// a workgroup computes a BM x BN block of C with (BM/TM)*(BN/TN) invocations; each invocation
// keeps a TM x TN block of accumulators in registers. Per BK-slice of K, the workgroup stages
// the A and B slices in workgroup memory, k-major, so an invocation reads its TM values of A
// and TN values of B as vec4s. Loads outside the matrix are zero, so any M, N, K works.

// Params (src/kernels/matmul.rs's Params) and bindings 0-4: p, a, b, bias, c; `dropped`.
// #include "dropout_hash.wgsl"
// #include "matmul_params.wgsl"

// WG, a_tile, b_tile, set_a, set_b, multiply_tiles.
// #include "matmul_tiles.wgsl"

// stage_a, stage_b: the loads of each K slice.
// #include "matmul_stage.wgsl"

// gelu_erf_f, gelu_tanh_f, silu_f, tanh_safe.
// #include "activations.wgsl"

// The epilogues, store(); bindings 5 and 6.
// #include "matmul_store.wgsl"

@group(0) @binding(7) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(WG)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    // Without split-K, z is the batch entry and the K range is all of K.
    var batch = wg.z;
    var k_begin = 0u;
    var k_end = p.k;
    if (SPLIT_K) {
        batch = wg.z % p.batch;
        k_begin = (wg.z / p.batch) * p.k_chunk;
        k_end = min(k_begin + p.k_chunk, p.k);
    }
    let a_base = p.offset_a + batch * p.stride_a;
    let b_base = p.offset_b + batch * p.stride_b;
    let c_base = p.offset_c + batch * p.stride_c;
    let s = op_strides();

    var acc: array<vec4<f32>, TM * TN4>;
    for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        // Stage op(A)'s slice as a_tile[kk][mm] and op(B)'s as b_tile[kk][nn].
        for (var i = lid; i < BM * BK; i += WG) {
            let t = stage_a(i, s, a_base, row0, k0, k_end);
            set_a(t.k * BM + t.mn, t.value);
        }
        for (var i = lid; i < BN * BK; i += WG) {
            let t = stage_b(i, s, b_base, col0, k0, k_end);
            set_b(t.k * BN + t.mn, t.value);
        }
        workgroupBarrier();

        multiply_tiles(tx, ty, &acc);
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let row = row0 + ty * TM + i;
        if (row >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + tx * TN + j;
            if (col >= p.n) { break; }
            let v = acc[i * TN4 + j / 4u][j % 4u];
            if (SPLIT_K) {
                partials[wg.z * p.m * p.n + row * p.n + col] = v;
            } else {
                store(v, row, col, c_base);
            }
        }
    }
}

// Split-K's second pass: one invocation per element of C over the batch, folded into x and y
// (`Gpu::grid_1d`). Adds the element's p.splits partial sums in split order, then stores it.
@compute @workgroup_size(256)
fn matmul_split_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    let per_matrix = p.m * p.n;
    if (i >= p.batch * per_matrix) { return; }
    var sum = 0.0;
    for (var split = 0u; split < p.splits; split++) {
        sum += partials[split * p.batch * per_matrix + i];
    }
    let batch = i / per_matrix;
    let at = i % per_matrix;
    store(sum, at / p.n, at % p.n, p.offset_c + batch * p.stride_c);
}
