// Elementwise ops over flat f32 arrays of n elements (any shape; broadcasting only where said).
//
// Grid-stride loops: 256 invocations per workgroup, a number of workgroups the host caps per
// device type (a CPU adapter such as lavapipe runs 2.5-3x faster with a few hundred workgroups
// looping than with one per 256 elements), folded into y past the per-dimension limit.
// With `accumulate` the result is added into `out` instead of overwriting it (for gradients).
// Each op's entry point is one line over `map` (its grid-stride loop) and `value` (the op's
// formula, by a constant the compiler folds), so every loop and formula is written once.
//
//   add:            out = alpha * x + beta * y           (residual add, difference, lerp)
//   scale:          out = alpha * x
//   mul:            out = x * y
//   add_bias:       out = x + y[i % cols]                 (x [rows, cols], y [cols])
//   gelu_erf:       out = x * Phi(x)                       (BERT's "gelu")
//   gelu_tanh:      out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GPT-2's "gelu_new")
//   silu:           out = x * sigmoid(x)
//   relu, relu6:    out = max(x, 0), min(max(x, 0), 6)   (derivative 0 at the kinks, as PyTorch)
//   tanh_act:       out = tanh(x)                          (BERT's pooler; `tanh` is WGSL's builtin)
//   *_bwd:          out = dy * f'(x)                       (x = binding 1, dy = binding 2)
//   swiglu:         out = silu(gate) * up                  (gate = x, up = y)
//   swiglu_bwd:     dgate = dy * up * silu'(gate), dup = dy * silu(gate)
//   geglu:          out = gelu_tanh(gate) * up             (Gemma's MLP, "gelu_pytorch_tanh")
//   geglu_bwd:      dgate = dy * up * gelu_tanh'(gate), dup = dy * gelu_tanh(gate)
//   copy_cols:      out[r, dst_off + c] = x[r, src_off + c] for c < width (split a fused q|k|v
//                   projection into its parts, or write a part's gradient back)

struct Params {
    n: u32,
    cols: u32,
    alpha: f32,
    beta: f32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}

fn grid_stride(nwg: vec3<u32>) -> u32 {
    return nwg.x * nwg.y * 256u;
}

fn store(i: u32, v: f32) {
    if (p.accumulate != 0u) { out[i] += v; } else { out[i] = v; }
}

// erf_approx, gelu_erf_f/_grad, gelu_tanh_f/_grad, tanh_safe, sigmoid, silu_f/_grad.
// #include "activations.wgsl"

// The ops of `value`; an entry point passes its own as a constant, so the switch folds away.
const ADD: u32 = 0u;
const SCALE: u32 = 1u;
const MUL: u32 = 2u;
const ADD_BIAS: u32 = 3u;
const GELU_ERF: u32 = 4u;
const GELU_ERF_BWD: u32 = 5u;
const GELU_TANH: u32 = 6u;
const GELU_TANH_BWD: u32 = 7u;
const SILU: u32 = 8u;
const SILU_BWD: u32 = 9u;
const RELU: u32 = 10u;
const RELU_BWD: u32 = 11u;
const RELU6: u32 = 12u;
const RELU6_BWD: u32 = 13u;
const SWIGLU: u32 = 14u;
const GEGLU: u32 = 15u;
const TANH_ACT: u32 = 16u;
const TANH_ACT_BWD: u32 = 17u;

// What op `op` writes at element i: the table at the top, one line per op.
fn value(op: u32, i: u32) -> f32 {
    switch op {
        case ADD: { return p.alpha * x[i] + p.beta * y[i]; }
        case SCALE: { return p.alpha * x[i]; }
        case MUL: { return x[i] * y[i]; }
        case ADD_BIAS: { return x[i] + y[i % p.cols]; }
        case GELU_ERF: { return gelu_erf_f(x[i]); }
        case GELU_ERF_BWD: { return y[i] * gelu_erf_grad(x[i]); }
        case GELU_TANH: { return gelu_tanh_f(x[i]); }
        case GELU_TANH_BWD: { return y[i] * gelu_tanh_grad(x[i]); }
        case SILU: { return silu_f(x[i]); }
        case SILU_BWD: { return y[i] * silu_grad(x[i]); }
        case RELU: { return max(x[i], 0.0); }
        case RELU_BWD: { return select(0.0, y[i], x[i] > 0.0); }
        case RELU6: { return clamp(x[i], 0.0, 6.0); }
        case RELU6_BWD: { return select(0.0, y[i], x[i] > 0.0 && x[i] < 6.0); }
        case SWIGLU: { return silu_f(x[i]) * y[i]; }
        case GEGLU: { return gelu_tanh_f(x[i]) * y[i]; }
        case TANH_ACT: { return tanh_safe(x[i]); }
        // d tanh(x)/dx = 1 - tanh(x)^2, which the clamp at ±10 leaves at 0 in f32 as it should be.
        case TANH_ACT_BWD: { let t = tanh_safe(x[i]); return y[i] * (1.0 - t * t); }
        default: { return 0.0; }
    }
}

// The built-in ids every entry point takes.
struct Ids {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
}

// out[i] = value(op, i) (or += with accumulate) over the grid-stride loop.
fn map(op: u32, id: Ids) {
    for (var i = flat_index(id.wg, id.nwg, id.lid); i < p.n; i += grid_stride(id.nwg)) {
        store(i, value(op, i));
    }
}

@compute @workgroup_size(256) fn add(id: Ids) { map(ADD, id); }
@compute @workgroup_size(256) fn scale(id: Ids) { map(SCALE, id); }
@compute @workgroup_size(256) fn mul(id: Ids) { map(MUL, id); }
@compute @workgroup_size(256) fn add_bias(id: Ids) { map(ADD_BIAS, id); }
@compute @workgroup_size(256) fn gelu_erf(id: Ids) { map(GELU_ERF, id); }
@compute @workgroup_size(256) fn gelu_erf_bwd(id: Ids) { map(GELU_ERF_BWD, id); }
@compute @workgroup_size(256) fn gelu_tanh(id: Ids) { map(GELU_TANH, id); }
@compute @workgroup_size(256) fn gelu_tanh_bwd(id: Ids) { map(GELU_TANH_BWD, id); }
@compute @workgroup_size(256) fn silu(id: Ids) { map(SILU, id); }
@compute @workgroup_size(256) fn silu_bwd(id: Ids) { map(SILU_BWD, id); }
@compute @workgroup_size(256) fn relu(id: Ids) { map(RELU, id); }
@compute @workgroup_size(256) fn relu_bwd(id: Ids) { map(RELU_BWD, id); }
@compute @workgroup_size(256) fn relu6(id: Ids) { map(RELU6, id); }
@compute @workgroup_size(256) fn relu6_bwd(id: Ids) { map(RELU6_BWD, id); }
@compute @workgroup_size(256) fn swiglu(id: Ids) { map(SWIGLU, id); }
@compute @workgroup_size(256) fn geglu(id: Ids) { map(GEGLU, id); }
@compute @workgroup_size(256) fn tanh_act(id: Ids) { map(TANH_ACT, id); }
@compute @workgroup_size(256) fn tanh_act_bwd(id: Ids) { map(TANH_ACT_BWD, id); }

// swiglu_bwd and geglu_bwd have their own bindings: gate, up, dy in; dgate, dup out.
@group(0) @binding(1) var<storage, read> sw_gate: array<f32>;
@group(0) @binding(2) var<storage, read> sw_up: array<f32>;
@group(0) @binding(3) var<storage, read> sw_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> sw_dgate: array<f32>;
@group(0) @binding(5) var<storage, read_write> sw_dup: array<f32>;

// A gated unit's activation of its gate and the derivative, (act(g), act'(g)): GeGLU's
// gelu_tanh for op GEGLU, else SwiGLU's silu.
fn gate_act(op: u32, g: f32) -> vec2<f32> {
    if (op == GEGLU) { return vec2(gelu_tanh_f(g), gelu_tanh_grad(g)); }
    return vec2(silu_f(g), silu_grad(g));
}

// dgate = dy * up * act'(gate), dup = dy * act(gate).
fn glu_bwd(op: u32, id: Ids) {
    for (var i = flat_index(id.wg, id.nwg, id.lid); i < p.n; i += grid_stride(id.nwg)) {
        let a = gate_act(op, sw_gate[i]);
        let dy = sw_dy[i];
        let dgate = dy * sw_up[i] * a.y;
        let dup = dy * a.x;
        if (p.accumulate != 0u) {
            sw_dgate[i] += dgate;
            sw_dup[i] += dup;
        } else {
            sw_dgate[i] = dgate;
            sw_dup[i] = dup;
        }
    }
}

@compute @workgroup_size(256) fn swiglu_bwd(id: Ids) { glu_bwd(SWIGLU, id); }
@compute @workgroup_size(256) fn geglu_bwd(id: Ids) { glu_bwd(GEGLU, id); }

// copy_cols has its own uniform: a block of `width` columns of every row of x [rows, src_cols]
// goes to the columns starting at dst_off of out [rows, dst_cols].
struct SliceParams {
    rows: u32,
    width: u32,
    src_cols: u32,
    src_off: u32,
    dst_cols: u32,
    dst_off: u32,
    accumulate: u32,
    _pad: u32,
}
@group(0) @binding(0) var<uniform> sp: SliceParams;

@compute @workgroup_size(256)
fn copy_cols(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = sp.rows * sp.width;
    for (var i = flat_index(wg, nwg, lid); i < n; i += grid_stride(nwg)) {
        let r = i / sp.width;
        let c = i % sp.width;
        let v = x[r * sp.src_cols + sp.src_off + c];
        let j = r * sp.dst_cols + sp.dst_off + c;
        if (sp.accumulate != 0u) { out[j] += v; } else { out[j] = v; }
    }
}
