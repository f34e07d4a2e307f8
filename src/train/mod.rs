//! Training: the one loop ([`driver`]) with a task per model family ([`lm`], [`classify`]), the
//! optimizer over a module's trainable parameters, learning-rate schedules, checkpoints, early
//! stopping and the guards against forgetting ([`ewc`], [`forgetting`]).

pub mod checkpoint;
pub mod classify;
pub mod driver;
pub mod ewc;
pub mod feature_cache;
pub mod forgetting;
pub mod interrupt;
pub mod job;
pub mod lm;
pub mod memory;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod settings;
pub mod stopping;
pub mod vision;

pub use job::{Progress, Quiet, RunReport, run};
pub use optim::Optimizer;
pub use schedule::Schedule;
pub use settings::TrainSettings;

/// A NaN or infinite loss stops training with the step, what to try, and the newest checkpoint
/// under `checkpoints` (the last good weights) when there is one.
pub(crate) fn check_loss(loss: f32, step: usize, lr: f32, checkpoints: Option<&std::path::Path>) -> crate::Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(crate::Error::Diverged {
        step,
        message: format!(
            "loss became {loss} at step {step}; lower the learning rate (now {lr:e}){}",
            last_good(checkpoints)
        ),
    })
}

/// A NaN or infinite gradient with a finite loss (an overflow in a backward pass): the global
/// norm, read with the loss anyway, gives it away; only then are the per-tensor norms read to
/// name the tensor nearest the loss that went bad.
pub(crate) fn check_grads(
    gpu: &crate::Gpu,
    opt: &optim::Optimizer,
    grad_norm: Option<f32>,
    step: usize,
    lr: f32,
    checkpoints: Option<&std::path::Path>,
) -> crate::Result<()> {
    if grad_norm.is_none_or(f32::is_finite) {
        return Ok(());
    }
    let bad = opt.non_finite_grads(gpu)?;
    let first = bad.first().map_or("an unnamed tensor".to_string(), |n| format!("`{n}`"));
    Err(crate::Error::Diverged {
        step,
        message: format!(
            "the gradient norm became {} at step {step}: the gradient of {first} (nearest the loss; {} tensor(s) in \
             all) holds NaN or infinite values; lower the learning rate (now {lr:e}) or --max-len{}",
            grad_norm.unwrap_or(f32::NAN),
            bad.len(),
            last_good(checkpoints)
        ),
    })
}

/// Watches the training loss for a learning rate that is too high: when its moving average
/// climbs to twice its lowest value (and by more than 0.5 nats, so tiny losses do not trip
/// it), the run gets one warning with a hint. NaN losses are check_loss's business.
#[derive(Default)]
pub(crate) struct DivergenceWatch {
    average: Option<f64>,
    lowest: Option<f64>,
    warned: bool,
}

impl DivergenceWatch {
    /// Steps before the watch judges: the first steps of a run are noisy and warmup moves.
    const SETTLE_STEPS: usize = 10;
    /// Weight of the newest loss in the moving average.
    const ALPHA: f64 = 0.2;

    pub(crate) fn observe(&mut self, loss: f32, step: usize, lr: f32) -> Option<String> {
        let loss = loss as f64;
        if !loss.is_finite() || self.warned {
            return None;
        }
        let average = match self.average {
            Some(a) => a + Self::ALPHA * (loss - a),
            None => loss,
        };
        self.average = Some(average);
        let lowest = self.lowest.map_or(average, |l| l.min(average));
        self.lowest = Some(lowest);
        if step > Self::SETTLE_STEPS && average > 2.0 * lowest && average - lowest > 0.5 {
            self.warned = true;
            return Some(format!(
                "the training loss is rising: its moving average went from {lowest:.3} to {average:.3}; the \
                 learning rate ({lr:e}) may be too high (try a third of it, or more warmup)"
            ));
        }
        None
    }
}

/// "; the last good checkpoint is step N (dir)", or nothing without one.
fn last_good(checkpoints: Option<&std::path::Path>) -> String {
    let last = checkpoints.and_then(|dir| checkpoint::list(dir).ok()).and_then(|mut l| l.pop());
    match last {
        Some((good, dir)) => format!("; the last good checkpoint is step {good} ({})", dir.display()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::DivergenceWatch;

    fn first_warning(losses: &[f32]) -> Option<usize> {
        let mut watch = DivergenceWatch::default();
        losses.iter().enumerate().find_map(|(i, &l)| watch.observe(l, i + 1, 1e-3).map(|_| i + 1))
    }

    #[test]
    fn a_falling_or_noisy_loss_gets_no_warning() {
        let falling: Vec<f32> = (0..100).map(|i| 3.0 * 0.97f32.powi(i)).collect();
        assert_eq!(first_warning(&falling), None);
        let noisy: Vec<f32> = (0..100).map(|i| 2.0 + if i % 2 == 0 { 0.6 } else { -0.6 }).collect();
        assert_eq!(first_warning(&noisy), None);
        // Doubling a tiny loss is not a run-away learning rate.
        let tiny: Vec<f32> = (0..100).map(|i| if i < 40 { 0.05 } else { 0.2 }).collect();
        assert_eq!(first_warning(&tiny), None);
    }

    #[test]
    fn a_loss_that_climbs_to_twice_its_low_is_flagged_once() {
        let mut losses: Vec<f32> = (0..30).map(|i| 3.0 - 0.05 * i as f32).collect(); // down to 1.55
        losses.extend((0..30).map(|i| 1.55 + 0.3 * i as f32)); // then up
        let at = first_warning(&losses).expect("a warning");
        assert!((31..45).contains(&at), "warned at step {at}");
        // Once: the watch stays quiet afterwards.
        let mut watch = DivergenceWatch::default();
        let warnings = losses.iter().enumerate().filter(|(i, l)| watch.observe(**l, i + 1, 1e-3).is_some()).count();
        assert_eq!(warnings, 1);
    }
}
