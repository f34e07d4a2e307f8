// The staging loads of the tiled dense matmuls (matmul.wgsl, matmul_coop.wgsl), which include
// this file after matmul_params.wgsl and have the tile constants BM, BN and BK: the i-th load of
// a workgroup's K slice of op(A) or op(B), its place in the slice and its value. Consecutive
// loads walk the dimension contiguous in memory, so they coalesce. Loads past the matrix or the
// K range are zero, so any M, N, K works; a fused dropout of A or B applies here.

struct Staged {
    // The row of op(A) (column of op(B)) in the tile, and the index in the K slice.
    mn: u32,
    k: u32,
    value: f32,
}

// Load i of the BM x BK slice of op(A) at rows row0.. and K k0.. (K ends at k_end).
fn stage_a(i: u32, s: Strides, a_base: u32, row0: u32, k0: u32, k_end: u32) -> Staged {
    var t = Staged(0u, 0u, 0.0);
    if (s.ak == 1u) { t.k = i % BK; t.mn = i / BK; } else { t.mn = i % BM; t.k = i / BM; }
    let gm = row0 + t.mn;
    let gk = k0 + t.k;
    if (gm < p.m && gk < k_end) { t.value = dropped(1u, a[a_base + gm * s.am + gk * s.ak], gm * s.am + gk * s.ak); }
    return t;
}

// Load i of the BK x BN slice of op(B) at K k0.. and columns col0...
fn stage_b(i: u32, s: Strides, b_base: u32, col0: u32, k0: u32, k_end: u32) -> Staged {
    var t = Staged(0u, 0u, 0.0);
    if (s.bn == 1u) { t.mn = i % BN; t.k = i / BN; } else { t.k = i % BK; t.mn = i / BK; }
    let gn = col0 + t.mn;
    let gk = k0 + t.k;
    if (gn < p.n && gk < k_end) { t.value = dropped(2u, b[b_base + gk * s.bk + gn * s.bn], gk * s.bk + gn * s.bn); }
    return t;
}
