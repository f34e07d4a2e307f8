//! The causal-LM training loop: shuffled padded batches, gradient accumulation, AdamW with a
//! schedule, periodic validation (loss and perplexity). One readback per optimizer step: the
//! losses of its micro-batches, after everything of the step is submitted.

use std::time::Instant;

use serde::Serialize;

use super::Optimizer;
use super::checkpoint::{CheckpointSettings, RunKeeper};
use super::schedule::{Schedule, ScheduleKind};
use super::stopping::{StopMetric, StopSettings};
use crate::autograd::Tape;
use crate::data::lm::{Example, LmBatch, make_batches};
use crate::data::packing;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::adamw::AdamW;
use crate::models::{CausalLm, LmInput};

#[derive(Clone, Debug, Serialize)]
pub struct LmTrainConfig {
    pub epochs: usize,
    /// Optimizer steps; overrides `epochs` when set (as in HF's Trainer).
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f32,
    pub schedule: ScheduleKind,
    pub warmup_ratio: f32,
    pub weight_decay: f32,
    pub max_grad_norm: Option<f32>,
    /// Validate before the first step, every this many optimizer steps, and at the end.
    pub eval_every: Option<usize>,
    /// Validation batches used each time (all when None).
    pub eval_batches: Option<usize>,
    /// Early stopping and the best checkpoint (metric: val_loss or perplexity).
    pub stop: StopSettings,
    /// Checkpoints and resuming; None writes none.
    pub checkpoints: Option<CheckpointSettings>,
    /// L2-SP: pull every trainable weight towards its starting value with this strength.
    pub l2sp: Option<f32>,
    /// EWC: pull weights towards their starting values in proportion to their Fisher
    /// information on the retain set, with this strength.
    pub ewc: Option<f32>,
    pub seed: u64,
    /// Sequence packing (`--pack`): rows of up to this many tokens, several examples each
    /// (`data::packing`); `batch_size` then counts rows. None: one padded example per row.
    pub pack: Option<usize>,
}

/// What the loop reports as it goes.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Step {
        step: usize,
        total: usize,
        epoch: usize,
        loss: f32,
        lr: f32,
        /// The global gradient norm before clipping.
        grad_norm: Option<f32>,
        tokens: usize,
        seconds: f64,
    },
    Eval {
        step: usize,
        val_loss: f32,
        val_ppl: f32,
        tokens: usize,
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
pub struct TrainSummary {
    pub steps: usize,
    /// Real (unpadded) tokens processed, and the wall time of the training steps.
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub first_loss: f32,
    pub last_loss: f32,
    pub evals: Vec<(usize, f32)>,
    /// The best evaluation (step, value of the stop metric); its weights are the model's at the
    /// end when restoring.
    pub best: Option<(usize, f64)>,
    /// The step at which patience ran out, if it did.
    pub stopped_early_at: Option<usize>,
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

#[allow(clippy::too_many_arguments)]
pub fn train_lm(
    gpu: &Gpu,
    model: &mut dyn CausalLm,
    train: &[Example],
    valid: Option<&[Example]>,
    retain: Option<&[Example]>,
    pad: u32,
    cfg: &LmTrainConfig,
    on_event: &mut dyn FnMut(&Event) -> Result<()>,
) -> Result<TrainSummary> {
    // Ctrl-C from here on finishes the step and checkpoints (see train::interrupt).
    let _armed = super::interrupt::arm();
    let mut divergence = super::DivergenceWatch::default();
    if train.is_empty() {
        return Err(Error::invalid("train", "no training examples"));
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return Err(Error::invalid("train", "batch size and gradient accumulation must be at least 1"));
    }
    if cfg.pack.is_some() && !model.supports_packing() {
        return Err(Error::invalid(
            "--pack",
            format!("the {} model does not implement packed attention yet; train without --pack", model.model_type()),
        ));
    }
    // Packed or padded, as the run asks; each epoch its own shuffle.
    let epoch_batches = |epoch: usize| match cfg.pack {
        Some(max_len) => {
            packing::pack_batches(train, cfg.batch_size, max_len, pad, Some(cfg.seed.wrapping_add(epoch as u64)))
        }
        None => make_batches(train, cfg.batch_size, pad, Some(cfg.seed.wrapping_add(epoch as u64))),
    };
    let micro_per_epoch = match cfg.pack {
        Some(_) => epoch_batches(0)?.len(),
        None => train.len().div_ceil(cfg.batch_size),
    };
    let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum);
    let total = cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch);
    if total == 0 {
        return Err(Error::invalid("train", "zero optimizer steps (epochs or steps is 0)"));
    }
    let schedule = Schedule::for_run(cfg.schedule, cfg.lr, cfg.warmup_ratio, total);
    let adamw = AdamW { weight_decay: cfg.weight_decay, ..AdamW::default() };
    let mut opt = Optimizer::new(adamw, cfg.max_grad_norm);
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
    let mut summary = TrainSummary {
        steps: 0,
        tokens: 0,
        seconds: 0.0,
        tokens_per_second: 0.0,
        first_loss: f32::NAN,
        last_loss: f32::NAN,
        evals: Vec::new(),
        best: None,
        stopped_early_at: None,
    };
    if matches!(cfg.stop.metric, StopMetric::Accuracy | StopMetric::MacroF1) {
        return Err(Error::invalid("--metric", "a language model is judged by val_loss or perplexity"));
    }
    // The trainable set is fixed for the run: the parameters a checkpoint holds.
    let mut trainable = std::collections::HashSet::new();
    model.visit_params(&mut |p| {
        if p.trainable() {
            trainable.insert(p.name.clone());
        }
    });
    let may_train = |n: &str| trainable.contains(n);
    if cfg.l2sp.is_some() && cfg.ewc.is_some() {
        return Err(Error::invalid("train", "choose one of --l2sp and --ewc"));
    }
    // Anchored before any step or checkpoint: θ₀ is the loaded (or freshly adapted) model.
    if let Some(lambda) = cfg.l2sp {
        opt.anchor_l2sp(gpu, model, lambda, &may_train)?;
    }
    if let Some(lambda) = cfg.ewc {
        let Some(r) = retain.filter(|r| !r.is_empty()) else {
            return Err(Error::invalid(
                "--ewc",
                "needs a retain set (--retain FILE) to estimate the Fisher information",
            ));
        };
        let fisher = super::ewc::fisher_diagonal(gpu, model, &may_train, r.len(), &mut |tape, m, i| {
            let b = &make_batches(&r[i..i + 1], 1, pad, None)?[0];
            let input = LmInput::new(gpu, b.ids.clone(), b.batch, b.seq, Some(&b.key_mask))?;
            m.loss(tape, &input, &b.targets)
        })?;
        on_event(&Event::Fisher(super::ewc::fisher_stats(gpu, &fisher, r.len(), lambda)?))?;
        opt.anchor_ewc(gpu, model, lambda, fisher)?;
    }
    // Validates, records, and returns the loss (None without validation data).
    let run_eval = |model: &dyn CausalLm,
                    step: usize,
                    summary: &mut TrainSummary,
                    on_event: &mut dyn FnMut(&Event) -> Result<()>|
     -> Result<Option<f64>> {
        if valid_batches.is_empty() {
            return Ok(None);
        }
        let (val_loss, tokens) = eval_loss(gpu, model, &valid_batches)?;
        summary.evals.push((step, val_loss));
        on_event(&Event::Eval { step, val_loss, val_ppl: val_loss.exp(), tokens })?;
        // Perplexity orders evaluations as the loss does.
        Ok(Some(val_loss as f64))
    };
    let mut keeper = RunKeeper::new(gpu, &cfg.stop, cfg.checkpoints.as_ref(), &may_train);
    // Where to start: the beginning, or the newest checkpoint.
    let mut step = 0;
    let mut resume_at = (0, 0);
    match keeper.resume(model, &mut opt)? {
        Some(state) => {
            summary = serde_json::from_value(state.summary.clone())
                .map_err(|e| Error::invalid("resume", format!("checkpoint summary: {e}")))?;
            step = state.step;
            resume_at = (state.epoch, state.batch_in_epoch);
        }
        // The starting point of the validation curve, so a run shows what training changed.
        None if cfg.eval_every.is_some() => {
            let value = run_eval(model, 0, &mut summary, on_event)?;
            keeper.judge(model, &opt, &summary, (0, 0, 0), value)?;
        }
        None => {}
    }
    let start = Instant::now();
    'epochs: for epoch in 0.. {
        let batches = epoch_batches(epoch)?;
        for (group_index, group) in batches.chunks(cfg.grad_accum).enumerate() {
            // A resumed run replays the data order up to where the checkpoint was.
            if (epoch, group_index) < resume_at {
                continue;
            }
            // A resumed run that had already finished (or stopped early) trains no further.
            if step >= total || summary.stopped_early_at.is_some() {
                break 'epochs;
            }
            let t0 = Instant::now();
            let mut losses = Vec::with_capacity(group.len());
            let mut tokens = 0;
            // Micro-batches before this group, counting from 1: the dropout stream of each.
            let mut micro = (epoch * micro_per_epoch + group_index * cfg.grad_accum) as u32;
            for b in group {
                micro += 1;
                let input = packing::lm_input(gpu, b)?;
                let tape = Tape::train(gpu, cfg.seed as u32, micro);
                let loss = model.loss(&tape, &input, &b.targets)?;
                tape.backward(&loss, 1.0 / group.len() as f32)?;
                losses.push(loss);
                tokens += b.tokens;
            }
            let lr = schedule.lr(step);
            opt.step(gpu, model, lr)?;
            // The step's readbacks, after everything is submitted: its losses and gradient norm.
            let mut loss = 0.0;
            for l in &losses {
                loss += l.read(gpu)?.0 / losses.len() as f32;
            }
            let grad_norm = opt.last_grad_norm(gpu)?;
            let checkpoints = cfg.checkpoints.as_ref().map(|c| c.dir.as_path());
            super::check_loss(loss, step + 1, lr, checkpoints)?;
            super::check_grads(gpu, &opt, grad_norm, step + 1, lr, checkpoints)?;
            if let Some(message) = divergence.observe(loss, step + 1, lr) {
                on_event(&Event::Warning { step: step + 1, message })?;
            }
            step += 1;
            summary.seconds += t0.elapsed().as_secs_f64();
            summary.tokens += tokens;
            summary.steps = step;
            if summary.first_loss.is_nan() {
                summary.first_loss = loss;
            }
            summary.last_loss = loss;
            let seconds = start.elapsed().as_secs_f64();
            on_event(&Event::Step { step, total, epoch, loss, lr, grad_norm, tokens, seconds })?;
            let mut stop = false;
            if cfg.eval_every.is_some_and(|n| n > 0 && step % n == 0) && step < total {
                let value = run_eval(model, step, &mut summary, on_event)?;
                stop = keeper.judge(model, &opt, &summary, (step, epoch, group_index + 1), value)?;
                if stop {
                    summary.stopped_early_at = Some(step);
                }
            }
            keeper.checkpoint(model, &opt, &summary, (step, epoch, group_index + 1))?;
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
    summary.tokens_per_second = summary.tokens as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}
