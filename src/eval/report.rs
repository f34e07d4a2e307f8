//! What `kiln eval` found, as one serializable structure (report.json, `--json`) and as
//! report.md. Every part is optional: `--no-latency` and friends leave theirs out.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::bootstrap::Gap;
use super::calibration::Calibration;
use super::edge_cases::EdgeResult;
use super::latency::{Percentiles, ThroughputPoint};
use crate::metrics::Metrics;

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// `classification` or `language-model`.
    pub task: String,
    pub model: String,
    pub lora: Option<String>,
    pub data: String,
    pub device: String,
    /// The frozen model's matmul precision (`kernels::matmul_coop::describe`).
    pub precision: String,
    pub examples: usize,
    /// Tokens the model reads per input (`--max-len`), the model's own maximum, and how many
    /// examples were cut to the first.
    pub max_len: usize,
    pub model_max_positions: usize,
    pub truncated: usize,
    /// Image classifiers: how the images were fed (None for text models).
    pub image: Option<ImageInput>,
    pub classification: Option<ClassificationScores>,
    pub language_model: Option<LmScores>,
    pub groups: Option<GroupReport>,
    pub counterfactual: Option<CounterfactualReport>,
    pub edge_cases: Option<Vec<EdgeResult>>,
    pub latency: Option<LatencyReport>,
    /// The most GPU memory held by kiln's buffers (tensors and the pool) at any measured point.
    pub peak_gpu_bytes: u64,
    /// Wall time of each part.
    pub seconds: BTreeMap<String, f64>,
    /// The pictures written beside report.md.
    pub plots: Vec<String>,
}

/// An image classifier's input: the short side resized to `resize`, the centre `crop`×`crop`
/// taken, then (x/255 − mean)/std per channel.
#[derive(Clone, Debug, Serialize)]
pub struct ImageInput {
    pub architecture: String,
    pub resize: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassificationScores {
    pub labels: Vec<String>,
    pub metrics: Metrics,
    /// Mean cross-entropy of the gold labels.
    pub loss: f64,
    pub calibration: Calibration,
}

#[derive(Clone, Debug, Serialize)]
pub struct LmScores {
    /// Token-weighted mean loss over the trained tokens (completions, assistant turns, or whole texts).
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
    pub generation: Option<GenerationScores>,
    pub samples: Vec<Sample>,
}

/// Greedy completions of prompt/completion (or chat) records against their references.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationScores {
    pub examples: usize,
    pub max_new_tokens: usize,
    pub exact_match: f64,
    /// Edit distance over whitespace-separated units (phonemes for CMUdict, else words) per
    /// reference unit.
    pub unit_error_rate: f64,
    /// Edit distance over characters per reference character.
    pub char_error_rate: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub prompt: String,
    pub reference: Option<String>,
    pub output: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupRow {
    pub group: String,
    pub examples: usize,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    pub column: String,
    pub rows: Vec<GroupRow>,
    /// The largest gap of each metric with its bootstrap interval.
    pub gaps: Vec<Gap>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CounterfactualRow {
    pub pair: String,
    pub variants: usize,
    pub flips: usize,
    pub flip_rate: f64,
    /// Classifiers: the mean change of the originally predicted class's probability; LMs: the
    /// mean change of the reference completion's loss (nats per token).
    pub mean_change: f64,
    pub mean_abs_change: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CounterfactualExample {
    pub pair: String,
    pub original: String,
    pub swapped: String,
    pub before: String,
    pub after: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CounterfactualReport {
    pub source: String,
    /// What counts as a flip and what `mean_change` measures.
    pub rule: String,
    pub examples_scanned: usize,
    /// Examples with at least one term in the part the model reads (the others are not counted).
    pub examples_with_terms: usize,
    pub overall: CounterfactualRow,
    pub by_direction: Vec<CounterfactualRow>,
    /// Pairs that occurred, most frequent first.
    pub by_pair: Vec<CounterfactualRow>,
    /// A few of the flips, to read.
    pub flipped_examples: Vec<CounterfactualExample>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub warmup_runs: usize,
    /// One example at a time, end to end (tokenize, forward, read back).
    pub single: Option<Percentiles>,
    pub throughput: Vec<ThroughputPoint>,
    pub generation: Option<GenerationTiming>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenerationTiming {
    pub new_tokens: usize,
    /// Time to first token: the prompt's forward pass and the first token read back.
    pub ttft: Percentiles,
    /// The whole generation.
    pub total: Percentiles,
    /// Decode rate after the first token, median over the runs.
    pub tokens_per_second: f64,
    pub prompt_tokens: usize,
}

/// A markdown table cell: pipes escaped, newlines flattened.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// report.md: a section per part that ran, the pictures linked.
pub fn markdown(r: &EvalReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Evaluation: {}\n", r.task);
    let _ = writeln!(md, "- **model**: {}", cell(&r.model));
    if let Some(l) = &r.lora {
        let _ = writeln!(md, "- **LoRA adapter**: {}", cell(l));
    }
    let _ = writeln!(md, "- **data**: {} ({} examples)", cell(&r.data), r.examples);
    let _ = writeln!(md, "- **device**: {} ({})", cell(&r.device), cell(&r.precision));
    match &r.image {
        Some(i) => {
            let _ = writeln!(
                md,
                "- **images**: {}, short side resized to {}, centre crop {}×{}, normalised with mean {:?} and std {:?}",
                cell(&i.architecture),
                i.resize,
                i.crop,
                i.crop,
                i.mean,
                i.std
            );
        }
        None => {
            let _ = writeln!(
                md,
                "- **tokens per input**: {} (`--max-len`; the model's maximum is {}); {} examples truncated",
                r.max_len, r.model_max_positions, r.truncated
            );
        }
    }
    let _ = writeln!(md, "- **peak GPU memory**: {:.1} MiB", r.peak_gpu_bytes as f64 / (1 << 20) as f64);
    let times: Vec<String> = r.seconds.iter().map(|(k, v)| format!("{k} {v:.1} s")).collect();
    let _ = writeln!(md, "- **time**: {}", times.join(", "));
    let has = |name: &str| r.plots.iter().any(|p| p == name);

    if let Some(c) = &r.classification {
        let m = &c.metrics;
        md.push_str("\n## Scores\n\n");
        let _ = writeln!(
            md,
            "accuracy {:.4}, macro-F1 {:.4}, loss {:.4}, expected calibration error {:.4} (15 equal-width bins)\n",
            m.accuracy, m.macro_f1, c.loss, c.calibration.ece
        );
        md.push_str("| class | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|\n");
        for (name, s) in c.labels.iter().zip(&m.per_class) {
            let _ =
                writeln!(md, "| {} | {:.4} | {:.4} | {:.4} | {} |", cell(name), s.precision, s.recall, s.f1, s.support);
        }
        md.push_str("\nConfusion matrix (rows: gold, columns: predicted)\n\n| gold \\ predicted |");
        for name in &c.labels {
            let _ = write!(md, " {} |", cell(name));
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(c.labels.len()));
        md.push('\n');
        for (name, row) in c.labels.iter().zip(&m.confusion) {
            let _ = write!(md, "| {} |", cell(name));
            for n in row {
                let _ = write!(md, " {n} |");
            }
            md.push('\n');
        }
        if has("confusion.png") {
            md.push_str("\n![confusion matrix](confusion.png)\n");
        }
        if has("reliability.png") {
            md.push_str("\n![reliability diagram](reliability.png)\n");
        }
    }

    if let Some(l) = &r.language_model {
        md.push_str("\n## Scores\n\n");
        let _ = writeln!(md, "loss {:.4}, perplexity {:.2} over {} tokens", l.loss, l.perplexity, l.tokens);
        if let Some(g) = &l.generation {
            let _ = writeln!(
                md,
                "\nGreedy completions of {} prompts (up to {} new tokens): exact match {}, unit (phoneme/word) error rate {}, character error rate {}",
                g.examples,
                g.max_new_tokens,
                pct(g.exact_match),
                pct(g.unit_error_rate),
                pct(g.char_error_rate)
            );
        }
        if !l.samples.is_empty() {
            md.push_str("\n| prompt | reference | generated |\n|---|---|---|\n");
            for s in &l.samples {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    cell(&s.prompt),
                    cell(s.reference.as_deref().unwrap_or("")),
                    cell(&s.output)
                );
            }
        }
    }

    if let Some(g) = &r.groups {
        let _ = writeln!(md, "\n## Per group (`{}`)\n", cell(&g.column));
        let metrics: Vec<&String> = g.rows.first().map(|r| r.metrics.keys().collect()).unwrap_or_default();
        md.push_str("| group | examples |");
        for m in &metrics {
            let _ = write!(md, " {} |", cell(m));
        }
        md.push_str("\n|---|---:|");
        md.push_str(&"---:|".repeat(metrics.len()));
        md.push('\n');
        for row in &g.rows {
            let _ = write!(md, "| {} | {} |", cell(&row.group), row.examples);
            for m in &metrics {
                let _ = write!(md, " {:.4} |", row.metrics.get(*m).copied().unwrap_or(f64::NAN));
            }
            md.push('\n');
        }
        md.push('\n');
        for gap in &g.gaps {
            let _ = writeln!(
                md,
                "- largest {} gap: **{:.4}** ({} {} − {}), 95% bootstrap interval [{:.4}, {:.4}] ({} resamples within each group, seed {}){}",
                gap.metric,
                gap.gap,
                if gap.higher_is_better { "best" } else { "lowest" },
                cell(&gap.best),
                cell(&gap.worst),
                gap.ci_low,
                gap.ci_high,
                gap.resamples,
                gap.seed,
                if gap.flagged {
                    format!(": **FLAGGED**, over the threshold {}", gap.threshold)
                } else {
                    format!(": within the threshold {}", gap.threshold)
                }
            );
        }
        if has("groups.png") {
            md.push_str("\n![per-group scores](groups.png)\n");
        }
    }

    if let Some(c) = &r.counterfactual {
        md.push_str("\n## Counterfactual swaps\n\n");
        let _ = writeln!(md, "Terms: {}. {}\n", cell(&c.source), c.rule);
        let _ = writeln!(
            md,
            "{} of {} examples contain a term in the part the model reads; {} swapped variants, {} flips ({}), mean change {:+.4} (mean absolute {:.4}).\n",
            c.examples_with_terms,
            c.examples_scanned,
            c.overall.variants,
            c.overall.flips,
            pct(c.overall.flip_rate),
            c.overall.mean_change,
            c.overall.mean_abs_change
        );
        let table = |md: &mut String, title: &str, rows: &[CounterfactualRow]| {
            let _ = writeln!(
                md,
                "| {title} | variants | flips | flip rate | mean change | mean abs change |\n|---|---:|---:|---:|---:|---:|"
            );
            for row in rows {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:+.4} | {:.4} |",
                    cell(&row.pair),
                    row.variants,
                    row.flips,
                    pct(row.flip_rate),
                    row.mean_change,
                    row.mean_abs_change
                );
            }
            md.push('\n');
        };
        if c.by_direction.len() > 1 {
            table(&mut md, "direction", &c.by_direction);
        }
        let shown = c.by_pair.len().min(20);
        table(&mut md, "pair", &c.by_pair[..shown]);
        if c.by_pair.len() > shown {
            let _ = writeln!(md, "({} more pairs in report.json)\n", c.by_pair.len() - shown);
        }
        for e in &c.flipped_examples {
            let _ = writeln!(
                md,
                "- {}: `{}` → `{}` (\"{}\")",
                cell(&e.pair),
                cell(&e.before),
                cell(&e.after),
                cell(&e.swapped)
            );
        }
    }

    if let Some(cases) = &r.edge_cases {
        md.push_str("\n## Edge cases\n\n| case | input | tokens | output | note |\n|---|---|---:|---|---|\n");
        for e in cases {
            let output = match (&e.output, e.probability, &e.error) {
                (_, _, Some(err)) => format!("error: {err}"),
                (Some(o), Some(p), _) => format!("{o} ({p:.3})"),
                (Some(o), None, _) => o.clone(),
                _ => String::new(),
            };
            let tokens = e.tokens.map_or_else(String::new, |t| t.to_string());
            let input = match r.image {
                Some(_) => cell(&e.input),
                None => format!("`{}` ({} chars)", cell(&e.input).replace('`', "'"), e.input_chars),
            };
            let _ = writeln!(
                md,
                "| {} | {input} | {} | {} | {} |",
                cell(&e.name),
                tokens,
                cell(&output),
                cell(e.note.as_deref().unwrap_or(""))
            );
        }
    }

    if let Some(l) = &r.latency {
        let _ =
            writeln!(md, "\n## Latency and throughput\n\n{} warm-up runs excluded from every timing.\n", l.warmup_runs);
        let row = |md: &mut String, name: &str, p: &Percentiles| {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                p.runs, p.p50_ms, p.p95_ms, p.p99_ms, p.mean_ms
            );
        };
        md.push_str("| timing | runs | p50 ms | p95 ms | p99 ms | mean ms |\n|---|---:|---:|---:|---:|---:|\n");
        if let Some(s) = &l.single {
            let what = if r.image.is_some() {
                "one image, end to end (decode, transform, forward)"
            } else {
                "one example, end to end"
            };
            row(&mut md, what, s);
        }
        if let Some(g) = &l.generation {
            row(&mut md, &format!("time to first token ({} prompt tokens)", g.prompt_tokens), &g.ttft);
            row(&mut md, &format!("generation of {} tokens", g.new_tokens), &g.total);
        }
        if let Some(g) = &l.generation {
            let _ = writeln!(
                md,
                "\nDecoding: {:.2} tokens/s after the first token (median of the runs).",
                g.tokens_per_second
            );
        }
        if !l.throughput.is_empty() && r.image.is_some() {
            md.push_str("\n| batch size | batches timed | images/s | ms per batch |\n|---:|---:|---:|---:|\n");
            for p in &l.throughput {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | {:.1} |",
                    p.batch,
                    p.batches,
                    p.examples_per_second,
                    1e3 * p.seconds / p.batches.max(1) as f64
                );
            }
        } else if !l.throughput.is_empty() {
            md.push_str("\n| batch size | batches timed | examples/s | tokens/s |\n|---:|---:|---:|---:|\n");
            for p in &l.throughput {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | {:.1} |",
                    p.batch, p.batches, p.examples_per_second, p.tokens_per_second
                );
            }
        }
        if has("latency.png") {
            md.push_str("\n![latency histogram](latency.png)\n");
        }
        if has("throughput.png") {
            md.push_str("\n![throughput per batch size](throughput.png)\n");
        }
    }
    md
}
