//! `kiln eval` as a library call: decides what the model is (a text classifier, a causal LM
//! or an image classifier), lets that family score the test set, runs the shared parts on it
//! (see [`super::family`]) and writes report.json, report.md and the plots into the report
//! folder. The CLI maps its flags onto [`EvalSettings`] and prints what this returns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::edge_cases;
use super::family::evaluate;
use super::image_family::score_images;
use super::lm_family::score_lm;
use super::plots;
use super::report::{EvalReport, markdown};
use super::settings::EvalSettings;
use super::target::{self, Target};
use super::text_family::score_classifier;
use crate::data::fetch;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::util::{check_output, write_atomic};

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
    let target = target::resolve(&s.model, s.lora.as_deref(), s.pooling, &fetch::default_cache_dir())?;
    // An image test set may be a folder of class folders; a text one is a file.
    let data = if matches!(target, Target::Image { .. }) { s.data.clone() } else { data_file(&s.data)? };
    let user_cases = match &s.edge_cases {
        Some(p) => edge_cases::read_file(p)?,
        None => Vec::new(),
    };
    check_output(&s.out, s.overwrite)?;
    let mut report = match target {
        Target::Text { base, adapter, labels, pooling, run } => {
            let (family, scoring) = score_classifier(s, gpu, &data, base, adapter, (labels, pooling), run)?;
            evaluate(s, gpu, &family, scoring, &user_cases)?
        }
        Target::Lm { path, adapter, run } => {
            let (family, scoring) = score_lm(s, gpu, &data, path, adapter, run)?;
            evaluate(s, gpu, &family, scoring, &user_cases)?
        }
        Target::Image { model, labels, run } => {
            if !user_cases.is_empty() {
                return Err(Error::invalid(
                    "--edge-cases",
                    "the cases are texts; an image model has built-in ones only",
                ));
            }
            let (family, scoring) = score_images(s, gpu, &data, model, labels, run)?;
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
