//! `kiln eval` as a library call: decides what the model is (a text classifier, a causal LM
//! or an image classifier), lets that family score the test set, runs the shared parts on it
//! (see [`super::family`]) and writes report.json, report.md and the plots into the report
//! folder. The CLI maps its flags onto [`EvalSettings`] and prints what this returns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::edge_cases;
use super::family::{evaluate, read_json};
use super::image_family::{is_image_model, score_images};
use super::lm_family::score_lm;
use super::plots;
use super::report::{EvalReport, markdown};
use super::settings::EvalSettings;
use super::text_family::score_classifier;
use crate::data::catalog;
use crate::data::fetch;
use crate::error::{Error, Result};
use crate::formats::safetensors::read_config;
use crate::gpu::Gpu;
use crate::models::classifier::{self, Pooling};
use crate::util::{check_output, write_atomic};

/// What `--model` (and `--lora`) turned out to be.
enum Kind {
    /// The encoder folder, the adapter folder if any, labels and pooling if known.
    Classifier {
        base: PathBuf,
        adapter: Option<PathBuf>,
        meta: Option<(Vec<String>, Pooling)>,
        run: Option<PathBuf>,
    },
    Lm {
        path: PathBuf,
        adapter: Option<PathBuf>,
        run: Option<PathBuf>,
    },
    /// An image classifier saved by kiln (model.safetensors and config.json with its labels).
    Image {
        model: PathBuf,
        run: Option<PathBuf>,
    },
}

/// The base an adapter names (`base_model_name_or_path`), when it is a path that exists.
fn adapter_base(adapter: &Path) -> Result<PathBuf> {
    let cfg_path = adapter.join("adapter_config.json");
    let cfg = read_json(&cfg_path)?;
    let base = cfg["base_model_name_or_path"].as_str().unwrap_or_default();
    let path = PathBuf::from(base);
    if base.is_empty() || !path.exists() {
        return Err(Error::Parse {
            path: cfg_path,
            message: format!(
                "base_model_name_or_path `{base}` is not a file or folder here; give the base with --model BASE --lora {}",
                adapter.display()
            ),
        });
    }
    Ok(path)
}

fn is_classifier_adapter(adapter: &Path) -> Result<bool> {
    if adapter.join(classifier::CLASSIFIER_META).is_file() {
        return Ok(true);
    }
    Ok(read_json(&adapter.join("adapter_config.json"))?["task_type"] == "SEQ_CLS")
}

/// Decides the family the way `train` does: from the adapter's task and the model's config.
fn kind(s: &EvalSettings) -> Result<Kind> {
    let mut model = catalog::resolve(Some(&s.model), "smollm2-135m", &fetch::default_cache_dir())?;
    let mut run = None;
    // A kiln run folder: its adapter or model.
    if model.join("settings.json").is_file() {
        run = Some(model.clone());
        for sub in ["adapter", "model"] {
            if model.join(sub).is_dir() {
                model = model.join(sub);
                break;
            }
        }
    }
    let parent_run = |dir: &Path| dir.parent().filter(|p| p.join("settings.json").is_file()).map(Path::to_path_buf);
    if s.lora.is_none() && is_image_model(&model) {
        let run = run.or_else(|| parent_run(&model));
        return Ok(Kind::Image { model, run });
    }
    if let Some(lora) = &s.lora {
        if !lora.join("adapter_config.json").is_file() {
            return Err(Error::Parse {
                path: lora.clone(),
                message: "no adapter_config.json: not a PEFT adapter folder".into(),
            });
        }
        let run = run.or_else(|| parent_run(lora));
        return Ok(if is_classifier_adapter(lora)? {
            let meta = classifier::read_classifier_meta(lora).ok();
            Kind::Classifier { base: model, adapter: Some(lora.clone()), meta, run }
        } else {
            Kind::Lm { path: model, adapter: Some(lora.clone()), run }
        });
    }
    if model.join("adapter_config.json").is_file() {
        let base = adapter_base(&model)?;
        let run = run.or_else(|| parent_run(&model));
        return Ok(if is_classifier_adapter(&model)? {
            Kind::Classifier { meta: classifier::read_classifier_meta(&model).ok(), base, adapter: Some(model), run }
        } else {
            Kind::Lm { path: base, adapter: Some(model), run }
        });
    }
    if model.is_dir() && model.join("config.json").is_file() {
        let cfg: serde_json::Value = read_config(&model)?;
        if cfg["model_type"].as_str() == Some("bert") {
            let meta = classifier::read_classifier_meta(&model).ok();
            let run = run.or_else(|| parent_run(&model));
            return Ok(Kind::Classifier { base: model, adapter: None, meta, run });
        }
    }
    Ok(Kind::Lm { path: model, adapter: None, run })
}

/// The data file: the path itself, or a folder's test.jsonl / test.csv.
fn data_file(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    for name in ["test.jsonl", "test.csv"] {
        if path.join(name).is_file() {
            return Ok(path.join(name));
        }
    }
    Err(Error::Parse {
        path: path.to_path_buf(),
        message: "a folder without test.jsonl or test.csv; give the test file".into(),
    })
}

/// Scores `s.model` on `s.data` and writes the report folder `s.out` (report.json, report.md
/// and the plots); returns the report.
pub fn run(gpu: &Gpu, s: &EvalSettings) -> Result<EvalReport> {
    let start = Instant::now();
    if s.batch_size == 0 {
        return Err(Error::invalid("--batch-size", "must be at least 1"));
    }
    if s.batch_sizes.is_empty() {
        return Err(Error::invalid("--batch-sizes", "no batch size given"));
    }
    // Read the user's files before any slow work, so a bad one fails at once.
    let kind = kind(s)?;
    // An image test set may be a folder of class folders; a text one is a file.
    let data = if matches!(kind, Kind::Image { .. }) { s.data.clone() } else { data_file(&s.data)? };
    let user_cases = match &s.edge_cases {
        Some(p) => edge_cases::read_file(p)?,
        None => Vec::new(),
    };
    check_output(&s.out, s.overwrite)?;
    let mut report = match kind {
        Kind::Classifier { base, adapter, meta, run } => {
            let (family, scoring) = score_classifier(s, gpu, &data, base, adapter, meta, run)?;
            evaluate(s, gpu, &family, scoring, &user_cases)?
        }
        Kind::Lm { path, adapter, run } => {
            let (family, scoring) = score_lm(s, gpu, &data, path, adapter, run)?;
            evaluate(s, gpu, &family, scoring, &user_cases)?
        }
        Kind::Image { model, run } => {
            if !user_cases.is_empty() {
                return Err(Error::invalid(
                    "--edge-cases",
                    "the cases are texts; an image model has built-in ones only",
                ));
            }
            let (family, scoring) = score_images(s, gpu, &data, model, run)?;
            evaluate(s, gpu, &family, scoring, &[])?
        }
    };
    // A new marked folder; an old report under --overwrite is replaced whole (no stale plot).
    crate::util::folder::create_fresh(&s.out, "kiln eval report")?;
    if !s.no_plots {
        report.plots = draw_plots(&report, &s.out)?;
    }
    report.seconds.insert("total".into(), start.elapsed().as_secs_f64());
    let json = serde_json::to_string_pretty(&report).expect("reports serialize");
    write_atomic(&s.out.join("report.json"), json.as_bytes())?;
    write_atomic(&s.out.join("report.md"), markdown(&report).as_bytes())?;
    Ok(report)
}

/// The pictures of the parts that ran; returns their file names.
fn draw_plots(r: &EvalReport, out: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    if let Some(c) = &r.classification {
        plots::confusion(&out.join("confusion.png"), &c.metrics.confusion, &c.labels, "Confusion matrix (rows: gold)")?;
        written.push("confusion.png".to_string());
        plots::reliability(&out.join("reliability.png"), &c.calibration.bins, c.calibration.ece, "Reliability")?;
        written.push("reliability.png".to_string());
    }
    if let Some(g) = &r.groups {
        let metric = if r.classification.is_some() {
            "accuracy"
        } else if g.rows.iter().any(|row| row.metrics.contains_key("exact_match")) {
            "exact_match"
        } else {
            "loss"
        };
        let bars: Vec<(String, f64, usize)> = g
            .rows
            .iter()
            .map(|row| (row.group.clone(), row.metrics.get(metric).copied().unwrap_or(0.0), row.examples))
            .collect();
        plots::group_bars(&out.join("groups.png"), &bars, metric, &format!("{metric} per {}", g.column))?;
        written.push("groups.png".to_string());
    }
    if let Some(l) = &r.latency {
        let single =
            l.generation.as_ref().map(|g| (&g.total, "generation")).or(l.single.as_ref().map(|s| (s, "one example")));
        if let Some((p, what)) = single
            && p.runs > 0
        {
            plots::latency_histogram(
                &out.join("latency.png"),
                &p.samples_ms,
                p.p50_ms,
                p.p95_ms,
                &format!("Latency: {what}, {} runs", p.runs),
            )?;
            written.push("latency.png".to_string());
        }
        if !l.throughput.is_empty() {
            let unit = if r.classification.is_some() { "examples" } else { "tokens" };
            plots::throughput(&out.join("throughput.png"), &l.throughput, unit, "Throughput per batch size")?;
            written.push("throughput.png".to_string());
        }
    }
    Ok(written)
}
