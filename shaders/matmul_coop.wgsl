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

const SUBGROUPS_M: u32 = 2u;
const SUBGROUPS_N: u32 = 2u;
const WG: u32 = SUBGROUPS_M * SUBGROUPS_N * SG;
const BM: u32 = SUBGROUPS_M * 2u * CS;
const BN: u32 = SUBGROUPS_N * 2u * CS;
const BK: u32 = 2u * CS;

var<workgroup> a_half: array<f16, BM * BK>; // [BM][BK]
var<workgroup> b_half: array<f16, BK * BN>; // [BK][BN]
var<workgroup> c_stage: array<f32, SUBGROUPS_M * SUBGROUPS_N * CS * CS>; // one fragment per subgroup

// Stores the fragment a subgroup left in its stage, at rows row0.. and columns col0.. of C.
fn store_stage(sid: u32, lane: u32, row0: u32, col0: u32, c_base: u32) {
    for (var e = lane; e < CS * CS; e += SG) {
        let row = row0 + e / CS;
        let col = col0 + e % CS;
        if (row < p.m && col < p.n) { store(c_stage[sid * CS * CS + e], row, col, c_base); }
    }
}

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
    // This subgroup's 2CS x 2CS block of the workgroup's, in the staged tiles.
    let sub_m = (sid / SUBGROUPS_N) * 2u * CS;
    let sub_n = (sid % SUBGROUPS_N) * 2u * CS;

    var acc00 = FragC();
    var acc01 = FragC();
    var acc10 = FragC();
    var acc11 = FragC();

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

        for (var kf = 0u; kf < BK; kf += CS) {
            let a0 = coopLoadT<FragA>(&a_half[sub_m * BK + kf], BK);
            let a1 = coopLoadT<FragA>(&a_half[(sub_m + CS) * BK + kf], BK);
            let b0 = coopLoadT<FragB>(&b_half[kf * BN + sub_n], BN);
            let b1 = coopLoadT<FragB>(&b_half[kf * BN + sub_n + CS], BN);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        workgroupBarrier();
    }

    // Each fragment through the stage: the barriers let every lane read what the subgroup's
    // cooperative store wrote, and keep the next fragment from overwriting it too early.
    let stage = &c_stage[sid * CS * CS];
    coopStoreT(acc00, stage, CS);
    workgroupBarrier();
    store_stage(sid, lane, row0 + sub_m, col0 + sub_n, c_base);
    workgroupBarrier();
    coopStoreT(acc01, stage, CS);
    workgroupBarrier();
    store_stage(sid, lane, row0 + sub_m, col0 + sub_n + CS, c_base);
    workgroupBarrier();
    coopStoreT(acc10, stage, CS);
    workgroupBarrier();
    store_stage(sid, lane, row0 + sub_m + CS, col0 + sub_n, c_base);
    workgroupBarrier();
    coopStoreT(acc11, stage, CS);
    workgroupBarrier();
    store_stage(sid, lane, row0 + sub_m + CS, col0 + sub_n + CS, c_base);
}
