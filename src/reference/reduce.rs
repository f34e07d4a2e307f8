//! Reductions. x [R, C].

/// out[c] = Σ_r x[r, c]. Returns [C].
pub fn sum_rows(x: &[f64], cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; cols];
    for (i, v) in x.iter().enumerate() {
        out[i % cols] += v;
    }
    out
}

/// Σ over all tensors of Σ x².
pub fn global_norm_squared(tensors: &[&[f64]]) -> f64 {
    tensors.iter().flat_map(|t| t.iter()).map(|v| v * v).sum()
}
