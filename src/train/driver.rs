//! The one training loop. It owns what every task shares: the optimizer and its schedule, the
//! L2-SP/EWC anchors, resuming from a checkpoint, the evaluate/checkpoint/stop cadence, the
//! divergence checks and the running summary. A task ([`Task`]) supplies only its data order,
//! its step (forward and backward) and its evaluation; the language model ([`super::lm`]) and
//! the classifier ([`super::classify`]) are the two today.
//!
//! One step: the task records forward and backward of its batch (or micro-batches), the
//! optimizer updates every trainable tensor, and only then are the losses and the gradient norm
//! read back, once, after everything of the step is submitted.
//!
//! A new task (image classification, say) is a struct holding its model and data that
//! implements [`Task`]: its epoch order ([`Task::start_epoch`]), its step
//! ([`Task::forward_backward`]) and its validation ([`Task::evaluate`], returning one of the
//! [`Scores`]); [`train`] then gives it resuming, checkpoints, early stopping, the divergence
//! checks and metrics.jsonl's events. Its run (loading, the run folder, the report) goes beside
//! the others in [`super::job`].

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Optimizer;
use super::checkpoint::{CheckpointSettings, RunKeeper};
use super::ewc::FisherStats;
use super::schedule::{Schedule, ScheduleKind};
use super::stopping::{StopMetric, StopSettings};
use crate::autograd::Loss;
use crate::autograd::Module;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::adamw::AdamW;
use crate::tensor::Tensor;

/// The loop's settings, the same for every task.
#[derive(Clone, Debug, Serialize)]
pub struct LoopSettings {
    pub epochs: usize,
    /// Optimizer steps; overrides `epochs` when set (as in HF's Trainer).
    pub max_steps: Option<usize>,
    pub lr: f32,
    pub schedule: ScheduleKind,
    pub warmup_ratio: f32,
    pub weight_decay: f32,
    pub max_grad_norm: Option<f32>,
    /// Validate before the first step, every this many optimizer steps, and at the end.
    pub eval_every: Option<usize>,
    /// Early stopping and the best checkpoint.
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

/// What a step went through: tokens for a language model, texts for a classifier.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Seen {
    Tokens(usize),
    Examples(usize),
}

impl Seen {
    pub fn count(self) -> usize {
        match self {
            Seen::Tokens(n) | Seen::Examples(n) => n,
        }
    }
}

/// A task's validation scores besides the loss.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(untagged)]
pub enum Scores {
    /// A language model: perplexity (exp of the loss) over `tokens` targets.
    Perplexity { val_ppl: f32, tokens: usize },
    /// A classifier: accuracy and macro-F1.
    Classes { accuracy: f64, macro_f1: f64 },
}

/// One validation pass.
#[derive(Clone, Copy, Debug)]
pub struct Evaluation {
    pub val_loss: f32,
    pub scores: Scores,
}

impl Evaluation {
    /// The value early stopping judges.
    pub fn value(&self, metric: StopMetric) -> f64 {
        match (metric, self.scores) {
            (StopMetric::Accuracy, Scores::Classes { accuracy, .. }) => accuracy,
            (StopMetric::MacroF1, Scores::Classes { macro_f1, .. }) => macro_f1,
            // Perplexity orders evaluations as the loss does.
            _ => self.val_loss as f64,
        }
    }

    /// The score a summary row keeps beside the loss (a classifier's macro-F1).
    fn row_score(&self) -> Option<f64> {
        match self.scores {
            Scores::Classes { macro_f1, .. } => Some(macro_f1),
            Scores::Perplexity { .. } => None,
        }
    }
}

/// What the loop reports as it goes: one line of metrics.jsonl each.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The frozen body's features were computed (the classifier's `head` strategy).
    Features { examples: usize, seconds: f64 },
    /// The trainable set changed (the start, and each step of progressive unfreezing).
    Trainable { step: usize, depth: usize, params: usize },
    Step {
        step: usize,
        total: usize,
        epoch: usize,
        loss: f32,
        lr: f32,
        /// The global gradient norm before clipping.
        grad_norm: Option<f32>,
        #[serde(flatten)]
        seen: Seen,
        /// Wall time since training began.
        seconds: f64,
    },
    Eval {
        step: usize,
        val_loss: f32,
        #[serde(flatten)]
        scores: Scores,
    },
    /// EWC's Fisher diagonal was estimated on the retain set (before the first step).
    Fisher(FisherStats),
    /// Something worth a look that does not stop the run (a rising loss).
    Warning { step: usize, message: String },
}

/// Where the loop's events go (metrics.jsonl, a progress bar).
pub type OnEvent<'a> = dyn FnMut(&Event) -> Result<()> + 'a;

/// The running summary of a run; a checkpoint keeps it, so a resumed run continues it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub steps: usize,
    /// What the steps went through ([`Seen`]: tokens or examples; one seen twice counts twice).
    pub seen: usize,
    /// Wall time of the training steps and of the task's preparation (a classifier's feature
    /// pass), not of validation.
    pub seconds: f64,
    pub first_loss: f32,
    pub last_loss: f32,
    /// (step, validation loss, the task's score: a classifier's macro-F1).
    pub evals: Vec<(usize, f32, Option<f64>)>,
    /// The best evaluation (step, value of the stop metric); its weights are the model's at the
    /// end when restoring.
    pub best: Option<(usize, f64)>,
    /// The step at which patience ran out, if it did.
    pub stopped_early_at: Option<usize>,
}

impl Summary {
    fn new() -> Summary {
        Summary {
            steps: 0,
            seen: 0,
            seconds: 0.0,
            first_loss: f32::NAN,
            last_loss: f32::NAN,
            evals: Vec::new(),
            best: None,
            stopped_early_at: None,
        }
    }

    /// Tokens or examples per second of training.
    pub fn per_second(&self) -> f64 {
        self.seen as f64 / self.seconds.max(1e-9)
    }
}

/// A classifier (of texts or images) is judged by val_loss, accuracy or macro-F1, never by
/// perplexity: the one `check_metric` both tasks give.
pub fn check_classification_metric(metric: StopMetric) -> Result<()> {
    if metric == StopMetric::Perplexity {
        return Err(Error::invalid(
            "--metric",
            "perplexity is for language models; use val_loss, accuracy or macro_f1",
        ));
    }
    Ok(())
}

/// What a task supplies to the loop.
pub trait Task {
    /// The model being trained: the optimizer, the checkpoints and the best-weights snapshot
    /// work on it.
    fn model(&self) -> &dyn Module;
    fn model_mut(&mut self) -> &mut dyn Module;
    /// An error when `metric` cannot judge this task's evaluations.
    fn check_metric(&self, metric: StopMetric) -> Result<()>;
    /// Optimizer steps in one pass over the training data.
    fn steps_per_epoch(&self) -> usize;
    /// Every parameter the run may change (fixed for the run; what checkpoints keep).
    fn may_train(&self) -> Box<dyn Fn(&str) -> bool>;
    /// EWC's Fisher diagonal on the task's retain set and the set's size (None: no retain set).
    fn fisher(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<Option<(HashMap<String, Tensor>, usize)>>;
    /// Work before the first step whose time counts as training (the head strategy's feature
    /// pass); returns its seconds.
    fn prepare(&mut self, _on_event: &mut OnEvent) -> Result<f64> {
        Ok(0.0)
    }
    /// Sets the trainable set of a position, before its step and before a checkpoint of it is
    /// loaded (progressive unfreezing).
    fn enter(&mut self, _step: usize, _epoch: usize, _on_event: &mut OnEvent) -> Result<()> {
        Ok(())
    }
    /// Starts epoch `epoch` (its data order); returns its number of optimizer steps. Called for
    /// every epoch in turn, also those a resumed run skips, so the order is replayed.
    fn start_epoch(&mut self, epoch: usize) -> Result<usize>;
    /// Records forward and backward of the `index`-th step of the epoch (`step` steps done
    /// before it); returns the losses to average (read after the optimizer step) and what the
    /// step went through.
    fn forward_backward(&mut self, epoch: usize, index: usize, step: usize) -> Result<(Vec<Loss>, Seen)>;
    /// Learning-rate multiplier of a parameter (discriminative learning rates).
    fn lr_scale(&self, _name: &str) -> f32 {
        1.0
    }
    /// Scores the validation set (None without one).
    fn evaluate(&mut self) -> Result<Option<Evaluation>>;
}

/// Runs `task` to the end (or to early stopping), from the newest checkpoint when resuming.
pub fn train(gpu: &Gpu, task: &mut dyn Task, cfg: &LoopSettings, on_event: &mut OnEvent) -> Result<Summary> {
    // Ctrl-C from here on finishes the step and checkpoints (see train::interrupt).
    let _armed = super::interrupt::arm();
    let mut divergence = super::DivergenceWatch::default();
    let total = cfg.max_steps.unwrap_or(cfg.epochs * task.steps_per_epoch());
    if total == 0 {
        return Err(Error::invalid("train", "zero optimizer steps (epochs or steps is 0)"));
    }
    let schedule = Schedule::for_run(cfg.schedule, cfg.lr, cfg.warmup_ratio, total);
    let mut opt = Optimizer::new(AdamW { weight_decay: cfg.weight_decay, ..AdamW::default() }, cfg.max_grad_norm);
    task.check_metric(cfg.stop.metric)?;
    let may_train = task.may_train();
    if cfg.l2sp.is_some() && cfg.ewc.is_some() {
        return Err(Error::invalid("train", "choose one of --l2sp and --ewc"));
    }
    // Anchored before any step or checkpoint: θ₀ is the loaded (or freshly adapted) model.
    if let Some(lambda) = cfg.l2sp {
        opt.anchor_l2sp(gpu, task.model(), lambda, &*may_train)?;
    }
    if let Some(lambda) = cfg.ewc {
        let Some((fisher, examples)) = task.fisher(&*may_train)? else {
            return Err(Error::invalid(
                "--ewc",
                "needs a retain set (--retain FILE) to estimate the Fisher information",
            ));
        };
        on_event(&Event::Fisher(super::ewc::fisher_stats(gpu, &fisher, examples, lambda)?))?;
        opt.anchor_ewc(gpu, task.model(), lambda, fisher)?;
    }
    let start = Instant::now();
    let mut summary = Summary::new();
    summary.seconds += task.prepare(on_event)?;

    // Validates, records, and returns the stop metric's value (None without validation data).
    let run_eval =
        |task: &mut dyn Task, step: usize, summary: &mut Summary, on_event: &mut OnEvent| -> Result<Option<f64>> {
            let Some(e) = task.evaluate()? else { return Ok(None) };
            summary.evals.push((step, e.val_loss, e.row_score()));
            on_event(&Event::Eval { step, val_loss: e.val_loss, scores: e.scores })?;
            Ok(Some(e.value(cfg.stop.metric)))
        };
    let mut keeper = RunKeeper::new(gpu, &cfg.stop, cfg.checkpoints.as_ref(), &*may_train);
    // Where to start: the beginning, or the newest checkpoint.
    let mut step = 0;
    let mut resume_at = (0, 0);
    match keeper.peek()? {
        Some(peek) => {
            // The trainable set of the checkpoint's step, so its weights have somewhere to go.
            task.enter(peek.step, peek.epoch, on_event)?;
            let state = keeper.resume(task.model_mut(), &mut opt)?.expect("resuming");
            summary = serde_json::from_value(state.summary.clone())
                .map_err(|e| Error::invalid("resume", format!("checkpoint summary: {e}")))?;
            step = state.step;
            resume_at = (state.epoch, state.batch_in_epoch);
        }
        None => {
            task.enter(0, 0, on_event)?;
            // The starting point of the validation curve, so a run shows what training changed.
            if cfg.eval_every.is_some() {
                let value = run_eval(task, 0, &mut summary, on_event)?;
                keeper.judge(task.model(), &opt, &summary, (0, 0, 0), value)?;
            }
        }
    }

    'epochs: for epoch in 0.. {
        let steps_in_epoch = task.start_epoch(epoch)?;
        for index in 0..steps_in_epoch {
            // A resumed run replays the data order up to where the checkpoint was.
            if (epoch, index) < resume_at {
                continue;
            }
            // A resumed run that had already finished (or stopped early) trains no further.
            if step >= total || summary.stopped_early_at.is_some() {
                break 'epochs;
            }
            task.enter(step, epoch, on_event)?;
            let t0 = Instant::now();
            let (losses, seen) = task.forward_backward(epoch, index, step)?;
            let lr = schedule.lr(step);
            opt.step_scaled(gpu, task.model(), lr, &|name| task.lr_scale(name))?;
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
            summary.seen += seen.count();
            summary.steps = step;
            if summary.first_loss.is_nan() {
                summary.first_loss = loss;
            }
            summary.last_loss = loss;
            let seconds = start.elapsed().as_secs_f64();
            on_event(&Event::Step { step, total, epoch, loss, lr, grad_norm, seen, seconds })?;
            let mut stop = false;
            if cfg.eval_every.is_some_and(|n| n > 0 && step % n == 0) && step < total {
                let value = run_eval(task, step, &mut summary, on_event)?;
                stop = keeper.judge(task.model(), &opt, &summary, (step, epoch, index + 1), value)?;
                if stop {
                    summary.stopped_early_at = Some(step);
                }
            }
            keeper.checkpoint(task.model(), &opt, &summary, (step, epoch, index + 1))?;
            if stop || step >= total {
                break 'epochs;
            }
        }
    }
    // The last step's validation, unless early stopping just made it.
    if summary.stopped_early_at.is_none() {
        let value = run_eval(task, step, &mut summary, on_event)?;
        keeper.judge(task.model(), &opt, &summary, (step, 0, 0), value)?;
    }
    keeper.checkpoint_last(task.model(), &opt, &summary, step)?;
    summary.best = keeper.finish(task.model_mut())?;
    Ok(summary)
}
