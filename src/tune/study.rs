//! A study: its folder, its log, and the loop that decides which trial trains next.
//!
//! `DIR/study.json` holds the settings that define the study (the space's fingerprint, the
//! sampler, the trial count, halving, the metric, the seed, the fixed train flags); re-running
//! with other settings is refused. `DIR/trials.jsonl` is the log, one JSON line per event:
//! a trial's sampled settings (`"event": "trial"`) and each result at a rung (`"event":
//! "rung"`). Re-running the same command replays the log: settings already drawn are reused,
//! results already logged are not trained again, and the loop goes on from the first missing
//! one. Because proposals depend only on the seed, the trial index and the results before it,
//! a resumed study proposes and promotes exactly what the uninterrupted one would have.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::halving::{Halving, promote};
use super::sampler::{Observation, SamplerKind, propose};
use super::space::{Params, Space};
use crate::error::{Error, Result};
use crate::util::write_atomic;

/// What defines a study; stored as `study.json` and compared on every resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudySettings {
    pub space: PathBuf,
    pub space_fingerprint: String,
    pub sampler: SamplerKind,
    pub trials: usize,
    pub halving: Option<Halving>,
    /// The objective (a `--metric` name) and its direction.
    pub metric: String,
    pub higher_is_better: bool,
    pub seed: u64,
    /// The fixed `kiln train` flags every trial gets (from `[base]` and after `--`).
    pub train_flags: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stopped at a rung with a checkpoint; continues if promoted.
    Paused,
    /// Trained its whole budget.
    Complete,
    /// Stopped by its own patience (early stopping) before its budget.
    StoppedEarly,
    /// The run failed (e.g. the loss diverged); its error is logged.
    Failed,
}

/// One line of trials.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    Trial {
        trial: usize,
        params: Params,
    },
    Rung {
        trial: usize,
        rung: usize,
        /// Optimizer steps the trial has taken in all (not only in this rung).
        steps: usize,
        /// The best validation value of the metric so far (None when the run failed).
        objective: Option<f64>,
        status: Status,
        /// Wall time of this rung's training, in seconds.
        seconds: f64,
        /// The test set's value of the metric when the run finished and had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// What one call of a [`Runner`] gives back.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub steps: usize,
    pub objective: Option<f64>,
    pub status: Status,
    pub seconds: f64,
    pub test: Option<f64>,
    pub error: Option<String>,
}

/// Trains trials. The study decides what; the runner does it.
pub trait Runner {
    /// Trains trial `trial` with `params` from where its run folder left off (a fresh start when
    /// there is no checkpoint) until step `until` (a rung, where it pauses with a checkpoint) or,
    /// with None, to the end of its budget. A failed run is an `Outcome` with
    /// [`Status::Failed`]; an `Err` stops the study.
    fn run(&mut self, trial: usize, params: &Params, until: Option<usize>) -> Result<Outcome>;

    /// Called after every logged result (the study writes its tables and plots here).
    fn logged(&mut self, _study: &Study) -> Result<()> {
        Ok(())
    }
}

pub struct Study {
    pub dir: PathBuf,
    pub settings: StudySettings,
    pub records: Vec<Record>,
}

impl Study {
    /// Opens `dir` as a study with `settings`: a new one, or an existing one with the same
    /// settings (any difference is an error naming it).
    pub fn open(dir: &Path, settings: StudySettings) -> Result<Study> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("study.json");
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let old: StudySettings =
                serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.clone(), message: e.to_string() })?;
            if old != settings {
                return Err(Error::invalid(
                    "tune",
                    format!(
                        "{} was started with other settings ({}); resume with the same command, or use a new --study folder",
                        dir.display(),
                        differences(&old, &settings)
                    ),
                ));
            }
        } else {
            let text = serde_json::to_string_pretty(&settings).expect("settings serialize");
            write_atomic(&path, text.as_bytes())?;
        }
        let records = read_log(&dir.join("trials.jsonl"))?;
        Ok(Study { dir: dir.to_path_buf(), settings, records })
    }

    /// Appends one record to trials.jsonl as a single write of a whole line, flushed to disk, so
    /// a kill leaves at worst a partial last line (which [`read_log`] drops).
    fn append(&mut self, record: Record) -> Result<()> {
        let path = self.dir.join("trials.jsonl");
        let mut line = serde_json::to_string(&record).expect("records serialize");
        line.push('\n');
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).map_err(|e| Error::io(&path, e))?;
        self.records.push(record);
        Ok(())
    }

    pub fn params(&self, trial: usize) -> Option<&Params> {
        self.records.iter().find_map(|r| match r {
            Record::Trial { trial: t, params } if *t == trial => Some(params),
            _ => None,
        })
    }

    /// The logged result of `trial` at `rung`.
    pub fn result(&self, trial: usize, rung: usize) -> Option<&Record> {
        self.records.iter().find(|r| matches!(r, Record::Rung { trial: t, rung: k, .. } if *t == trial && *k == rung))
    }

    /// Every trial's latest result, by trial index.
    pub fn latest(&self) -> Vec<(usize, &Params, Option<&Record>)> {
        let mut out = Vec::new();
        for r in &self.records {
            if let Record::Trial { trial, params } = r {
                let last = self.records.iter().rfind(|x| matches!(x, Record::Rung { trial: t, .. } if t == trial));
                out.push((*trial, params, last));
            }
        }
        out.sort_by_key(|x| x.0);
        out
    }

    /// An objective as a loss: lower is better, NaN and missing last.
    pub fn loss(&self, objective: Option<f64>) -> f64 {
        match objective {
            Some(v) if !v.is_nan() => {
                if self.settings.higher_is_better {
                    -v
                } else {
                    v
                }
            }
            _ => f64::INFINITY,
        }
    }

    /// What the sampler may learn from before proposing trial `index`: the latest result of
    /// each earlier trial that did not fail.
    fn history(&self, index: usize) -> Vec<Observation> {
        self.latest()
            .into_iter()
            .filter(|(t, _, _)| *t < index)
            .filter_map(|(_, params, last)| match last {
                Some(Record::Rung { rung, objective, status, .. }) if *status != Status::Failed => {
                    Some(Observation { params: params.clone(), loss: self.loss(*objective), rung: *rung })
                }
                _ => None,
            })
            .collect()
    }

    /// Runs the study to its end, skipping everything the log already holds.
    pub fn run(&mut self, space: &Space, runner: &mut dyn Runner) -> Result<()> {
        let s = self.settings.clone();
        let rungs: Vec<Option<usize>> = match s.halving {
            Some(h) => {
                let r = h.rungs();
                let last = r.len() - 1;
                r.into_iter().enumerate().map(|(k, steps)| (k < last).then_some(steps)).collect()
            }
            None => vec![None],
        };
        // Rung 0: every trial, in order.
        for trial in 0..s.trials {
            let params = match self.params(trial) {
                Some(p) => p.clone(),
                None => match propose(s.sampler, space, s.seed, trial, &self.history(trial)) {
                    Some(p) => {
                        self.append(Record::Trial { trial, params: p.clone() })?;
                        p
                    }
                    None => break, // the grid is exhausted
                },
            };
            self.ensure(runner, trial, &params, 0, rungs[0])?;
        }
        // Later rungs: the best of the trials paused at the rung below continue.
        for (k, until) in rungs.iter().enumerate().skip(1) {
            let candidates: Vec<(usize, f64)> = self
                .records
                .iter()
                .filter_map(|r| match r {
                    Record::Rung { trial, rung, objective, status: Status::Paused, .. } if *rung == k - 1 => {
                        Some((*trial, self.loss(*objective)))
                    }
                    _ => None,
                })
                .collect();
            let keep = s.halving.map_or(0, |h| h.keep(candidates.len()));
            for trial in promote(&candidates, keep) {
                let params = self.params(trial).cloned().expect("a trial with results has its params logged");
                self.ensure(runner, trial, &params, k, *until)?;
            }
        }
        Ok(())
    }

    /// Trains `trial` through rung `k` unless the log already has that result.
    fn ensure(
        &mut self,
        runner: &mut dyn Runner,
        trial: usize,
        params: &Params,
        k: usize,
        until: Option<usize>,
    ) -> Result<()> {
        if self.result(trial, k).is_some() {
            return Ok(());
        }
        let o = runner.run(trial, params, until)?;
        self.append(Record::Rung {
            trial,
            rung: k,
            steps: o.steps,
            objective: o.objective,
            status: o.status,
            seconds: o.seconds,
            test: o.test,
            error: o.error,
        })?;
        runner.logged(self)
    }
}

/// The fields two settings differ in, as `name: old -> new`.
fn differences(old: &StudySettings, new: &StudySettings) -> String {
    let (a, b) = (serde_json::to_value(old).expect("json"), serde_json::to_value(new).expect("json"));
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in a {
            if b.get(k) != Some(v) {
                let what = if k == "space_fingerprint" {
                    "the space file's contents changed".to_string()
                } else {
                    format!("{v} -> {}", b.get(k).cloned().unwrap_or_default())
                };
                out.push(format!("{k}: {what}"));
            }
        }
    }
    out.join("; ")
}

/// The records of trials.jsonl (none when it does not exist). A last line cut short by a kill
/// is dropped and the file rewritten without it; a bad line elsewhere is an error naming it.
pub fn read_log(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut records = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) if i + 1 == lines.len() && !line.ends_with('\n') => {
                let kept: String = lines[..i].concat();
                write_atomic(path, kept.as_bytes())?;
            }
            Err(e) => return Err(crate::data::line_error(path, i + 1, e)),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted runner: trial i's objective at step s is `score(i) * s / 100` (higher is
    /// better), so the ranking of trials is the same at every rung.
    struct Fake {
        calls: Vec<(usize, Option<usize>)>,
        fail_on: Option<usize>,
        stop_early: Option<usize>,
        /// Return Err (as a kill would) on this call number.
        kill_at: Option<usize>,
    }

    fn score(params: &Params) -> f64 {
        params["x"].as_f64().unwrap()
    }

    impl Runner for Fake {
        fn run(&mut self, trial: usize, params: &Params, until: Option<usize>) -> Result<Outcome> {
            if self.kill_at == Some(self.calls.len()) {
                return Err(Error::invalid("fake", "killed"));
            }
            self.calls.push((trial, until));
            let steps = until.unwrap_or(90);
            let mut o = Outcome {
                steps,
                objective: Some(score(params) * steps as f64 / 100.0),
                status: if until.is_some() { Status::Paused } else { Status::Complete },
                seconds: 1.0,
                test: None,
                error: None,
            };
            if self.fail_on == Some(trial) {
                o.objective = None;
                o.status = Status::Failed;
                o.error = Some("loss became NaN".into());
            }
            if self.stop_early == Some(trial) {
                o.status = Status::StoppedEarly;
                o.steps = 5;
            }
            Ok(o)
        }
    }

    fn fake() -> Fake {
        Fake { calls: Vec::new(), fail_on: None, stop_early: None, kill_at: None }
    }

    fn setup(dir: &Path, trials: usize) -> (Space, StudySettings) {
        let space =
            Space::parse(&dir.join("s.toml"), "[params]\nx = { uniform = [0, 1] }", &["x".to_string()]).unwrap();
        let settings = StudySettings {
            space: dir.join("s.toml"),
            space_fingerprint: space.fingerprint.clone(),
            sampler: SamplerKind::Random,
            trials,
            halving: Some(Halving::new(10, 3, 90).unwrap()),
            metric: "macro_f1".into(),
            higher_is_better: true,
            seed: 1,
            train_flags: vec![],
        };
        (space, settings)
    }

    fn xs(study: &Study) -> Vec<f64> {
        (0..study.settings.trials).map(|t| score(study.params(t).unwrap())).collect()
    }

    /// The k best of `xs`, in trial order.
    fn best(xs: &[f64], k: usize, among: &[usize]) -> Vec<usize> {
        let mut idx = among.to_vec();
        idx.sort_by(|&a, &b| xs[b].total_cmp(&xs[a]));
        let mut top = idx[..k].to_vec();
        top.sort();
        top
    }

    #[test]
    fn halving_promotes_the_best_third_at_each_rung() {
        let tmp = tempfile::tempdir().unwrap();
        let (space, settings) = setup(tmp.path(), 9);
        let mut study = Study::open(&tmp.path().join("study"), settings).unwrap();
        let mut r = fake();
        study.run(&space, &mut r).unwrap();
        let xs = xs(&study);
        let rung1 = best(&xs, 3, &(0..9).collect::<Vec<_>>());
        let rung2 = best(&xs, 1, &rung1);
        let want: Vec<(usize, Option<usize>)> = (0..9)
            .map(|t| (t, Some(10)))
            .chain(rung1.iter().map(|&t| (t, Some(30))))
            .chain(rung2.iter().map(|&t| (t, None)))
            .collect();
        assert_eq!(r.calls, want);
        // 9·10 + 3·30 + 1·90 steps in all: each trial's last record holds its total.
        let total: usize = study
            .latest()
            .iter()
            .map(|(_, _, l)| match l {
                Some(Record::Rung { steps, .. }) => *steps,
                _ => 0,
            })
            .sum();
        assert_eq!(total, 6 * 10 + 2 * 30 + 90);
    }

    #[test]
    fn failed_and_early_stopped_trials_are_not_promoted() {
        let tmp = tempfile::tempdir().unwrap();
        let (space, settings) = setup(tmp.path(), 6);
        let mut study = Study::open(&tmp.path().join("study"), settings).unwrap();
        // Find the two best trials first, then make one fail and the other stop early.
        let mut probe = fake();
        study.run(&space, &mut probe).unwrap();
        let xs = xs(&study);
        let order = best(&xs, 2, &(0..6).collect::<Vec<_>>());
        let tmp2 = tempfile::tempdir().unwrap();
        let (space, settings) = setup(tmp2.path(), 6);
        let mut study = Study::open(&tmp2.path().join("study"), settings).unwrap();
        let mut r = Fake { fail_on: Some(order[0]), stop_early: Some(order[1]), ..fake() };
        study.run(&space, &mut r).unwrap();
        let promoted: Vec<usize> = r.calls.iter().filter(|c| c.1 == Some(30)).map(|c| c.0).collect();
        let rest: Vec<usize> = (0..6).filter(|t| !order.contains(t)).collect();
        assert_eq!(promoted, best(&xs, 1, &rest), "4 still running: the best one continues");
    }

    #[test]
    fn a_killed_study_resumes_without_rerunning_and_ends_as_the_uninterrupted_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (space, settings) = setup(tmp.path(), 9);
        let mut whole = Study::open(&tmp.path().join("whole"), settings.clone()).unwrap();
        whole.run(&space, &mut fake()).unwrap();

        let dir = tmp.path().join("killed");
        let mut killed = Study::open(&dir, settings.clone()).unwrap();
        let mut r = Fake { kill_at: Some(10), ..fake() };
        assert!(killed.run(&space, &mut r).is_err());
        // A kill in the middle of writing a line.
        let log = dir.join("trials.jsonl");
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("{\"event\":\"rung\",\"tri");
        std::fs::write(&log, text).unwrap();

        let mut resumed = Study::open(&dir, settings.clone()).unwrap();
        let mut r2 = fake();
        resumed.run(&space, &mut r2).unwrap();
        assert_eq!(r2.calls.len(), 13 - 10, "only the 3 results missing from the log are trained");
        assert_eq!(resumed.records, whole.records, "the same proposals, promotions and results");
        // Run again: nothing left to do.
        let mut r3 = fake();
        Study::open(&dir, settings.clone()).unwrap().run(&space, &mut r3).unwrap();
        assert!(r3.calls.is_empty());
        // Another space is refused, naming what changed.
        let mut other = settings;
        other.space_fingerprint = "0".into();
        other.trials = 10;
        let err = Study::open(&dir, other).err().unwrap().to_string();
        assert!(err.contains("space file's contents changed") && err.contains("trials: 9 -> 10"), "{err}");
    }

    /// Objectives and checkpoint states go through JSON; without serde_json's `float_roundtrip`
    /// this value read back one bit off, and a resumed trial's score no longer equalled its
    /// reproduction's (seen on the README's study).
    #[test]
    fn floats_read_back_exactly() {
        let x = 0.9410307819318315f64;
        assert_eq!(serde_json::from_str::<f64>(&serde_json::to_string(&x).unwrap()).unwrap().to_bits(), x.to_bits());
    }

    #[test]
    fn a_bad_line_in_the_middle_of_the_log_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("trials.jsonl");
        std::fs::write(&log, "{\"event\":\"trial\",\"trial\":0,\"params\":{}}\nnot json\n{\"event\":\"trial\",\"trial\":1,\"params\":{}}\n").unwrap();
        let err = read_log(&log).unwrap_err().to_string();
        assert!(err.contains("trials.jsonl") && err.contains("line 2"), "{err}");
    }
}
