//! Checkpoints: what resuming a run needs to continue exactly as if it had never stopped.
//!
//! `RUN/checkpoints/step-NNNNNNN/` holds `state.safetensors` (every trainable weight as
//! `param.<name>`, AdamW's moments as `m.<name>` / `v.<name>`, the model's buffers such as batch
//! norm's running statistics as `buffer.<name>`) and `state.json` (the step, the
//! data position, each parameter's AdamW step count, early stopping's state, the summary so far).
//! The folder is written under a temporary name and renamed, so a checkpoint is whole or absent;
//! older ones beyond `keep` are deleted afterwards. Dropout masks, the data order and the
//! learning rate are functions of the seed and the step, so they need no saving.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Optimizer;
use super::stopping::{BestTracker, Snapshot, StopSettings};
use crate::autograd::Module;
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsSource, WeightSource, save_safetensors};
use crate::gpu::Gpu;
use crate::util::write_atomic;

/// When to write checkpoints, where, and whether to continue from the newest one.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointSettings {
    /// `RUN/checkpoints`; the best evaluation's goes to `RUN/checkpoints/best`.
    pub dir: PathBuf,
    /// Every this many optimizer steps.
    pub every: usize,
    /// How many of the newest to keep (the best one is kept apart).
    pub keep: usize,
    /// Continue from the newest checkpoint under `dir`.
    pub resume: bool,
    /// Stop the run with an error right after writing the checkpoint of this step, as if it had
    /// been killed there (tests of resuming).
    pub halt_after: Option<usize>,
}

impl CheckpointSettings {
    pub fn best_dir(&self) -> PathBuf {
        self.dir.join("best")
    }
}

const HALTED: &str = "halted after step";

/// Whether `e` is the stop `halt_after` asked for (the run is whole up to its checkpoint), rather
/// than a failure: `kiln tune` pauses trials at a rung this way.
pub fn is_halt(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { op: "train", message } if message.starts_with(HALTED))
}

/// Where the loop was, and what it had seen.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch in progress and how many of its batches are done.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    /// Early stopping: the best (step, value) and evaluations since it.
    pub best: Option<(usize, f64)>,
    pub since_best: usize,
    /// The loop's running summary (its own JSON shape).
    pub summary: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    state: LoopState,
    /// AdamW's per-parameter step counts.
    adam_steps: Vec<(String, u32)>,
    optimizer_steps: u32,
}

fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:07}"))
}

/// Writes a checkpoint of the trainable weights, the optimizer and the loop's state under
/// `root`, then deletes all but the newest `keep`.
pub fn save(
    gpu: &Gpu,
    root: &Path,
    model: &dyn Module,
    opt: &Optimizer,
    state: &LoopState,
    keep: usize,
) -> Result<PathBuf> {
    let mut params = Vec::new();
    model.visit_params(&mut |p| {
        if p.trainable() {
            params.push((p.name.clone(), p.value.clone()));
        }
    });
    let mut tensors = Vec::new();
    for (name, value) in params {
        tensors.push((format!("param.{name}"), value.to_f32_vec(gpu)?, value.shape().to_vec()));
    }
    let mut buffers = Vec::new();
    model.visit_buffers(&mut |name, t| buffers.push((name.to_string(), t.clone())));
    for (name, t) in buffers {
        tensors.push((format!("buffer.{name}"), t.to_f32_vec(gpu)?, t.shape().to_vec()));
    }
    let mut adam_steps = Vec::new();
    for (name, m, v, shape, steps) in opt.export_state(gpu)? {
        tensors.push((format!("m.{name}"), m, shape.clone()));
        tensors.push((format!("v.{name}"), v, shape));
        adam_steps.push((name, steps));
    }
    let file = StateFile { state: state.clone(), adam_steps, optimizer_steps: opt.steps };
    let dir = step_dir(root, state.step);
    remove_stale_temps(root);
    let tmp = root.join(format!(".tmp-step-{:07}-{}", state.step, std::process::id()));
    let json = serde_json::to_string_pretty(&file).expect("checkpoint state serializes");
    crate::util::write_folder_whole(&tmp, &dir, |tmp| {
        save_safetensors(&tmp.join("state.safetensors"), &tensors, None)?;
        write_atomic(&tmp.join("state.json"), json.as_bytes())
    })?;
    let all = list(root)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(dir)
}

/// Half-written checkpoints of runs that were killed: never listed, removed at the next save.
fn remove_stale_temps(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let mine = format!("-{}", std::process::id());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-step-") && !name.ends_with(&mine) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for e in entries {
        let path = e.map_err(|e| Error::io(root, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok())
            && path.join("state.json").is_file()
        {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The loop state of one checkpoint folder (without loading its tensors).
pub fn read_state(dir: &Path) -> Result<LoopState> {
    Ok(read_file(dir)?.state)
}

fn read_file(dir: &Path) -> Result<StateFile> {
    let json_path = dir.join("state.json");
    let text = std::fs::read_to_string(&json_path).map_err(|e| Error::io(&json_path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse { path: json_path.clone(), message: e.to_string() })
}

/// Loads the newest checkpoint under `root` into the model (trainable weights, by name; the
/// model must already have the run's trainable set) and the optimizer; returns the loop state.
pub fn restore_latest(gpu: &Gpu, root: &Path, model: &mut dyn Module, opt: &mut Optimizer) -> Result<LoopState> {
    let Some((_, dir)) = list(root)?.pop() else {
        return Err(Error::invalid("resume", format!("no checkpoint under {}", root.display())));
    };
    let file = read_file(&dir)?;
    let mut src = SafetensorsSource::open_file(&dir.join("state.safetensors"))?;
    let mut shapes = Vec::new();
    model.visit_params(&mut |p| {
        if p.trainable() {
            shapes.push((p.name.clone(), p.value.shape().to_vec()));
        }
    });
    let mut values = Vec::new();
    for (name, shape) in &shapes {
        values.push((name.clone(), src.take(&format!("param.{name}"), shape)?));
    }
    let mut result = Ok(());
    model.visit_params_mut(&mut |p| {
        if let Some((_, v)) = values.iter().find(|(n, _)| *n == p.name)
            && result.is_ok()
        {
            result = p.value.write_f32(gpu, v);
        }
    });
    result?;
    // Buffers are written in place (a checkpoint from before buffers were kept has none).
    let mut buffers = Vec::new();
    model.visit_buffers(&mut |name, t| buffers.push((name.to_string(), t.clone())));
    for (name, t) in buffers {
        let key = format!("buffer.{name}");
        if src.shape_of(&key).is_some() {
            t.write_f32(gpu, &src.take(&key, t.shape())?)?;
        }
    }
    for (name, steps) in &file.adam_steps {
        let shape = src.shape_of(&format!("m.{name}")).map(<[usize]>::to_vec).unwrap_or_default();
        let m = src.take(&format!("m.{name}"), &shape)?;
        let v = src.take(&format!("v.{name}"), &shape)?;
        opt.import_state(gpu, name, &m, &v, &shape, *steps)?;
    }
    opt.steps = file.optimizer_steps;
    src.finish(&|_| false)?;
    Ok(file.state)
}

/// What both training loops do around evaluations and checkpoints: early stopping with the
/// best weights (saved under `best/` when checkpointing), periodic checkpoints, resuming.
pub struct RunKeeper<'a> {
    gpu: &'a Gpu,
    pub tracker: BestTracker,
    checkpoints: Option<&'a CheckpointSettings>,
    /// Every parameter the run may change (what the best snapshot keeps).
    may_train: &'a dyn Fn(&str) -> bool,
}

/// A position in the data: (optimizer step, epoch, batches of that epoch done).
pub type Position = (usize, usize, usize);

impl<'a> RunKeeper<'a> {
    pub fn new(
        gpu: &'a Gpu,
        stop: &StopSettings,
        checkpoints: Option<&'a CheckpointSettings>,
        may_train: &'a dyn Fn(&str) -> bool,
    ) -> Self {
        RunKeeper { gpu, tracker: stop.tracker(), checkpoints, may_train }
    }

    fn state(&self, (step, epoch, batch_in_epoch): Position, summary: &impl Serialize) -> LoopState {
        LoopState {
            step,
            epoch,
            batch_in_epoch,
            best: self.tracker.stopping.best,
            since_best: self.tracker.stopping.since_best,
            summary: serde_json::to_value(summary).expect("summaries serialize"),
        }
    }

    /// Records an evaluation's value of the stop metric (None: there was no validation data);
    /// says whether patience ran out.
    pub fn judge(
        &mut self,
        model: &dyn Module,
        opt: &Optimizer,
        summary: &impl Serialize,
        at: Position,
        value: Option<f64>,
    ) -> Result<bool> {
        let Some(value) = value else { return Ok(false) };
        let verdict = self.tracker.observe(self.gpu, model, self.may_train, at.0, value)?;
        if let Some(ck) = self.checkpoints
            && verdict.improved
        {
            save(self.gpu, &ck.best_dir(), model, opt, &self.state(at, summary), 1)?;
        }
        Ok(verdict.stop)
    }

    /// Writes the periodic checkpoint when `at` is due one (and halts after it when asked).
    pub fn checkpoint(
        &self,
        model: &dyn Module,
        opt: &Optimizer,
        summary: &impl Serialize,
        at: Position,
    ) -> Result<()> {
        let interrupted = super::interrupt::requested();
        let Some(ck) = self.checkpoints.filter(|c| c.every > 0) else {
            return if interrupted { Err(Error::Interrupted { step: at.0, run: None }) } else { Ok(()) };
        };
        if at.0.is_multiple_of(ck.every) || interrupted {
            save(self.gpu, &ck.dir, model, opt, &self.state(at, summary), ck.keep)?;
        }
        if interrupted {
            return Err(Error::Interrupted { step: at.0, run: ck.dir.parent().map(Path::to_path_buf) });
        }
        if ck.halt_after == Some(at.0) {
            return Err(Error::invalid("train", format!("{HALTED} {}, as --halt-after asked", at.0)));
        }
        Ok(())
    }

    /// At the end of a run: a checkpoint of its last step unless the periodic one was it, so
    /// that `--resume` on a finished run knows there is nothing left to train.
    pub fn checkpoint_last(
        &self,
        model: &dyn Module,
        opt: &Optimizer,
        summary: &impl Serialize,
        step: usize,
    ) -> Result<()> {
        let Some(ck) = self.checkpoints.filter(|c| c.every > 0 && !step.is_multiple_of(c.every)) else {
            return Ok(());
        };
        // The data position no longer matters: a resumed run stops before its first batch.
        save(self.gpu, &ck.dir, model, opt, &self.state((step, 0, 0), summary), ck.keep).map(|_| ())
    }

    /// When resuming: loads the newest checkpoint into the model and the optimizer, and early
    /// stopping's state with the best weights; returns the loop state (None: not resuming).
    pub fn resume(&mut self, model: &mut dyn Module, opt: &mut Optimizer) -> Result<Option<LoopState>> {
        let Some(ck) = self.checkpoints.filter(|c| c.resume) else { return Ok(None) };
        let state = restore_latest(self.gpu, &ck.dir, model, opt)?;
        let best = match list(&ck.best_dir())?.pop() {
            Some((_, d)) if self.tracker.restore_best => Some(Snapshot::from_checkpoint(self.gpu, &d)?),
            _ => None,
        };
        self.tracker.resume(state.best, state.since_best, best);
        Ok(Some(state))
    }

    /// The newest checkpoint's state, without loading it (None: not resuming).
    pub fn peek(&self) -> Result<Option<LoopState>> {
        let Some(ck) = self.checkpoints.filter(|c| c.resume) else { return Ok(None) };
        match list(&ck.dir)?.pop() {
            Some((_, dir)) => Ok(Some(read_state(&dir)?)),
            None => Err(Error::invalid("resume", format!("no checkpoint under {}", ck.dir.display()))),
        }
    }

    /// Puts the best evaluation's weights back (when restoring); the best (step, value).
    pub fn finish(&self, model: &mut dyn Module) -> Result<Option<(usize, f64)>> {
        self.tracker.finish(self.gpu, model)
    }
}
