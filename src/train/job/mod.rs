//! `train::run`: one `kiln train` run from its settings to its run folder. It picks the task
//! (an image classifier for a CNN or images, a classifier for an encoder or labelled data, else
//! a causal LM), loads the model and the data, checks the memory, writes settings.json and config.toml, trains through the
//! [driver](super::driver), scores and saves the result, and writes report.json, the plots and
//! report.md. The command line and `kiln tune` call it; it prints nothing itself: lines worth
//! reading and the step count go to a [`Progress`].
//!
//! - [`lm`]: a causal LM with LoRA (optionally on a quantized base), the cmudict task.
//! - [`classify`]: a sequence classifier by strategy, SpamAssassin or a labelled folder.
//! - [`vision`]: an image classifier (a CNN) by strategy, an image folder or list, or ELPV.

pub mod classify;
pub mod lm;
pub mod vision;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::classify::Strategy;
use super::driver::{Event, Scores, Seen, Summary};
use super::ewc::FisherStats;
use super::settings::TrainSettings;
use super::stopping::StopSettings;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Where a run's progress goes: the command line draws a progress bar and prints the notes;
/// a test may keep them or drop them.
pub trait Progress {
    /// A line worth reading: the settings, the memory estimate, an evaluation, a warning.
    fn note(&mut self, line: &str);
    /// Training reached `step` of `total`; `message` is the loss, learning rate and rate.
    fn step(&mut self, step: usize, total: usize, message: &str);
    /// `done` of `total` items of a stretch of work named by `what` (retain samples drawn,
    /// words scored); `done == total` ends it.
    fn count(&mut self, what: &str, done: usize, total: usize);
    /// Training is over.
    fn finish(&mut self);
}

/// A [`Progress`] that keeps nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn note(&mut self, _line: &str) {}
    fn step(&mut self, _step: usize, _total: usize, _message: &str) {}
    fn count(&mut self, _what: &str, _done: usize, _total: usize) {}
    fn finish(&mut self) {}
}

/// What a finished run gives back.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The run folder.
    pub dir: PathBuf,
    /// report.json's contents.
    pub json: serde_json::Value,
    /// The summary a person reads (what `kiln train` prints without `--json`).
    pub text: String,
}

/// Runs `kiln train` as `settings` say on an adapter already open.
///
/// The run folder is locked first (one writer per folder: a second `kiln train` on it is refused
/// naming this one) and checked (`--overwrite` replaces only a kiln run folder); the task then
/// validates its model and data before it makes the folder ([`open_run_dir`]). A run that fails
/// after that removes the folder it made, unless a checkpoint is in it: then the folder stays and
/// the error says how to resume.
pub fn run(gpu: &Gpu, settings: &TrainSettings, progress: &mut dyn Progress) -> Result<RunReport> {
    settings.validate()?;
    let named = settings.resume.is_some() || settings.out.is_some();
    let flag = if settings.resume.is_some() { "--resume" } else { "--out" };
    let mut fresh = settings.with_fresh_run_dir();
    let mut tries = 0;
    let lock = loop {
        match crate::util::lock::Lock::take(&fresh.run_dir(), flag, "kiln train") {
            Ok(lock) => break lock,
            // Two runs without --out started in the same second: the second takes the next name.
            Err(_) if !named && tries < 100 => {
                tries += 1;
                fresh = settings.with_fresh_run_dir();
            }
            Err(e) => return Err(e),
        }
    };
    let settings = &fresh;
    let out = settings.run_dir();
    if let Some(holder) = lock.took_over() {
        progress.note(&format!(
            "took over the lock of {}: it was left by {holder}, which is no longer running",
            out.display()
        ));
    }
    if settings.resume.is_none() {
        crate::util::check_output(&out, settings.overwrite)?;
    }
    let before = crate::util::folder::identity(&out);
    let result = run_task(gpu, settings, progress);
    result.map_err(|e| clean_up_failed(settings, &out, before, e))
}

fn run_task(gpu: &Gpu, settings: &TrainSettings, progress: &mut dyn Progress) -> Result<RunReport> {
    if vision::is_image_job(settings)? {
        return vision::run(gpu, settings, progress);
    }
    if is_classification(settings)? { classify::run(gpu, settings, progress) } else { lm::run(gpu, settings, progress) }
}

/// Makes the run folder once the task's model and data are checked: a new, marked folder (an
/// old kiln run folder under `--overwrite` is replaced whole), or the resumed run's own.
fn open_run_dir(settings: &TrainSettings, out: &Path) -> Result<()> {
    if settings.resume.is_some() {
        return Ok(());
    }
    crate::util::folder::create_fresh(out, "kiln train run")
}

/// After a failed run: the folder this run made goes, unless it holds a checkpoint (then the
/// error says how to continue). A resumed run's folder, and one that was there before this run
/// made its own (a failure before [`open_run_dir`]), are left as they were.
fn clean_up_failed(settings: &TrainSettings, out: &Path, before: Option<(u64, u64)>, e: Error) -> Error {
    let now = crate::util::folder::identity(out);
    if settings.resume.is_some() || now.is_none() || now == before || super::checkpoint::is_halt(&e) {
        return e;
    }
    match super::checkpoint::list(&out.join("checkpoints")).ok().and_then(|mut all| all.pop()) {
        Some(_) if matches!(e, Error::Interrupted { .. } | Error::Diverged { .. } | Error::DeviceLost { .. }) => e,
        Some((step, _)) => Error::invalid(
            "train",
            format!(
                "{e}; the run folder keeps its checkpoint of step {step}: continue with `kiln train --resume {}`",
                out.display()
            ),
        ),
        None => match std::fs::remove_dir_all(out) {
            Ok(()) => e,
            Err(io) => {
                Error::invalid("train", format!("{e}; the run folder {} could not be removed: {io}", out.display()))
            }
        },
    }
}

/// A classifier job: the spamassassin task, an encoder model, or a data folder with labels.
pub fn is_classification(settings: &TrainSettings) -> Result<bool> {
    match settings.task.as_deref() {
        Some("spamassassin") => return Ok(true),
        Some(_) => return Ok(false),
        None => {}
    }
    if let Some(model) = &settings.model
        && !model.exists()
        && let Some(m) = model.to_str().map(crate::data::catalog::find).transpose()?.flatten()
    {
        return Ok(m.kind == crate::data::catalog::ModelKind::Encoder);
    }
    if let Some(model) = &settings.model
        && model.is_dir()
    {
        let v: serde_json::Value = crate::formats::safetensors::read_config(model)?;
        return Ok(v["model_type"].as_str() == Some("bert"));
    }
    match &settings.data {
        Some(dir) => Ok(has_labels(dir)),
        None => Ok(settings.model.is_none()),
    }
}

/// Whether a data folder holds labelled texts (train.csv, or a train.jsonl with `label`).
fn has_labels(dir: &Path) -> bool {
    if dir.join("train.csv").is_file() {
        return true;
    }
    let Ok(text) = std::fs::read_to_string(dir.join("train.jsonl")) else { return false };
    text.lines()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .is_some_and(|v| v.get("label").is_some())
}

/// The run folder's metrics.jsonl, one line per event of the loop, and the progress: the
/// lines worth reading and the step count.
struct RunLog<'a> {
    path: PathBuf,
    file: std::fs::File,
    progress: &'a mut dyn Progress,
    /// Tokens or examples seen by this process's steps (for the rate).
    seen: usize,
    /// All of the model's parameters, and the trainable ones last reported.
    total_params: usize,
    trainable: usize,
}

impl<'a> RunLog<'a> {
    fn open(settings: &TrainSettings, out: &Path, total_params: usize, progress: &'a mut dyn Progress) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let file = settings.open_metrics(&path)?;
        Ok(RunLog { path, file, progress, seen: 0, total_params, trainable: 0 })
    }

    fn event(&mut self, e: &Event) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(e).expect("events serialize"))
            .map_err(|err| Error::io(&self.path, err))?;
        let line = match e {
            Event::Features { examples, seconds } => {
                format!("features of {examples} examples from the frozen body in {seconds:.1}s")
            }
            Event::Trainable { step, depth, params } => {
                self.trainable = *params;
                format!(
                    "step {step}: {params} trainable parameters ({:.2}%), blocks down to depth {depth}",
                    100.0 * *params as f64 / self.total_params as f64
                )
            }
            Event::Step { step, total, loss, lr, seen, seconds, .. } => {
                self.seen += seen.count();
                let rate = self.seen as f64 / seconds;
                let message = match seen {
                    Seen::Tokens(_) => format!("loss {loss:.4}  lr {lr:.2e}  {rate:.0} tok/s"),
                    Seen::Examples(_) => format!("loss {loss:.4}  lr {lr:.2e}  {rate:.1} ex/s"),
                };
                self.progress.step(*step, *total, &message);
                return Ok(());
            }
            Event::Eval { step, val_loss, scores: Scores::Perplexity { val_ppl, .. } } => {
                format!("step {step}: validation loss {val_loss:.4}, perplexity {val_ppl:.2}")
            }
            Event::Eval { step, val_loss, scores: Scores::Classes { accuracy, macro_f1 } } => {
                format!(
                    "step {step}: validation loss {val_loss:.4}, accuracy {:.1}%, macro-F1 {macro_f1:.4}",
                    100.0 * accuracy
                )
            }
            Event::Fisher(stats) => fisher_line(stats),
            Event::Warning { step, message } => format!("warning at step {step}: {message}"),
        };
        self.progress.note(&line);
        Ok(())
    }
}

/// EWC's Fisher on one line: its size and how hard λ pulls (λ·F is the pull per unit of drift).
fn fisher_line(s: &FisherStats) -> String {
    format!(
        "EWC: Fisher of {} weights from {} retain examples: mean {:.3e}, max {:.3e}; λ·F mean {:.3e}, max {:.3e}",
        s.weights,
        s.retain_examples,
        s.mean,
        s.max,
        s.lambda as f64 * s.mean,
        s.lambda as f64 * s.max
    )
}

/// report.json's `best`: the best evaluation, its metric, and whether its weights were restored.
fn best_json(stop: &StopSettings, best: Option<(usize, f64)>) -> serde_json::Value {
    json!(best.map(|(step, value)| json!({"step": step, "metric": stop.metric, "value": value,
        "restored": stop.restore_best})))
}

/// Where training stopped and which weights the run ends with, as lines of the summary.
fn best_text(text: &mut String, stop: &StopSettings, best: Option<(usize, f64)>, stopped_early_at: Option<usize>) {
    use std::fmt::Write;
    if let Some(step) = stopped_early_at {
        let patience = stop.patience.unwrap_or(0);
        let _ = writeln!(
            text,
            "stopped early at step {step}: {patience} evaluations without a better {}",
            stop.metric.name()
        );
    }
    if let Some((step, value)) = best {
        let what = if stop.restore_best { "its weights restored" } else { "the last weights kept" };
        let _ = writeln!(text, "best validation {} {value:.4} at step {step}; {what}", stop.metric.name());
    }
}

/// What the two classifier tasks (texts and images) report alike once trained: report.json's
/// training part, sizes, device and timings, and the summary text around the task's scores.
struct Trained<'a> {
    summary: &'a Summary,
    stop: &'a StopSettings,
    strategy: Strategy,
    trainable: usize,
    total_params: usize,
    run_start: Instant,
}

impl Trained<'_> {
    /// report.json: the shared keys with the task's own (`task`, an object) added.
    fn json(&self, gpu: &Gpu, task: serde_json::Value) -> serde_json::Value {
        let s = self.summary;
        let mut report = json!({
            "strategy": self.strategy, "trainable_parameters": self.trainable,
            "total_parameters": self.total_params, "steps": s.steps, "train_seconds": s.seconds,
            "examples_per_second": s.per_second(), "first_loss": s.first_loss,
            "best": best_json(self.stop, s.best), "stopped_early_at": s.stopped_early_at,
            "last_loss": s.last_loss, "evals": s.evals,
            "peak_gpu_bytes": gpu.allocated_bytes(), "wall_seconds": self.run_start.elapsed().as_secs_f64(),
            "device": gpu.describe(),
        });
        if let (Some(all), serde_json::Value::Object(own)) = (report.as_object_mut(), task) {
            all.extend(own);
        }
        report
    }

    /// The summary: training (`unit` per second: "examples", "images"), the task's `scores`
    /// lines, where it stopped, the task's `after` lines, and where the model was saved.
    fn text(&self, unit: &str, scores: &str, after: &str, saved: &Path) -> String {
        use std::fmt::Write;
        let s = self.summary;
        let mut text = format!(
            "trained {} steps in {:.1}s ({:.1} {unit}/s); loss {:.4} -> {:.4}; {} trainable parameters\n{scores}",
            s.steps,
            s.seconds,
            s.per_second(),
            s.first_loss,
            s.last_loss,
            self.trainable
        );
        best_text(&mut text, self.stop, s.best, s.stopped_early_at);
        text.push_str(after);
        let _ =
            writeln!(text, "saved: {}  (whole run {:.0}s)", saved.display(), self.run_start.elapsed().as_secs_f64());
        text
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("json values serialize");
    crate::util::write_atomic(path, text.as_bytes())
}

/// report.json, the curves and report.md (which links the plots) in the run folder.
fn write_report(out: &Path, report: &serde_json::Value) -> Result<()> {
    write_json(&out.join("report.json"), report)?;
    super::report::plot_curves(out)?;
    super::report::write_report(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[&str]) -> TrainSettings {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            s: TrainSettings,
        }
        use clap::Parser;
        Flags::parse_from(["train"].iter().chain(extra)).s
    }

    /// A run that fails after making its folder removes it; with a checkpoint in it the folder
    /// stays and the error says how to resume; a folder that was there before the run made its
    /// own (a failure in validation) and a resumed run's folder are never touched.
    #[test]
    fn a_failed_run_removes_its_folder_unless_a_checkpoint_is_in_it() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("run");
        let s = settings(&["--out", out.to_str().unwrap()]);
        let fail = || Error::io(out.join("adapter"), std::io::Error::other("no space left on device"));

        crate::util::folder::create_fresh(&out, "kiln train run").unwrap();
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        let e = clean_up_failed(&s, &out, None, fail()).to_string();
        assert!(e.contains("no space left") && !e.contains("--resume"), "{e}");
        assert!(!out.exists(), "the failed run's folder was left behind");

        crate::util::folder::create_fresh(&out, "kiln train run").unwrap();
        let step = out.join("checkpoints/step-0000004");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join("state.json"), "{}").unwrap();
        let e = clean_up_failed(&s, &out, None, fail()).to_string();
        assert!(e.contains("no space left") && e.contains("checkpoint of step 4"), "{e}");
        assert!(e.contains(&format!("kiln train --resume {}", out.display())), "{e}");
        assert!(step.join("state.json").is_file());

        // The same folder as before the run: the failure came before the run made its own.
        std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
        let before = crate::util::folder::identity(&out);
        clean_up_failed(&s, &out, before, fail());
        assert!(out.join(crate::util::folder::MARKER).is_file(), "a folder the run did not make was removed");
        let resumed = settings(&["--resume", out.to_str().unwrap()]);
        clean_up_failed(&resumed, &out, None, fail());
        assert!(out.exists(), "a resumed run's folder was removed");
    }
}
