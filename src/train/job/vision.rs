//! An image classifier's run: a pretrained CNN (EfficientNet-Lite0 by default, or a ResNet /
//! EfficientNet-Lite checkpoint of the user's) with a new head, trained by `--strategy head`,
//! `top:N` or `full` on an image folder or list (`--data`) or on ELPV (`--task elpv`) through
//! [`ImageTask`](crate::train::vision::ImageTask), then scored on the validation and test sets
//! per class and per group. Writes a run folder: settings.json, config.toml, metrics.jsonl,
//! report.json/.md with the plots, data/ (the split) and model/.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::classify::{parse_weights, write_data};
use super::{Progress, RunLog, RunReport, Trained, write_json, write_report};
use crate::data::catalog::{self, ModelKind};
use crate::data::classify::{self, Example, LabelSet, Splits};
use crate::data::elpv;
use crate::data::fashion_mnist;
use crate::data::fetch::{self, Asset};
use crate::data::image_list::{self, ImageBank};
use crate::data::images::{EvalTransform, TrainTransform};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::matmul_coop;
use crate::metrics::{Metrics, group_metrics};
use crate::models::count_params;
use crate::models::image_classifier::ImageClassifier;
use crate::nn::{BnMode, LoraConfig};
use crate::train::classify::{ClassifyConfig, Strategy, Unfreeze};
use crate::train::settings::{BnArg, TrainSettings, write_resolved};
use crate::train::stopping::StopMetric;
use crate::train::vision::{ImageSet, Transforms, eval_transform, predict, train_image_classifier};

/// Built-in image tasks.
pub const TASKS: [&str; 2] = ["elpv", "fashion-mnist"];

/// An image job: an image task, an image model, or image data.
pub fn is_image_job(args: &TrainSettings) -> Result<bool> {
    if let Some(task) = args.task.as_deref() {
        return Ok(TASKS.contains(&task));
    }
    if let Some(model) = &args.model {
        if !model.exists() {
            let known = model.to_str().map(catalog::find).transpose()?.flatten();
            return Ok(known.is_some_and(|m| m.kind == ModelKind::ImageClassifier));
        }
        return Ok(is_cnn(model));
    }
    Ok(args.data.as_deref().is_some_and(image_list::looks_like_images))
}

/// A PyTorch checkpoint, or safetensors whose names are a CNN's (a saved image run too).
fn is_cnn(path: &Path) -> bool {
    let ext = |p: &Path, x: &[&str]| p.extension().and_then(|e| e.to_str()).is_some_and(|e| x.contains(&e));
    if path.is_file() && ext(path, &["pth", "pt"]) {
        return true;
    }
    let file = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
    if path.is_dir() && path.join("config.json").is_file() {
        let text = std::fs::read_to_string(path.join("config.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(a) = v["architecture"].as_str() {
            return a.starts_with("efficientnet") || a.starts_with("resnet");
        }
        if v.get("width_coefficient").is_some() {
            return true;
        }
        if v.get("model_type").is_some() {
            return false;
        }
    }
    // The header alone says which tensors a safetensors file holds; the weights are not read.
    let Some(names) = crate::formats::safetensors_header::tensor_names(&file) else { return false };
    names.iter().any(|n| n == "_conv_stem.weight" || n == "conv1.weight")
}

/// The task's or folder's splits and a name for them.
fn load_splits(args: &TrainSettings, cache: &Path) -> Result<(Splits, String)> {
    let v = &args.vision;
    // A user's list or folder, or Fashion-MNIST written out as one: the splits it lacks are cut
    // from its training images.
    let listed = |path: &Path| -> Result<Splits> {
        let mut s = image_list::read(path)?;
        if s.valid.is_empty() || s.test.is_empty() {
            let valid_frac = if s.valid.is_empty() { args.classify.valid_frac } else { 0.0 };
            let test_frac = if s.test.is_empty() { v.test_frac } else { 0.0 };
            let t = classify::stratified_split(std::mem::take(&mut s.train), valid_frac, test_frac, args.seed);
            s.train = t.train;
            s.valid.extend(t.valid);
            s.test.extend(t.test);
        }
        Ok(s)
    };
    let (mut splits, name) = match (&args.data, args.task.as_deref()) {
        (Some(data), _) => (listed(data)?, data.display().to_string()),
        (None, Some("elpv")) => {
            let dir = fetch::fetch(Asset::Elpv, cache)?;
            (elpv::split(elpv::read(&dir)?, args.seed), "ELPV (module blocks 60/20/20)".to_string())
        }
        (None, Some("fashion-mnist")) => {
            let idx_dir = fetch::fetch(Asset::FashionMnist, cache)?;
            let folder = cache.join(format!("fashion-mnist-png-{}", Asset::FashionMnist.version()));
            let list = fashion_mnist::as_image_list(&idx_dir, &folder)?;
            let name = format!("Fashion-MNIST ({}: validation cut from train, the official test set)", list.display());
            (listed(&list)?, name)
        }
        (None, Some(other)) => {
            return Err(Error::invalid("--task", format!("`{other}` is no image task (known: {})", TASKS.join(", "))));
        }
        (None, None) => {
            return Err(Error::invalid("train", "give --data DIR (images) or --task elpv|fashion-mnist"));
        }
    };
    if let Some(n) = args.train_limit {
        splits.train = classify::stratified_subsample(&splits.train, n, args.seed);
    }
    if let Some(n) = v.eval_limit {
        splits.valid = classify::stratified_subsample(&splits.valid, n, args.seed);
        splits.test = classify::stratified_subsample(&splits.test, n, args.seed);
    }
    Ok((splits, name))
}

fn bank(set: &[Example], short_side: u32) -> Result<ImageBank> {
    let paths: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
    ImageBank::load(&paths, short_side)
}

/// Scores of a set: overall, and per group.
fn scores(
    gpu: &Gpu,
    model: &ImageClassifier,
    bank: &ImageBank,
    tf: &EvalTransform,
    set: &[Example],
    ids: &[usize],
    batch: usize,
) -> Result<serde_json::Value> {
    if set.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    let k = model.num_classes();
    let p = predict(gpu, model, bank, tf, Some(ids), batch)?;
    let m = Metrics::compute(ids, &p.pred, k)?;
    let groups: Vec<Option<String>> = set.iter().map(|e| e.group.clone()).collect();
    let g = group_metrics(ids, &p.pred, &groups, k)?;
    Ok(json!({"all": m, "loss": p.loss, "groups": g}))
}

/// An image classifier trained by one of the strategies, then scored on valid and test.
pub fn run(gpu: &Gpu, args: &TrainSettings, progress: &mut dyn Progress) -> Result<RunReport> {
    let run_start = Instant::now();
    let c = &args.classify;
    let v = &args.vision;
    let mut strategy: Strategy = c.strategy.parse()?;
    if strategy == Strategy::Lora {
        // `lora` is the text classifiers' default; a CNN has no adapters.
        progress.note("note: image models have no LoRA adapters; training `head` (--strategy head|top:N|full)");
        strategy = Strategy::Head;
    }
    if v.image_size < 32 {
        return Err(Error::invalid("--image-size", format!("{} is below 32 (the CNNs downsample 32×)", v.image_size)));
    }
    let resize = v.resize.unwrap_or((v.image_size * 256).div_ceil(224));
    if resize < v.image_size {
        return Err(Error::invalid("--resize", format!("{resize} is below --image-size {}", v.image_size)));
    }
    let cache = fetch::default_cache_dir();
    let model_path = catalog::resolve(args.model.as_deref(), "efficientnet-lite0", &cache)?;
    let (splits, data_name) = load_splits(args, &cache)?;
    let labels = LabelSet::from_examples(&splits.train);
    if labels.len() < 2 {
        return Err(Error::invalid(
            "train",
            format!(
                "the {} training images all have the label {:?}; a classifier needs two",
                splits.train.len(),
                labels.names
            ),
        ));
    }
    let ids = |set: &[Example], name: &str| labels.ids(set, name);
    let (train_y, valid_y, test_y) =
        (ids(&splits.train, "train")?, ids(&splits.valid, "valid")?, ids(&splits.test, "test")?);

    let t0 = Instant::now();
    let (train_bank, valid_bank, test_bank) =
        (bank(&splits.train, resize)?, bank(&splits.valid, resize)?, bank(&splits.test, resize)?);
    let decode_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let bn = match v.bn {
        BnArg::Frozen => BnMode::Frozen,
        BnArg::Train => BnMode::Train,
    };
    let mut model = ImageClassifier::load(gpu, &model_path, labels.len(), bn, args.seed)?;
    let load_s = t0.elapsed().as_secs_f64();
    let eval_tf = eval_transform(&model, resize, v.image_size);
    let train_tf = TrainTransform { mean: eval_tf.mean, std: eval_tf.std, ..TrainTransform::imagenet(v.image_size) };
    let tf = Transforms { eval: eval_tf, train: train_tf, augment: !v.no_augment };
    let class_weights = match c.class_weights.as_deref() {
        None | Some("none") => None,
        Some("balanced") => Some(classify::balanced_class_weights(&classify::label_counts(&splits.train, &labels))),
        Some(list) => Some(parse_weights(list, labels.len())?),
    };
    let out = args.run_dir();
    super::open_run_dir(args, &out)?;
    let (lr, epochs) = if strategy == Strategy::Head { (1e-3, 20) } else { (1e-4, 3) };
    let cfg = ClassifyConfig {
        strategy,
        // Unused: image models take no adapters.
        lora: LoraConfig {
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            target_modules: Vec::new(),
            use_rslora: false,
            use_dora: false,
        },
        run: args.loop_settings(&out, lr, epochs, StopMetric::MacroF1),
        batch_size: args.batch_size,
        layer_lr_decay: c.layer_lr_decay,
        unfreeze: c.unfreeze_every.map(|every| Unfreeze { every, unit: c.unfreeze_unit }),
        class_weights,
    };
    let (_, total_params) = count_params(&model);
    let settings = json!({
        "task": "image-classification", "model": model_path, "architecture": model.architecture(),
        "data": data_name, "device": gpu.describe(), "precision": matmul_coop::describe(gpu), "labels": labels.names, "train": cfg,
        "bn": v.bn, "image_size": v.image_size, "resize": resize, "augment": !v.no_augment,
        "examples": {"train": splits.train.len(), "valid": splits.valid.len(), "test": splits.test.len()},
    });
    write_json(&out.join("settings.json"), &settings)?;
    write_data(&out.join("data"), &splits)?;
    write_resolved(&out.join("config.toml"), args)?;
    let counts = classify::label_counts(&splits.train, &labels);
    progress.note(&format!("kiln train (image classification) on {}, {}", gpu.describe(), matmul_coop::describe(gpu)));
    progress.note(&format!(
        "  model     {} ({}, {total_params} parameters, loaded in {load_s:.1}s)",
        model_path.display(),
        model.architecture()
    ));
    progress.note(&format!(
        "  data      {data_name}: {} train ({}), {} valid, {} test; decoded in {decode_s:.1}s",
        splits.train.len(),
        labels.names.iter().zip(&counts).map(|(l, n)| format!("{n} {l}")).collect::<Vec<_>>().join(", "),
        splits.valid.len(),
        splits.test.len(),
    ));
    let head = if model.head_from_checkpoint() { "the checkpoint's head" } else { "a new head" };
    progress.note(&format!(
        "  strategy  {strategy}, {head}, BN {:?}, {}×{} (resize {resize}), lr {:.1e}, {} epochs",
        v.bn, v.image_size, v.image_size, cfg.run.lr, cfg.run.epochs
    ));
    progress.note(&format!("  run       {}", out.display()));

    let mut log = RunLog::open(args, &out, total_params, progress)?;
    let train_set = ImageSet { bank: &train_bank, labels: &train_y };
    let valid_set = (!valid_y.is_empty()).then_some(ImageSet { bank: &valid_bank, labels: &valid_y });
    let summary = train_image_classifier(gpu, &mut model, train_set, valid_set, &tf, &cfg, &mut |e| log.event(e))?;
    let trainable = log.trainable;
    drop(log);
    progress.finish();

    let t_eval = Instant::now();
    let valid_scores = scores(gpu, &model, &valid_bank, &tf.eval, &splits.valid, &valid_y, args.batch_size)?;
    let test_scores = scores(gpu, &model, &test_bank, &tf.eval, &splits.test, &test_y, args.batch_size)?;
    let eval_s = t_eval.elapsed().as_secs_f64();
    let saved = out.join("model");
    model.save(gpu, &saved, &labels.names)?;
    let test_groups: Option<serde_json::Value> = (!test_scores.is_null()).then(|| {
        let g = test_scores["groups"].as_object().cloned().unwrap_or_default();
        g.into_iter()
            .map(|(name, m)| {
                let total = m["count"].as_u64().unwrap_or(0);
                let acc = m["accuracy"].as_f64().unwrap_or(0.0);
                (name, json!({"correct": (acc * total as f64).round() as u64, "total": total}))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    });
    let trained = Trained { summary: &summary, stop: &cfg.run.stop, strategy, trainable, total_params, run_start };
    let report = trained.json(
        gpu,
        json!({"valid": valid_scores["all"], "valid_groups": valid_scores["groups"],
            "test": test_scores["all"], "test_groups": test_groups, "test_group_scores": test_scores["groups"],
            "test_seconds": eval_s, "decode_seconds": decode_s, "saved": saved}),
    );
    write_report(&out, &report)?;
    let mut text = String::new();
    for (name, s) in [("validation", &valid_scores), ("test", &test_scores)] {
        let Ok(m) = serde_json::from_value::<Metrics>(s["all"].clone()) else { continue };
        let _ = writeln!(text, "{name} set ({} images):\n{}", m.count, m.report(&labels.names));
        for (group, g) in s["groups"].as_object().into_iter().flatten() {
            let _ = writeln!(
                text,
                "  {group:>12}: accuracy {:.1}%, macro-F1 {:.4} ({} images)",
                100.0 * g["accuracy"].as_f64().unwrap_or(0.0),
                g["macro_f1"].as_f64().unwrap_or(0.0),
                g["count"]
            );
        }
    }
    let text = trained.text("images", &text, "", &saved);
    Ok(RunReport { dir: out, json: report, text })
}
