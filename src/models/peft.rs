//! LoRA adapters in PEFT's format: a folder with `adapter_config.json` and
//! `adapter_model.safetensors`, keys `base_model.model.<module path>.lora_{A,B}.weight` (no
//! adapter name), A `[r, in]`, B `[out, r]`. Loadable by `peft.PeftModel.from_pretrained`.

use std::path::Path;

use serde_json::json;

use super::CausalLm;
use super::classifier::{Pooling, SequenceClassifier};
use super::weights::{SafetensorsSource, WeightSource, save_safetensors, write_atomic};
use crate::autograd::{Module, Param, WeightLayout};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Linear, LoraAdapter, LoraConfig};

const PREFIX: &str = "base_model.model.";

/// What the adapter was trained for (PEFT's `task_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskType {
    CausalLm,
    SeqCls,
}

impl TaskType {
    pub fn peft_name(self) -> &'static str {
        match self {
            TaskType::CausalLm => "CAUSAL_LM",
            TaskType::SeqCls => "SEQ_CLS",
        }
    }
}

/// Writes the model's adapters as a PEFT folder, replacing an existing one only once the new
/// one is complete.
pub fn save_adapter(
    gpu: &Gpu,
    model: &mut dyn CausalLm,
    cfg: &LoraConfig,
    task: TaskType,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    write_adapter(gpu, model.linears_mut(), &[], cfg, task, base_model, dir)
}

/// Writes a classifier's adapters and its head (PEFT's `modules_to_save`, saved under
/// `base_model.model.classifier.{weight,bias}`) as a SEQ_CLS adapter, plus `kiln_classifier.json`
/// (labels and pooling, which PEFT's config has no place for).
pub fn save_classifier_adapter(
    gpu: &Gpu,
    model: &mut SequenceClassifier,
    cfg: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    let mut head = Vec::new();
    model.classifier.visit_params(&mut |p| head.push((p.name.clone(), p.value.clone())));
    let head = head
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_f32_vec(gpu)?, t.shape().to_vec())))
        .collect::<Result<Vec<_>>>()?;
    let meta = classifier_meta(model);
    write_adapter(gpu, model.body.linears_mut(), &head, cfg, TaskType::SeqCls, base_model, dir)?;
    let text = serde_json::to_string_pretty(&meta).expect("json values serialize");
    write_atomic(&dir.join(CLASSIFIER_META), text.as_bytes())
}

/// Labels and pooling of a classifier, kept beside its adapter or checkpoint.
pub const CLASSIFIER_META: &str = "kiln_classifier.json";

pub fn classifier_meta(model: &SequenceClassifier) -> serde_json::Value {
    json!({ "labels": model.labels, "pooling": model.pooling })
}

/// Reads `kiln_classifier.json`: (labels, pooling).
pub fn read_classifier_meta(dir: &Path) -> Result<(Vec<String>, Pooling)> {
    #[derive(serde::Deserialize)]
    struct Meta {
        labels: Vec<String>,
        pooling: Pooling,
    }
    let path = dir.join(CLASSIFIER_META);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let m: Meta =
        serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.clone(), message: e.to_string() })?;
    Ok((m.labels, m.pooling))
}

/// `modules_to_save`: (parameter name, values, shape) of fully trained modules saved whole.
type SavedModule = (String, Vec<f32>, Vec<usize>);

fn write_adapter(
    gpu: &Gpu,
    linears: Vec<&mut Linear>,
    saved_modules: &[SavedModule],
    cfg: &LoraConfig,
    task: TaskType,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    let mut tensors = Vec::new();
    let mut fan_in_fan_out = false;
    for lin in linears {
        if let Some(l) = &lin.lora {
            fan_in_fan_out |= lin.layout == WeightLayout::InOut;
            for p in [&l.a, &l.b] {
                tensors.push((format!("{PREFIX}{}", p.name), p.value.to_f32_vec(gpu)?, p.value.shape().to_vec()));
            }
        }
    }
    if tensors.is_empty() {
        return Err(Error::invalid("save_adapter", "the model has no LoRA adapters to save"));
    }
    let mut modules: Vec<String> = Vec::new();
    for (name, data, shape) in saved_modules {
        let module = name.rsplit_once('.').map_or(name.as_str(), |(m, _)| m).to_string();
        if !modules.contains(&module) {
            modules.push(module);
        }
        tensors.push((format!("{PREFIX}{name}"), data.clone(), shape.clone()));
    }
    let config = json!({
        "peft_type": "LORA",
        "task_type": task.peft_name(),
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.target_modules,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "modules_to_save": if modules.is_empty() { serde_json::Value::Null } else { json!(modules) },
        "init_lora_weights": true,
        "inference_mode": true,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": null,
        "revision": null,
    });
    // Each file is written to a temporary name and renamed, so neither is ever half-written.
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_string_pretty(&config).expect("json values serialize");
    save_safetensors(&dir.join("adapter_model.safetensors"), &tensors, Some(Default::default()))?;
    write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// Reads `adapter_config.json`, refusing PEFT options kiln does not implement.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.clone(), message: e.to_string() })?;
    let bad = |message: String| Error::Parse { path: path.clone(), message };
    if v["peft_type"].as_str() != Some("LORA") {
        return Err(bad(format!("peft_type {} is not LORA", v["peft_type"])));
    }
    let unsupported = |key: &str| -> bool {
        match &v[key] {
            serde_json::Value::Null => false,
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::Object(o) => !o.is_empty(),
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::String(s) => key != "bias" || s != "none",
            _ => true,
        }
    };
    for key in ["use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "bias"] {
        if unsupported(key) {
            return Err(bad(format!("`{key}` = {} is not supported by kiln", v[key])));
        }
    }
    let target_modules = match &v["target_modules"] {
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        serde_json::Value::String(s) => {
            return Err(bad(format!("target_modules is the regex `{s}`; kiln needs a list of module names")));
        }
        other => return Err(bad(format!("target_modules {other} is not a list"))),
    };
    let r = v["r"].as_u64().ok_or_else(|| bad("no integer `r`".into()))? as usize;
    let cfg = LoraConfig {
        r,
        alpha: v["lora_alpha"].as_f64().unwrap_or(8.0) as f32,
        dropout: v["lora_dropout"].as_f64().unwrap_or(0.0) as f32,
        target_modules,
        use_rslora: v["use_rslora"].as_bool().unwrap_or(false),
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// Attaches the adapter in `dir` to the model (frozen base, trainable adapters). Every key of
/// the file must land on a layer of the model.
pub fn load_adapter(gpu: &Gpu, model: &mut dyn CausalLm, dir: &Path) -> Result<LoraConfig> {
    let cfg = read_adapter_config(dir)?;
    let mut src = SafetensorsSource::open_file(&dir.join("adapter_model.safetensors"))?;
    model.visit_params_mut(&mut |p| p.grad = None);
    attach(gpu, model.linears_mut(), &mut src, &cfg, dir)?;
    src.finish(&|_| false)?;
    Ok(cfg)
}

/// Attaches a SEQ_CLS adapter to a classifier: LoRA on the encoder, and the head from the
/// adapter's `modules_to_save` when it has one. Adapters on BERT's pooler (PEFT puts them there
/// when `dense` is targeted) are skipped: kiln's pooling does not use the pooler.
pub fn load_classifier_adapter(gpu: &Gpu, model: &mut SequenceClassifier, dir: &Path) -> Result<LoraConfig> {
    let cfg = read_adapter_config(dir)?;
    let mut src = SafetensorsSource::open_file(&dir.join("adapter_model.safetensors"))?;
    model.visit_params_mut(&mut |p| p.grad = None);
    attach(gpu, model.body.linears_mut(), &mut src, &cfg, dir)?;
    let head = &mut model.classifier;
    let (k, c) = (head.weight.value.dim(0), head.weight.value.dim(1));
    let w_key = format!("{PREFIX}{}", head.weight.name);
    if src.contains(&w_key) {
        head.weight.value = src.tensor(gpu, &w_key, &[k, c])?;
        if let Some(b) = &mut head.bias {
            b.value = src.tensor(gpu, &format!("{PREFIX}{}", b.name), &[k])?;
        }
    }
    src.finish(&|n| n.contains(".pooler."))?;
    Ok(cfg)
}

/// Puts the file's `lora_A`/`lora_B` pairs on the linears they name; none found is an error.
fn attach(
    gpu: &Gpu,
    linears: Vec<&mut Linear>,
    src: &mut SafetensorsSource,
    cfg: &LoraConfig,
    dir: &Path,
) -> Result<()> {
    // Every target must name a layer of this model: an adapter made for another architecture
    // would otherwise load "successfully" with its foreign weights silently unused.
    let paths: Vec<String> = linears.iter().map(|l| l.path.clone()).collect();
    for target in &cfg.target_modules {
        let one = LoraConfig { target_modules: vec![target.clone()], ..cfg.clone() };
        if !paths.iter().any(|p| one.targets(p)) {
            let mut names: Vec<&str> = paths.iter().filter_map(|p| p.rsplit('.').next()).collect();
            names.sort();
            names.dedup();
            return Err(Error::Parse {
                path: dir.join("adapter_config.json"),
                message: format!("target module `{target}` is no layer of this model; its linear layers are {names:?}"),
            });
        }
    }
    let mut found = 0;
    for lin in linears {
        let a_key = format!("{PREFIX}{}.lora_A.weight", lin.path);
        if !src.contains(&a_key) {
            continue;
        }
        let (d_in, d_out) = lin.in_out();
        let a = src.tensor(gpu, &a_key, &[cfg.r, d_in])?;
        let b = src.tensor(gpu, &format!("{PREFIX}{}.lora_B.weight", lin.path), &[d_out, cfg.r])?;
        let mut a = Param::new(format!("{}.lora_A.weight", lin.path), a);
        let mut b = Param::new(format!("{}.lora_B.weight", lin.path), b);
        a.set_trainable(gpu, true)?;
        b.set_trainable(gpu, true)?;
        lin.lora = Some(LoraAdapter { a, b, scale: cfg.scale(), dropout: cfg.dropout });
        found += 1;
    }
    if found == 0 {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            message: "no adapter weight matches a layer of this model".into(),
        });
    }
    Ok(())
}
