//! A classifier's run: an encoder (all-MiniLM-L6-v2 by default) with a head, trained by one of
//! the strategies on a jsonl/csv folder or on SpamAssassin, then scored on the test set. Writes
//! a run folder: settings.json, metrics.jsonl, report.json, and the PEFT adapter (`lora`) or the
//! whole model (other strategies).

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::{Progress, RunLog, RunReport, Trained, write_json, write_report};
use crate::data::catalog;
use crate::data::classify::{self, Example, LabelSet, Splits};
use crate::data::encode::{Encoded, encode_texts, encoder_tokenizer, pad_id};
use crate::data::fetch::{self, Asset};
use crate::data::spamassassin;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::matmul_coop;
use crate::metrics::{Metrics, group_accuracy};
use crate::models::classifier::SequenceClassifier;
use crate::models::count_params;
use crate::nn::LoraConfig;
use crate::train::classify::{ClassifyConfig, LabeledSet, Strategy, Unfreeze, predict, train_classifier};
use crate::train::settings::{TrainSettings, write_resolved};
use crate::train::stopping::StopMetric;

/// The main job's default subsample of SpamAssassin (lavapipe finishes it in about 4.5
/// minutes): training, validation and test e-mails, and tokens per e-mail. `--full` uses every
/// e-mail of each split, at 128 tokens unless `--max-len` says otherwise.
pub const SPAM_TRAIN: usize = 400;
pub const SPAM_VALID: usize = 100;
pub const SPAM_TEST: usize = 400;
pub const SPAM_MAX_LEN: usize = 64;
/// The split of the whole corpus: 70% train, 10% validation, 20% test, stratified by folder.
const SPAM_VALID_FRAC: f64 = 0.1;
const SPAM_TEST_FRAC: f64 = 0.2;

/// A sequence classifier trained by one of the strategies, then scored on the test set.
pub fn run(gpu: &Gpu, args: &TrainSettings, progress: &mut dyn Progress) -> Result<RunReport> {
    let run_start = Instant::now();
    let c = &args.classify;
    let strategy: Strategy = c.strategy.parse()?;
    if args.pack {
        return Err(Error::invalid(
            "--pack",
            "packs language-model examples into shared rows; a classifier reads one text per row",
        ));
    }
    if args.dora && strategy != Strategy::Lora {
        return Err(Error::invalid("--dora", format!("DoRA adapts LoRA; it needs --strategy lora, not {strategy}")));
    }
    if args.retain_generate.is_some() {
        return Err(Error::invalid(
            "--retain-generate",
            "samples a language model's own text; a classifier's retain set is labelled texts (--retain FILE)",
        ));
    }
    let cache = fetch::default_cache_dir();
    let model_dir = catalog::resolve(args.model.as_deref(), "minilm", &cache)?;
    let (splits, data_name) = load_splits(args, &cache)?;
    let labels = LabelSet::from_examples(&splits.train);
    // Where each split came from, for errors that name a line: the data folder's file, or the
    // split's name for built-in tasks.
    let source = |split: &str| -> String {
        let Some(dir) = &args.data else { return split.to_string() };
        ["jsonl", "csv"]
            .iter()
            .map(|ext| dir.join(format!("{split}.{ext}")))
            .find(|p| p.is_file())
            .map_or(split.to_string(), |p| p.display().to_string())
    };
    if labels.len() < 2 {
        return Err(Error::Parse {
            path: source("train").into(),
            message: format!(
                "every one of the {} training examples has the label {:?}; a classifier needs at least two labels",
                splits.train.len(),
                labels.names
            ),
        });
    }
    // The main job's documented default: 64 tokens (subject and the start of the body) keep
    // it within minutes on a CPU; --full and other data sets take 128.
    let spam_subsample = args.data.is_none() && !c.full;
    // A text longer than the encoder's positions would fail at the first batch that holds one
    // (or never, when none lands in the steps run): a --max-len past them is refused here,
    // before the run folder exists, and the default is kept within them (as for LMs).
    let config: serde_json::Value = crate::formats::safetensors::read_config(&model_dir)?;
    let positions = config["max_position_embeddings"].as_u64().map_or(usize::MAX, |p| p as usize);
    let max_len = args.max_len.unwrap_or((if spam_subsample { SPAM_MAX_LEN } else { 128 }).min(positions));
    if max_len > positions {
        return Err(Error::invalid(
            "--max-len",
            format!(
                "{max_len} tokens is beyond the {positions} positions of {} (max_position_embeddings); \
                 pass --max-len {positions} or less",
                model_dir.display()
            ),
        ));
    }
    let tokenizer = encoder_tokenizer(&model_dir, max_len)?;
    let pad = pad_id(&tokenizer);
    let encode = |set: &[Example], name: &str| -> Result<(Vec<Encoded>, Vec<usize>)> {
        let texts: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
        Ok((encode_texts(&tokenizer, &texts, max_len)?, labels.ids(set, name)?))
    };
    let (train_x, train_y) = encode(&splits.train, &source("train"))?;
    let (valid_x, valid_y) = encode(&splits.valid, &source("valid"))?;
    let (test_x, test_y) = encode(&splits.test, &source("test"))?;
    let retain = match &args.retain {
        Some(path) => classify::read_examples(path)?,
        None => Vec::new(),
    };
    let (retain_x, retain_y) =
        encode(&retain, &args.retain.as_ref().map_or("retain".into(), |p| p.display().to_string()))?;
    let truncated = train_x.iter().filter(|e| e.ids.len() >= max_len).count();

    let t0 = Instant::now();
    let mut model = SequenceClassifier::load(gpu, &model_dir, labels.names.clone(), c.pooling, args.seed)?;
    let load_s = t0.elapsed().as_secs_f64();
    if let Some(p) = args.dropout()? {
        model.body.config.hidden_dropout_prob = p;
        model.dropout = p;
    }
    let class_weights = match c.class_weights.as_deref() {
        None | Some("none") => None,
        Some("balanced") => Some(classify::balanced_class_weights(&classify::label_counts(&splits.train, &labels))),
        Some(list) => Some(parse_weights(list, labels.len())?),
    };
    let lora = LoraConfig {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        target_modules: if args.target_modules.is_empty() {
            ["query", "key", "value", "dense"].map(String::from).to_vec()
        } else {
            args.target_modules.clone()
        },
        use_rslora: false,
        use_dora: args.dora,
    };
    // Refuse a run the adapter cannot hold before anything is written (quantization is for
    // decoders, so it is not suggested).
    let memory = crate::train::memory::estimate_classifier(&mut model, strategy, &lora, args.batch_size, max_len);
    let budget = crate::train::memory::device_budget(gpu.info().device_type, args.gpu_memory);
    let (memory, auto_checkpoint) = crate::train::memory::choose_checkpointing(memory, args.grad_checkpoint, budget);
    model.body.grad_checkpoint = memory.grad_checkpoint;
    if let Some(line) = &auto_checkpoint {
        progress.note(line);
    }
    crate::train::memory::check_fits(&memory, gpu.limits(), budget, true)?;
    let out = args.run_dir();
    super::open_run_dir(args, &out)?;
    let lr = match strategy {
        Strategy::Head => 1e-3,
        Strategy::Lora => 5e-4,
        Strategy::Top(_) | Strategy::Full => 1e-4,
    };
    let epochs = if strategy == Strategy::Head { 20 } else { 1 };
    let cfg = ClassifyConfig {
        strategy,
        lora: lora.clone(),
        run: args.loop_settings(&out, lr, epochs, StopMetric::MacroF1),
        batch_size: args.batch_size,
        layer_lr_decay: c.layer_lr_decay,
        unfreeze: c.unfreeze_every.map(|every| Unfreeze { every, unit: c.unfreeze_unit }),
        class_weights,
    };
    let (_, total_params) = count_params(&model);
    let settings = json!({
        "task": "sequence-classification", "model": model_dir, "data": data_name, "device": gpu.describe(), "precision": matmul_coop::describe(gpu),
        "labels": labels.names, "pooling": c.pooling, "max_len": max_len, "train": cfg,
        "dropout": {"hidden": model.body.config.hidden_dropout_prob, "classifier": model.dropout},
        "lora": (strategy == Strategy::Lora).then(|| json!({"r": lora.r, "alpha": lora.alpha,
            "dropout": lora.dropout, "target_modules": lora.target_modules})),
        "examples": {"train": train_x.len(), "valid": valid_x.len(), "test": test_x.len(),
            "train_truncated": truncated},
    });
    write_json(&out.join("settings.json"), &settings)?;
    write_data(&out.join("data"), &splits)?;
    write_resolved(&out.join("config.toml"), args)?;
    let counts = classify::label_counts(&splits.train, &labels);
    progress.note(&format!("kiln train (classification) on {}, {}", gpu.describe(), matmul_coop::describe(gpu)));
    progress.note(&format!("  model     {} ({total_params} parameters, loaded in {load_s:.1}s)", model_dir.display()));
    progress.note(&format!(
        "  data      {data_name}: {} train ({}), {} valid, {} test; {truncated} truncated to {max_len} tokens",
        train_x.len(),
        labels.names.iter().zip(&counts).map(|(l, n)| format!("{n} {l}")).collect::<Vec<_>>().join(", "),
        valid_x.len(),
        test_x.len(),
    ));
    let pooling = c.pooling.describe();
    let head = if model.head_from_checkpoint { "the checkpoint's head" } else { "a new head" };
    progress.note(&format!(
        "  strategy  {strategy}, {pooling} pooling, {head}, lr {:.1e}, {} epochs",
        cfg.run.lr, cfg.run.epochs
    ));
    progress.note(&format!("  run       {}", out.display()));
    progress.note(&memory.table());

    let mut log = RunLog::open(args, &out, total_params, progress)?;
    let train_set = LabeledSet { items: &train_x, labels: &train_y };
    let valid_set = (!valid_x.is_empty()).then_some(LabeledSet { items: &valid_x, labels: &valid_y });
    let retain_set = (!retain_x.is_empty()).then_some(LabeledSet { items: &retain_x, labels: &retain_y });
    // Forgetting: the retain set scored before training and again at the end.
    let score_retain = |model: &SequenceClassifier| -> Result<Option<Metrics>> {
        match retain_set {
            Some(r) => {
                let p = predict(gpu, model, r.items, Some(r.labels), args.batch_size, pad)?;
                Ok(Some(Metrics::compute(r.labels, &p.pred, labels.len())?))
            }
            None => Ok(None),
        }
    };
    let retain_before = score_retain(&model)?;
    let summary =
        train_classifier(gpu, &mut model, train_set, valid_set, retain_set, pad, &cfg, &mut |e| log.event(e))?;
    let trainable = log.trainable;
    drop(log);
    progress.finish();

    let t_test = Instant::now();
    let (test_metrics, groups) = if test_x.is_empty() {
        (None, None)
    } else {
        let p = predict(gpu, &model, &test_x, Some(&test_y), args.batch_size, pad)?;
        let groups: Vec<Option<String>> = splits.test.iter().map(|e| e.group.clone()).collect();
        (Some(Metrics::compute(&test_y, &p.pred, labels.len())?), Some(group_accuracy(&test_y, &p.pred, &groups)?))
    };
    let test_s = t_test.elapsed().as_secs_f64();
    let forgetting = match (&retain_before, score_retain(&model)?) {
        (Some(b), Some(a)) => Some(json!({
            "retain": args.retain, "retain_examples": a.count,
            "accuracy_before": b.accuracy, "accuracy_after": a.accuracy,
            "macro_f1_before": b.macro_f1, "macro_f1_after": a.macro_f1,
        })),
        _ => None,
    };
    let saved = save(gpu, &mut model, strategy, &lora, &model_dir, &out)?;
    let trained = Trained { summary: &summary, stop: &cfg.run.stop, strategy, trainable, total_params, run_start };
    let report = trained.json(
        gpu,
        json!({"test_seconds": test_s, "test": test_metrics, "test_groups": groups, "saved": saved,
            "forgetting": forgetting}),
    );
    write_report(&out, &report)?;
    let mut scores = String::new();
    if let (Some(m), Some(g)) = (&test_metrics, &groups) {
        let _ = writeln!(scores, "test set ({} texts):\n{}", m.count, m.report(&labels.names));
        for (name, s) in g {
            let _ = writeln!(scores, "  {name:>12}: {}/{} correct ({:.1}%)", s.correct, s.total, 100.0 * s.accuracy());
        }
    }
    let mut after = String::new();
    if let Some(f) = &forgetting {
        let _ = writeln!(
            after,
            "retain set ({} texts): accuracy {:.1}% -> {:.1}%, macro-F1 {:.4} -> {:.4}",
            f["retain_examples"],
            100.0 * f["accuracy_before"].as_f64().unwrap_or(0.0),
            100.0 * f["accuracy_after"].as_f64().unwrap_or(0.0),
            f["macro_f1_before"].as_f64().unwrap_or(0.0),
            f["macro_f1_after"].as_f64().unwrap_or(0.0)
        );
    }
    let text = trained.text("examples", &scores, &after, &saved);
    Ok(RunReport { dir: out, json: report, text })
}

/// The task's or folder's train/valid/test sets, and a name for them.
fn load_splits(args: &TrainSettings, cache: &Path) -> Result<(Splits, String)> {
    let c = &args.classify;
    let mut splits = match (&args.data, args.task.as_deref()) {
        (Some(dir), _) => {
            let mut s = classify::read_folder(dir)?;
            if s.valid.is_empty() {
                let t = classify::stratified_split(std::mem::take(&mut s.train), c.valid_frac, 0.0, args.seed);
                s.train = t.train;
                s.valid = t.valid;
            }
            (s, dir.display().to_string())
        }
        _ => (spamassassin_splits(cache, c.full, args.seed)?, "SpamAssassin".to_string()),
    };
    if let Some(n) = args.train_limit {
        splits.0.train = classify::stratified_subsample(&splits.0.train, n, args.seed);
    }
    Ok(splits)
}

/// SpamAssassin split 70/10/20 by folder (so the 250 hard-ham e-mails, 4% of the corpus, are
/// in every split), then subsampled the same way unless `full`.
fn spamassassin_splits(cache: &Path, full: bool, seed: u64) -> Result<Splits> {
    let jsonl = cache.join("tasks/spamassassin.jsonl");
    if !jsonl.is_file() {
        let data = fetch::fetch(Asset::SpamAssassin, cache)?;
        std::fs::create_dir_all(cache.join("tasks")).map_err(|e| Error::io(cache, e))?;
        spamassassin::import(&data, &jsonl, false)?;
    }
    let all = classify::read_examples(&jsonl)?;
    let by_group = |set: Vec<Example>| -> Vec<Example> {
        set.into_iter().map(|e| Example { label: e.group.clone().unwrap_or_default(), ..e }).collect()
    };
    let restore = |set: Vec<Example>, n: Option<usize>| -> Vec<Example> {
        let set = match n {
            Some(n) => classify::stratified_subsample(&set, n, seed),
            None => set,
        };
        set.into_iter().map(|e| Example { label: label_of_group(e.group.as_deref()), ..e }).collect()
    };
    let s = classify::stratified_split(by_group(all), SPAM_VALID_FRAC, SPAM_TEST_FRAC, seed);
    let sub = |n: usize| (!full).then_some(n);
    Ok(Splits {
        train: restore(s.train, sub(SPAM_TRAIN)),
        valid: restore(s.valid, sub(SPAM_VALID)),
        test: restore(s.test, sub(SPAM_TEST)),
    })
}

/// The texts the run used, as jsonl (`data/{train,valid,test}.jsonl`), so a run can be
/// reproduced or compared (`scripts/peft_classify_baseline.py`) on exactly the same split.
pub(crate) fn write_data(dir: &Path, splits: &Splits) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, set) in [("train", &splits.train), ("valid", &splits.valid), ("test", &splits.test)] {
        let mut text = String::new();
        for e in set.iter() {
            let line = json!({"text": e.text, "label": e.label, "group": e.group});
            text.push_str(&serde_json::to_string(&line).expect("json values serialize"));
            text.push('\n');
        }
        crate::util::write_atomic(&dir.join(format!("{name}.jsonl")), text.as_bytes())?;
    }
    Ok(())
}

fn label_of_group(group: Option<&str>) -> String {
    if group.is_some_and(|g| g.starts_with("spam")) { "spam" } else { "ham" }.to_string()
}

pub(crate) fn parse_weights(list: &str, n: usize) -> Result<Vec<f32>> {
    let w: Vec<f32> = list
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid("--class-weights", format!("`{list}`: {e}")))?;
    if w.len() != n || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return Err(Error::invalid(
            "--class-weights",
            format!("`{list}` must be {n} non-negative numbers (one per label), `balanced` or `none`"),
        ));
    }
    Ok(w)
}

/// The PEFT adapter (`lora`), or the whole classifier as a Hugging Face folder (other
/// strategies): config.json with the labels, model.safetensors, the tokenizer.
fn save(
    gpu: &Gpu,
    model: &mut SequenceClassifier,
    strategy: Strategy,
    lora: &LoraConfig,
    base: &Path,
    out: &Path,
) -> Result<PathBuf> {
    if strategy == Strategy::Lora {
        let dir = out.join("adapter");
        model.save_adapter(gpu, lora, &catalog::hub_name(base, &fetch::default_cache_dir()), &dir)?;
        return Ok(dir);
    }
    let dir = out.join("model");
    crate::models::classifier::save_pretrained(gpu, model, base, &dir)?;
    Ok(dir)
}
