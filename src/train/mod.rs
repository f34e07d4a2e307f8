//! Training: the optimizer over a module's trainable parameters, learning-rate schedules, and
//! the loops that drive a model through its data.

pub mod classify;
pub mod lm;
pub mod optim;
pub mod schedule;

pub use optim::Optimizer;
pub use schedule::Schedule;
