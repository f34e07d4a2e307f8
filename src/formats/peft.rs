//! LoRA adapters in PEFT's format: a folder with `adapter_config.json` and
//! `adapter_model.safetensors`, keys `base_model.model.<module path>.lora_{A,B}.weight` (no
//! adapter name), A `[r, in]`, B `[out, r]`; with DoRA (`use_dora: true`) also
//! `base_model.model.<module path>.lora_magnitude_vector` `[out]`. Loadable by
//! `peft.PeftModel.from_pretrained`.

use std::path::Path;

use serde_json::json;

use super::safetensors::{SafetensorsSource, WeightSource, save_safetensors};
use crate::autograd::{Param, WeightLayout};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Linear, LoraAdapter, LoraConfig};
use crate::util::write_atomic;

/// What PEFT puts before a module path in its keys.
pub const PREFIX: &str = "base_model.model.";

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

/// `modules_to_save`: (parameter name, values, shape) of fully trained modules saved whole.
pub type SavedModule = (String, Vec<f32>, Vec<usize>);

/// Writes the adapters on `linears` (and `saved_modules`, trained whole) as a PEFT folder; each
/// file is replaced only once its new version is complete.
pub fn write_adapter(
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
            for p in [Some(&l.a), Some(&l.b), l.magnitude.as_ref()].into_iter().flatten() {
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
        "use_dora": cfg.use_dora,
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
    super::lfs::check_file(&path)?;
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
    for key in ["rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "bias"] {
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
        use_dora: match &v["use_dora"] {
            serde_json::Value::Null => false,
            serde_json::Value::Bool(b) => *b,
            other => return Err(bad(format!("`use_dora` = {other} is not true or false"))),
        },
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// The adapter folder `dir`: its config (checked) and its weights, for [`attach`].
pub fn open_adapter(dir: &Path) -> Result<(LoraConfig, SafetensorsSource)> {
    let cfg = read_adapter_config(dir)?;
    let src = SafetensorsSource::open_file(&dir.join("adapter_model.safetensors"))?;
    Ok((cfg, src))
}

/// Puts the file's `lora_A`/`lora_B` pairs (and DoRA magnitudes) on the linears they name
/// (trainable); none found is an error, and so is a target module that names no linear.
pub fn attach(
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
        let magnitude = if cfg.use_dora {
            let key = format!("{PREFIX}{}.lora_magnitude_vector", lin.path);
            let mut m = Param::new(format!("{}.lora_magnitude_vector", lin.path), src.tensor(gpu, &key, &[d_out])?);
            m.set_trainable(gpu, true)?;
            Some(m)
        } else {
            None
        };
        lin.lora = Some(LoraAdapter { a, b, scale: cfg.scale(), dropout: cfg.dropout, magnitude });
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
