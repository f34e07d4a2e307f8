//! Image-classifier training: the strategies of [`super::classify`] (`head`, `top:N`, `full`),
//! progressive unfreezing and per-stage learning rates, over the stages of
//! [`ImageClassifier`] (0 the head, 1 the last stage, ...), with the same events, summary,
//! early stopping and checkpoints as text classification.
//!
//! `head` is feature extraction: the frozen body runs once per image (the evaluation
//! transform, no augmentation) and the head trains on the cached pooled vectors. The other
//! strategies see a seeded random-resized crop and flip of each image each epoch
//! (`TrainTransform::rng(seed, epoch, example)`, so a resumed run sees the same crops).
//!
//! The loop has the shape of `classify::train_classifier`; when the one training driver lands
//! both become steps of it.

use std::time::Instant;

use super::Optimizer;
use super::checkpoint::RunKeeper;
use super::classify::{ClassifyConfig, ClassifySummary, Event, Predictions, Strategy, Unfreeze, UnfreezeUnit};
use super::schedule::Schedule;
use super::stopping::StopMetric;
use crate::autograd::{self, Loss, Tape, Var};
use crate::data::image_list::ImageBank;
use crate::data::images::{EvalTransform, TrainTransform};
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::gpu::Gpu;
use crate::kernels::adamw::AdamW;
use crate::models::image_classifier::ImageClassifier;
use crate::tensor::Tensor;
use crate::util::SplitMix64;

/// Images (decoded, at their evaluation size) with their label ids.
#[derive(Clone, Copy)]
pub struct ImageSet<'a> {
    pub bank: &'a ImageBank,
    pub labels: &'a [usize],
}

/// How images become tensors: the evaluation transform (resize is the bank's short side) and
/// the training one (used unless `augment` is off).
#[derive(Clone, Copy, Debug)]
pub struct Transforms {
    pub eval: EvalTransform,
    pub train: TrainTransform,
    pub augment: bool,
}

/// Whether a parameter at stage `depth` trains under `strategy`.
pub fn trains(strategy: Strategy, depth: usize) -> bool {
    match strategy {
        Strategy::Head => depth == 0,
        Strategy::Top(n) => depth <= n,
        Strategy::Full => true,
        Strategy::Lora => false,
    }
}

/// A batch `[N, 3, S, S]` of images `idx` through the evaluation transform.
fn eval_batch(gpu: &Gpu, bank: &ImageBank, tf: &EvalTransform, idx: &[usize]) -> Result<Var> {
    let s = tf.crop as usize;
    let data: Vec<f32> = idx.iter().flat_map(|&i| tf.apply(&bank.images[i])).collect();
    Ok(Var::constant(Tensor::from_f32(gpu, &data, &[idx.len(), 3, s, s])?))
}

/// Logits of every image of `bank` (no gradients, no dropout, BN on running statistics).
pub fn predict(
    gpu: &Gpu,
    model: &ImageClassifier,
    bank: &ImageBank,
    tf: &EvalTransform,
    labels: Option<&[usize]>,
    batch: usize,
) -> Result<Predictions> {
    let k = model.num_classes();
    let mut logits = Vec::with_capacity(bank.images.len() * k);
    let all: Vec<usize> = (0..bank.images.len()).collect();
    for idx in all.chunks(batch.max(1)) {
        let x = eval_batch(gpu, bank, tf, idx)?;
        logits.extend(model.logits(&Tape::no_grad(gpu), &x)?.value.to_f32_vec(gpu)?);
    }
    Ok(Predictions::from_logits(logits, k, labels))
}

/// Pooled features `[N, C]` of the frozen body (the `head` strategy's cache).
pub fn features(
    gpu: &Gpu,
    model: &ImageClassifier,
    bank: &ImageBank,
    tf: &EvalTransform,
    batch: usize,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(bank.images.len() * model.feature_width());
    let all: Vec<usize> = (0..bank.images.len()).collect();
    for idx in all.chunks(batch.max(1)) {
        let x = eval_batch(gpu, bank, tf, idx)?;
        out.extend(model.features(&Tape::no_grad(gpu), &x)?.value.to_f32_vec(gpu)?);
    }
    Ok(out)
}

fn head_logits(gpu: &Gpu, model: &ImageClassifier, feats: &[f32], n: usize) -> Result<Vec<f32>> {
    let x = Var::constant(Tensor::from_f32(gpu, feats, &[n, feats.len() / n.max(1)])?);
    model.head(&Tape::no_grad(gpu), &x)?.value.to_f32_vec(gpu)
}

fn loss(tape: &Tape, logits: &Var, targets: &[usize], weights: Option<&[f32]>) -> Result<Loss> {
    let t: Vec<i32> = targets.iter().map(|&x| x as i32).collect();
    match weights {
        None => autograd::cross_entropy(tape, logits, &t),
        Some(w) => autograd::cross_entropy_weighted(tape, logits, &t, w),
    }
}

/// Trains `model` on `train`, validating on `valid`.
pub fn train_image_classifier(
    gpu: &Gpu,
    model: &mut ImageClassifier,
    train: ImageSet,
    valid: Option<ImageSet>,
    tf: &Transforms,
    cfg: &ClassifyConfig,
    on_event: &mut dyn FnMut(&Event) -> Result<()>,
) -> Result<ClassifySummary> {
    let _armed = super::interrupt::arm();
    let mut divergence = super::DivergenceWatch::default();
    let n = train.bank.images.len();
    if n == 0 || train.labels.len() != n {
        return Err(Error::invalid("train", format!("{n} training images with {} labels", train.labels.len())));
    }
    if cfg.batch_size == 0 {
        return Err(Error::invalid("train", "batch size must be at least 1"));
    }
    let k = model.num_classes();
    if let Some(&bad) = train.labels.iter().find(|&&y| y >= k) {
        return Err(Error::invalid("train", format!("label id {bad} for a head of {k} classes")));
    }
    if cfg.strategy == Strategy::Lora {
        return Err(Error::invalid("--strategy", "lora is for transformers; image models take head, top:N or full"));
    }
    if cfg.ewc.is_some() {
        return Err(Error::invalid("--ewc", "not for image models yet; --l2sp works"));
    }
    let head_only = cfg.strategy == Strategy::Head;
    if head_only && cfg.unfreeze.is_some() {
        return Err(Error::invalid("unfreeze", "progressive unfreezing needs top:N or full, not head"));
    }
    if cfg.unfreeze.is_some_and(|u| u.every == 0) {
        return Err(Error::invalid("unfreeze", "--unfreeze-every must be at least 1"));
    }
    if cfg.stop.metric == StopMetric::Perplexity {
        return Err(Error::invalid(
            "--metric",
            "perplexity is for language models; use val_loss, accuracy or macro_f1",
        ));
    }
    let batches_per_epoch = n.div_ceil(cfg.batch_size);
    let total = cfg.max_steps.unwrap_or(cfg.epochs * batches_per_epoch);
    if total == 0 {
        return Err(Error::invalid("train", "zero optimizer steps (epochs or steps is 0)"));
    }
    let schedule = Schedule::for_run(cfg.schedule, cfg.lr, cfg.warmup_ratio, total);
    let mut opt = Optimizer::new(AdamW { weight_decay: cfg.weight_decay, ..AdamW::default() }, cfg.max_grad_norm);
    // Stage depths by name, taken once (the closures below cannot borrow the model).
    let mut depths = std::collections::HashMap::new();
    {
        let m: &ImageClassifier = model;
        crate::autograd::Module::visit_params(m, &mut |p| {
            depths.insert(p.name.clone(), m.depth(&p.name));
        });
    }
    let depth_of = |name: &str| depths.get(name).copied().unwrap_or(usize::MAX);
    let lr_scale = |name: &str| cfg.layer_lr_decay.powi(depth_of(name) as i32);
    let may_train = |name: &str| trains(cfg.strategy, depth_of(name));
    if let Some(lambda) = cfg.l2sp {
        opt.anchor_l2sp(gpu, model, lambda, &may_train)?;
    }
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
    let (train_feats, valid_feats) = if head_only {
        let t0 = Instant::now();
        let tf_ = features(gpu, model, train.bank, &tf.eval, cfg.batch_size)?;
        let vf = match valid {
            Some(v) => Some(features(gpu, model, v.bank, &tf.eval, cfg.batch_size)?),
            None => None,
        };
        let examples = n + valid.map_or(0, |v| v.bank.images.len());
        summary.seconds += t0.elapsed().as_secs_f64();
        on_event(&Event::Features { examples, seconds: t0.elapsed().as_secs_f64() })?;
        (Some(tf_), vf)
    } else {
        (None, None)
    };
    let c = model.feature_width();

    let run_eval = |model: &ImageClassifier,
                    step: usize,
                    summary: &mut ClassifySummary,
                    on_event: &mut dyn FnMut(&Event) -> Result<()>|
     -> Result<Option<f64>> {
        let Some(v) = valid.filter(|v| !v.bank.images.is_empty()) else { return Ok(None) };
        let p = match &valid_feats {
            Some(f) => Predictions::from_logits(head_logits(gpu, model, f, v.labels.len())?, k, Some(v.labels)),
            None => predict(gpu, model, v.bank, &tf.eval, Some(v.labels), cfg.batch_size)?,
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

    let max_depth = model.max_depth();
    let stage_of = |step: usize, epoch: usize| match cfg.unfreeze {
        None => max_depth,
        Some(Unfreeze { every, unit: UnfreezeUnit::Step }) => step / every,
        Some(Unfreeze { every, unit: UnfreezeUnit::Epoch }) => epoch / every,
    };
    let mut stage = usize::MAX;
    let mut set_stage = |model: &mut ImageClassifier,
                         s: usize,
                         step: usize,
                         on_event: &mut dyn FnMut(&Event) -> Result<()>|
     -> Result<()> {
        let s = s.min(max_depth);
        if s == stage {
            return Ok(());
        }
        stage = s;
        model.set_trainable(gpu, &|name| trains(cfg.strategy, depth_of(name)) && depth_of(name) <= s)?;
        let (params, _) = crate::models::count_params(model);
        on_event(&Event::Trainable { step, depth: s, params })
    };
    let start = Instant::now();
    let mut step = 0;
    let mut resume_at = (0, 0);
    match keeper.peek()? {
        Some(peek) => {
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

    let size = tf.train.size as usize;
    let mut order: Vec<usize> = (0..n).collect();
    'epochs: for epoch in 0.. {
        SplitMix64::new(cfg.seed.wrapping_add(epoch as u64)).shuffle(&mut order);
        for (batch_index, idx) in order.chunks(cfg.batch_size).enumerate() {
            if (epoch, batch_index) < resume_at {
                continue;
            }
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
                    let mut data = Vec::with_capacity(idx.len() * 3 * size * size);
                    for &i in idx {
                        let img = &train.bank.images[i];
                        if tf.augment {
                            let mut rng = TrainTransform::rng(cfg.seed, epoch as u64, i as u64);
                            data.extend(tf.train.apply(img, &mut rng));
                        } else {
                            data.extend(tf.eval.apply(img));
                        }
                    }
                    let x = Var::constant(Tensor::from_f32(gpu, &data, &[idx.len(), 3, size, size])?);
                    model.logits(&tape, &x)?
                }
            };
            let targets: Vec<usize> = idx.iter().map(|&i| train.labels[i]).collect();
            let loss = loss(&tape, &logits, &targets, cfg.class_weights.as_deref())?;
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
    if summary.stopped_early_at.is_none() {
        let value = run_eval(model, step, &mut summary, on_event)?;
        keeper.judge(model, &opt, &summary, (step, 0, 0), value)?;
    }
    keeper.checkpoint_last(model, &opt, &summary, step)?;
    summary.best = keeper.finish(model)?;
    summary.examples_per_second = summary.examples as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// The scores of each group's examples (examples without a group are skipped).
pub fn group_metrics(
    gold: &[usize],
    pred: &[usize],
    groups: &[Option<String>],
    k: usize,
) -> Result<std::collections::BTreeMap<String, Metrics>> {
    let mut by: std::collections::BTreeMap<String, (Vec<usize>, Vec<usize>)> = Default::default();
    for ((g, p), group) in gold.iter().zip(pred).zip(groups) {
        if let Some(group) = group {
            let e = by.entry(group.clone()).or_default();
            e.0.push(*g);
            e.1.push(*p);
        }
    }
    by.into_iter().map(|(name, (g, p))| Ok((name, Metrics::compute(&g, &p, k)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_pick_stages() {
        assert!(trains(Strategy::Head, 0) && !trains(Strategy::Head, 1));
        assert!(trains(Strategy::Top(2), 2) && !trains(Strategy::Top(2), 3));
        assert!(trains(Strategy::Full, 8) && !trains(Strategy::Lora, 0));
    }

    #[test]
    fn groups_score_apart() {
        let groups = [Some("a".to_string()), Some("a".into()), Some("b".into()), None];
        let m = group_metrics(&[0, 1, 1, 0], &[0, 0, 1, 1], &groups, 2).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m["a"].accuracy, m["a"].count, m["b"].accuracy), (0.5, 2, 1.0));
        assert_eq!(m["a"].per_class[1].recall, 0.0);
    }
}
