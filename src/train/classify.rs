//! Sequence-classification training: the transfer-learning strategies (`head`, `top:N`, `lora`,
//! `full`), progressive unfreezing and discriminative (per-block) learning rates.
//!
//! Blocks are counted from the output ([`SequenceClassifier::depth`]): 0 the head, 1 the top
//! encoder layer, ..., L + 1 the embeddings. A strategy says which blocks may train; progressive
//! unfreezing starts with the head alone and lets one more block train every K steps or epochs;
//! the learning rate of a block at depth d is `lr · decay^d`.
//!
//! `head` is feature extraction: the frozen body runs once per example (no dropout), its pooled
//! vectors are kept on the host, and the head then trains on them for as many epochs as asked at
//! almost no cost.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::Serialize;

use super::driver::{self, Evaluation, Event, LoopSettings, OnEvent, Scores, Seen, Summary, Task};
use super::stopping::StopMetric;
use crate::autograd::Module;
use crate::autograd::{Loss, Tape, Var};
use crate::data::encode::{Encoded, length_sorted_batches, make_input};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::metrics::Metrics;
use crate::models::classifier::{SequenceClassifier, block_depth};
use crate::nn::LoraConfig;
use crate::tensor::Tensor;
use crate::util::SplitMix64;

/// Which parts of the model train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Feature extraction: a frozen body, a trained head.
    Head,
    /// The top N encoder layers (with their norms) and the head.
    Top(usize),
    /// LoRA on the encoder's linears, the head trained whole (PEFT's modules_to_save).
    Lora,
    /// Everything.
    Full,
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("strategy", format!("`{s}` is not one of head, top:N (N ≥ 1), lora, full"));
        match s {
            "head" => Ok(Strategy::Head),
            "lora" => Ok(Strategy::Lora),
            "full" => Ok(Strategy::Full),
            _ => match s.strip_prefix("top:").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => Ok(Strategy::Top(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Head => write!(f, "head"),
            Strategy::Top(n) => write!(f, "top:{n}"),
            Strategy::Lora => write!(f, "lora"),
            Strategy::Full => write!(f, "full"),
        }
    }
}

impl Serialize for Strategy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Strategy {
    /// Whether the parameter `name` of a model with `layers` encoder layers trains under this
    /// strategy (before progressive unfreezing narrows it).
    pub fn trains(self, name: &str, layers: usize) -> bool {
        let depth = block_depth(name, layers);
        match self {
            Strategy::Head => depth == 0,
            Strategy::Top(n) => depth <= n.min(layers),
            Strategy::Lora => depth == 0 || name.contains(".lora_"),
            Strategy::Full => true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnfreezeUnit {
    Step,
    Epoch,
}

/// Progressive unfreezing: one more block every `every` steps or epochs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Unfreeze {
    pub every: usize,
    pub unit: UnfreezeUnit,
}

impl Unfreeze {
    /// The depth that may train at (`step`, `epoch`): everything (`max_depth`) without
    /// unfreezing, else one more block or stage every `every` units, up to `max_depth`.
    pub fn stage(unfreeze: Option<Unfreeze>, step: usize, epoch: usize, max_depth: usize) -> usize {
        match unfreeze {
            None => max_depth,
            Some(Unfreeze { every, unit: UnfreezeUnit::Step }) => step / every,
            Some(Unfreeze { every, unit: UnfreezeUnit::Epoch }) => epoch / every,
        }
        .min(max_depth)
    }
}

/// The classifier's settings: the loop's, and what the strategy trains at which rate.
#[derive(Clone, Debug, Serialize)]
pub struct ClassifyConfig {
    pub strategy: Strategy,
    /// Adapters for [`Strategy::Lora`].
    #[serde(skip)]
    pub lora: LoraConfig,
    #[serde(flatten)]
    pub run: LoopSettings,
    pub batch_size: usize,
    /// The learning rate of a block at depth d is `lr · layer_lr_decay^d` (1: one rate for all).
    pub layer_lr_decay: f32,
    pub unfreeze: Option<Unfreeze>,
    /// Per-class weights of the loss (PyTorch's `CrossEntropyLoss(weight=...)`).
    pub class_weights: Option<Vec<f32>>,
}

impl ClassifyConfig {
    /// What the text and image tasks check alike: `n` training examples with one label each,
    /// every label below the head's `k`, one class weight per label, a batch size and an
    /// unfreezing interval of at least 1. `names`: the examples' and the labels' word in the
    /// errors ("texts", "labels"; "images", "classes").
    pub(crate) fn check(&self, names: (&str, &str), n: usize, labels: &[usize], k: usize) -> Result<()> {
        let (items, classes) = names;
        if n == 0 || labels.len() != n {
            return Err(Error::invalid("train", format!("{n} training {items} with {} labels", labels.len())));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("train", "batch size must be at least 1"));
        }
        if let Some(&bad) = labels.iter().find(|&&y| y >= k) {
            return Err(Error::invalid("train", format!("label id {bad} for a head of {k} {classes}")));
        }
        if let Some(w) = &self.class_weights
            && w.len() != k
        {
            return Err(Error::invalid("class weights", format!("{} weights for {k} {classes}", w.len())));
        }
        if self.unfreeze.is_some_and(|u| u.every == 0) {
            return Err(Error::invalid("unfreeze", "--unfreeze-every must be at least 1"));
        }
        Ok(())
    }

    /// Progressive unfreezing's stage at (step, epoch), when it differs from `*current` (which
    /// becomes it): the task then lets train what may at that depth. None when unchanged.
    pub(crate) fn next_stage(&self, current: &mut usize, step: usize, epoch: usize, max_depth: usize) -> Option<usize> {
        let stage = Unfreeze::stage(self.unfreeze, step, epoch, max_depth);
        (stage != std::mem::replace(current, stage)).then_some(stage)
    }
}

/// Texts with their label ids.
#[derive(Clone, Copy)]
pub struct LabeledSet<'a> {
    pub items: &'a [Encoded],
    pub labels: &'a [usize],
}

/// Logits, predictions and (with labels) the mean loss of a set.
pub struct Predictions {
    /// `[N, K]` row-major, in the order of the set.
    pub logits: Vec<f32>,
    pub pred: Vec<usize>,
    pub loss: Option<f32>,
}

impl Predictions {
    pub fn from_logits(logits: Vec<f32>, k: usize, labels: Option<&[usize]>) -> Predictions {
        let pred = logits.chunks(k).map(argmax).collect();
        let loss = labels.map(|l| mean_cross_entropy(&logits, l, k));
        Predictions { logits, pred, loss }
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &x)| if x > row[best] { i } else { best })
}

/// Mean cross-entropy on the host, in f64 (evaluation needs no GPU loss).
fn mean_cross_entropy(logits: &[f32], labels: &[usize], k: usize) -> f32 {
    let mut total = 0.0f64;
    for (row, &y) in logits.chunks(k).zip(labels) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        total += lse - row[y] as f64;
    }
    (total / labels.len().max(1) as f64) as f32
}

/// Runs the model over `items` in length-sorted batches (no gradients, no dropout).
pub fn predict(
    gpu: &Gpu,
    model: &SequenceClassifier,
    items: &[Encoded],
    labels: Option<&[usize]>,
    batch: usize,
    pad: u32,
) -> Result<Predictions> {
    let k = model.num_labels();
    let mut logits = vec![0.0; items.len() * k];
    for idx in length_sorted_batches(items, batch) {
        let refs: Vec<&Encoded> = idx.iter().map(|&i| &items[i]).collect();
        let out = model.predict(gpu, &make_input(gpu, &refs, pad)?)?;
        for (r, &i) in idx.iter().enumerate() {
            logits[i * k..(i + 1) * k].copy_from_slice(&out[r * k..(r + 1) * k]);
        }
    }
    Ok(Predictions::from_logits(logits, k, labels))
}

/// Pooled vectors `[N, C]` of the frozen body (the `head` strategy's cache).
pub fn features(gpu: &Gpu, model: &SequenceClassifier, items: &[Encoded], batch: usize, pad: u32) -> Result<Vec<f32>> {
    let c = model.body.hidden_size();
    let mut out = vec![0.0; items.len() * c];
    for idx in length_sorted_batches(items, batch) {
        let refs: Vec<&Encoded> = idx.iter().map(|&i| &items[i]).collect();
        let pooled = model.pooled(&Tape::no_grad(gpu), &make_input(gpu, &refs, pad)?)?.value.to_f32_vec(gpu)?;
        for (r, &i) in idx.iter().enumerate() {
            out[i * c..(i + 1) * c].copy_from_slice(&pooled[r * c..(r + 1) * c]);
        }
    }
    Ok(out)
}

/// Logits of cached features through the head (no dropout).
fn head_logits(gpu: &Gpu, model: &SequenceClassifier, feats: &[f32], n: usize) -> Result<Vec<f32>> {
    let x = Var::constant(Tensor::from_f32(gpu, feats, &[n, feats.len() / n.max(1)])?);
    model.head(&Tape::no_grad(gpu), &x)?.value.to_f32_vec(gpu)
}

/// Classification as a [`Task`] of the driver: shuffled batches (one per step), the head
/// strategy's cached features, progressive unfreezing and per-block learning rates.
pub struct ClassifierTask<'a> {
    gpu: &'a Gpu,
    model: &'a mut SequenceClassifier,
    train: LabeledSet<'a>,
    valid: Option<LabeledSet<'a>>,
    retain: Option<LabeledSet<'a>>,
    pad: u32,
    cfg: &'a ClassifyConfig,
    /// The head strategy's cache: the frozen body's pooled vectors `[N, C]` of train and valid.
    train_feats: Option<Vec<f32>>,
    valid_feats: Option<Vec<f32>>,
    /// The data order, shuffled again at each epoch.
    order: Vec<usize>,
    /// The unfreezing stage in force (blocks down to this depth may train).
    stage: usize,
}

impl<'a> ClassifierTask<'a> {
    /// Checks the settings against the model and the data; attaches the adapters of
    /// [`Strategy::Lora`] (the caller has loaded the model and nothing else).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &'a Gpu,
        model: &'a mut SequenceClassifier,
        train: LabeledSet<'a>,
        valid: Option<LabeledSet<'a>>,
        retain: Option<LabeledSet<'a>>,
        pad: u32,
        cfg: &'a ClassifyConfig,
    ) -> Result<Self> {
        let n = train.items.len();
        cfg.check(("texts", "labels"), n, train.labels, model.num_labels())?;
        if cfg.strategy == Strategy::Head && cfg.unfreeze.is_some() {
            return Err(Error::invalid(
                "unfreeze",
                "progressive unfreezing needs a strategy that trains more than the head (top:N, lora or full)",
            ));
        }
        if cfg.strategy == Strategy::Lora {
            model.add_lora(gpu, &cfg.lora, cfg.run.seed)?;
        }
        let order = (0..n).collect();
        Ok(ClassifierTask {
            gpu,
            model,
            train,
            valid,
            retain,
            pad,
            cfg,
            train_feats: None,
            valid_feats: None,
            order,
            stage: usize::MAX,
        })
    }

    fn layers(&self) -> usize {
        self.model.body.layers.len()
    }
}

impl Task for ClassifierTask<'_> {
    fn model(&self) -> &dyn Module {
        &*self.model
    }

    fn model_mut(&mut self) -> &mut dyn Module {
        &mut *self.model
    }

    fn check_metric(&self, metric: StopMetric) -> Result<()> {
        driver::check_classification_metric(metric)
    }

    fn steps_per_epoch(&self) -> usize {
        self.train.items.len().div_ceil(self.cfg.batch_size)
    }

    /// Every parameter the strategy lets train (progressive unfreezing adds some later).
    fn may_train(&self) -> Box<dyn Fn(&str) -> bool> {
        let (strategy, layers) = (self.cfg.strategy, self.layers());
        Box::new(move |name| strategy.trains(name, layers))
    }

    fn fisher(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<Option<(HashMap<String, Tensor>, usize)>> {
        let Some(r) = self.retain.filter(|r| !r.items.is_empty()) else { return Ok(None) };
        let (gpu, pad) = (self.gpu, self.pad);
        let fisher = super::ewc::fisher_diagonal(gpu, &mut *self.model, keep, r.items.len(), &mut |tape, m, i| {
            let logits = m.logits(tape, &make_input(gpu, &[&r.items[i]], pad)?)?;
            m.loss(tape, &logits, &[r.labels[i]], None)
        })?;
        Ok(Some((fisher, r.items.len())))
    }

    /// The head strategy's cache: the body never runs again during training.
    fn prepare(&mut self, on_event: &mut OnEvent) -> Result<f64> {
        if self.cfg.strategy != Strategy::Head {
            return Ok(0.0);
        }
        let t0 = Instant::now();
        let (gpu, batch, pad) = (self.gpu, self.cfg.batch_size, self.pad);
        // Through the cache `kiln tune` turns on (a plain run computes them).
        self.train_feats = Some(super::feature_cache::features(gpu, self.model, self.train.items, batch, pad)?);
        self.valid_feats = match self.valid {
            Some(v) => Some(super::feature_cache::features(gpu, self.model, v.items, batch, pad)?),
            None => None,
        };
        let examples = self.train.items.len() + self.valid.map_or(0, |v| v.items.len());
        let seconds = t0.elapsed().as_secs_f64();
        on_event(&Event::Features { examples, seconds })?;
        Ok(seconds)
    }

    /// Progressive unfreezing: the head alone at first, one more block every `every` units.
    fn enter(&mut self, step: usize, epoch: usize, on_event: &mut OnEvent) -> Result<()> {
        let Some(stage) = self.cfg.next_stage(&mut self.stage, step, epoch, self.model.max_depth()) else {
            return Ok(());
        };
        let (strategy, layers) = (self.cfg.strategy, self.layers());
        self.model
            .set_trainable(self.gpu, &|name| strategy.trains(name, layers) && block_depth(name, layers) <= stage)?;
        let (params, _) = crate::models::count_params(&*self.model);
        on_event(&Event::Trainable { step, depth: stage, params })
    }

    fn start_epoch(&mut self, epoch: usize) -> Result<usize> {
        SplitMix64::new(self.cfg.run.seed.wrapping_add(epoch as u64)).shuffle(&mut self.order);
        Ok(self.steps_per_epoch())
    }

    fn forward_backward(&mut self, _epoch: usize, index: usize, step: usize) -> Result<(Vec<Loss>, Seen)> {
        let gpu = self.gpu;
        let batch = self.cfg.batch_size;
        let idx = &self.order[index * batch..((index + 1) * batch).min(self.order.len())];
        let tape = Tape::train(gpu, self.cfg.run.seed as u32, step as u32 + 1);
        let logits = match &self.train_feats {
            Some(f) => {
                let c = self.model.body.hidden_size();
                let rows: Vec<f32> = idx.iter().flat_map(|&i| f[i * c..(i + 1) * c].iter().copied()).collect();
                let x = Var::constant(Tensor::from_f32(gpu, &rows, &[idx.len(), c])?);
                self.model.head(&tape, &x)?
            }
            None => {
                let refs: Vec<&Encoded> = idx.iter().map(|&i| &self.train.items[i]).collect();
                self.model.logits(&tape, &make_input(gpu, &refs, self.pad)?)?
            }
        };
        let targets: Vec<usize> = idx.iter().map(|&i| self.train.labels[i]).collect();
        let loss = self.model.loss(&tape, &logits, &targets, self.cfg.class_weights.as_deref())?;
        tape.backward(&loss, 1.0)?;
        Ok((vec![loss], Seen::Examples(idx.len())))
    }

    fn lr_scale(&self, name: &str) -> f32 {
        self.cfg.layer_lr_decay.powi(block_depth(name, self.layers()) as i32)
    }

    fn evaluate(&mut self) -> Result<Option<Evaluation>> {
        let Some(v) = self.valid.filter(|v| !v.items.is_empty()) else { return Ok(None) };
        let (gpu, k) = (self.gpu, self.model.num_labels());
        let p = match &self.valid_feats {
            Some(f) => Predictions::from_logits(head_logits(gpu, self.model, f, v.items.len())?, k, Some(v.labels)),
            None => predict(gpu, self.model, v.items, Some(v.labels), self.cfg.batch_size, self.pad)?,
        };
        let m = Metrics::compute(v.labels, &p.pred, k)?;
        let val_loss = p.loss.unwrap_or(f32::NAN);
        Ok(Some(Evaluation { val_loss, scores: Scores::Classes { accuracy: m.accuracy, macro_f1: m.macro_f1 } }))
    }
}

/// Trains `model` on `train`, validating on `valid`; `retain` feeds EWC. The caller has loaded
/// the model (and for [`Strategy::Lora`] nothing else: the adapters are attached here).
#[allow(clippy::too_many_arguments)]
pub fn train_classifier(
    gpu: &Gpu,
    model: &mut SequenceClassifier,
    train: LabeledSet,
    valid: Option<LabeledSet>,
    retain: Option<LabeledSet>,
    pad: u32,
    cfg: &ClassifyConfig,
    on_event: &mut OnEvent,
) -> Result<Summary> {
    let mut task = ClassifierTask::new(gpu, model, train, valid, retain, pad, cfg)?;
    driver::train(gpu, &mut task, &cfg.run, on_event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_and_select_blocks() {
        assert_eq!("top:2".parse::<Strategy>().unwrap(), Strategy::Top(2));
        for bad in ["top:0", "top:", "top:x", "heads", ""] {
            assert!(bad.parse::<Strategy>().is_err(), "{bad}");
        }
        let (q1, q0) = ("bert.encoder.layer.1.attention.self.query.weight", "bert.encoder.layer.0.output.dense.bias");
        let lora0 = "bert.encoder.layer.0.attention.self.query.lora_A.weight";
        let emb = "bert.embeddings.word_embeddings.weight";
        assert!(Strategy::Head.trains("classifier.weight", 2) && !Strategy::Head.trains(q1, 2));
        assert!(Strategy::Top(1).trains(q1, 2) && !Strategy::Top(1).trains(q0, 2));
        assert!(Strategy::Top(2).trains(q0, 2) && !Strategy::Top(2).trains(emb, 2));
        assert!(Strategy::Lora.trains(lora0, 2) && !Strategy::Lora.trains(q0, 2));
        assert!(Strategy::Full.trains(emb, 2));
    }

    #[test]
    fn host_cross_entropy_and_argmax() {
        let logits = [0.0, 0.0, 2.0, 0.0];
        let l = mean_cross_entropy(&logits, &[0, 0], 2);
        let want = ((2f64.ln()) + (1.0 + 2f64.exp()).ln() - 2.0) / 2.0;
        assert!((l as f64 - want).abs() < 1e-6, "{l} vs {want}");
        assert_eq!(argmax(&[0.1, 0.3, 0.3]), 1);
    }
}
