//! Suspicious labels, confident-learning style (Northcutt et al. 2021): a linear head is fitted
//! k times on cached sentence features, each time without one fold, and predicts that fold. A
//! row whose out-of-fold prediction is another label is flagged, and flagged rows are ranked by
//! the probability of their own label (self-confidence), lowest first. Out-of-fold, so a model
//! cannot vouch for a label it memorised.

use crate::autograd::{Module, Param, Tape, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::adamw::AdamW;
use crate::nn::{Linear, Rng};
use crate::tensor::Tensor;
use crate::train::Optimizer;
use crate::util::SplitMix64;

/// How each fold's head is fitted: AdamW over shuffled batches of cached features.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeadFit {
    pub folds: usize,
    pub epochs: usize,
    /// At least this many steps per fold: small sets get more epochs than `epochs`.
    pub min_steps: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub seed: u64,
}

impl Default for HeadFit {
    fn default() -> Self {
        // A linear probe on frozen features: 20 epochs, and at least 600 steps so a few hundred
        // rows still converge (40 steps at 3e-3 left the tiny-BERT test's head near chance).
        HeadFit { folds: 5, epochs: 20, min_steps: 600, batch_size: 32, lr: 3e-3, weight_decay: 0.01, seed: 0 }
    }
}

/// A row whose label the out-of-fold predictions doubt.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Suspect {
    pub index: usize,
    pub label: usize,
    /// Out-of-fold probability of its own label.
    pub self_confidence: f64,
    /// The most likely other label and its probability.
    pub suggested: usize,
    pub suggested_probability: f64,
}

/// A linear head `[K, C]` as a module, so the optimizer can step it.
struct Head(Linear);

impl Module for Head {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.0.visit_params(f);
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.0.visit_params_mut(f);
    }
}

/// Fold of each example, `0..folds`, dealt round-robin within each label after a seeded
/// shuffle, so every fold has each label's share.
pub fn stratified_folds(labels: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let k = labels.iter().max().map_or(0, |&m| m + 1);
    let mut fold = vec![0; labels.len()];
    let mut rng = SplitMix64::new(seed);
    for class in 0..k {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        rng.shuffle(&mut members);
        for (j, &i) in members.iter().enumerate() {
            fold[i] = j % folds;
        }
    }
    fold
}

/// Out-of-fold class probabilities `[N, K]` of `features` (`[N, dim]` row-major) with labels
/// `0..k`: each fold predicted by a head fitted on the others.
pub fn out_of_fold_probabilities(
    gpu: &Gpu,
    features: &[f32],
    dim: usize,
    labels: &[usize],
    k: usize,
    fit: &HeadFit,
) -> Result<Vec<f32>> {
    let n = labels.len();
    if dim == 0 || features.len() != n * dim {
        return Err(Error::invalid(
            "suspicious labels",
            format!("{} feature values for {n} rows of {dim}", features.len()),
        ));
    }
    if fit.folds < 2 || n < fit.folds {
        return Err(Error::invalid(
            "suspicious labels",
            format!("{} folds over {n} examples: need at least 2 folds and one example per fold", fit.folds),
        ));
    }
    if k < 2 || labels.iter().any(|&y| y >= k) {
        return Err(Error::invalid("suspicious labels", format!("labels must be ids below {k} (at least 2 classes)")));
    }
    let fold = stratified_folds(labels, fit.folds, fit.seed);
    let mut probs = vec![0.0f32; n * k];
    for f in 0..fit.folds {
        let train: Vec<usize> = (0..n).filter(|&i| fold[i] != f).collect();
        let held: Vec<usize> = (0..n).filter(|&i| fold[i] == f).collect();
        let head = fit_head(gpu, features, dim, labels, &train, k, fit, f as u64)?;
        let rows = gather(features, dim, &held);
        let x = Var::constant(Tensor::from_f32(gpu, &rows, &[held.len(), dim])?);
        let logits = head.0.forward(&Tape::no_grad(gpu), &x)?.value.to_f32_vec(gpu)?;
        for (r, &i) in held.iter().enumerate() {
            probs[i * k..(i + 1) * k].copy_from_slice(&softmax(&logits[r * k..(r + 1) * k]));
        }
    }
    Ok(probs)
}

/// A fresh head (N(0, 0.02), bias 0, as HF initialises one) fitted on the rows `train`.
#[allow(clippy::too_many_arguments)]
fn fit_head(
    gpu: &Gpu,
    features: &[f32],
    dim: usize,
    labels: &[usize],
    train: &[usize],
    k: usize,
    fit: &HeadFit,
    fold: u64,
) -> Result<Head> {
    let mut rng = Rng::new(fit.seed ^ (fold + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let w = Tensor::from_f32(gpu, &rng.normal(k * dim, 0.02), &[k, dim])?;
    let mut head = Head(Linear::new("classifier", w, Some(Tensor::zeros(gpu, &[k])?), WeightLayout::OutIn));
    let mut result = Ok(());
    head.visit_params_mut(&mut |p| {
        if result.is_ok() {
            result = p.set_trainable(gpu, true);
        }
    });
    result?;
    let mut opt = Optimizer::new(AdamW { weight_decay: fit.weight_decay, ..AdamW::default() }, None);
    let mut order = train.to_vec();
    let mut step = 0u32;
    let epochs = fit.epochs.max(fit.min_steps.div_ceil(train.len().div_ceil(fit.batch_size.max(1))));
    for epoch in 0..epochs {
        SplitMix64::new(fit.seed.wrapping_add(epoch as u64) ^ fold).shuffle(&mut order);
        for idx in order.chunks(fit.batch_size.max(1)) {
            step += 1;
            let tape = Tape::train(gpu, fit.seed as u32, step);
            let x = Var::constant(Tensor::from_f32(gpu, &gather(features, dim, idx), &[idx.len(), dim])?);
            let logits = head.0.forward(&tape, &x)?;
            let targets: Vec<i32> = idx.iter().map(|&i| labels[i] as i32).collect();
            let loss = crate::autograd::cross_entropy(&tape, &logits, &targets)?;
            tape.backward(&loss, 1.0)?;
            opt.step(gpu, &head, fit.lr)?;
        }
    }
    Ok(head)
}

fn gather(features: &[f32], dim: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&i| features[i * dim..(i + 1) * dim].iter().copied()).collect()
}

fn softmax(row: &[f32]) -> Vec<f32> {
    crate::train::forgetting::log_softmax(row).iter().map(|&l| l.exp() as f32).collect()
}

/// The rows whose labels the out-of-fold probabilities `probs` (`[N, K]`) doubt, lowest
/// self-confidence first: those whose out-of-fold prediction is another label (cleanlab's
/// `predicted_neq_given` rule). Per-class thresholds (flag only when the other class clears its
/// usual confidence) were tried and missed flips whenever the head fitted sharply, since a
/// class's mean confidence is then ~0.99 and a flipped row's 0.97 falls short.
pub fn find_suspects(probs: &[f32], labels: &[usize], k: usize) -> Vec<Suspect> {
    let mut suspects = Vec::new();
    for (i, &y) in labels.iter().enumerate() {
        let p = &probs[i * k..(i + 1) * k];
        let best = (0..k).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a))).unwrap_or(y);
        if best != y && p[best] > p[y] {
            suspects.push(Suspect {
                index: i,
                label: y,
                self_confidence: p[y] as f64,
                suggested: best,
                suggested_probability: p[best] as f64,
            });
        }
    }
    suspects.sort_by(|a, b| a.self_confidence.total_cmp(&b.self_confidence).then(a.index.cmp(&b.index)));
    suspects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_and_seeded() {
        let labels: Vec<usize> = (0..50).map(|i| usize::from(i % 5 == 0)).collect();
        let f = stratified_folds(&labels, 5, 3);
        assert_eq!(f, stratified_folds(&labels, 5, 3));
        for fold in 0..5 {
            let members: Vec<usize> = (0..50).filter(|&i| f[i] == fold).collect();
            assert_eq!(members.len(), 10);
            assert_eq!(members.iter().filter(|&&i| labels[i] == 1).count(), 2, "fold {fold}");
        }
    }

    #[test]
    fn suspects_are_rows_predicted_as_another_label_least_confident_first() {
        // Labelled 0: sure, sure, leaning to 1, confidently 1, a tie; labelled 1: sure.
        let probs = [0.9, 0.1, 0.95, 0.05, 0.45, 0.55, 0.05, 0.95, 0.5, 0.5, 0.2, 0.8];
        let labels = [0, 0, 0, 0, 0, 1];
        let s = find_suspects(&probs, &labels, 2);
        let flagged: Vec<usize> = s.iter().map(|x| x.index).collect();
        assert_eq!(flagged, vec![3, 2], "a tie is not a disagreement");
        assert!((s[0].self_confidence - 0.05).abs() < 1e-6);
        assert_eq!((s[0].suggested, s[0].label), (1, 0));
        assert!((s[1].suggested_probability - 0.55).abs() < 1e-6);
    }
}
