//! Batch normalisation over the channels of NCHW tensors (PyTorch's `nn.BatchNorm2d`).
//!
//! # Shapes
//! N batch, C channels, S = H·W positions. x and y `[N, C, S]`; gamma, beta, mean, rstd and the
//! running statistics `[C]`. Each channel is normalised over its N·S values:
//! y = (x − μ_c)·rstd_c·γ_c + β_c with rstd_c = 1/√(σ²_c + ε).
//!
//! Training mode takes μ and σ² (biased) from the batch and moves the running statistics
//! toward them: running ← (1 − momentum)·running + momentum·batch, with the variance made
//! unbiased (× M/(M − 1), M = N·S) first, as PyTorch does. Evaluation mode, and the frozen BN
//! that fine-tuning uses, take μ and σ² from the running statistics and leave them alone.

/// Per-channel mean and biased variance of x `[N, C, S]`, two passes (the mean first, so the
/// variance does not lose digits to a large mean).
pub fn batch_stats(x: &[f64], c: usize, s: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / (c * s);
    let m = (n * s) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let vals = (0..n).flat_map(|b| &x[(b * c + ch) * s..(b * c + ch + 1) * s]);
        mean[ch] = vals.clone().sum::<f64>() / m;
        var[ch] = vals.map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m;
    }
    (mean, var)
}

/// y = (x − mean)·rstd·gamma + beta per channel. x `[N, C, S]`, the rest `[C]`.
pub fn apply(x: &[f64], s: usize, mean: &[f64], rstd: &[f64], gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    let c = mean.len();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / s) % c;
            (v - mean[ch]) * rstd[ch] * gamma[ch] + beta[ch]
        })
        .collect()
}

pub fn rstd_of(var: &[f64], eps: f64) -> Vec<f64> {
    var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
}

/// Training mode: returns (y, batch mean, batch rstd) and updates the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    x: &[f64],
    c: usize,
    s: usize,
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
    momentum: f64,
    running: Option<(&mut [f64], &mut [f64])>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mean, var) = batch_stats(x, c, s);
    let rstd = rstd_of(&var, eps);
    if let Some((rm, rv)) = running {
        let m = (x.len() / c) as f64;
        for ch in 0..c {
            rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mean[ch];
            rv[ch] = (1.0 - momentum) * rv[ch] + momentum * var[ch] * m / (m - 1.0).max(1.0);
        }
    }
    (apply(x, s, &mean, &rstd, gamma, beta), mean, rstd)
}

/// Gradients of training mode, where mean and rstd depend on x. With x̂ = (x − μ)·rstd and
/// sums over the channel's M values: dx = γ·rstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M),
/// dγ = Σ dy·x̂, dβ = Σ dy. Returns (dx, dgamma, dbeta).
pub fn backward_train(
    x: &[f64],
    s: usize,
    gamma: &[f64],
    mean: &[f64],
    rstd: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = gamma.len();
    let m = (x.len() / c) as f64;
    let (dgamma, dbeta) = param_grads(x, s, mean, rstd, dy);
    let dx = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / s) % c;
            let xhat = (v - mean[ch]) * rstd[ch];
            gamma[ch] * rstd[ch] * (dy[i] - dbeta[ch] / m - xhat * dgamma[ch] / m)
        })
        .collect();
    (dx, dgamma, dbeta)
}

/// Gradients with fixed statistics (evaluation mode, frozen BN): the op is affine per channel,
/// so dx = dy·γ·rstd. Returns (dx, dgamma, dbeta).
pub fn backward_fixed(
    x: &[f64],
    s: usize,
    gamma: &[f64],
    mean: &[f64],
    rstd: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = gamma.len();
    let (dgamma, dbeta) = param_grads(x, s, mean, rstd, dy);
    let dx = dy.iter().enumerate().map(|(i, &d)| d * gamma[(i / s) % c] * rstd[(i / s) % c]).collect();
    (dx, dgamma, dbeta)
}

/// (Σ dy·x̂, Σ dy) per channel.
fn param_grads(x: &[f64], s: usize, mean: &[f64], rstd: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let c = mean.len();
    let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
    for (i, (&v, &d)) in x.iter().zip(dy).enumerate() {
        let ch = (i / s) % c;
        dgamma[ch] += d * (v - mean[ch]) * rstd[ch];
        dbeta[ch] += d;
    }
    (dgamma, dbeta)
}
