//! LayerNorm and RMSNorm over the last dimension.
//!
//! Shapes: x, y, dy, dx [R, C]; gamma, beta [C]; mean, rstd [R].

/// Returns (y, mean, rstd). `beta = None` means RMSNorm (no centring, mean reported as 0).
pub fn forward(x: &[f64], gamma: &[f64], beta: Option<&[f64]>, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = gamma.len();
    let rows = x.len() / c;
    let (mut y, mut means, mut rstds) = (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
    for r in 0..rows {
        let row = &x[r * c..(r + 1) * c];
        let mean = if beta.is_some() { row.iter().sum::<f64>() / c as f64 } else { 0.0 };
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            y[r * c + j] = (row[j] - mean) * rstd * gamma[j] + beta.map_or(0.0, |b| b[j]);
        }
        means[r] = mean;
        rstds[r] = rstd;
    }
    (y, means, rstds)
}

/// Returns (dx, dgamma, dbeta) from the forward's saved mean and rstd. `rms` selects RMSNorm.
pub fn backward(
    x: &[f64],
    gamma: &[f64],
    mean: &[f64],
    rstd: &[f64],
    dy: &[f64],
    rms: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = gamma.len();
    let rows = x.len() / c;
    let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    for r in 0..rows {
        let xhat: Vec<f64> = (0..c).map(|j| (x[r * c + j] - mean[r]) * rstd[r]).collect();
        let g: Vec<f64> = (0..c).map(|j| dy[r * c + j] * gamma[j]).collect();
        let mean_g = if rms { 0.0 } else { g.iter().sum::<f64>() / c as f64 };
        let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / c as f64;
        for j in 0..c {
            dx[r * c + j] = rstd[r] * (g[j] - mean_g - xhat[j] * mean_gx);
            dgamma[j] += dy[r * c + j] * xhat[j];
            dbeta[j] += dy[r * c + j];
        }
    }
    (dx, dgamma, dbeta)
}
