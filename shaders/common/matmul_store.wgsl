// The store of the tiled dense matmuls (matmul.wgsl, matmul_coop.wgsl), which include this file
// after matmul_params.wgsl and activations.wgsl: from an element's raw sum to C, with alpha, a
// dropout of the product, bias, accumulation, and the epilogue beside it (HAS_EPILOGUE and
// p.epilogue). Bindings 5 and 6: epilogue_out and gate.

@group(0) @binding(5) var<storage, read_write> epilogue_out: array<f32>;
@group(0) @binding(6) var<storage, read> gate: array<f32>;

// The epilogues, as src/kernels/matmul.rs's Epilogue::code numbers them.
const EPI_GELU_ERF: u32 = 1u;
const EPI_GELU_TANH: u32 = 2u;
const EPI_SILU: u32 = 3u;
const EPI_RELU: u32 = 4u;
const EPI_RELU6: u32 = 5u;
const EPI_TANH: u32 = 6u;
const EPI_SWIGLU: u32 = 7u;
const EPI_GEGLU: u32 = 8u;

// What epilogue_out[idx] gets for C[idx] = v.
fn epilogue(v: f32, idx: u32) -> f32 {
    switch p.epilogue {
        case EPI_GELU_ERF: { return gelu_erf_f(v); }
        case EPI_GELU_TANH: { return gelu_tanh_f(v); }
        case EPI_SILU: { return silu_f(v); }
        case EPI_RELU: { return max(v, 0.0); }
        case EPI_RELU6: { return clamp(v, 0.0, 6.0); }
        case EPI_TANH: { return tanh_safe(v); }
        case EPI_SWIGLU: { return silu_f(gate[idx]) * v; }
        case EPI_GEGLU: { return gelu_tanh_f(gate[idx]) * v; }
        default: { return v; }
    }
}

// Stores C[row, col] of the batch entry at c_base from the raw sum `acc` (alpha not applied):
// alpha, a dropout of the product, bias, accumulate, and the epilogue beside it.
fn store(acc: f32, row: u32, col: u32, c_base: u32) {
    var v = dropped(3u, p.alpha * acc, row * p.n + col);
    if (p.has_bias != 0u) { v += bias[col]; }
    let idx = c_base + row * p.n + col;
    if (p.accumulate != 0u) { v += c[idx]; }
    c[idx] = v;
    if (HAS_EPILOGUE && p.epilogue != 0u) { epilogue_out[idx] = epilogue(v, idx); }
}
