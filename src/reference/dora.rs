//! DoRA's per-output-feature scaling (PEFT 0.21's `DoraLinearLayer`).
//!
//! R rows (tokens), O output features, I input features. V = W + s·B·A is the adapted weight;
//! n[j] = ||V[j, :]|| is a constant for the gradient (detached), c[j] = m[j] / n[j].

/// n[j] = ||V[j, :]||. v: [O, I] when `out_in`, else [I, O]. Returns [O].
pub fn weight_norm(v: &[f64], d_out: usize, d_in: usize, out_in: bool) -> Vec<f64> {
    (0..d_out)
        .map(|j| {
            let row = (0..d_in).map(|i| if out_in { v[j * d_in + i] } else { v[i * d_out + j] });
            row.map(|x| x * x).sum::<f64>().sqrt()
        })
        .collect()
}

/// y = (c + k0)·p + c·s·q (+ bias). m, n, bias: [O]; p, q: [R, O]. Returns [R, O].
///
/// p = x·Wᵀ (no bias) and q = x·Aᵀ·Bᵀ; k0 = 0 is the layer's whole output (without the bias
/// added separately), k0 = −1 the term PEFT adds to the base output when LoRA dropout is on.
pub fn forward(m: &[f64], n: &[f64], p: &[f64], q: &[f64], bias: Option<&[f64]>, s: f64, k0: f64) -> Vec<f64> {
    let o = m.len();
    (0..p.len())
        .map(|i| {
            let j = i % o;
            let c = m[j] / n[j];
            (c + k0) * p[i] + c * s * q[i] + bias.map_or(0.0, |b| b[j])
        })
        .collect()
}

/// (dp, dq, dm) of [`forward`] for upstream dy [R, O]: dp = (c + k0)·dy, dq = c·s·dy,
/// dm[j] = Σ_r dy·(p + s·q) / n[j]; n gets none (detached).
pub fn backward(
    m: &[f64],
    n: &[f64],
    p: &[f64],
    q: &[f64],
    dy: &[f64],
    s: f64,
    k0: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let o = m.len();
    let (mut dp, mut dq, mut dm) = (vec![0.0; p.len()], vec![0.0; q.len()], vec![0.0; o]);
    for i in 0..p.len() {
        let j = i % o;
        let c = m[j] / n[j];
        dp[i] += (c + k0) * dy[i];
        dq[i] += c * s * dy[i];
        dm[j] += dy[i] * (p[i] + s * q[i]) / n[j];
    }
    (dp, dq, dm)
}

/// The merged weight c ⊙ V, row j of V scaled by m[j]/n[j]. v: [O, I] or [I, O] as `out_in`.
pub fn merge(v: &[f64], m: &[f64], n: &[f64], out_in: bool) -> Vec<f64> {
    let o = m.len();
    let d_in = v.len() / o;
    (0..v.len()).map(|i| v[i] * if out_in { m[i / d_in] / n[i / d_in] } else { m[i % o] / n[i % o] }).collect()
}
