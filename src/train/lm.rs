//! The causal-LM task of the training driver: shuffled padded batches, gradient accumulation
//! (the micro-batches of one optimizer step), validation loss and perplexity.

use std::collections::HashMap;

use serde::Serialize;

use super::driver::{self, Evaluation, LoopSettings, OnEvent, Scores, Seen, Summary, Task};
use super::stopping::StopMetric;
use crate::autograd::Module;
use crate::autograd::{Loss, Tape};
use crate::data::lm::{Example, LmBatch, make_batches};
use crate::data::packing;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::{CausalLm, LmInput};
use crate::tensor::Tensor;

/// The language model's settings: the loop's, and how its batches are made.
#[derive(Clone, Debug, Serialize)]
pub struct LmTrainConfig {
    #[serde(flatten)]
    pub run: LoopSettings,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Validation batches used each time (all when None).
    pub eval_batches: Option<usize>,
    /// Sequence packing (`--pack`): rows of up to this many tokens, several examples each
    /// (`data::packing`); `batch_size` then counts rows. None: one padded example per row.
    pub pack: Option<usize>,
}

/// Mean loss over the targets of `batches` (no gradients), and the number of targets.
pub fn eval_loss(gpu: &Gpu, model: &dyn CausalLm, batches: &[LmBatch]) -> Result<(f32, usize)> {
    let (mut total, mut count) = (0.0f64, 0usize);
    let mut losses = Vec::with_capacity(batches.len());
    for b in batches {
        let input = LmInput::new(gpu, b.ids.clone(), b.batch, b.seq, Some(&b.key_mask))?;
        let tape = Tape::no_grad(gpu);
        losses.push(model.loss(&tape, &input, &b.targets)?);
    }
    for l in &losses {
        let (mean, n) = l.read(gpu)?;
        total += mean as f64 * n as f64;
        count += n;
    }
    Ok((if count > 0 { (total / count as f64) as f32 } else { 0.0 }, count))
}

/// Causal-LM training as a [`Task`] of the driver: shuffled padded batches per epoch, grouped
/// into optimizer steps of `grad_accum` micro-batches.
pub struct LmTask<'a> {
    gpu: &'a Gpu,
    model: &'a mut dyn CausalLm,
    train: &'a [Example],
    retain: Option<&'a [Example]>,
    valid_batches: Vec<LmBatch>,
    pad: u32,
    cfg: &'a LmTrainConfig,
    micro_per_epoch: usize,
    /// The epoch in progress's batches.
    batches: Vec<LmBatch>,
}

impl<'a> LmTask<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &'a Gpu,
        model: &'a mut dyn CausalLm,
        train: &'a [Example],
        valid: Option<&[Example]>,
        retain: Option<&'a [Example]>,
        pad: u32,
        cfg: &'a LmTrainConfig,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::invalid("train", "no training examples"));
        }
        if cfg.batch_size == 0 || cfg.grad_accum == 0 {
            return Err(Error::invalid("train", "batch size and gradient accumulation must be at least 1"));
        }
        let valid_batches = match valid {
            Some(v) if !v.is_empty() => {
                let mut b = make_batches(v, cfg.batch_size, pad, None)?;
                if let Some(n) = cfg.eval_batches {
                    b.truncate(n.max(1));
                }
                b
            }
            _ => Vec::new(),
        };
        if cfg.pack.is_some() && !model.supports_packing() {
            return Err(Error::invalid(
                "--pack",
                format!(
                    "the {} model does not implement packed attention yet; train without --pack",
                    model.model_type()
                ),
            ));
        }
        let micro_per_epoch = match cfg.pack {
            Some(max_len) => packing::pack_batches(train, cfg.batch_size, max_len, pad, Some(cfg.run.seed))?.len(),
            None => train.len().div_ceil(cfg.batch_size),
        };
        Ok(LmTask { gpu, model, train, retain, valid_batches, pad, cfg, micro_per_epoch, batches: Vec::new() })
    }
}

impl Task for LmTask<'_> {
    fn model(&self) -> &dyn Module {
        &*self.model
    }

    fn model_mut(&mut self) -> &mut dyn Module {
        &mut *self.model
    }

    fn check_metric(&self, metric: StopMetric) -> Result<()> {
        if matches!(metric, StopMetric::Accuracy | StopMetric::MacroF1) {
            return Err(Error::invalid("--metric", "a language model is judged by val_loss or perplexity"));
        }
        Ok(())
    }

    fn steps_per_epoch(&self) -> usize {
        self.micro_per_epoch.div_ceil(self.cfg.grad_accum)
    }

    /// The parameters trainable at the start: the set is fixed for the run.
    fn may_train(&self) -> Box<dyn Fn(&str) -> bool> {
        let mut trainable = std::collections::HashSet::new();
        self.model.visit_params(&mut |p| {
            if p.trainable() {
                trainable.insert(p.name.clone());
            }
        });
        Box::new(move |n| trainable.contains(n))
    }

    fn fisher(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<Option<(HashMap<String, Tensor>, usize)>> {
        let Some(r) = self.retain.filter(|r| !r.is_empty()) else { return Ok(None) };
        let (gpu, pad) = (self.gpu, self.pad);
        let fisher = super::ewc::fisher_diagonal(gpu, &mut *self.model, keep, r.len(), &mut |tape, m, i| {
            let b = &make_batches(&r[i..i + 1], 1, pad, None)?[0];
            let input = LmInput::new(gpu, b.ids.clone(), b.batch, b.seq, Some(&b.key_mask))?;
            m.loss(tape, &input, &b.targets)
        })?;
        Ok(Some((fisher, r.len())))
    }

    fn start_epoch(&mut self, epoch: usize) -> Result<usize> {
        let seed = self.cfg.run.seed.wrapping_add(epoch as u64);
        // Packed or padded, as the run asks; each epoch its own shuffle.
        self.batches = match self.cfg.pack {
            Some(max_len) => packing::pack_batches(self.train, self.cfg.batch_size, max_len, self.pad, Some(seed))?,
            None => make_batches(self.train, self.cfg.batch_size, self.pad, Some(seed))?,
        };
        Ok(self.batches.len().div_ceil(self.cfg.grad_accum))
    }

    fn forward_backward(&mut self, epoch: usize, index: usize, _step: usize) -> Result<(Vec<Loss>, Seen)> {
        let accum = self.cfg.grad_accum;
        let group = &self.batches[index * accum..((index + 1) * accum).min(self.batches.len())];
        let mut losses = Vec::with_capacity(group.len());
        let mut tokens = 0;
        // Micro-batches before this group, counting from 1: the dropout stream of each.
        let mut micro = (epoch * self.micro_per_epoch + index * accum) as u32;
        for b in group {
            micro += 1;
            let input = packing::lm_input(self.gpu, b)?;
            let tape = Tape::train(self.gpu, self.cfg.run.seed as u32, micro);
            let loss = self.model.loss(&tape, &input, &b.targets)?;
            tape.backward(&loss, 1.0 / group.len() as f32)?;
            losses.push(loss);
            tokens += b.tokens;
        }
        Ok((losses, Seen::Tokens(tokens)))
    }

    fn evaluate(&mut self) -> Result<Option<Evaluation>> {
        if self.valid_batches.is_empty() {
            return Ok(None);
        }
        let (val_loss, tokens) = eval_loss(self.gpu, &*self.model, &self.valid_batches)?;
        Ok(Some(Evaluation { val_loss, scores: Scores::Perplexity { val_ppl: val_loss.exp(), tokens } }))
    }
}

/// Trains `model` on `train`, validating on `valid` (loss and perplexity); `retain` feeds EWC.
#[allow(clippy::too_many_arguments)]
pub fn train_lm(
    gpu: &Gpu,
    model: &mut dyn CausalLm,
    train: &[Example],
    valid: Option<&[Example]>,
    retain: Option<&[Example]>,
    pad: u32,
    cfg: &LmTrainConfig,
    on_event: &mut OnEvent,
) -> Result<Summary> {
    let mut task = LmTask::new(gpu, model, train, valid, retain, pad, cfg)?;
    driver::train(gpu, &mut task, &cfg.run, on_event)
}
