//! Training: the optimizer over a module's trainable parameters, learning-rate schedules, and
//! the loops that drive a model through its data.

pub mod checkpoint;
pub mod classify;
pub mod ewc;
pub mod feature_cache;
pub mod forgetting;
pub mod lm;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod stopping;

pub use optim::Optimizer;
pub use schedule::Schedule;

/// A NaN or infinite loss stops training with the step, what to try, and the newest checkpoint
/// under `checkpoints` (the last good weights) when there is one.
pub(crate) fn check_loss(loss: f32, step: usize, lr: f32, checkpoints: Option<&std::path::Path>) -> crate::Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    let last = checkpoints.and_then(|dir| checkpoint::list(dir).ok()).and_then(|mut l| l.pop());
    let resume = match last {
        Some((good, dir)) => format!("; the last good checkpoint is step {good} ({})", dir.display()),
        None => String::new(),
    };
    Err(crate::Error::invalid(
        "train",
        format!("loss became {loss} at step {step}; lower the learning rate (now {lr:e}){resume}"),
    ))
}
