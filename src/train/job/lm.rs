//! A causal LM's run: LoRA on a jsonl folder (mlx-lm's formats) or the cmudict task, optionally
//! on a base quantized on load, with a retain set against forgetting; the PEFT adapter saved.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::{Progress, RunLog, RunReport, best_json, best_text, write_json, write_report};
use crate::data::catalog;
use crate::data::cmudict::{self, PronunciationScore};
use crate::data::fetch::{self, Asset};
use crate::data::lm::{self, Example, Record, make_batches};
use crate::error::{Error, Result};
use crate::formats::peft::TaskType;
use crate::generate::{Sampling, generate};
use crate::gpu::Gpu;
use crate::kernels::matmul_coop;
use crate::models::count_params;
use crate::models::load::LoadedLm;
use crate::nn::LoraConfig;
use crate::train::forgetting;
use crate::train::lm::{LmTrainConfig, eval_loss, train_lm};
use crate::train::settings::{BaseDtype, TrainSettings, write_resolved};
use crate::train::stopping::StopMetric;

/// A causal LM with LoRA on a jsonl folder or the cmudict task.
// The body was `kiln train`'s, written for an owned `Gpu`; its `&gpu`s are left as they were so
// that branches editing it merge cleanly.
#[allow(clippy::needless_borrow)]
pub fn run(gpu: &Gpu, args: &TrainSettings, progress: &mut dyn Progress) -> Result<RunReport> {
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
    if args.quantize.is_some() && args.base_dtype != BaseDtype::Auto {
        return Err(Error::invalid(
            "train",
            "--quantize sets how the base is kept; it cannot go with --base-dtype f32, f16 or bf16",
        ));
    }
    let mut lm = crate::models::load::load_lm_base(&gpu, &model_path, args.base_dtype)?;
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
        use_dora: args.dora,
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
    if train.examples.is_empty() {
        // Refused here, before the run folder exists, so the next try needs no --overwrite.
        return Err(Error::Parse {
            path: data_dir.join("train.jsonl"),
            message: format!(
                "no training examples: {} of {} records left nothing to predict after tokenizing with the \
                 tokenizer of {} (empty texts or completions, or prompts that fill --max-len {max_len})",
                train.dropped,
                train_records.len(),
                model_path.display()
            ),
        });
    }
    let valid = match &splits.valid {
        Some(v) => Some(lm::tokenize_all(v, &lm.tokenizer, &lm.format, max_len)?.examples),
        None => None,
    };
    let quantization = match args.quantize {
        Some(kind) => Some(quantize_base(&gpu, &mut lm, kind, valid.as_deref(), args, progress)?),
        None => None,
    };
    let base = crate::models::quantize::quantized_summary(lm.model.as_mut());
    // Memory: estimated from the shapes, printed, and refused here if it cannot fit.
    let seq = if args.pack { max_len } else { train.examples.iter().map(|e| e.ids.len()).max().unwrap_or(max_len) };
    let memory = crate::train::memory::estimate_lm(lm.model.as_mut(), args.batch_size, seq);
    let budget = crate::train::memory::device_budget(gpu.info().device_type, args.gpu_memory);
    let (memory, auto_checkpoint) = crate::train::memory::choose_checkpointing(memory, args.grad_checkpoint, budget);
    lm.model.set_grad_checkpoint(memory.grad_checkpoint)?;
    crate::train::memory::check_fits(&memory, gpu.limits(), budget, !base.is_empty())?;
    let out = args.run_dir();
    super::open_run_dir(args, &out)?;
    let (retain, retain_source) = retain_set(args, &gpu, &lm, max_len, &out, progress)?;
    // Forgetting: the retain text's loss before training and again at the end.
    let retain_batches = match &retain {
        Some(r) => make_batches(r, args.batch_size, lm.pad, None)?,
        None => Vec::new(),
    };
    let retain_before =
        if retain_batches.is_empty() { None } else { Some(eval_loss(&gpu, lm.model.as_ref(), &retain_batches)?) };
    let cfg = LmTrainConfig {
        run: args.loop_settings(&out, 2e-4, 1, StopMetric::ValLoss),
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        eval_batches: Some(args.eval_batches),
        pack: args.pack.then_some(max_len),
    };
    let (trainable, total) = count_params(lm.model.as_ref());
    let total = total + base.values().map(|v| v.1).sum::<usize>();
    let mut settings = json!({
        "model": model_path, "data": data_dir, "device": gpu.describe(), "precision": matmul_coop::describe(gpu), "lora": {
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
    write_resolved(&out.join("config.toml"), args)?;
    progress.note(&format!("kiln train on {}, {}", gpu.describe(), matmul_coop::describe(gpu)));
    progress.note(&format!("  model     {} ({} parameters, loaded in {load_s:.1}s)", model_path.display(), total));
    progress.note(&format!(
        "  LoRA      r={} alpha={} dropout={} on {} layers ({}): {} trainable parameters ({:.2}%)",
        lora.r,
        lora.alpha,
        lora.dropout,
        adapted,
        lora.target_modules.join(","),
        trainable,
        100.0 * trainable as f64 / total as f64
    ));
    progress.note(&format!(
        "  data      {} train examples ({} truncated to {} tokens), {} valid",
        train.examples.len(),
        train.truncated,
        max_len,
        valid.as_ref().map_or(0, |v| v.len())
    ));
    progress.note(&format!("  run       {}", out.display()));
    for (kind, (n, _, bytes)) in &base {
        progress.note(&format!(
            "  base      {n} linear weights kept {kind} on the GPU ({:.1} MiB)",
            *bytes as f64 / 1048576.0
        ));
    }
    progress.note(&memory.table());
    if let Some((b, source)) = budget {
        progress.note(&format!("    checked against {:.0} MiB ({source})", b as f64 / 1048576.0));
    }
    if let Some(line) = &auto_checkpoint {
        progress.note(&format!("  {line}"));
    }

    let test_words = if args.task.as_deref() == Some("cmudict") && args.test_words > 0 {
        let mut t = splits.test.clone().unwrap_or_default();
        t.truncate(args.test_words);
        t
    } else {
        Vec::new()
    };
    let before = score_pronunciations(&gpu, &lm, &test_words, "before", progress)?;

    let mut log = RunLog::open(args, &out, total, progress)?;
    let summary = train_lm(
        &gpu,
        lm.model.as_mut(),
        &train.examples,
        valid.as_deref(),
        retain.as_deref(),
        lm.pad,
        &cfg,
        &mut |e| log.event(e),
    )?;
    drop(log);
    progress.finish();
    let adapter_dir = out.join("adapter");
    lm.model.save_adapter(&gpu, &lora, TaskType::CausalLm, &catalog::hub_name(&model_path, &cache), &adapter_dir)?;
    let after = score_pronunciations(&gpu, &lm, &test_words, "after", progress)?;
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
        "forgetting": forgetting, "steps": summary.steps, "tokens": summary.seen, "train_seconds": summary.seconds,
        "tokens_per_second": summary.per_second(), "first_loss": summary.first_loss,
        "last_loss": summary.last_loss, "evals": summary.evals.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        "best": best_json(&cfg.run.stop, summary.best),
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
    write_report(&out, &report)?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "trained {} steps, {} tokens in {:.1}s ({:.0} tokens/s); loss {:.4} -> {:.4}",
        summary.steps,
        summary.seen,
        summary.seconds,
        summary.per_second(),
        summary.first_loss,
        summary.last_loss
    );
    if let Some((step, v, _)) = summary.evals.last() {
        let _ = writeln!(text, "validation loss {v:.4} (perplexity {:.2}) at step {step}", v.exp());
    }
    if let (Some(b), Some(a)) = (&before, &after) {
        let _ = writeln!(
            text,
            "cmudict on {} held-out words: exact match {:.1}% -> {:.1}%, phoneme error rate {:.1}% -> {:.1}%",
            a.words,
            100.0 * b.exact_match_rate(),
            100.0 * a.exact_match_rate(),
            100.0 * b.phoneme_error_rate(),
            100.0 * a.phoneme_error_rate()
        );
    }
    best_text(&mut text, &cfg.run.stop, summary.best, summary.stopped_early_at);
    if let Some(f) = &forgetting {
        let num = |k: &str| f[k].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            text,
            "retain text ({} tokens): perplexity {:.2} -> {:.2}; mean KL from the base's next-token distribution {:.4} nats",
            f["retain_tokens"],
            num("perplexity_before"),
            num("perplexity_after"),
            num("kl_from_base_after")
        );
    }
    let _ = writeln!(text, "adapter (PEFT format): {}", adapter_dir.display());
    Ok(RunReport { dir: out, json: report, text })
}

/// `--quantize`: validation loss of the f32 base, quantization of its linears (errors per tensor
/// type printed), and the validation loss again.
fn quantize_base(
    gpu: &Gpu,
    lm: &mut LoadedLm,
    kind: crate::quant::QuantType,
    valid: Option<&[Example]>,
    args: &TrainSettings,
    progress: &mut dyn Progress,
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
        progress.note(&format!("  {line}"));
    }
    if let (Some(b), Some(a)) = (before, after) {
        progress.note(&format!(
            "  validation perplexity {:.3} (f32) -> {:.3} ({kind}) over {} batches",
            (b as f64).exp(),
            (a as f64).exp(),
            batches.len()
        ));
    }
    Ok(json!({"kind": kind, "report": report, "val_loss_f32": before, "val_loss_quantized": after,
        "val_ppl_f32": before.map(|b| (b as f64).exp()), "val_ppl_quantized": after.map(|a| (a as f64).exp())}))
}

/// The retain set (tokenized) and where it came from: `--retain FILE`, samples of the base
/// model (`--retain-generate N`, also written to `out/data/retain.jsonl`), or none.
fn retain_set(
    args: &TrainSettings,
    gpu: &Gpu,
    lm: &LoadedLm,
    max_len: usize,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<(Option<Vec<Example>>, serde_json::Value)> {
    if let Some(path) = &args.retain {
        let examples = lm::tokenize_all(&lm::read_jsonl(path)?, &lm.tokenizer, &lm.format, max_len)?.examples;
        return Ok((Some(examples), json!(path)));
    }
    let Some(count) = args.retain_generate else { return Ok((None, serde_json::Value::Null)) };
    // A document starts after the format's bos, or after the end of another one.
    let start = lm.format.bos().unwrap_or(lm.stop[0]);
    let len = args.retain_sample_len.min(max_len.saturating_sub(1));
    let what = "retain samples from the base model";
    // Its own seed stream, so the samples do not move with the LoRA initialisation.
    let seed = args.seed ^ 0x5245_5441_494e; // "RETAIN"
    let examples =
        forgetting::sample_retain_set(gpu, lm.model.as_ref(), start, &lm.stop, count, len, seed, &mut |i| {
            progress.count(what, i, count);
            Ok(())
        })?;
    progress.count(what, count, count);
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
    progress: &mut dyn Progress,
) -> Result<Option<PronunciationScore>> {
    if records.is_empty() {
        return Ok(None);
    }
    let what = format!("words scored {when}");
    let mut score = PronunciationScore::default();
    for (i, r) in records.iter().enumerate() {
        progress.count(&what, i, records.len());
        let Record::Completion { prompt, completion } = r else { continue };
        let answer = complete(gpu, lm, prompt, 32)?;
        score.add(answer.trim(), completion.trim());
    }
    progress.count(&what, records.len(), records.len());
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
