//! Training: the optimizer over a module's trainable parameters, learning-rate schedules, and
//! the loops that drive a model through its data.

pub mod checkpoint;
pub mod classify;
pub mod lm;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod stopping;

pub use optim::Optimizer;
pub use schedule::Schedule;

/// A NaN or infinite loss stops training with the step and what to try.
pub(crate) fn check_loss(loss: f32, step: usize, lr: f32) -> crate::Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(crate::Error::invalid(
        "train",
        format!("loss became {loss} at step {step}; lower the learning rate (now {lr:e})"),
    ))
}
