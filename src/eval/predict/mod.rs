//! `kiln predict`: a trained model on new, unlabelled inputs, one prediction per input written
//! to a jsonl or csv file. A text classifier gives each text's label and the probability of
//! every class (and says which texts were longer than `--max-len` and truncated); an image
//! classifier the same for images; a language model a greedy completion per prompt. The model
//! is found as `kiln eval` finds it ([`super::target`]) and scored with the same code
//! ([`super::classifier::ClassifierEval`], [`super::language_model::LmEval`], the image
//! classifier's evaluation transform), so the predictions equal what `kiln eval` computes.

pub mod input;
pub mod output;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use self::input::{Input, InputKind};
use self::output::{Prediction, Task};
use super::calibration::softmax;
use super::classifier::ClassifierEval;
use super::language_model::LmEval;
use super::target::{self, Target};
use crate::data::encode::{Encoded, encoder_tokenizer, pad_id};
use crate::data::image_list::ImageBank;
use crate::error::{Error, Result};
use crate::formats::safetensors::SafetensorsSource;
use crate::gpu::Gpu;
use crate::models::classifier::{Pooling, SequenceClassifier};
use crate::models::image_classifier::ImageClassifier;
use crate::models::load::load_lm;
use crate::nn::BnMode;
use crate::train::vision::{eval_transform, predict as predict_images};

/// What `kiln predict` was asked.
#[derive(Clone, Debug)]
pub struct PredictSettings {
    /// A run folder, an adapter, a saved classifier, or a causal LM (path or known name).
    pub model: PathBuf,
    /// A PEFT adapter on `model`.
    pub lora: Option<PathBuf>,
    /// The inputs: jsonl or csv (images: also a folder).
    pub data: PathBuf,
    /// The predictions file: `.csv` for csv, anything else jsonl.
    pub out: PathBuf,
    pub overwrite: bool,
    /// Inputs per forward pass (classifiers).
    pub batch_size: usize,
    /// Tokens per text (classifiers; default the run's own, else 128) or per prompt (language
    /// models; default the model's positions less `max_tokens`).
    pub max_len: Option<usize>,
    /// New tokens per completion (language models).
    pub max_tokens: usize,
    /// Pooling of a transformers classifier folder that does not say its own.
    pub pooling: Pooling,
    /// The first N inputs only.
    pub limit: Option<usize>,
}

/// What a prediction run did: `--json` prints it, the CLI summarises it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PredictSummary {
    /// `classification`, `image-classification` or `language-model`.
    pub task: String,
    pub model: String,
    pub adapter: Option<String>,
    pub data: String,
    pub out: String,
    pub device: String,
    /// The frozen model's matmul precision (`kernels::matmul_coop::describe`).
    pub precision: String,
    pub examples: usize,
    pub batch_size: usize,
    /// Tokens per input (text tasks).
    pub max_len: Option<usize>,
    /// The classes, in the order of the probabilities (classifiers).
    pub labels: Vec<String>,
    /// How many inputs got each label (classifiers).
    pub predicted: BTreeMap<String, usize>,
    /// Inputs longer than `max_len`, cut to it, and their lines in the input file.
    pub truncated: usize,
    pub truncated_lines: Vec<usize>,
    /// Inputs that carried a `label` (or `completion`): not needed, reported; for classifiers
    /// the share of them equal to the prediction.
    pub given: usize,
    pub agreement: Option<f64>,
    /// New tokens generated (language models).
    pub new_tokens: usize,
    pub load_seconds: f64,
    /// Predicting alone (reading inputs, tokenizing or decoding, forward passes).
    pub seconds: f64,
    /// Inputs per second over `seconds`.
    pub per_second: f64,
}

/// Called after each batch with (inputs done, inputs in all).
pub type OnProgress<'a> = &'a mut dyn FnMut(usize, usize);

/// Refuses an `--out` that cannot be written before any slow work: an existing file without
/// `overwrite`, a folder.
pub fn check_out(out: &Path, overwrite: bool) -> Result<()> {
    if out.is_dir() {
        return Err(Error::invalid("--out", format!("{} is a folder; give a .jsonl or .csv file name", out.display())));
    }
    if out.exists() && !overwrite {
        return Err(Error::invalid(
            "--out",
            format!("{} already exists; pass --overwrite to replace it", out.display()),
        ));
    }
    Ok(())
}

/// Predicts every input of `s.data` with `s.model` and writes `s.out` (to a temporary name,
/// renamed once complete).
pub fn run(gpu: &Gpu, s: &PredictSettings, on_progress: OnProgress) -> Result<PredictSummary> {
    if s.batch_size == 0 {
        return Err(Error::invalid("--batch-size", "must be at least 1"));
    }
    check_out(&s.out, s.overwrite)?;
    let target = target::resolve(&s.model, s.lora.as_deref(), s.pooling, &crate::data::fetch::default_cache_dir())?;
    let kind = match &target {
        Target::Text { .. } => InputKind::Text,
        Target::Image { .. } => InputKind::Image,
        Target::Lm { .. } => InputKind::Prompt,
    };
    // The inputs before the model: a bad file fails at once.
    let mut inputs = input::read(&s.data, kind)?;
    if let Some(n) = s.limit {
        inputs.truncate(n);
    }
    let t0 = Instant::now();
    let (mut summary, predictions) = match &target {
        Target::Text { base, adapter, labels, pooling, .. } => {
            let mut model = SequenceClassifier::load(gpu, base, labels.clone(), *pooling, 0)?;
            match adapter {
                Some(a) => {
                    model.load_adapter(gpu, a)?;
                }
                None if SafetensorsSource::open(base)?.shape_of("classifier.weight").is_none() => {
                    return Err(Error::Parse {
                        path: base.clone(),
                        message: "no `classifier.weight`: this encoder has no trained classification head (train \
                                  one with `kiln train`, or give its adapter with --lora)"
                            .into(),
                    });
                }
                None => {}
            }
            let max_positions = model.body.config.max_position_embeddings;
            let run_len = target.run_setting("max_len").and_then(|v| v.as_u64()).map(|v| v as usize);
            let max_len = match s.max_len {
                Some(n) if n > max_positions => {
                    return Err(Error::invalid(
                        "--max-len",
                        format!("{n} is past the encoder's {max_positions} positions"),
                    ));
                }
                Some(n) => n,
                None => run_len.unwrap_or(128).min(max_positions),
            };
            let tokenizer = encoder_tokenizer(base, max_len)?;
            let pad = pad_id(&tokenizer);
            let ev = ClassifierEval { gpu, model, tokenizer, max_len, pad, batch: s.batch_size };
            let load = t0.elapsed().as_secs_f64();
            let preds = classify_texts(&ev, &inputs, on_progress)?;
            let mut sum = summary_head(s, gpu, "classification", base, adapter.as_deref(), inputs.len(), load);
            sum.max_len = Some(max_len);
            sum.labels = labels.clone();
            (sum, preds)
        }
        Target::Image { model, labels, .. } => {
            let m = ImageClassifier::load(gpu, model, labels.len(), BnMode::Frozen, 0)?;
            let setting = |k: &str, d: u64| target.run_setting(k).and_then(|v| v.as_u64()).unwrap_or(d) as u32;
            let size = setting("image_size", 224);
            let resize = setting("resize", (size as u64 * 256).div_ceil(224));
            let tf = eval_transform(&m, resize, size);
            let load = t0.elapsed().as_secs_f64();
            let mut preds = Vec::with_capacity(inputs.len());
            for chunk in inputs.chunks(s.batch_size) {
                let paths: Vec<&str> = chunk.iter().map(|i| i.value.as_str()).collect();
                let bank = ImageBank::load(&paths, resize)?;
                let p = predict_images(gpu, &m, &bank, &tf, None, s.batch_size)?;
                for (i, row) in chunk.iter().zip(p.logits.chunks(labels.len())) {
                    preds.push(label_prediction(i, softmax(row), labels, false, Some(i.value.clone())));
                }
                on_progress(preds.len(), inputs.len());
            }
            let mut sum = summary_head(s, gpu, "image-classification", model, None, inputs.len(), load);
            sum.labels = labels.clone();
            (sum, preds)
        }
        Target::Lm { path, adapter, .. } => {
            let mut lm = load_lm(gpu, path)?;
            if let Some(a) = adapter {
                lm.model.load_adapter(gpu, a)?;
            }
            let max_positions = lm.model.shape().max_positions;
            let room = max_positions.saturating_sub(s.max_tokens);
            let max_len = match s.max_len {
                Some(n) if n > room => {
                    return Err(Error::invalid(
                        "--max-len",
                        format!(
                            "{n} prompt tokens and --max-tokens {} are past the model's {max_positions} positions",
                            s.max_tokens
                        ),
                    ));
                }
                Some(n) => n,
                None if room == 0 => {
                    return Err(Error::invalid(
                        "--max-tokens",
                        format!(
                            "{} leaves no room for a prompt in the model's {max_positions} positions",
                            s.max_tokens
                        ),
                    ));
                }
                None => room,
            };
            let ev = LmEval { gpu, lm, max_len, gen_tokens: s.max_tokens };
            let load = t0.elapsed().as_secs_f64();
            let preds = complete_prompts(&ev, &inputs, s.max_tokens, on_progress)?;
            let mut sum = summary_head(s, gpu, "language-model", path, adapter.as_deref(), inputs.len(), load);
            sum.max_len = Some(max_len);
            sum.new_tokens = preds.iter().filter_map(|p| p.tokens).sum();
            (sum, preds)
        }
    };
    summary.seconds = t0.elapsed().as_secs_f64() - summary.load_seconds;
    summary.per_second = inputs.len() as f64 / summary.seconds.max(1e-9);
    summary.truncated_lines = predictions.iter().filter(|p| p.truncated).filter_map(|p| p.line).collect();
    summary.truncated = predictions.iter().filter(|p| p.truncated).count();
    summary.given = predictions.iter().filter(|p| p.given.is_some()).count();
    if !summary.labels.is_empty() {
        for p in &predictions {
            *summary.predicted.entry(p.label.clone().unwrap_or_default()).or_default() += 1;
        }
        let agree = predictions.iter().filter(|p| p.given.is_some() && p.given == p.label).count();
        summary.agreement = (summary.given > 0).then(|| agree as f64 / summary.given as f64);
    }
    let task = match &target {
        Target::Lm { .. } => Task::Completion,
        _ => Task::Label,
    };
    output::write(&s.out, task, &summary.labels, &predictions)?;
    Ok(summary)
}

fn summary_head(
    s: &PredictSettings,
    gpu: &Gpu,
    task: &str,
    model: &Path,
    adapter: Option<&Path>,
    examples: usize,
    load_seconds: f64,
) -> PredictSummary {
    PredictSummary {
        task: task.into(),
        model: model.display().to_string(),
        adapter: adapter.map(|a| a.display().to_string()),
        data: s.data.display().to_string(),
        out: s.out.display().to_string(),
        device: gpu.describe(),
        precision: crate::kernels::matmul_coop::describe(gpu),
        examples,
        batch_size: s.batch_size,
        max_len: None,
        labels: Vec::new(),
        predicted: BTreeMap::new(),
        truncated: 0,
        truncated_lines: Vec::new(),
        given: 0,
        agreement: None,
        new_tokens: 0,
        load_seconds,
        seconds: 0.0,
        per_second: 0.0,
    }
}

fn label_prediction(
    i: &Input,
    probs: Vec<f64>,
    labels: &[String],
    truncated: bool,
    image: Option<String>,
) -> Prediction {
    let best = probs.iter().enumerate().fold(0, |b, (k, &p)| if p > probs[b] { k } else { b });
    Prediction {
        line: i.line,
        image,
        label: Some(labels[best].clone()),
        probs,
        completion: None,
        tokens: None,
        truncated,
        given: i.given.clone(),
    }
}

/// Texts a few batches at a time (so progress moves), each scored as `kiln eval` scores them.
fn classify_texts(ev: &ClassifierEval, inputs: &[Input], on_progress: OnProgress) -> Result<Vec<Prediction>> {
    // The tokenizer without truncation, to tell a text cut at max_len from one that fits.
    let mut full = ev.tokenizer.clone();
    let _ = full.with_truncation(None);
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(ev.batch * 4) {
        let texts: Vec<&str> = chunk.iter().map(|i| i.value.as_str()).collect();
        let items: Vec<Encoded> = ev.encode(&texts)?;
        let probs = ev.probabilities(&items)?;
        for ((i, item), p) in chunk.iter().zip(&items).zip(probs) {
            let truncated = item.ids.len() >= ev.max_len
                && (i.value.chars().count() > ev.max_len * crate::data::encode::CHARS_PER_TOKEN_BOUND
                    || full.encode(i.value.as_str(), true).map_or(true, |e| e.get_ids().len() > ev.max_len));
            out.push(label_prediction(i, p, &ev.model.labels, truncated, None));
        }
        on_progress(out.len(), inputs.len());
    }
    Ok(out)
}

/// A greedy completion per prompt: a `prompt` field through the model's chat template (as
/// training and `kiln eval` prompt it), a `text` continued as it is; a prompt longer than
/// `max_len` keeps its last `max_len` tokens.
fn complete_prompts(
    ev: &LmEval,
    inputs: &[Input],
    max_tokens: usize,
    on_progress: OnProgress,
) -> Result<Vec<Prediction>> {
    let mut out = Vec::with_capacity(inputs.len());
    for i in inputs {
        let mut ids = if i.is_prompt { ev.lm.prompt_ids(&i.value)? } else { ev.lm.encode_prompt(&i.value)? };
        let truncated = ids.len() > ev.max_len;
        if truncated {
            ids.drain(..ids.len() - ev.max_len);
        }
        let c = ev.complete(&ids, max_tokens, &ev.lm.stop)?;
        out.push(Prediction {
            line: i.line,
            image: None,
            label: None,
            probs: Vec::new(),
            completion: Some(c.text),
            tokens: Some(c.new_tokens),
            truncated,
            given: i.given.clone(),
        });
        on_progress(out.len(), inputs.len());
    }
    Ok(out)
}
