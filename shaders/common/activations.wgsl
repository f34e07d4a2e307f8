// The activation functions and their derivatives, shared by elementwise.wgsl (the activation
// kernels and their backward) and matmul.wgsl (an activation or gated unit applied in the
// matmul's epilogue), so both compute the same f32 values.

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const INV_SQRT_2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;

// WGSL has no erf. Abramowitz & Stegun 7.1.26 has |error| < 1.5e-7, below f32's resolution
// of Phi near 1 (6e-8 relative), so GELU matches an exact erf to f32 rounding.
fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn gelu_erf_f(v: f32) -> f32 { return 0.5 * v * (1.0 + erf_approx(v * INV_SQRT_2)); }
fn gelu_erf_grad(v: f32) -> f32 {
    // d/dx [x Phi(x)] = Phi(x) + x phi(x)
    return 0.5 * (1.0 + erf_approx(v * INV_SQRT_2)) + v * INV_SQRT_2PI * exp(-0.5 * v * v);
}

// tanh(u) for large |u| overflows exp in naive forms; clamp, since tanh(±10) = ±1 in f32.
fn tanh_safe(u: f32) -> f32 { return tanh(clamp(u, -10.0, 10.0)); }

fn gelu_tanh_f(v: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (v + 0.044715 * v * v * v);
    return 0.5 * v * (1.0 + tanh_safe(u));
}
fn gelu_tanh_grad(v: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (v + 0.044715 * v * v * v);
    let t = tanh_safe(u);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du;
}

// sigmoid via exp(-|v|) so neither branch overflows.
fn sigmoid(v: f32) -> f32 {
    let e = exp(-abs(v));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
}
fn silu_f(v: f32) -> f32 { return v * sigmoid(v); }
fn silu_grad(v: f32) -> f32 {
    let s = sigmoid(v);
    return s * (1.0 + v * (1.0 - s));
}
