// The register tiles of the tiled matmuls (matmul.wgsl; qmatmul.wgsl's qmatmul and qmatmul_dx),
// which include this file with `// #include "matmul_tiles.wgsl"` (src/gpu/pipelines.rs expands it).
// The including shader has the constants BM, BN, BK, TM, TN (from the host's header or its own).
//
// A workgroup of (BM/TM)*(BN/TN) invocations computes a BM x BN block of the output. Per BK-slice
// of the reduction it stages the left operand's slice in a_tile and the right one's in b_tile,
// k-major (set_a, set_b), then each invocation adds its TM x TN block of products into
// accumulators kept in registers, reading TM and TN values at a time as vec4s.

const WG_X: u32 = BN / TN;
const WG_Y: u32 = BM / TM;
const WG: u32 = WG_X * WG_Y;
const TM4: u32 = TM / 4u;
const TN4: u32 = TN / 4u;

var<workgroup> a_tile: array<vec4<f32>, BK * BM / 4u>; // [BK][BM]
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>; // [BK][BN]

fn set_a(t: u32, v: f32) {
    a_tile[t / 4u][t % 4u] = v;
}

fn set_b(t: u32, v: f32) {
    b_tile[t / 4u][t % 4u] = v;
}

// acc[i][j] += Σ_kk a_tile[kk][ty·TM + i] · b_tile[kk][tx·TN + j] over the staged step.
fn multiply_tiles(tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, TM * TN4>>) {
    for (var kk = 0u; kk < BK; kk++) {
        var bv: array<vec4<f32>, TN4>;
        for (var j = 0u; j < TN4; j++) { bv[j] = b_tile[(kk * BN + tx * TN) / 4u + j]; }
        for (var i4 = 0u; i4 < TM4; i4++) {
            let a4 = a_tile[(kk * BM + ty * TM) / 4u + i4];
            for (var j = 0u; j < TN4; j++) {
                (*acc)[(i4 * 4u + 0u) * TN4 + j] = fma(vec4<f32>(a4.x), bv[j], (*acc)[(i4 * 4u + 0u) * TN4 + j]);
                (*acc)[(i4 * 4u + 1u) * TN4 + j] = fma(vec4<f32>(a4.y), bv[j], (*acc)[(i4 * 4u + 1u) * TN4 + j]);
                (*acc)[(i4 * 4u + 2u) * TN4 + j] = fma(vec4<f32>(a4.z), bv[j], (*acc)[(i4 * 4u + 2u) * TN4 + j]);
                (*acc)[(i4 * 4u + 3u) * TN4 + j] = fma(vec4<f32>(a4.w), bv[j], (*acc)[(i4 * 4u + 3u) * TN4 + j]);
            }
        }
    }
}
