//! Hyperparameter search (`kiln tune`): a search space ([`space`]), samplers ([`sampler`],
//! [`tpe`]), successive halving ([`halving`]), the study loop with its resumable log ([`study`])
//! and what a study writes ([`report`]). Trials are ordinary `kiln train` runs; the CLI side
//! (`src/cli/tune.rs`, above this layer) builds their settings and reads their run folders.

pub mod halving;
pub mod report;
pub mod sampler;
pub mod space;
pub mod study;
pub mod tpe;
