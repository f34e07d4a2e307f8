// The params and bindings of the two dense matmul shaders, matmul.wgsl (tiled) and matvec.wgsl
// (skinny M), which the host dispatches alike (src/kernels/matmul.rs); both include this file.

struct Params {
    m: u32, n: u32, k: u32, trans_a: u32,
    trans_b: u32, has_bias: u32, accumulate: u32, alpha: f32,
    stride_a: u32, stride_b: u32, stride_c: u32, _pad0: u32,
    offset_a: u32, offset_b: u32, offset_c: u32, _pad1: u32,
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
