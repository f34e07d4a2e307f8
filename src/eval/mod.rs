//! Evaluation: `kiln eval`'s parts, on top of the scores in [`crate::metrics`].
//!
//! - [`classifier`] and [`language_model`] run a model over texts or
//!   records; [`calibration`] (ECE), [`slices`] and [`bootstrap`] (per-group scores and the
//!   largest gap with its interval), [`counterfactual`] (term swaps), [`edge_cases`], [`latency`]
//!   (percentiles, throughput), [`report`] (report.json and report.md) and [`plots`].
//! - [`target`] says what a `--model` is (text or image classifier, or causal LM, with its
//!   adapter and run folder); [`predict`] is `kiln predict`: predictions for new inputs.

pub mod bootstrap;
pub mod calibration;
pub mod classifier;
pub mod counterfactual;
pub mod edge_cases;
pub mod language_model;
pub mod latency;
pub mod plots;
pub mod predict;
pub mod report;
pub mod slices;
pub mod target;
