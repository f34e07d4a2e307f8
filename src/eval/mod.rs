//! Evaluation: scores computed from gold and predicted class ids, independent of the model.
//!
//! - [`metrics`]: accuracy, per-class precision/recall/F1, macro-F1, the confusion matrix, a
//!   printable report in the shape of scikit-learn's `classification_report`, and accuracy per
//!   group of examples.

pub mod metrics;

pub use metrics::{ClassScore, GroupScore, Metrics, group_accuracy};
