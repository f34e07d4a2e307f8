//! `kiln predict`: a trained model on new, unlabelled inputs; one prediction per input in a
//! jsonl or csv file. The work is [`crate::eval::predict`]; this file maps flags and prints.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use super::AdapterArgs;
use crate::error::Result;
use crate::eval::predict::{self, PredictSettings, PredictSummary};
use crate::models::classifier::Pooling;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kiln predict --model runs/spam --data new.jsonl --out preds.jsonl\n  \
    kiln predict --model runs/spam/adapter --data new.csv --out preds.csv --json\n  \
    kiln predict --model runs/elpv --data photos/ --out cells.jsonl\n  \
    kiln predict --model SmolLM2.gguf --lora runs/cmudict/adapter --data prompts.jsonl --out out.jsonl")]
pub struct PredictArgs {
    /// The model: a kiln run folder, a classifier adapter or saved classifier (text or images),
    /// or a causal LM (Hugging Face folder, .gguf, or a name from `kiln models`)
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT adapter on --model (a CAUSAL_LM adapter, or a kiln SEQ_CLS one on its encoder)
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// The inputs, no labels needed: jsonl/csv with `text` (classifiers), `prompt` or `text`
    /// (language models), `image`/`path` (image classifiers, or a folder of images)
    #[arg(long)]
    pub data: PathBuf,
    /// The predictions: a .csv name writes csv, any other jsonl
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out file
    #[arg(long)]
    pub overwrite: bool,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    /// Inputs per forward pass
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per text [default: the run's own (settings.json), else 128; for a language model
    /// its positions less --max-tokens]; longer inputs are cut and reported
    #[arg(long)]
    pub max_len: Option<usize>,
    /// New tokens per completion (language models; greedy)
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Classifiers from a transformers folder without kiln_classifier.json: how token states are pooled
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Predict the first N inputs only
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let settings = PredictSettings {
        model: args.model,
        lora: args.lora,
        data: args.data,
        out: args.out,
        overwrite: args.overwrite,
        batch_size: args.batch_size,
        max_len: args.max_len,
        max_tokens: args.max_tokens,
        pooling: args.pooling,
        limit: args.limit,
    };
    // Refuse an existing --out before opening the device.
    predict::check_out(&settings.out, settings.overwrite)?;
    let gpu = args.adapter.open()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} inputs  {per_sec}  [{elapsed_precise} < {eta_precise}]")
            .expect("a valid template"),
    );
    let summary = predict::run(&gpu, &settings, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("summaries serialize"));
    } else {
        print!("{}", describe(&summary));
    }
    Ok(())
}

/// The summary in a few lines.
fn describe(s: &PredictSummary) -> String {
    let mut t = format!("kiln predict ({}) on {}\n", s.task, s.device);
    t += &format!("  model     {}{}\n", s.model, s.adapter.as_ref().map(|a| format!(" + {a}")).unwrap_or_default());
    let rate = if s.task == "language-model" {
        format!("{:.2} prompts/s, {:.1} new tokens/s", s.per_second, s.new_tokens as f64 / s.seconds.max(1e-9))
    } else {
        format!("{:.1} inputs/s at batch size {}", s.per_second, s.batch_size)
    };
    t += &format!(
        "  inputs    {} from {} in {:.1}s ({rate}; loading {:.1}s)\n",
        s.examples, s.data, s.seconds, s.load_seconds
    );
    if !s.predicted.is_empty() {
        let counts: Vec<String> = s.predicted.iter().map(|(l, n)| format!("{n} {l}")).collect();
        t += &format!("  predicted {}\n", counts.join(", "));
    }
    if let Some(n) = s.max_len {
        if s.truncated > 0 {
            let shown: Vec<String> = s.truncated_lines.iter().take(20).map(|l| l.to_string()).collect();
            let more = if s.truncated_lines.len() > 20 { ", ..." } else { "" };
            t += &format!(
                "  truncated {} inputs longer than {n} tokens (lines {}{more})\n",
                s.truncated,
                shown.join(", ")
            );
        } else {
            t += &format!("  truncated none (every input fits in {n} tokens)\n");
        }
    }
    if s.given > 0 {
        let what = if s.task == "language-model" { "a completion" } else { "a label" };
        t += &format!("  given     {} inputs carry {what} (not used", s.given);
        t += &match s.agreement {
            Some(a) => format!("; the prediction equals it for {:.1}%)\n", 100.0 * a),
            None => ")\n".into(),
        };
    }
    t += &format!("  written   {}\n", s.out);
    t
}
