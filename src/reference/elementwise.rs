//! Activations and their derivatives, elementwise. Shapes are whatever the input's is.

const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

pub fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * INV_SQRT_2))
}

/// Φ(x) + x·φ(x).
pub fn gelu_erf_grad(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x * INV_SQRT_2)) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

pub fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x.powi(3))).tanh())
}

pub fn gelu_tanh_grad(x: f64) -> f64 {
    let t = (SQRT_2_OVER_PI * (x + 0.044715 * x.powi(3))).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// σ(x)·(1 + x·(1 − σ(x))).
pub fn silu_grad(x: f64) -> f64 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// silu(gate)·up.
pub fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

/// Returns (dgate, dup) for upstream gradient dy.
pub fn swiglu_backward(gate: &[f64], up: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dgate = gate.iter().zip(up).zip(dy).map(|((&g, &u), &d)| d * u * silu_grad(g)).collect();
    let dup = gate.iter().zip(dy).map(|(&g, &d)| d * silu(g)).collect();
    (dgate, dup)
}

/// gelu_tanh(gate)·up (Gemma's GeGLU).
pub fn geglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| gelu_tanh(g) * u).collect()
}

/// Returns (dgate, dup) for upstream gradient dy.
pub fn geglu_backward(gate: &[f64], up: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dgate = gate.iter().zip(up).zip(dy).map(|((&g, &u), &d)| d * u * gelu_tanh_grad(g)).collect();
    let dup = gate.iter().zip(dy).map(|(&g, &d)| d * gelu_tanh(g)).collect();
    (dgate, dup)
}

/// x + bias broadcast over rows: x [R, C], bias [C].
pub fn add_bias(x: &[f64], bias: &[f64]) -> Vec<f64> {
    x.iter().enumerate().map(|(i, &v)| v + bias[i % bias.len()]).collect()
}

/// out[r, dst_off + c] (+)= x[r, src_off + c] for c < width; x `[rows, x_cols]`, out `[rows, out_cols]`.
#[allow(clippy::too_many_arguments)]
pub fn copy_cols(
    x: &[f64],
    x_cols: usize,
    out: &mut [f64],
    out_cols: usize,
    width: usize,
    src_off: usize,
    dst_off: usize,
    accumulate: bool,
) {
    let rows = x.len() / x_cols;
    for r in 0..rows {
        for c in 0..width {
            let v = x[r * x_cols + src_off + c];
            let o = &mut out[r * out_cols + dst_off + c];
            *o = if accumulate { *o + v } else { v };
        }
    }
}

pub fn relu(x: f64) -> f64 {
    x.max(0.0)
}

/// 1 where x > 0 (PyTorch takes 0 at the kink).
pub fn relu_grad(x: f64) -> f64 {
    if x > 0.0 { 1.0 } else { 0.0 }
}

/// min(max(x, 0), 6) (MobileNet's and EfficientNet-Lite's activation).
pub fn relu6(x: f64) -> f64 {
    x.clamp(0.0, 6.0)
}

/// 1 on the open interval (0, 6), 0 outside and at both kinks (as PyTorch's hardtanh).
pub fn relu6_grad(x: f64) -> f64 {
    if x > 0.0 && x < 6.0 { 1.0 } else { 0.0 }
}

/// tanh(x) (BERT's pooler activation).
pub fn tanh(x: f64) -> f64 {
    x.tanh()
}

/// 1 − tanh(x)².
pub fn tanh_grad(x: f64) -> f64 {
    1.0 - x.tanh().powi(2)
}
