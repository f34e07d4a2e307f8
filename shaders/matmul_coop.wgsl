// The mixed-precision matmul: matmul.wgsl's product (same params, bindings and store) with A and
// B rounded to f16 and multiplied on cooperative matrices (tensor cores, simdgroup matrices),
// accumulated in f32. The host runs it only for products whose caller accepts f16 inputs (a
// frozen base's forward and dX) and only where the device's precision setting asks for it
// (src/kernels/matmul_coop.rs). No split-K: a split product takes the f32 path.
//
// The header the host prepends enables f16 and wgpu_cooperative_matrix, and gives CS (the
// fragment size, 8 or 16, from the adapter's configurations), SG (its subgroup size, which is
// fixed), the fragment types FragA, FragB and FragC, and HAS_EPILOGUE.
//
// Tiling: a workgroup of 2 x 2 subgroups computes a BM x BN block of C; each subgroup a 2 x 2
// grid of CS x CS fragments, held in four f32 accumulators. Per BK-slice of K the workgroup
// stages the slices of op(A) (row-major [BM][BK]) and op(B) ([BK][BN]) in workgroup memory as
// f16, converting as it loads (so an f32 weight is converted tile by tile, never as a whole);
// loads outside the matrix are zero, so any M, N, K works. At the end each fragment goes
// through a small f32 stage in workgroup memory, from where every element takes store().

// Params (src/kernels/matmul.rs's Params) and bindings 0-4: p, a, b, bias, c; `dropped`.
// #include "dropout_hash.wgsl"
// #include "matmul_params.wgsl"

// gelu_erf_f, gelu_tanh_f, silu_f, tanh_safe.
// #include "activations.wgsl"

// The epilogues, store(); bindings 5 and 6.
// #include "matmul_store.wgsl"

// stage_a, stage_b: the loads of each K slice.
// #include "matmul_stage.wgsl"

// WG, BM, BN, a_half, b_half, c_stage, subgroup_block, multiply_staged, stage_fragment.
// #include "coop_tiles.wgsl"

const BK: u32 = 2u * CS;

@compute @workgroup_size(WG)
fn matmul_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let a_base = p.offset_a + wg.z * p.stride_a;
    let b_base = p.offset_b + wg.z * p.stride_b;
    let c_base = p.offset_c + wg.z * p.stride_c;
    let s = op_strides();
    let block = subgroup_block(sid);
    var acc = array<FragC, 4>(FragC(), FragC(), FragC(), FragC());

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var i = lid; i < BM * BK; i += WG) {
            let t = stage_a(i, s, a_base, row0, k0, p.k);
            a_half[t.mn * BK + t.k] = f16(t.value);
        }
        for (var i = lid; i < BN * BK; i += WG) {
            let t = stage_b(i, s, b_base, col0, k0, p.k);
            b_half[t.k * BN + t.mn] = f16(t.value);
        }
        workgroupBarrier();
        multiply_staged(block, &acc);
        workgroupBarrier();
    }

    for (var f = 0u; f < 4u; f++) {
        stage_fragment(sid, f, &acc);
        let frag_row = row0 + block.x + (f / 2u) * CS;
        let frag_col = col0 + block.y + (f % 2u) * CS;
        for (var e = lane; e < CS * CS; e += SG) {
            let row = frag_row + e / CS;
            let col = frag_col + e % CS;
            if (row < p.m && col < p.n) { store(c_stage[sid * CS * CS + e], row, col, c_base); }
        }
        workgroupBarrier();
    }
}
