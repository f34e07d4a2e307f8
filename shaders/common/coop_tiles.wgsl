// The tiles of the cooperative-matrix matmuls (matmul_coop.wgsl, qmatmul_coop.wgsl), which
// include this file and have CS, SG, FragA, FragB and FragC from the host's header and their own
// BK (a multiple of CS). A workgroup of 2 x 2 subgroups computes a BM x BN block of the output,
// each subgroup a 2 x 2 grid of CS x CS fragments held in four f32 accumulators. Per step of K
// the workgroup stages the left operand's slice as f16 in a_half ([BM][BK]) and the right one's
// in b_half ([BK][BN]); at the end each fragment goes through the subgroup's f32 stage in
// c_stage, from where every element takes the including shader's store.

const WG: u32 = 4u * SG;
const BM: u32 = 4u * CS;
const BN: u32 = 4u * CS;

var<workgroup> a_half: array<f16, BM * BK>;
var<workgroup> b_half: array<f16, BK * BN>;
var<workgroup> c_stage: array<f32, 4u * CS * CS>; // one fragment per subgroup

// Where subgroup `sid`'s 2CS x 2CS block starts in the workgroup's (row, column).
fn subgroup_block(sid: u32) -> vec2<u32> {
    return vec2<u32>((sid / 2u) * 2u * CS, (sid % 2u) * 2u * CS);
}

// The subgroup's accumulators take the staged slice.
fn multiply_staged(block: vec2<u32>, acc: ptr<function, array<FragC, 4>>) {
    for (var kf = 0u; kf < BK; kf += CS) {
        let a0 = coopLoadT<FragA>(&a_half[block.x * BK + kf], BK);
        let a1 = coopLoadT<FragA>(&a_half[(block.x + CS) * BK + kf], BK);
        let b0 = coopLoadT<FragB>(&b_half[kf * BN + block.y], BN);
        let b1 = coopLoadT<FragB>(&b_half[kf * BN + block.y + CS], BN);
        (*acc)[0] = coopMultiplyAdd(a0, b0, (*acc)[0]);
        (*acc)[1] = coopMultiplyAdd(a0, b1, (*acc)[1]);
        (*acc)[2] = coopMultiplyAdd(a1, b0, (*acc)[2]);
        (*acc)[3] = coopMultiplyAdd(a1, b1, (*acc)[3]);
    }
}

// Puts fragment f of the subgroup's accumulators in its stage, where all its lanes can read it
// (fragment f sits at rows (f / 2)·CS and columns (f % 2)·CS of the subgroup's block). The
// caller stores the stage, then calls workgroupBarrier() before the next fragment overwrites it.
fn stage_fragment(sid: u32, f: u32, acc: ptr<function, array<FragC, 4>>) {
    coopStoreT((*acc)[f], &c_stage[sid * CS * CS], CS);
    workgroupBarrier();
}
