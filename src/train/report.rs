//! Pictures and a readable summary of a finished run folder, the one `kiln train` writes:
//! `settings.json` (what was asked), `metrics.jsonl` (one event per line, as the training loops'
//! `Event`s serialize) and `report.json` (what came out).
//!
//! - [`plot_curves`] draws `loss.png` (training loss per step, its moving average, validation
//!   loss) and `metric.png` (validation macro-F1 and accuracy for a classifier, perplexity for a
//!   language model).
//! - [`write_report`] writes `report.md` with the settings, the training summary, the validation
//!   curve, the best eval, the test results, and links to the pictures.
//!
//! Call `plot_curves` first so that the report links the pictures it drew.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordusize;
use plotters::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use crate::data::{for_each_line, line_error};
use crate::error::{Error, Result};
use crate::metrics::{GroupScore, Metrics};
use crate::util::plot::{
    Area, BLUE, DrawResult, GREEN, ORANGE, PURPLE, RED, legend_mark, padded_range, register_font, write_png,
};
use crate::util::write_atomic;

// ---- reading the run folder ----

/// One validation pass; each task logs its own metrics (a classifier accuracy and macro-F1, a
/// language model perplexity).
#[derive(Clone, Debug, Deserialize)]
struct EvalPoint {
    step: usize,
    val_loss: f64,
    accuracy: Option<f64>,
    macro_f1: Option<f64>,
    val_ppl: Option<f64>,
}

/// The lines of metrics.jsonl this module reads; other events (`features`, `trainable`) pass.
#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Line {
    Step {
        step: usize,
        loss: f64,
        /// Wall time since training began.
        seconds: Option<f64>,
    },
    Eval(EvalPoint),
    #[serde(other)]
    Other,
}

/// The training and validation curves of a run.
#[derive(Debug, Default)]
struct Curves {
    /// (step, training loss, seconds since training began) per step.
    steps: Vec<(usize, f64, Option<f64>)>,
    evals: Vec<EvalPoint>,
}

impl Curves {
    /// Reads `metrics.jsonl`; a line that is not a JSON event is an error naming it.
    fn read(path: &Path) -> Result<Self> {
        let mut curves = Curves::default();
        for_each_line(path, |line_no, line| {
            match serde_json::from_str(line)
                .map_err(|e| line_error(path, line_no, format!("not a metrics event: {e}")))?
            {
                Line::Step { step, loss, seconds } => curves.steps.push((step, loss, seconds)),
                Line::Eval(e) => curves.evals.push(e),
                Line::Other => {}
            }
            Ok(())
        })?;
        Ok(curves)
    }

    fn is_classifier(&self) -> bool {
        self.evals.iter().any(|e| e.macro_f1.is_some())
    }

    fn last_step(&self) -> usize {
        let steps = self.steps.iter().map(|s| s.0);
        steps.chain(self.evals.iter().map(|e| e.step)).max().unwrap_or(0)
    }
}

/// What report.json holds, for either task; every field may be missing.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunReport {
    steps: Option<usize>,
    train_seconds: Option<f64>,
    examples_per_second: Option<f64>,
    tokens: Option<usize>,
    tokens_per_second: Option<f64>,
    first_loss: Option<f64>,
    last_loss: Option<f64>,
    trainable_parameters: Option<usize>,
    total_parameters: Option<usize>,
    peak_gpu_bytes: Option<u64>,
    wall_seconds: Option<f64>,
    test: Option<Metrics>,
    test_groups: Option<BTreeMap<String, GroupScore>>,
    /// The language model's pronunciation test: `{test_words, before: {...}, after: {...}}`.
    cmudict: Option<Value>,
    /// The retain set before and after training: `{retain_examples | retain_tokens,
    /// <metric>_before, <metric>_after, ...}`.
    forgetting: Option<Value>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })
}

// ---- plots ----

/// Writes `run_dir/loss.png` and, when the evals carry a task metric, `run_dir/metric.png`, from
/// `run_dir/metrics.jsonl`; returns the paths written. A run without a training step gets no
/// plot (an empty list); a line of metrics.jsonl that is not a JSON event is an error naming it.
pub fn plot_curves(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let curves = Curves::read(&run_dir.join("metrics.jsonl"))?;
    if curves.steps.is_empty() {
        return Ok(Vec::new());
    }
    register_font()?;
    let name = run_dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());

    let mut written = Vec::new();
    let loss_png = run_dir.join("loss.png");
    write_png(&loss_png, |area| draw_loss(area, &curves, &format!("Loss: {name}")))?;
    written.push(loss_png);

    let metric_png = run_dir.join("metric.png");
    if curves.is_classifier() {
        write_png(&metric_png, |area| draw_scores(area, &curves, &format!("Validation scores: {name}")))?;
        written.push(metric_png);
    } else if curves.evals.iter().any(|e| e.val_ppl.is_some()) {
        write_png(&metric_png, |area| draw_perplexity(area, &curves, &format!("Validation perplexity: {name}")))?;
        written.push(metric_png);
    }
    Ok(written)
}

/// The mean of each value and the `window - 1` before it (fewer at the start).
fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

/// A chart with steps along x and `Y`'s values along y.
type StepChart<'a, 'b, Y> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordusize, Y>>;

/// A chart over the run's steps with the caption, margins and labelled mesh every run chart has;
/// the caller draws the series and their legend.
fn step_chart<'a, 'b, Y>(
    area: &'a Area<'b>,
    curves: &Curves,
    title: &str,
    y: Y,
    y_desc: &str,
) -> std::result::Result<StepChart<'a, 'b, Y::CoordDescType>, Box<dyn std::error::Error>>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0..curves.last_step().max(1), y)?;
    chart.configure_mesh().x_desc("step").y_desc(y_desc).draw()?;
    Ok(chart)
}

/// Training loss per step (faint), its moving average over ~5% of the steps, and validation loss.
fn draw_loss(area: &Area, curves: &Curves, title: &str) -> DrawResult {
    let losses: Vec<f64> = curves.steps.iter().map(|s| s.1).collect();
    let window = ((losses.len() as f64 * 0.05).round() as usize).max(1);
    let smooth = moving_average(&losses, window);
    let y = padded_range(losses.iter().copied().chain(curves.evals.iter().map(|e| e.val_loss)));

    let mut chart = step_chart(area, curves, title, y, "loss")?;

    let steps = || curves.steps.iter().map(|s| s.0);
    chart
        .draw_series(LineSeries::new(steps().zip(losses.iter().copied()), BLUE.mix(0.3).stroke_width(1)))?
        .label("training loss")
        .legend(legend_mark(BLUE.mix(0.3)));
    chart
        .draw_series(LineSeries::new(steps().zip(smooth), BLUE.stroke_width(2)))?
        .label(format!("moving average ({window} steps)"))
        .legend(legend_mark(BLUE));
    if !curves.evals.is_empty() {
        let points = curves.evals.iter().map(|e| (e.step, e.val_loss));
        chart
            .draw_series(LineSeries::new(points, RED.stroke_width(2)).point_size(4))?
            .label("validation loss")
            .legend(legend_mark(RED));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    Ok(())
}

/// A classifier's validation macro-F1 and accuracy per eval.
fn draw_scores(area: &Area, curves: &Curves, title: &str) -> DrawResult {
    let f1: Vec<(usize, f64)> = curves.evals.iter().filter_map(|e| Some((e.step, e.macro_f1?))).collect();
    let acc: Vec<(usize, f64)> = curves.evals.iter().filter_map(|e| Some((e.step, e.accuracy?))).collect();
    let y = padded_range(f1.iter().chain(&acc).map(|p| p.1));
    let y = y.start.max(0.0)..y.end.min(1.0);

    let mut chart = step_chart(area, curves, title, y, "score")?;
    for (points, color, label) in [(f1, ORANGE, "macro-F1"), (acc, GREEN, "accuracy")] {
        if !points.is_empty() {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(4))?
                .label(label)
                .legend(legend_mark(color));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A language model's validation perplexity per eval. On a log scale when it spans more than
/// a decade (perplexity is exp(loss), so the log scale shows the loss's shape with perplexity's
/// numbers); plotters labels only powers of ten and their multiples, too few for a narrower span.
fn draw_perplexity(area: &Area, curves: &Curves, title: &str) -> DrawResult {
    let ppl: Vec<(usize, f64)> =
        curves.evals.iter().filter_map(|e| Some((e.step, e.val_ppl?))).filter(|p| p.1 > 0.0).collect();
    let lo = ppl.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = ppl.iter().map(|p| p.1).fold(0.0, f64::max);
    if hi > 10.0 * lo {
        perplexity_chart(area, curves, title, ppl, (lo / 1.1..hi * 1.1).log_scale())
    } else {
        let y = padded_range([lo, hi]);
        perplexity_chart(area, curves, title, ppl, y.start.max(0.0)..y.end)
    }
}

fn perplexity_chart<Y>(area: &Area, curves: &Curves, title: &str, ppl: Vec<(usize, f64)>, y: Y) -> DrawResult
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = step_chart(area, curves, title, y, "perplexity")?;
    chart
        .draw_series(LineSeries::new(ppl, PURPLE.stroke_width(2)).point_size(4))?
        .label("validation perplexity")
        .legend(legend_mark(PURPLE));
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    Ok(())
}

// ---- report.md ----

/// Most evals the validation table lists; a longer run shows every k-th and the last.
const MAX_EVAL_ROWS: usize = 20;

/// Writes `run_dir/report.md` from settings.json, metrics.jsonl and report.json (the last two
/// may be missing, as for a run that stopped early) and returns its path. Links loss.png and
/// metric.png when they exist, so call [`plot_curves`] first.
pub fn write_report(run_dir: &Path) -> Result<PathBuf> {
    let settings = read_json(&run_dir.join("settings.json"))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let curves = if metrics_path.exists() { Curves::read(&metrics_path)? } else { Curves::default() };
    let report_path = run_dir.join("report.json");
    let report: RunReport = if report_path.exists() {
        serde_json::from_value(read_json(&report_path)?)
            .map_err(|e| Error::Parse { path: report_path.clone(), message: e.to_string() })?
    } else {
        RunReport::default()
    };
    let labels: Vec<String> = match &settings["labels"] {
        Value::Array(names) => names.iter().map(plain).collect(),
        _ => Vec::new(),
    };

    let mut md = String::new();
    let classifier = settings["task"] == "sequence-classification" || curves.is_classifier();
    let task = if classifier { "classification" } else { "language model" };
    let _ = writeln!(md, "# Run report: {task}\n");
    for key in ["model", "data", "device"] {
        if !settings[key].is_null() {
            let _ = writeln!(md, "- **{key}**: {}", cell(&plain(&settings[key])));
        }
    }
    if !labels.is_empty() {
        let _ = writeln!(md, "- **labels**: {}", cell(&labels.join(", ")));
    }

    let mut rows = Vec::new();
    if let Value::Object(map) = &settings {
        for (key, value) in map {
            if !["task", "model", "data", "device", "labels"].contains(&key.as_str()) {
                flatten(key, value, &mut rows);
            }
        }
    }
    if !rows.is_empty() {
        md.push_str("\n## Settings\n\n| setting | value |\n|---|---|\n");
        for (key, value) in rows {
            let _ = writeln!(md, "| {} | {} |", cell(&key), cell(&value));
        }
    }

    training_section(&mut md, &report, &curves);
    if run_dir.join("loss.png").exists() {
        md.push_str("\n![loss](loss.png)\n");
    }
    validation_section(&mut md, &curves, classifier);
    if run_dir.join("metric.png").exists() {
        md.push_str("\n![validation metric](metric.png)\n");
    }
    if let Some(test) = &report.test {
        test_section(&mut md, test, &labels, report.test_groups.as_ref());
    }
    if let Some(cmudict) = &report.cmudict {
        cmudict_section(&mut md, cmudict);
    }
    if let Some(forgetting) = report.forgetting.as_ref().filter(|f| f.is_object()) {
        forgetting_section(&mut md, forgetting);
    }

    let path = run_dir.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

/// Steps, time, throughput, loss, parameters and memory, from report.json or, for a run that
/// stopped before writing it, from the step events.
fn training_section(md: &mut String, report: &RunReport, curves: &Curves) {
    let (first, last) = (curves.steps.first(), curves.steps.last());
    let mut lines = Vec::new();
    if let Some(steps) = report.steps.or(last.map(|s| s.0)) {
        lines.push(format!("steps: {steps}"));
    }
    if let Some(seconds) = report.train_seconds.or(last.and_then(|s| s.2)) {
        let throughput = match (report.examples_per_second, report.tokens_per_second) {
            (Some(x), _) => format!(" ({x:.1} examples/s)"),
            (None, Some(t)) => format!(" ({t:.0} tokens/s)"),
            (None, None) => String::new(),
        };
        lines.push(format!("training time: {seconds:.1} s{throughput}"));
    }
    if let Some(tokens) = report.tokens {
        lines.push(format!("tokens: {tokens}"));
    }
    if let (Some(a), Some(b)) = (report.first_loss.or(first.map(|s| s.1)), report.last_loss.or(last.map(|s| s.1))) {
        lines.push(format!("loss: {a:.4} → {b:.4} (first → last step)"));
    }
    if let (Some(t), Some(n)) = (report.trainable_parameters, report.total_parameters) {
        lines.push(format!("trainable parameters: {t} of {n} ({:.3}%)", 100.0 * t as f64 / n.max(1) as f64));
    }
    if let Some(bytes) = report.peak_gpu_bytes {
        lines.push(format!("peak GPU memory: {:.1} MiB", bytes as f64 / (1u64 << 20) as f64));
    }
    if let Some(seconds) = report.wall_seconds {
        lines.push(format!("whole run: {seconds:.1} s"));
    }
    if !lines.is_empty() {
        md.push_str("\n## Training\n\n");
        for line in lines {
            let _ = writeln!(md, "- {line}");
        }
    }
}

/// The validation curve as a table and the best eval: the highest macro-F1 for a classifier
/// (the earliest step on a tie), the lowest validation loss otherwise.
fn validation_section(md: &mut String, curves: &Curves, classifier: bool) {
    let evals = &curves.evals;
    if evals.is_empty() {
        return;
    }
    md.push_str("\n## Validation\n\n");
    let stride = evals.len().div_ceil(MAX_EVAL_ROWS);
    if stride > 1 {
        let _ = writeln!(md, "One eval in {stride} of {}, and the last:\n", evals.len());
    }
    let has_ppl = evals.iter().any(|e| e.val_ppl.is_some());
    md.push_str(match (classifier, has_ppl) {
        (true, _) => "| step | val_loss | accuracy | macro-F1 |\n|---|---|---|---|\n",
        (false, true) => "| step | val_loss | perplexity |\n|---|---|---|\n",
        (false, false) => "| step | val_loss |\n|---|---|\n",
    });
    let opt = |x: Option<f64>, digits: usize| x.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}"));
    for (i, e) in evals.iter().enumerate() {
        if i % stride != 0 && i + 1 != evals.len() {
            continue;
        }
        let _ = write!(md, "| {} | {:.4} |", e.step, e.val_loss);
        if classifier {
            let _ = write!(md, " {} | {} |", opt(e.accuracy, 4), opt(e.macro_f1, 4));
        } else if has_ppl {
            let _ = write!(md, " {} |", opt(e.val_ppl, 2));
        }
        md.push('\n');
    }

    // On a tie the earliest step wins: min_by keeps the first of equals, max_by the last (so it
    // runs over the evals reversed).
    let best = if classifier {
        let f1 = |e: &EvalPoint| e.macro_f1.unwrap_or(f64::NEG_INFINITY);
        evals.iter().rev().max_by(|a, b| f1(a).total_cmp(&f1(b)))
    } else {
        evals.iter().min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
    };
    if let Some(b) = best {
        let detail = match (classifier, b.macro_f1, b.val_ppl) {
            (true, Some(f1), _) => {
                format!("macro-F1 {f1:.4} (accuracy {}, val_loss {:.4})", opt(b.accuracy, 4), b.val_loss)
            }
            (_, _, Some(ppl)) => format!("val_loss {:.4} (perplexity {ppl:.2})", b.val_loss),
            _ => format!("val_loss {:.4}", b.val_loss),
        };
        let _ = writeln!(md, "\nBest eval: step {}, {detail}.", b.step);
    }
}

/// Test accuracy and macro-F1, per-class scores, the confusion matrix and per-group accuracy.
fn test_section(md: &mut String, test: &Metrics, labels: &[String], groups: Option<&BTreeMap<String, GroupScore>>) {
    let name = |c: usize| cell(&labels.get(c).cloned().unwrap_or_else(|| format!("class {c}")));
    let _ = writeln!(
        md,
        "\n## Test\n\n{} examples: accuracy {:.4}, macro-F1 {:.4}.\n",
        test.count, test.accuracy, test.macro_f1
    );
    md.push_str("| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n");
    for (c, s) in test.per_class.iter().enumerate() {
        let _ = writeln!(md, "| {} | {:.4} | {:.4} | {:.4} | {} |", name(c), s.precision, s.recall, s.f1, s.support);
    }

    md.push_str("\nConfusion matrix (rows: gold, columns: predicted):\n\n| gold \\ predicted |");
    for c in 0..test.confusion.len() {
        let _ = write!(md, " {} |", name(c));
    }
    let _ = writeln!(md, "\n|---|{}", "---|".repeat(test.confusion.len()));
    for (g, row) in test.confusion.iter().enumerate() {
        let _ = write!(md, "| {} |", name(g));
        for n in row {
            let _ = write!(md, " {n} |");
        }
        md.push('\n');
    }

    if let Some(groups) = groups.filter(|g| !g.is_empty()) {
        md.push_str("\nAccuracy by group:\n\n| group | correct | total | accuracy |\n|---|---|---|---|\n");
        for (group, s) in groups {
            let _ = writeln!(md, "| {} | {} | {} | {:.1}% |", cell(group), s.correct, s.total, 100.0 * s.accuracy());
        }
    }
}

/// The language model's pronunciation test before and after training.
fn cmudict_section(md: &mut String, cmudict: &Value) {
    let _ = writeln!(md, "\n## Pronunciation test ({} words)\n", plain(&cmudict["test_words"]));
    md.push_str("| | exact match | phoneme error rate |\n|---|---|---|\n");
    for when in ["before", "after"] {
        let r = &cmudict[when];
        let pct = |key: &str| r[key].as_f64().map_or_else(|| "–".to_string(), |x| format!("{:.1}%", 100.0 * x));
        let _ = writeln!(md, "| {when} training | {} | {} |", pct("exact_match"), pct("phoneme_error_rate"));
    }
}

/// The retain set's scores before and after training: one row per `<metric>_before` /
/// `<metric>_after` pair.
fn forgetting_section(md: &mut String, f: &Value) {
    let size = match (&f["retain_examples"], &f["retain_tokens"]) {
        (Value::Number(n), _) => format!("{} examples", number(n)),
        (_, Value::Number(n)) => format!("{} tokens", number(n)),
        _ => "the retain set".to_string(),
    };
    let _ = writeln!(md, "\n## Forgetting (retain set: {size})\n");
    if let Value::String(source) = &f["retain"] {
        let _ = writeln!(md, "Retain set: {source}.\n");
    }
    if f.get("kl_from_base_after").is_some() {
        md.push_str("kl_from_base is the mean KL(base ‖ tuned) of the next-token distributions over the retain tokens, in nats.\n\n");
    }
    md.push_str("| metric | before training | after training |\n|---|---|---|\n");
    let Value::Object(map) = f else { return };
    for (key, before) in map {
        let Some(metric) = key.strip_suffix("_before") else { continue };
        let _ = writeln!(md, "| {metric} | {} | {} |", plain(before), plain(&f[format!("{metric}_after")]));
    }
}

/// Every leaf of `value` as a (dotted key, text) row, objects in key order.
fn flatten(key: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten(&format!("{key}.{k}"), v, rows);
            }
        }
        _ => rows.push((key.to_string(), plain(value))),
    }
}

/// A JSON value as a person reads it: strings bare, null as "none", numbers by [`number`],
/// arrays comma-separated.
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => number(n),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Integers exactly, fractions to 4 significant digits: an f32 learning rate stored as
/// 0.0010000000474974513 reads 0.001.
fn number(n: &serde_json::Number) -> String {
    let (true, Some(x)) = (n.is_f64(), n.as_f64()) else { return n.to_string() };
    let rounded: f64 = format!("{x:.3e}").parse().unwrap_or(x);
    if rounded == 0.0 || (1e-4..1e6).contains(&rounded.abs()) { rounded.to_string() } else { format!("{rounded:e}") }
}

/// Text made safe for a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::plot::SIZE;
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// A classifier run like `kiln train --task spamassassin --strategy head`: 100 steps, an
    /// eval every 10 whose macro-F1 peaks at step 60 (and ties at 80), a test set of two classes
    /// with groups.
    fn classifier_run(dir: &Path) {
        let settings = json!({
            "task": "sequence-classification", "model": "/models/minilm", "data": "SpamAssassin",
            "device": "llvmpipe (Vulkan, Cpu)", "labels": ["ham", "spam"], "lora": null, "max_len": 64,
            "pooling": "mean", "examples": {"train": 400, "valid": 100, "test": 400, "train_truncated": 396},
            "train": {"batch_size": 8, "epochs": 2, "lr": 0.0010000000474974513, "schedule": "Linear",
                "seed": 0, "strategy": "head", "max_steps": null, "warmup_ratio": 0.05000000074505806},
        });
        write(dir, "settings.json", &settings.to_string());
        let mut lines = vec![
            r#"{"event":"features","examples":500,"seconds":68.7}"#.to_string(),
            r#"{"event":"trainable","step":0,"depth":7,"params":770}"#.to_string(),
        ];
        for step in 0..=100usize {
            if step > 0 {
                let loss = 0.7 * (-(step as f64) / 40.0).exp() + 0.05 * ((step % 7) as f64 / 7.0);
                lines.push(
                    json!({"event": "step", "step": step, "total": 100, "epoch": step / 50, "loss": loss,
                        "lr": 1e-3, "examples": 8, "seconds": 68.7 + 0.01 * step as f64})
                    .to_string(),
                );
            }
            if step % 10 == 0 {
                let f1 = match step {
                    60 | 80 => 0.8985,
                    _ => 0.5 + 0.003 * step as f64,
                };
                lines.push(
                    json!({"event": "eval", "step": step, "val_loss": 0.7 - 0.004 * step as f64,
                        "accuracy": 0.6 + 0.003 * step as f64, "macro_f1": f1})
                    .to_string(),
                );
            }
        }
        write(dir, "metrics.jsonl", &(lines.join("\n") + "\n"));
        let report = json!({
            "strategy": "head", "steps": 100, "train_seconds": 69.9, "examples_per_second": 114.45,
            "first_loss": 0.7154, "last_loss": 0.4428, "trainable_parameters": 770,
            "total_parameters": 22566146, "peak_gpu_bytes": 123560192, "wall_seconds": 126.9,
            "evals": [], "test_seconds": 56.0, "saved": "/tmp/run/model",
            "test": {"accuracy": 0.93, "macro_f1": 0.9185454545454546, "count": 400,
                "confusion": [[261, 14], [14, 111]],
                "per_class": [
                    {"precision": 0.9490909090909091, "recall": 0.9490909090909091, "f1": 0.9490909090909091, "support": 275},
                    {"precision": 0.888, "recall": 0.888, "f1": 0.888, "support": 125}]},
            "test_groups": {"easy-ham-1": {"correct": 158, "total": 165}, "hard-ham-1": {"correct": 13, "total": 17}},
            "forgetting": {"retain_examples": 32, "accuracy_before": 0.5, "accuracy_after": 0.75,
                "macro_f1_before": 0.4, "macro_f1_after": 0.7},
        });
        write(dir, "report.json", &report.to_string());
    }

    /// A language-model run like `kiln train --task cmudict`: 40 steps, an eval before training
    /// and every 10 steps, the lowest validation loss at step 30.
    fn lm_run(dir: &Path) {
        let settings = json!({
            "model": "/models/smollm2", "data": "cmudict", "device": "llvmpipe (Vulkan, Cpu)",
            "lora": {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "adapted_layers": 60},
            "train": {"epochs": 1, "max_steps": 40, "batch_size": 4, "grad_accum": 1, "lr": 0.00019999999494757503,
                "schedule": "Cosine", "seed": 0}, "max_len": 128, "parameters": {"trainable": 819200, "total": 135334464},
        });
        write(dir, "settings.json", &settings.to_string());
        let mut lines =
            vec![r#"{"event":"eval","step":0,"val_loss":6.0,"val_ppl":403.4288,"tokens":2000}"#.to_string()];
        for step in 1..=40usize {
            let loss = 3.0 - 0.05 * step as f64;
            lines.push(
                json!({"event": "step", "step": step, "total": 40, "epoch": 0, "loss": loss, "lr": 2e-4,
                    "tokens": 400, "seconds": 0.5 * step as f64})
                .to_string(),
            );
            if step % 10 == 0 {
                let val_loss: f64 = [2.6, 2.2, 2.05, 2.1][step / 10 - 1];
                lines.push(
                    json!({"event": "eval", "step": step, "val_loss": val_loss, "val_ppl": val_loss.exp(), "tokens": 2000})
                        .to_string(),
                );
            }
        }
        write(dir, "metrics.jsonl", &lines.join("\n"));
        let report = json!({
            "steps": 40, "tokens": 16000, "train_seconds": 20.0, "tokens_per_second": 800.0, "first_loss": 2.95,
            "last_loss": 1.0, "evals": [[10, 2.6]], "peak_gpu_bytes": 1048576, "adapter": "/tmp/run/adapter",
            "cmudict": {"test_words": 50, "before": {"exact_match": 0.02, "phoneme_error_rate": 0.8},
                "after": {"exact_match": 0.4, "phoneme_error_rate": 0.2}},
        });
        write(dir, "report.json", &report.to_string());
    }

    /// Decodes a PNG we wrote; returns (width, height, whether some pixel is not white).
    fn decode_png(path: &Path) -> (u32, u32, bool) {
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} lacks the PNG signature", path.display());
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let drawn = buf[..info.buffer_size()].iter().any(|&b| b != 255);
        (info.width, info.height, drawn)
    }

    /// Plots the run in `dir` and checks that it wrote loss.png and metric.png, both drawn on.
    fn assert_plots_both_curves(dir: &Path) {
        let written = plot_curves(dir).unwrap();
        assert_eq!(written, vec![dir.join("loss.png"), dir.join("metric.png")]);
        for path in &written {
            assert_eq!(decode_png(path), (SIZE.0, SIZE.1, true), "{}", path.display());
        }
    }

    #[test]
    fn plots_a_classifier_run() {
        let dir = tempfile::tempdir().unwrap();
        classifier_run(dir.path());
        assert_plots_both_curves(dir.path());
    }

    #[test]
    fn plots_a_language_model_run() {
        let dir = tempfile::tempdir().unwrap();
        lm_run(dir.path());
        assert_plots_both_curves(dir.path());
        // Perplexity 403 -> 7.8 was drawn on a log scale; without the eval before training the
        // span is under a decade and the scale linear.
        let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        write(dir.path(), "metrics.jsonl", metrics.split_once('\n').unwrap().1);
        plot_curves(dir.path()).unwrap();
        assert_eq!(decode_png(&dir.path().join("metric.png")), (SIZE.0, SIZE.1, true));
    }

    #[test]
    fn a_run_without_steps_or_evals_gets_only_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "metrics.jsonl", "{\"event\":\"features\",\"examples\":5,\"seconds\":1.0}\n");
        assert!(plot_curves(dir.path()).unwrap().is_empty());
        assert!(!dir.path().join("loss.png").exists());

        // One step and no eval: a loss plot and no metric plot.
        write(dir.path(), "metrics.jsonl", "{\"event\":\"step\",\"step\":1,\"loss\":0.5}\n");
        assert_eq!(plot_curves(dir.path()).unwrap(), vec![dir.path().join("loss.png")]);
    }

    #[test]
    fn a_malformed_metrics_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "metrics.jsonl",
            "{\"event\":\"step\",\"step\":1,\"loss\":0.5}\n\n{\"event\":\"step\",\"st\n",
        );
        let err = plot_curves(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl: line 3: not a metrics event"), "{err}");
        write(dir.path(), "settings.json", "{}");
        let err = write_report(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl: line 3"), "{err}");
    }

    #[test]
    fn reports_a_classifier_run() {
        let dir = tempfile::tempdir().unwrap();
        classifier_run(dir.path());
        plot_curves(dir.path()).unwrap();
        let md = std::fs::read_to_string(write_report(dir.path()).unwrap()).unwrap();
        println!("{md}");
        for expected in [
            "# Run report: classification",
            "- **data**: SpamAssassin",
            "- **labels**: ham, spam",
            "| train.lr | 0.001 |",
            "| train.warmup_ratio | 0.05 |",
            "| train.max_steps | none |",
            "| examples.train_truncated | 396 |",
            "- training time: 69.9 s (114.5 examples/s)",
            "- loss: 0.7154 → 0.4428",
            "| 60 | 0.4600 | 0.7800 | 0.8985 |",
            "Best eval: step 60, macro-F1 0.8985",
            "400 examples: accuracy 0.9300, macro-F1 0.9185.",
            "| ham | 0.9491 | 0.9491 | 0.9491 | 275 |",
            "| spam | 0.8880 | 0.8880 | 0.8880 | 125 |",
            "| gold \\ predicted | ham | spam |",
            "| spam | 14 | 111 |",
            "| hard-ham-1 | 13 | 17 | 76.5% |",
            "## Forgetting (retain set: 32 examples)",
            "| accuracy | 0.5 | 0.75 |",
            "| macro_f1 | 0.4 | 0.7 |",
            "![loss](loss.png)",
            "![validation metric](metric.png)",
        ] {
            assert!(md.contains(expected), "report.md lacks {expected:?}");
        }
        for absent in ["| task |", "| model |", "| labels |"] {
            assert!(!md.contains(absent), "report.md repeats the header in the table: {absent:?}");
        }
    }

    #[test]
    fn reports_a_language_model_run() {
        let dir = tempfile::tempdir().unwrap();
        lm_run(dir.path());
        let md = std::fs::read_to_string(write_report(dir.path()).unwrap()).unwrap();
        println!("{md}");
        for expected in [
            "# Run report: language model",
            "| lora.target_modules | q_proj, v_proj |",
            "| train.lr | 0.0002 |",
            "| parameters.trainable | 819200 |",
            "- training time: 20.0 s (800 tokens/s)",
            "| step | val_loss | perplexity |",
            "| 30 | 2.0500 | 7.77 |",
            "Best eval: step 30, val_loss 2.0500 (perplexity 7.77).",
            "| after training | 40.0% | 20.0% |",
        ] {
            assert!(md.contains(expected), "report.md lacks {expected:?}");
        }
        // No pictures were drawn, so none is linked; no test set, so no test section.
        assert!(!md.contains(".png"));
        assert!(!md.contains("## Test"));
    }

    #[test]
    fn a_run_that_stopped_early_is_summarized_from_its_metrics() {
        let dir = tempfile::tempdir().unwrap();
        lm_run(dir.path());
        std::fs::remove_file(dir.path().join("report.json")).unwrap();
        let md = std::fs::read_to_string(write_report(dir.path()).unwrap()).unwrap();
        for expected in ["- steps: 40", "- training time: 20.0 s\n", "- loss: 2.9500 → 1.0000"] {
            assert!(md.contains(expected), "report.md lacks {expected:?}:\n{md}");
        }
    }

    #[test]
    fn long_validation_curves_are_thinned() {
        let evals: Vec<String> = (0..=100)
            .map(|i| json!({"event": "eval", "step": i * 10, "val_loss": 1.0, "val_ppl": 1.0f64.exp()}).to_string())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "metrics.jsonl", &evals.join("\n"));
        write(dir.path(), "settings.json", "{}");
        let md = std::fs::read_to_string(write_report(dir.path()).unwrap()).unwrap();
        let rows =
            md.lines().filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit())).count();
        assert!(md.contains("One eval in 6 of 101, and the last:"), "{md}");
        assert_eq!(rows, 18, "{md}"); // evals 0, 6, ..., 96 and the last (100)
        // Ties keep the earliest step.
        assert!(md.contains("Best eval: step 0,"), "{md}");
    }

    #[test]
    fn numbers_read_as_written() {
        let n = |x: f64| number(&serde_json::Number::from_f64(x).unwrap());
        assert_eq!(n(0.0010000000474974513), "0.001");
        assert_eq!(n(0.05000000074505806), "0.05");
        assert_eq!(n(1.0), "1");
        assert_eq!(n(2e-5), "2e-5");
        assert_eq!(number(&serde_json::Number::from(22566146u64)), "22566146");
        assert_eq!(moving_average(&[1.0, 3.0, 5.0, 7.0], 2), vec![1.0, 2.0, 4.0, 6.0]);
    }
}
