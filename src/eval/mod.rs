//! Evaluation: `kiln eval`'s parts, on top of the scores in [`crate::metrics`].
//!
//! - [`run()`] is `kiln eval` as a library call on [`EvalSettings`]: it picks the model's
//!   family ([`text_family`], [`lm_family`], [`image_family`]), which scores the test set, and
//!   runs the parts every family shares once ([`family`]).
//! - [`classifier`] and [`language_model`] run a model over texts or
//!   records; [`calibration`] (ECE), [`slices`] and [`bootstrap`] (per-group scores and the
//!   largest gap with its interval), [`counterfactual`] (term swaps), [`edge_cases`], [`latency`]
//!   (percentiles, throughput), [`report`] (report.json and report.md) and [`plots`].

pub mod bootstrap;
pub mod calibration;
pub mod classifier;
pub mod counterfactual;
pub mod edge_cases;
pub mod family;
pub mod image_family;
pub mod language_model;
pub mod latency;
pub mod lm_family;
pub mod plots;
pub mod report;
pub mod run;
pub mod settings;
pub mod slices;
pub mod text_family;

pub use run::run;
pub use settings::EvalSettings;
