//! Evaluation: scores computed from gold and predicted class ids, independent of the model.
//!
//! - [`metrics`]: accuracy, per-class precision/recall/F1, macro-F1, the confusion matrix, a
//!   printable report in the shape of scikit-learn's `classification_report`, and accuracy per
//!   group of examples.
//! - `kiln eval`'s parts: [`classifier`] and [`language_model`] run a model over texts or
//!   records; [`calibration`] (ECE), [`slices`] and [`bootstrap`] (per-group scores and the
//!   largest gap with its interval), [`counterfactual`] (term swaps), [`edge_cases`], [`latency`]
//!   (percentiles, throughput), [`report`] (report.json and report.md) and [`plots`].

pub mod metrics;

pub use metrics::{ClassScore, GroupScore, Metrics, group_accuracy};
pub mod bootstrap;
pub mod calibration;
pub mod classifier;
pub mod counterfactual;
pub mod edge_cases;
pub mod language_model;
pub mod latency;
pub mod plots;
pub mod report;
pub mod slices;
