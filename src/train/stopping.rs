//! Early stopping and the best checkpoint: each validation is compared with the best so far on a
//! chosen metric; after `patience` evaluations without an improvement of more than `min_delta`
//! the run stops, and the trainable weights of the best evaluation are put back at the end.

use serde::Serialize;

use crate::autograd::Module;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::tensor::Tensor;

/// What "better" means for early stopping and the best checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    #[value(alias = "val_loss")]
    ValLoss,
    Perplexity,
    Accuracy,
    #[value(alias = "macro_f1")]
    MacroF1,
}

impl StopMetric {
    pub fn higher_is_better(self) -> bool {
        matches!(self, StopMetric::Accuracy | StopMetric::MacroF1)
    }

    pub fn name(self) -> &'static str {
        match self {
            StopMetric::ValLoss => "val_loss",
            StopMetric::Perplexity => "perplexity",
            StopMetric::Accuracy => "accuracy",
            StopMetric::MacroF1 => "macro_f1",
        }
    }
}

/// The outcome of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Better than every earlier evaluation by more than `min_delta` (the first always is).
    pub improved: bool,
    /// Patience ran out: stop training.
    pub stop: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct EarlyStopping {
    pub metric: StopMetric,
    /// Evaluations without improvement before stopping; None never stops.
    pub patience: Option<usize>,
    pub min_delta: f64,
    /// (step, value) of the best evaluation.
    pub best: Option<(usize, f64)>,
    /// Evaluations since the last improvement.
    pub since_best: usize,
}

impl EarlyStopping {
    pub fn new(metric: StopMetric, patience: Option<usize>, min_delta: f64) -> Self {
        EarlyStopping { metric, patience, min_delta, best: None, since_best: 0 }
    }

    /// Records the metric's value at `step`. NaN never improves.
    pub fn observe(&mut self, step: usize, value: f64) -> Verdict {
        let improved = match self.best {
            None => !value.is_nan(),
            Some((_, best)) if self.metric.higher_is_better() => value > best + self.min_delta,
            Some((_, best)) => value < best - self.min_delta,
        };
        if improved {
            self.best = Some((step, value));
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
        Verdict { improved, stop: self.patience.is_some_and(|p| self.since_best >= p) }
    }
}

/// A copy of the parameters a run may change, on the GPU, by name.
pub struct Snapshot {
    tensors: Vec<(String, Tensor)>,
}

impl Snapshot {
    /// Copies the parameters `keep` accepts (by name).
    pub fn take(gpu: &Gpu, model: &dyn Module, keep: &dyn Fn(&str) -> bool) -> Result<Snapshot> {
        let mut params = Vec::new();
        model.visit_params(&mut |p| {
            if keep(&p.name) {
                params.push((p.name.clone(), p.value.clone()));
            }
        });
        let mut tensors = Vec::with_capacity(params.len());
        for (name, value) in params {
            let copy = Tensor::empty(gpu, value.shape(), value.dtype())?;
            gpu.copy(&value, &copy)?;
            tensors.push((name, copy));
        }
        Ok(Snapshot { tensors })
    }

    /// The weights of a checkpoint folder (`state.safetensors`, tensors `param.<name>`).
    pub fn from_checkpoint(gpu: &Gpu, dir: &std::path::Path) -> Result<Snapshot> {
        use crate::formats::safetensors::{SafetensorsSource, WeightSource};
        let mut src = SafetensorsSource::open_file(&dir.join("state.safetensors"))?;
        let mut tensors = Vec::new();
        for key in src.remaining() {
            let Some(name) = key.strip_prefix("param.") else { continue };
            let shape = src.shape_of(&key).map(<[usize]>::to_vec).unwrap_or_default();
            tensors.push((name.to_string(), src.tensor(gpu, &key, &shape)?));
        }
        Ok(Snapshot { tensors })
    }

    /// Writes the saved values back into the parameters of the same names.
    pub fn restore(&self, gpu: &Gpu, model: &mut dyn Module) -> Result<()> {
        let mut result = Ok(());
        model.visit_params_mut(&mut |p| {
            if let Some((_, saved)) = self.tensors.iter().find(|(n, _)| *n == p.name)
                && result.is_ok()
            {
                result = gpu.copy(saved, &p.value);
            }
        });
        result
    }
}

/// The user's choices: which metric, how patient, whether to put the best weights back.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StopSettings {
    pub metric: StopMetric,
    /// Evaluations without improvement before stopping; None trains to the end.
    pub patience: Option<usize>,
    pub min_delta: f64,
    pub restore_best: bool,
}

impl StopSettings {
    pub fn tracker(&self) -> BestTracker {
        BestTracker::new(EarlyStopping::new(self.metric, self.patience, self.min_delta), self.restore_best)
    }
}

/// Early stopping plus the best checkpoint: a snapshot at each improvement (when restoring),
/// put back by [`BestTracker::finish`].
pub struct BestTracker {
    pub stopping: EarlyStopping,
    pub restore_best: bool,
    snapshot: Option<Snapshot>,
}

impl BestTracker {
    pub fn new(stopping: EarlyStopping, restore_best: bool) -> Self {
        BestTracker { stopping, restore_best, snapshot: None }
    }

    /// Records an evaluation of `model` at `step`; on an improvement keeps a copy of the
    /// parameters `keep` accepts (every one the run may change).
    pub fn observe(
        &mut self,
        gpu: &Gpu,
        model: &dyn Module,
        keep: &dyn Fn(&str) -> bool,
        step: usize,
        value: f64,
    ) -> Result<Verdict> {
        let verdict = self.stopping.observe(step, value);
        if verdict.improved && self.restore_best {
            self.snapshot = Some(Snapshot::take(gpu, model, keep)?);
        }
        Ok(verdict)
    }

    /// Continues from a checkpoint: the best so far, evaluations since, and its weights.
    pub fn resume(&mut self, best: Option<(usize, f64)>, since_best: usize, snapshot: Option<Snapshot>) {
        self.stopping.best = best;
        self.stopping.since_best = since_best;
        self.snapshot = snapshot;
    }

    /// Puts the best evaluation's weights back (when restoring and there was one); returns
    /// the best (step, value).
    pub fn finish(&self, gpu: &Gpu, model: &mut dyn Module) -> Result<Option<(usize, f64)>> {
        if let Some(s) = &self.snapshot {
            s.restore(gpu, model)?;
        }
        Ok(self.stopping.best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted sequence of validation losses: improvements reset the count, small ones
    /// (under min_delta) do not, and the run stops at the evaluation where patience runs out.
    #[test]
    fn stops_after_patience_evaluations_without_improvement() {
        let mut es = EarlyStopping::new(StopMetric::ValLoss, Some(2), 0.01);
        let script = [(0, 1.0), (10, 0.8), (20, 0.795), (30, 0.7), (40, 0.71), (50, 0.695), (60, 0.9)];
        let verdicts: Vec<(bool, bool)> = script
            .iter()
            .map(|&(s, v)| {
                let v = es.observe(s, v);
                (v.improved, v.stop)
            })
            .collect();
        assert_eq!(
            verdicts,
            [(true, false), (true, false), (false, false), (true, false), (false, false), (false, true), (false, true)]
        );
        assert_eq!(es.best, Some((30, 0.7)));
    }

    #[test]
    fn higher_is_better_for_f1_and_nan_never_improves() {
        let mut es = EarlyStopping::new(StopMetric::MacroF1, Some(1), 0.0);
        assert!(!es.observe(0, f64::NAN).improved);
        assert!(es.observe(1, 0.5).improved);
        assert!(es.observe(2, 0.6).improved);
        let v = es.observe(3, 0.6);
        assert!(!v.improved && v.stop);
        assert_eq!(es.best, Some((2, 0.6)));
        let mut never = EarlyStopping::new(StopMetric::Accuracy, None, 0.0);
        for s in 0..10 {
            assert!(!never.observe(s, 0.0).stop);
        }
    }
}
