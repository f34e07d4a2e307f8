//! What a `--model` argument (with an optional `--lora`) is: a text classifier (a run folder, a
//! SEQ_CLS adapter on its base, a saved `BertForSequenceClassification`), an image classifier (a
//! run folder or the `model/` an image run saved) or a causal LM (a Hugging Face folder or GGUF
//! file, with a CAUSAL_LM adapter), decided as `kiln train` decides: from the adapter's task and
//! the model's files. Also where an adapter's base is (`base_model_name_or_path` may be a
//! Hugging Face repo id, which kiln maps back to the model it caches).

use std::path::{Path, PathBuf};

use crate::data::catalog;
use crate::error::{Error, Result};
use crate::formats::safetensors::read_config;
use crate::models::classifier::{self, Pooling};
use crate::models::image_classifier::IMAGE_CONFIG;

/// A model ready to load.
#[derive(Debug)]
pub enum Target {
    /// A text classifier: the encoder folder, its adapter if any, the labels and pooling
    /// (`kiln_classifier.json`, else config.json's `id2label` and the caller's pooling).
    Text { base: PathBuf, adapter: Option<PathBuf>, labels: Vec<String>, pooling: Pooling, run: Option<PathBuf> },
    /// An image classifier saved by `kiln train` (model.safetensors and config.json with labels).
    Image { model: PathBuf, labels: Vec<String>, run: Option<PathBuf> },
    /// A causal LM and its adapter if any.
    Lm { path: PathBuf, adapter: Option<PathBuf>, run: Option<PathBuf> },
}

impl Target {
    /// The run folder the model came from (its settings.json gives `max_len`, image sizes).
    pub fn run(&self) -> Option<&Path> {
        match self {
            Target::Text { run, .. } | Target::Image { run, .. } | Target::Lm { run, .. } => run.as_deref(),
        }
    }

    /// One value of the run's settings.json.
    pub fn run_setting(&self, key: &str) -> Option<serde_json::Value> {
        let v = read_json(&self.run()?.join("settings.json")).ok()?;
        Some(v.get(key)?.clone()).filter(|v| !v.is_null())
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })
}

/// The folder above `dir` when it is a kiln run folder (it has settings.json).
fn parent_run(dir: &Path) -> Option<PathBuf> {
    dir.parent().filter(|p| p.join("settings.json").is_file()).map(Path::to_path_buf)
}

/// The base an adapter is applied to: `base_model_name_or_path` when it is a path here or the
/// repo id of a model kiln knows (fetched into `cache`), else the model of the run the adapter
/// came from (its settings.json).
pub fn adapter_base(adapter: &Path, cache: &Path) -> Result<PathBuf> {
    let cfg_path = adapter.join("adapter_config.json");
    let cfg = read_json(&cfg_path)?;
    let base = cfg["base_model_name_or_path"].as_str().unwrap_or_default();
    if let Some(path) = catalog::base_path(base, cache)? {
        return Ok(path);
    }
    let from_run = parent_run(adapter)
        .and_then(|run| read_json(&run.join("settings.json")).ok())
        .and_then(|s| s["model"].as_str().map(PathBuf::from))
        .filter(|p| p.exists());
    from_run.ok_or_else(|| Error::Parse {
        path: cfg_path,
        message: format!(
            "base_model_name_or_path `{base}` is not a file or folder here, nor a model kiln knows; give the base \
             with --model BASE --lora {}",
            adapter.display()
        ),
    })
}

fn is_classifier_adapter(adapter: &Path) -> Result<bool> {
    if adapter.join(classifier::CLASSIFIER_META).is_file() {
        return Ok(true);
    }
    Ok(read_json(&adapter.join("adapter_config.json"))?["task_type"] == "SEQ_CLS")
}

/// Labels of a classifier folder without kiln_classifier.json: config.json's `id2label`.
fn config_labels(dir: &Path) -> Result<Vec<String>> {
    let cfg: serde_json::Value = read_config(dir)?;
    let Some(map) = cfg["id2label"].as_object() else {
        return Err(Error::Parse {
            path: dir.join("config.json"),
            message: "no id2label: this encoder has no trained classification head (train one with `kiln train`)"
                .into(),
        });
    };
    let mut pairs: Vec<(usize, String)> =
        map.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string()))).collect();
    pairs.sort();
    Ok(pairs.into_iter().map(|(_, l)| l).collect())
}

fn text_target(base: PathBuf, adapter: Option<PathBuf>, pooling: Pooling, run: Option<PathBuf>) -> Result<Target> {
    if adapter.is_none()
        && crate::formats::safetensors::SafetensorsSource::open(&base)?.shape_of("classifier.weight").is_none()
    {
        return Err(Error::Parse {
            path: base,
            message: "no `classifier.weight`: this encoder has no trained classification head (train one with \
                      `kiln train`, or give its adapter with --lora)"
                .into(),
        });
    }
    let meta_dir = adapter.as_deref().unwrap_or(&base);
    let (labels, pooling) = if meta_dir.join(classifier::CLASSIFIER_META).is_file() {
        classifier::read_classifier_meta(meta_dir)?
    } else {
        (config_labels(&base)?, pooling)
    };
    Ok(Target::Text { base, adapter, labels, pooling, run })
}

/// An image classifier `kiln train` saved: config.json with `architecture` and `labels`.
fn image_labels(dir: &Path) -> Option<Vec<String>> {
    let cfg = read_json(&dir.join(IMAGE_CONFIG)).ok()?;
    cfg["architecture"].as_str()?;
    cfg["labels"].as_array()?.iter().map(|l| l.as_str().map(str::to_string)).collect()
}

/// Decides what `model` (a path, or a model kiln knows by name) and `lora` are. `pooling` is
/// used for a transformers classifier folder that does not say how it pools.
pub fn resolve(model: &Path, lora: Option<&Path>, pooling: Pooling, cache: &Path) -> Result<Target> {
    let mut model = catalog::resolve(Some(model), "smollm2-135m", cache)?;
    let mut run = None;
    // A kiln run folder: its adapter or model.
    if model.join("settings.json").is_file() {
        run = Some(model.clone());
        match ["adapter", "model"].iter().map(|s| model.join(s)).find(|p| p.is_dir()) {
            Some(sub) => model = sub,
            None => {
                return Err(Error::Parse {
                    path: model,
                    message: "a run folder without adapter/ or model/: the run did not finish".into(),
                });
            }
        }
    }
    if let Some(lora) = lora {
        if !lora.join("adapter_config.json").is_file() {
            return Err(Error::Parse {
                path: lora.to_path_buf(),
                message: "no adapter_config.json: not a PEFT adapter folder".into(),
            });
        }
        let run = run.or_else(|| parent_run(lora));
        return if is_classifier_adapter(lora)? {
            text_target(model, Some(lora.to_path_buf()), pooling, run)
        } else {
            Ok(Target::Lm { path: model, adapter: Some(lora.to_path_buf()), run })
        };
    }
    if model.join("adapter_config.json").is_file() {
        let base = adapter_base(&model, cache)?;
        let run = run.or_else(|| parent_run(&model));
        return if is_classifier_adapter(&model)? {
            text_target(base, Some(model), pooling, run)
        } else {
            Ok(Target::Lm { path: base, adapter: Some(model), run })
        };
    }
    if model.is_dir() {
        if let Some(labels) = image_labels(&model) {
            let run = run.or_else(|| parent_run(&model));
            return Ok(Target::Image { model, labels, run });
        }
        if model.join("config.json").is_file() {
            let cfg: serde_json::Value = read_config(&model)?;
            if cfg["model_type"].as_str() == Some("bert") {
                let run = run.or_else(|| parent_run(&model));
                return text_target(model, None, pooling, run);
            }
        }
    }
    Ok(Target::Lm { path: model, adapter: None, run })
}
