//! Softmax cross-entropy, mean over rows whose target is not the ignore index; and the
//! class-weighted mean of PyTorch's `CrossEntropyLoss(weight=w)`.
//!
//! Shapes: R rows, V classes. logits [R, V]; targets [R]; class_weights [V]; lse [R].

/// log Σ exp(row), subtracting the max first so exp cannot overflow.
fn log_sum_exp(row: &[f64]) -> f64 {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// (Σ weight(t)·(lse − logit[t]), lse per row, Σ weight(t)) over the rows whose target is not
/// the ignore index.
fn weighted_sum(
    logits: &[f64],
    targets: &[i32],
    vocab: usize,
    ignore_index: i32,
    weight: impl Fn(usize) -> f64,
) -> (f64, Vec<f64>, f64) {
    let rows = targets.len();
    let (mut total, mut weight_sum, mut lses) = (0.0, 0.0, vec![0.0; rows]);
    for r in 0..rows {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let lse = log_sum_exp(row);
        lses[r] = lse;
        let t = targets[r];
        if t != ignore_index {
            let w = weight(t as usize);
            total += w * (lse - row[t as usize]);
            weight_sum += w;
        }
    }
    (total, lses, weight_sum)
}

/// Returns (mean loss, lse per row, counted rows).
pub fn forward(logits: &[f64], targets: &[i32], vocab: usize, ignore_index: i32) -> (f64, Vec<f64>, usize) {
    // Every counted row weighs 1, so the weight sum is the count.
    let (total, lses, count) = weighted_sum(logits, targets, vocab, ignore_index, |_| 1.0);
    (total / count.max(1.0), lses, count as usize)
}

/// d(mean loss)/dlogits, times `dloss`.
pub fn backward(
    logits: &[f64],
    targets: &[i32],
    vocab: usize,
    ignore_index: i32,
    lse: &[f64],
    count: usize,
    dloss: f64,
) -> Vec<f64> {
    let mut d = vec![0.0; logits.len()];
    for (r, &t) in targets.iter().enumerate() {
        if t == ignore_index {
            continue;
        }
        for v in 0..vocab {
            let prob = (logits[r * vocab + v] - lse[r]).exp();
            let onehot = if v as i32 == t { 1.0 } else { 0.0 };
            d[r * vocab + v] = (prob - onehot) * dloss / count.max(1) as f64;
        }
    }
    d
}

/// Class-weighted mean: Σ w[t]·(lse − logit[t]) / Σ w[t] over counted rows (0 when the weights
/// sum to 0). Returns (loss, lse per row, Σ w[t]).
pub fn forward_weighted(
    logits: &[f64],        // [R, V]
    targets: &[i32],       // [R]
    class_weights: &[f64], // [V]
    vocab: usize,
    ignore_index: i32,
) -> (f64, Vec<f64>, f64) {
    let (total, lses, weight_sum) = weighted_sum(logits, targets, vocab, ignore_index, |t| class_weights[t]);
    (if weight_sum > 0.0 { total / weight_sum } else { 0.0 }, lses, weight_sum)
}

/// d(weighted mean loss)/dlogits, times `dloss`: w[t_r]·(softmax − onehot(t_r))·dloss / Σ w.
#[allow(clippy::too_many_arguments)]
pub fn backward_weighted(
    logits: &[f64],        // [R, V]
    targets: &[i32],       // [R]
    class_weights: &[f64], // [V]
    vocab: usize,
    ignore_index: i32,
    lse: &[f64], // [R]
    weight_sum: f64,
    dloss: f64,
) -> Vec<f64> {
    let mut d = vec![0.0; logits.len()];
    if weight_sum <= 0.0 {
        return d;
    }
    for (r, &t) in targets.iter().enumerate() {
        if t == ignore_index {
            continue;
        }
        let scale = class_weights[t as usize] * dloss / weight_sum;
        for v in 0..vocab {
            let prob = (logits[r * vocab + v] - lse[r]).exp();
            let onehot = if v as i32 == t { 1.0 } else { 0.0 };
            d[r * vocab + v] += (prob - onehot) * scale;
        }
    }
    d
}
