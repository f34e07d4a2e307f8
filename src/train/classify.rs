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

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::Serialize;

use super::Optimizer;
use super::checkpoint::{CheckpointSettings, RunKeeper};
use super::schedule::{Schedule, ScheduleKind};
use super::stopping::{StopMetric, StopSettings};
use crate::autograd::{Tape, Var};
use crate::data::encode::{Encoded, length_sorted_batches, make_input};
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::gpu::Gpu;
use crate::kernels::adamw::AdamW;
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

#[derive(Clone, Debug, Serialize)]
pub struct ClassifyConfig {
    pub strategy: Strategy,
    /// Adapters for [`Strategy::Lora`].
    #[serde(skip)]
    pub lora: LoraConfig,
    pub epochs: usize,
    /// Optimizer steps; overrides `epochs` when set.
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f32,
    pub schedule: ScheduleKind,
    pub warmup_ratio: f32,
    pub weight_decay: f32,
    pub max_grad_norm: Option<f32>,
    /// The learning rate of a block at depth d is `lr · layer_lr_decay^d` (1: one rate for all).
    pub layer_lr_decay: f32,
    pub unfreeze: Option<Unfreeze>,
    /// Per-class weights of the loss (PyTorch's `CrossEntropyLoss(weight=...)`).
    pub class_weights: Option<Vec<f32>>,
    /// Validate before the first step, every this many steps, and at the end.
    pub eval_every: Option<usize>,
    /// Early stopping and the best checkpoint (metric: val_loss, accuracy or macro_f1).
    pub stop: StopSettings,
    /// Checkpoints and resuming; None writes none.
    pub checkpoints: Option<CheckpointSettings>,
    /// L2-SP: pull every trainable weight towards its starting value with this strength.
    pub l2sp: Option<f32>,
    /// EWC: pull weights towards their starting values in proportion to their Fisher
    /// information on the retain set, with this strength.
    pub ewc: Option<f32>,
    pub seed: u64,
}

/// Texts with their label ids.
#[derive(Clone, Copy)]
pub struct LabeledSet<'a> {
    pub items: &'a [Encoded],
    pub labels: &'a [usize],
}

/// What the loop reports as it goes.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The frozen body's features were computed (the `head` strategy).
    Features {
        examples: usize,
        seconds: f64,
    },
    /// The trainable set changed (the start, and each step of progressive unfreezing).
    Trainable {
        step: usize,
        depth: usize,
        params: usize,
    },
    Step {
        step: usize,
        total: usize,
        epoch: usize,
        loss: f32,
        lr: f32,
        /// The global gradient norm before clipping.
        grad_norm: Option<f32>,
        examples: usize,
        seconds: f64,
    },
    Eval {
        step: usize,
        val_loss: f32,
        accuracy: f64,
        macro_f1: f64,
    },
    /// EWC's Fisher diagonal was estimated on the retain set (before the first step).
    Fisher(super::ewc::FisherStats),
    /// Something worth a look that does not stop the run (a rising loss).
    Warning {
        step: usize,
        message: String,
    },
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ClassifySummary {
    pub steps: usize,
    /// Examples the steps went through (an example seen twice counts twice).
    pub examples: usize,
    /// Wall time of the training steps and, for `head`, of the feature pass (not validation).
    pub seconds: f64,
    pub examples_per_second: f64,
    pub first_loss: f32,
    pub last_loss: f32,
    /// (step, validation loss, macro-F1).
    pub evals: Vec<(usize, f32, f64)>,
    /// The best evaluation (step, value of the stop metric); its weights are the model's at the
    /// end when restoring.
    pub best: Option<(usize, f64)>,
    /// The step at which patience ran out, if it did.
    pub stopped_early_at: Option<usize>,
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

/// Trains `model` on `train`, validating on `valid`; the caller has loaded it (and for
/// [`Strategy::Lora`] nothing else: the adapters are attached here).
#[allow(clippy::too_many_arguments)]
pub fn train_classifier(
    gpu: &Gpu,
    model: &mut SequenceClassifier,
    train: LabeledSet,
    valid: Option<LabeledSet>,
    retain: Option<LabeledSet>,
    pad: u32,
    cfg: &ClassifyConfig,
    on_event: &mut dyn FnMut(&Event) -> Result<()>,
) -> Result<ClassifySummary> {
    // Ctrl-C from here on finishes the step and checkpoints (see train::interrupt).
    let _armed = super::interrupt::arm();
    let mut divergence = super::DivergenceWatch::default();
    let n = train.items.len();
    if n == 0 || train.labels.len() != n {
        return Err(Error::invalid("train", format!("{n} training texts with {} labels", train.labels.len())));
    }
    if cfg.batch_size == 0 {
        return Err(Error::invalid("train", "batch size must be at least 1"));
    }
    let k = model.num_labels();
    if let Some(&bad) = train.labels.iter().find(|&&y| y >= k) {
        return Err(Error::invalid("train", format!("label id {bad} for a head of {k} labels")));
    }
    if let Some(w) = &cfg.class_weights
        && w.len() != k
    {
        return Err(Error::invalid("class weights", format!("{} weights for {k} labels", w.len())));
    }
    let head_only = cfg.strategy == Strategy::Head;
    if head_only && cfg.unfreeze.is_some() {
        return Err(Error::invalid(
            "unfreeze",
            "progressive unfreezing needs a strategy that trains more than the head (top:N, lora or full)",
        ));
    }
    if cfg.unfreeze.is_some_and(|u| u.every == 0) {
        return Err(Error::invalid("unfreeze", "--unfreeze-every must be at least 1"));
    }
    if cfg.strategy == Strategy::Lora {
        model.add_lora(gpu, &cfg.lora, cfg.seed)?;
    }

    let batches_per_epoch = n.div_ceil(cfg.batch_size);
    let total = cfg.max_steps.unwrap_or(cfg.epochs * batches_per_epoch);
    if total == 0 {
        return Err(Error::invalid("train", "zero optimizer steps (epochs or steps is 0)"));
    }
    let schedule = Schedule::for_run(cfg.schedule, cfg.lr, cfg.warmup_ratio, total);
    let mut opt = Optimizer::new(AdamW { weight_decay: cfg.weight_decay, ..AdamW::default() }, cfg.max_grad_norm);
    let layers = model.body.layers.len();
    let lr_scale = |name: &str| cfg.layer_lr_decay.powi(block_depth(name, layers) as i32);

    let start = Instant::now();
    let mut summary = ClassifySummary {
        steps: 0,
        examples: 0,
        seconds: 0.0,
        examples_per_second: 0.0,
        first_loss: f32::NAN,
        last_loss: f32::NAN,
        evals: Vec::new(),
        best: None,
        stopped_early_at: None,
    };
    if cfg.stop.metric == StopMetric::Perplexity {
        return Err(Error::invalid(
            "--metric",
            "perplexity is for language models; use val_loss, accuracy or macro_f1",
        ));
    }
    // Every parameter the run may change (progressive unfreezing adds some later).
    let may_train = |name: &str| cfg.strategy.trains(name, layers);
    if cfg.l2sp.is_some() && cfg.ewc.is_some() {
        return Err(Error::invalid("train", "choose one of --l2sp and --ewc"));
    }
    // Anchored before any step or checkpoint: θ₀ is the loaded (or freshly adapted) model.
    if let Some(lambda) = cfg.l2sp {
        opt.anchor_l2sp(gpu, model, lambda, &may_train)?;
    }
    if let Some(lambda) = cfg.ewc {
        let Some(r) = retain.filter(|r| !r.items.is_empty()) else {
            return Err(Error::invalid(
                "--ewc",
                "needs a retain set (--retain FILE) to estimate the Fisher information",
            ));
        };
        let fisher = super::ewc::fisher_diagonal(gpu, model, &may_train, r.items.len(), &mut |tape, m, i| {
            let logits = m.logits(tape, &make_input(gpu, &[&r.items[i]], pad)?)?;
            m.loss(tape, &logits, &[r.labels[i]], None)
        })?;
        on_event(&Event::Fisher(super::ewc::fisher_stats(gpu, &fisher, r.items.len(), lambda)?))?;
        opt.anchor_ewc(gpu, model, lambda, fisher)?;
    }
    // The head strategy's cache: the body never runs again during training.
    let (train_feats, valid_feats) = if head_only {
        let t0 = Instant::now();
        // Through the cache `kiln tune` turns on (a plain run computes them).
        let tf = super::feature_cache::features(gpu, model, train.items, cfg.batch_size, pad)?;
        let vf = match valid {
            Some(v) => Some(super::feature_cache::features(gpu, model, v.items, cfg.batch_size, pad)?),
            None => None,
        };
        let examples = n + valid.map_or(0, |v| v.items.len());
        summary.seconds += t0.elapsed().as_secs_f64();
        on_event(&Event::Features { examples, seconds: t0.elapsed().as_secs_f64() })?;
        (Some(tf), vf)
    } else {
        (None, None)
    };
    let c = model.body.hidden_size();

    // Validates, records, and returns the stop metric's value (None without validation data).
    let run_eval = |model: &SequenceClassifier,
                    step: usize,
                    summary: &mut ClassifySummary,
                    on_event: &mut dyn FnMut(&Event) -> Result<()>|
     -> Result<Option<f64>> {
        let Some(v) = valid.filter(|v| !v.items.is_empty()) else { return Ok(None) };
        let p = match &valid_feats {
            Some(f) => Predictions::from_logits(head_logits(gpu, model, f, v.items.len())?, k, Some(v.labels)),
            None => predict(gpu, model, v.items, Some(v.labels), cfg.batch_size, pad)?,
        };
        let m = Metrics::compute(v.labels, &p.pred, k)?;
        let val_loss = p.loss.unwrap_or(f32::NAN);
        summary.evals.push((step, val_loss, m.macro_f1));
        on_event(&Event::Eval { step, val_loss, accuracy: m.accuracy, macro_f1: m.macro_f1 })?;
        Ok(Some(match cfg.stop.metric {
            StopMetric::ValLoss | StopMetric::Perplexity => val_loss as f64,
            StopMetric::Accuracy => m.accuracy,
            StopMetric::MacroF1 => m.macro_f1,
        }))
    };
    let mut keeper = RunKeeper::new(gpu, &cfg.stop, cfg.checkpoints.as_ref(), &may_train);

    // Progressive unfreezing starts from the head alone.
    let max_depth = model.max_depth();
    let stage_of = |step: usize, epoch: usize| match cfg.unfreeze {
        None => max_depth,
        Some(Unfreeze { every, unit: UnfreezeUnit::Step }) => step / every,
        Some(Unfreeze { every, unit: UnfreezeUnit::Epoch }) => epoch / every,
    };
    let mut stage = usize::MAX;
    let mut set_stage = |model: &mut SequenceClassifier,
                         s: usize,
                         step: usize,
                         on_event: &mut dyn FnMut(&Event) -> Result<()>|
     -> Result<()> {
        let s = s.min(max_depth);
        if s == stage {
            return Ok(());
        }
        stage = s;
        let strategy = cfg.strategy;
        model.set_trainable(gpu, &|name| strategy.trains(name, layers) && block_depth(name, layers) <= s)?;
        let (params, _) = crate::models::count_params(model);
        on_event(&Event::Trainable { step, depth: s, params })
    };
    // Where to start: the beginning, or the newest checkpoint.
    let mut step = 0;
    let mut resume_at = (0, 0);
    match keeper.peek()? {
        Some(peek) => {
            // The trainable set of the checkpoint's step, so its weights have somewhere to go.
            set_stage(model, stage_of(peek.step, peek.epoch), peek.step, on_event)?;
            let state = keeper.resume(model, &mut opt)?.expect("resuming");
            summary = serde_json::from_value(state.summary.clone())
                .map_err(|e| Error::invalid("resume", format!("checkpoint summary: {e}")))?;
            step = state.step;
            resume_at = (state.epoch, state.batch_in_epoch);
        }
        None => {
            set_stage(model, stage_of(0, 0), 0, on_event)?;
            if cfg.eval_every.is_some() {
                let value = run_eval(model, 0, &mut summary, on_event)?;
                keeper.judge(model, &opt, &summary, (0, 0, 0), value)?;
            }
        }
    }

    let mut order: Vec<usize> = (0..n).collect();
    'epochs: for epoch in 0.. {
        SplitMix64::new(cfg.seed.wrapping_add(epoch as u64)).shuffle(&mut order);
        for (batch_index, idx) in order.chunks(cfg.batch_size).enumerate() {
            // A resumed run replays the data order up to where the checkpoint was.
            if (epoch, batch_index) < resume_at {
                continue;
            }
            // A resumed run that had already finished (or stopped early) trains no further.
            if step >= total || summary.stopped_early_at.is_some() {
                break 'epochs;
            }
            set_stage(model, stage_of(step, epoch), step, on_event)?;
            let t0 = Instant::now();
            let tape = Tape::train(gpu, cfg.seed as u32, step as u32 + 1);
            let logits = match &train_feats {
                Some(f) => {
                    let rows: Vec<f32> = idx.iter().flat_map(|&i| f[i * c..(i + 1) * c].iter().copied()).collect();
                    let x = Var::constant(Tensor::from_f32(gpu, &rows, &[idx.len(), c])?);
                    model.head(&tape, &x)?
                }
                None => {
                    let refs: Vec<&Encoded> = idx.iter().map(|&i| &train.items[i]).collect();
                    model.logits(&tape, &make_input(gpu, &refs, pad)?)?
                }
            };
            let targets: Vec<usize> = idx.iter().map(|&i| train.labels[i]).collect();
            let loss = model.loss(&tape, &logits, &targets, cfg.class_weights.as_deref())?;
            tape.backward(&loss, 1.0)?;
            let lr = schedule.lr(step);
            opt.step_scaled(gpu, model, lr, &lr_scale)?;
            let loss = loss.read(gpu)?.0;
            let grad_norm = opt.last_grad_norm(gpu)?;
            let checkpoints = cfg.checkpoints.as_ref().map(|c| c.dir.as_path());
            super::check_loss(loss, step + 1, lr, checkpoints)?;
            super::check_grads(gpu, &opt, grad_norm, step + 1, lr, checkpoints)?;
            if let Some(message) = divergence.observe(loss, step + 1, lr) {
                on_event(&Event::Warning { step: step + 1, message })?;
            }
            step += 1;
            summary.seconds += t0.elapsed().as_secs_f64();
            summary.steps = step;
            summary.examples += idx.len();
            if summary.first_loss.is_nan() {
                summary.first_loss = loss;
            }
            summary.last_loss = loss;
            let seconds = start.elapsed().as_secs_f64();
            on_event(&Event::Step { step, total, epoch, loss, lr, grad_norm, examples: idx.len(), seconds })?;
            let mut stop = false;
            if cfg.eval_every.is_some_and(|e| e > 0 && step % e == 0) && step < total {
                let value = run_eval(model, step, &mut summary, on_event)?;
                stop = keeper.judge(model, &opt, &summary, (step, epoch, batch_index + 1), value)?;
                if stop {
                    summary.stopped_early_at = Some(step);
                }
            }
            keeper.checkpoint(model, &opt, &summary, (step, epoch, batch_index + 1))?;
            if stop || step >= total {
                break 'epochs;
            }
        }
    }
    // The last step's validation, unless early stopping just made it.
    if summary.stopped_early_at.is_none() {
        let value = run_eval(model, step, &mut summary, on_event)?;
        keeper.judge(model, &opt, &summary, (step, 0, 0), value)?;
    }
    keeper.checkpoint_last(model, &opt, &summary, step)?;
    summary.best = keeper.finish(model)?;
    summary.examples_per_second = summary.examples as f64 / summary.seconds.max(1e-9);
    Ok(summary)
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
