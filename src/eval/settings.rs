//! What one `kiln eval` is asked to do, independent of the command line: the CLI maps its
//! flags onto [`EvalSettings`] and calls [`super::run`]; tests may build one directly.

use std::path::PathBuf;

use crate::models::classifier::Pooling;

#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// A kiln run folder, a classifier (adapter) folder, an image classifier saved by kiln, or
    /// a causal LM (Hugging Face folder or .gguf).
    pub model: PathBuf,
    /// A PEFT adapter on `model`.
    pub lora: Option<PathBuf>,
    /// The test set (a file, or a folder holding it).
    pub data: PathBuf,
    /// The report folder.
    pub out: PathBuf,
    pub overwrite: bool,
    /// Evaluate the first N examples only.
    pub limit: Option<usize>,
    /// Tokens per input (text models); None: the run's own, else the family's default.
    pub max_len: Option<usize>,
    /// Image side after the centre crop (image models); None: the run's own, else 224.
    pub image_size: Option<u32>,
    pub batch_size: usize,
    /// Pooling of a transformers classifier without kiln_classifier.json.
    pub pooling: Pooling,
    /// The column scored per group; image lists with a `group` column use it unasked.
    pub group_by: Option<String>,
    pub gap_threshold: f64,
    pub bootstrap: usize,
    pub seed: u64,
    /// Counterfactual term pairs (text models).
    pub swap_terms: Option<PathBuf>,
    /// Swap the built-in first names too when `swap_terms` is given.
    pub names: bool,
    pub max_swaps: usize,
    pub no_counterfactual: bool,
    /// More text edge cases (jsonl).
    pub edge_cases: Option<PathBuf>,
    pub no_edge_cases: bool,
    pub no_latency: bool,
    pub latency_runs: usize,
    pub warmup: usize,
    /// Batch sizes for throughput.
    pub batch_sizes: Vec<usize>,
    pub throughput_batches: usize,
    /// Language models: new tokens per greedy completion, samples shown, no completions at all.
    pub gen_tokens: usize,
    pub samples: usize,
    pub no_generate: bool,
    pub no_plots: bool,
}
