// The params and bindings of the two dense matmul shaders, matmul.wgsl (tiled) and matvec.wgsl
// (skinny M), which the host dispatches alike (src/kernels/matmul.rs); both include this file,
// and dropout_hash.wgsl before it.

struct Params {
    m: u32, n: u32, k: u32, trans_a: u32,
    trans_b: u32, has_bias: u32, accumulate: u32, alpha: f32,
    // trans_c (matvec.wgsl only): C is stored transposed, [N, M] — the host runs a product
    // with few columns as its transpose, Cᵀ = op(B)ᵀ·op(A)ᵀ, which has few rows.
    stride_a: u32, stride_b: u32, stride_c: u32, trans_c: u32,
    // epilogue (matmul.wgsl only): 0 none, else what epilogue_out also gets (EPI_* there).
    offset_a: u32, offset_b: u32, offset_c: u32, epilogue: u32,
    // Dropout fused into one operand (LoRA's dropout of its input): 0 none, 1 A, 2 B, 3 the
    // product alpha * op(A) * op(B) before bias and accumulation. Element i of that matrix (its
    // row-major index as stored, batch 1 only) is kept by dropout_keeps and scaled.
    drop_on: u32, drop_seed: u32, drop_step: u32, drop_threshold: u32,
    drop_scale: f32,
    // Split-K (matmul.wgsl only): the batch size, the number of K ranges and their length.
    batch: u32, splits: u32, k_chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// Element strides of op(A) along m and k, and of op(B) along k and n.
struct Strides {
    am: u32,
    ak: u32,
    bk: u32,
    bn: u32,
}

fn op_strides() -> Strides {
    var s = Strides(p.k, 1u, p.n, 1u);
    if (p.trans_a != 0u) { s.am = 1u; s.ak = p.m; }
    if (p.trans_b != 0u) { s.bk = 1u; s.bn = p.k; }
    return s;
}

// v, element i of operand `on`, after the fused dropout (unchanged when it is off or elsewhere).
fn dropped(on: u32, v: f32, i: u32) -> f32 {
    if (p.drop_on != on) { return v; }
    return select(0.0, v * p.drop_scale, dropout_keeps(p.drop_seed, p.drop_step, p.drop_threshold, i));
}
