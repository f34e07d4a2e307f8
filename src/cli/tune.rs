//! `kiln tune`: hyperparameter search over `kiln train`. Each trial is an ordinary training run
//! (in this process, on one adapter) in `STUDY/trials/NNNN`, configured from the space file's
//! `[base]`, the flags after `--`, and the trial's sampled values, in that order (later wins).
//! With successive halving every trial is configured for `max_steps`, paused at a rung by the
//! checkpoint of that step, and continued with `--resume` when promoted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::CommandFactory;

use super::AdapterArgs;
use super::train::TrainArgs;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::train::checkpoint;
use crate::train::stopping::StopMetric;
use crate::tune::halving::Halving;
use crate::tune::report::{self, trial_dir};
use crate::tune::sampler::SamplerKind;
use crate::tune::space::{Params, Space, flag_value};
use crate::tune::study::{Outcome, Runner, Status, Study, StudySettings};

/// Trials when `--trials` is not given (a grid takes every point).
const DEFAULT_TRIALS: usize = 20;

#[derive(clap::Args, Debug)]
#[command(after_help = "The space file (TOML):\n  \
    [base]                                   # fixed settings: the keys of `kiln train --config`\n  \
    task = \"spamassassin\"\n  \
    strategy = \"head\"\n  \
    [params]                                 # searched: one distribution per `kiln train` flag\n  \
    lr = { log_uniform = [1e-4, 1e-1] }\n  \
    dropout = { uniform = [0.0, 0.3] }       # `points = N`: values per axis of a grid [default: 3]\n  \
    lora_r = { int = [4, 16] }\n  \
    batch_size = { choice = [8, 16, 32] }\n\n\
    Examples:\n  \
    kiln tune --space space.toml --study studies/spam --trials 27 --halving 50,3,450\n  \
    kiln tune --space space.toml --study studies/grid --sampler grid -- --data my_folder --epochs 3\n\n\
    Running the same command again continues a study that was stopped: finished trials are not \
    trained again.")]
pub struct TuneArgs {
    /// The search space: a TOML file with `[params]` (what is searched) and optionally `[base]`
    /// (fixed `kiln train` settings)
    #[arg(long)]
    pub space: PathBuf,
    /// The study folder: trials/NNNN run folders, trials.jsonl, results.md, best.toml, study.png
    #[arg(long)]
    pub study: PathBuf,
    #[arg(long, value_enum, default_value_t = SamplerKind::Random)]
    pub sampler: SamplerKind,
    /// How many trials [default: 20; with --sampler grid, every point of the grid]
    #[arg(long)]
    pub trials: Option<usize>,
    /// Successive halving as MIN_STEPS,ETA,MAX_STEPS: every trial trains MIN_STEPS steps, the best
    /// 1/ETA continue to MIN_STEPS·ETA, ..., up to MAX_STEPS (each trial's schedule is set for
    /// MAX_STEPS) [default: off, each trial trains its whole budget]
    #[arg(long, conflicts_with_all = ["min_steps", "max_steps"])]
    pub halving: Option<String>,
    /// Successive halving's first rung (with --max-steps; --eta defaults to 3)
    #[arg(long, requires = "max_steps")]
    pub min_steps: Option<usize>,
    /// Successive halving's full budget (with --min-steps)
    #[arg(long, requires = "min_steps")]
    pub max_steps: Option<usize>,
    /// Successive halving's reduction factor: the best 1/ETA continue at each rung
    #[arg(long, default_value_t = 3)]
    pub eta: usize,
    /// The objective, as `kiln train --metric` (the best validation value of each trial)
    /// [default: train's: macro-f1 for classifiers, val-loss for LMs]
    #[arg(long, value_enum)]
    pub metric: Option<StopMetric>,
    /// Seeds the sampler (each trial's training seed is train's --seed, the same for all)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// `kiln train` flags every trial gets, after `--` (e.g. `-- --data DIR --strategy head`)
    #[arg(last = true)]
    pub train: Vec<String>,
}

/// The flags `kiln train` takes, with underscores (`lora_r`).
pub fn train_flags() -> Vec<String> {
    let cmd = super::Cli::command();
    let train = cmd.find_subcommand("train").expect("train is a subcommand");
    train.get_arguments().filter_map(|a| a.get_long()).map(|l| l.replace('-', "_")).collect()
}

/// Flags the study sets for each trial itself.
const RESERVED: &[&str] = &["--out", "--resume", "--halt-after", "--json", "--help"];

pub fn run(args: TuneArgs) -> Result<()> {
    let space = Space::read(&args.space, &train_flags())?;
    let halving = match (&args.halving, args.min_steps, args.max_steps) {
        (Some(h), _, _) => Some(Halving::parse(h)?),
        (None, Some(min), Some(max)) => Some(Halving::new(min, args.eta, max)?),
        _ => None,
    };
    let fixed = fixed_flags(&args, &space, halving)?;
    let template = Trials { fixed: fixed.clone(), study: args.study.clone(), halving };
    let metric = check_trials(&template, &space, halving)?;
    let trials = match (args.sampler, args.trials) {
        (SamplerKind::Grid, Some(n)) => n.min(space.grid_size()),
        (SamplerKind::Grid, None) => space.grid_size(),
        (_, Some(n)) => n,
        (_, None) => DEFAULT_TRIALS,
    };
    if trials == 0 {
        return Err(Error::invalid("--trials", "must be at least 1"));
    }
    let settings = StudySettings {
        space: args.space.clone(),
        space_fingerprint: space.fingerprint.clone(),
        sampler: args.sampler,
        trials,
        halving,
        metric: metric.name().to_string(),
        higher_is_better: metric.higher_is_better(),
        seed: args.seed,
        train_flags: fixed,
    };
    // One writer per study: two `kiln tune` on one folder would interleave trials.jsonl.
    let lock = crate::util::lock::Lock::take(&args.study, "--study", "kiln tune")?;
    if let Some(holder) = lock.took_over() {
        eprintln!(
            "took over the lock of {}: it was left by {holder}, which is no longer running",
            args.study.display()
        );
    }
    let mut study = Study::open(&args.study, settings)?;
    let gpu = args.adapter.open()?;
    // Trials share the frozen body's features (the `head` strategy): see train::feature_cache.
    crate::train::feature_cache::enable();
    let done_before = study.records.iter().filter(|r| matches!(r, crate::tune::study::Record::Rung { .. })).count();
    eprintln!("kiln tune on {}", gpu.describe());
    eprintln!("  space     {} ({} parameters)", args.space.display(), space.params.len());
    eprintln!(
        "  study     {}: {} trials, {} sampler, objective validation {}{}",
        args.study.display(),
        trials,
        serde_json::to_value(args.sampler).expect("json").as_str().unwrap_or(""),
        metric.name(),
        halving.map_or(String::new(), |h| format!(", halving at steps {:?}", h.rungs()))
    );
    if done_before > 0 {
        eprintln!("  resuming  {done_before} results already in trials.jsonl are kept");
    }
    let mut runner = TrainRunner { gpu: &gpu, trials: template, space: &space };
    study.run(&space, &mut runner)?;
    report::write_all(&study, &space, true)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report::summary(&study, true)).expect("json"));
    } else {
        print!("{}", report::results_md(&study, &space, true));
    }
    Ok(())
}

/// The fixed flags of every trial: the evaluation cadence halving needs (first, so anything
/// else wins), `[base]`, the flags after `--` (with their `--config` file expanded), and the
/// objective.
fn fixed_flags(args: &TuneArgs, space: &Space, halving: Option<Halving>) -> Result<Vec<String>> {
    let mut flags: Vec<String> = Vec::new();
    if let Some(h) = halving {
        // Each rung is a multiple of min_steps: evaluations and checkpoints land on them.
        flags.extend(["--eval-every".into(), h.min_steps.to_string()]);
    }
    let os = |v: Vec<OsString>| -> Vec<String> { v.into_iter().map(|a| a.to_string_lossy().into_owned()).collect() };
    flags.extend(os(super::config::table_flags(&space.path, &space.base)?));
    let mut after: Vec<OsString> = ["kiln", "train"].iter().map(OsString::from).collect();
    after.extend(args.train.iter().map(OsString::from));
    let after = os(super::config::expand(after)?);
    for a in &after[2..] {
        let name = a.split('=').next().unwrap_or(a);
        if RESERVED.contains(&name) {
            return Err(Error::invalid("tune", format!("`{name}` after `--`: the study sets it for each trial")));
        }
        if let Some(p) = space.params.iter().find(|p| name == format!("--{}", p.name.replace('_', "-"))) {
            return Err(Error::invalid(
                "tune",
                format!("`{name}` after `--` is also searched ([params] {} in {})", p.name, space.path.display()),
            ));
        }
        if halving.is_some() && name == "--steps" {
            return Err(Error::invalid("tune", "`--steps` after `--`: with halving every trial's budget is max_steps"));
        }
    }
    if halving.is_some() && (space.base.contains_key("steps") || space.params.iter().any(|p| p.name == "steps")) {
        return Err(Error::Parse {
            path: space.path.clone(),
            message: "`steps`: with halving every trial's budget is max_steps; remove it or drop --halving".into(),
        });
    }
    flags.extend(after.into_iter().skip(2));
    if let Some(m) = args.metric {
        flags.extend(["--metric".into(), m.name().replace('_', "-")]);
    }
    Ok(flags)
}

/// How a trial's `kiln train` settings are built.
struct Trials {
    fixed: Vec<String>,
    study: PathBuf,
    halving: Option<Halving>,
}

impl Trials {
    fn args(&self, dir: &Path, params: &Params, until: Option<usize>, resume: bool) -> Result<TrainArgs> {
        let mut flags: Vec<String> = vec!["kiln".into(), "train".into()];
        flags.extend(self.fixed.iter().cloned());
        for (name, value) in params {
            if let Some(v) = flag_value(value) {
                flags.push(format!("--{}", name.replace('_', "-")));
                if !v.is_empty() {
                    flags.push(v);
                }
            }
        }
        flags.extend(["--out".into(), dir.display().to_string()]);
        if let Some(h) = self.halving {
            flags.extend(["--steps".into(), h.max_steps.to_string()]);
        }
        if let Some(u) = until {
            flags.extend(["--halt-after".into(), u.to_string()]);
        }
        if resume {
            flags.extend(["--resume".into(), dir.display().to_string()]);
        } else {
            // The trial folder is the study's: a trial started again from scratch (killed
            // before its first checkpoint) replaces what it left.
            flags.push("--overwrite".into());
        }
        match super::Cli::try_parse_args(&flags) {
            Ok(super::Cli { command: super::Command::Train(mut a) }) => {
                a.quiet = true;
                Ok(*a)
            }
            Ok(_) => unreachable!("the flags start with `train`"),
            Err(e) => {
                let first = e.to_string().lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
                Err(Error::invalid("tune", format!("a trial's train settings do not parse: {first}")))
            }
        }
    }
}

/// Checks before any training that every value the space can give parses as a `kiln train`
/// flag (each bound and choice with the fixed flags), and that halving's rungs fall on
/// evaluations and checkpoints; returns the objective.
fn check_trials(t: &Trials, space: &Space, halving: Option<Halving>) -> Result<StopMetric> {
    let dir = trial_dir(&t.study, 0);
    let base = t.args(&dir, &Params::new(), None, false).map_err(|e| Error::Parse {
        path: space.path.clone(),
        message: format!("[base] with the flags after `--`: {e}"),
    })?;
    for p in &space.params {
        let mut extremes = p.grid_values();
        if let crate::tune::space::Dist::Uniform { low, high } | crate::tune::space::Dist::LogUniform { low, high } =
            p.dist
        {
            extremes = vec![low.into(), high.into()];
        }
        for v in extremes {
            let params = Params::from([(p.name.clone(), v.clone())]);
            t.args(&dir, &params, None, false).map_err(|e| Error::Parse {
                path: space.path.clone(),
                message: format!("`params.{}` = {v}: {e}", p.name),
            })?;
        }
    }
    if let Some(h) = halving {
        let rungs = h.rungs();
        let every = base.settings.save_every.unwrap_or(base.settings.eval_every);
        for &r in &rungs[..rungs.len() - 1] {
            if base.settings.eval_every == 0
                || !r.is_multiple_of(base.settings.eval_every)
                || every == 0
                || !r.is_multiple_of(every)
            {
                return Err(Error::invalid(
                    "tune",
                    format!(
                        "halving compares trials at steps {rungs:?}, but the trials evaluate every {} and checkpoint \
                         every {every} steps; let --eval-every (and --save-every) divide {}",
                        base.settings.eval_every, h.min_steps
                    ),
                ));
            }
        }
    }
    let classifier = crate::train::job::is_classification(&base.settings)?;
    Ok(base.settings.metric.unwrap_or(if classifier { StopMetric::MacroF1 } else { StopMetric::ValLoss }))
}

struct TrainRunner<'a> {
    gpu: &'a Gpu,
    trials: Trials,
    space: &'a Space,
}

impl Runner for TrainRunner<'_> {
    fn run(&mut self, trial: usize, params: &Params, until: Option<usize>) -> Result<Outcome> {
        let dir = trial_dir(&self.trials.study, trial);
        let newest = checkpoint::list(&dir.join("checkpoints"))?.pop();
        if newest.is_none() && dir.exists() {
            // Killed before its first checkpoint: nothing to keep.
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        if let (Some((at, ck)), Some(u)) = (&newest, until)
            && *at >= u
        {
            // Its result was lost (a kill between the pause and the log line): the checkpoint
            // of the rung has it. Past the rung, the trial's folder is not this study's doing.
            if *at > u {
                return Err(Error::invalid(
                    "tune",
                    format!(
                        "{} has trained past step {u}, where the study paused it; remove it to retrain",
                        dir.display()
                    ),
                ));
            }
            let state = checkpoint::read_state(ck)?;
            let objective = state.best.map(|b| b.1);
            return Ok(Outcome { steps: u, objective, status: Status::Paused, seconds: 0.0, test: None, error: None });
        }
        let args = self.trials.args(&dir, params, until, newest.is_some())?;
        let metric = args.settings.metric;
        let shown: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!(
            "trial {trial}: {}{}{}",
            shown.join(" "),
            newest.as_ref().map_or(String::new(), |(s, _)| format!(", continuing from step {s}")),
            until.map_or(String::new(), |u| format!(", until step {u}"))
        );
        let t0 = Instant::now();
        let result = super::train::run_on(args, self.gpu);
        // The trial's model is gone: release its buffers, and the cached bind groups that would
        // otherwise keep them alive across trials.
        self.gpu.trim_pool();
        let seconds = t0.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(()) => finished(&dir, metric, seconds)?,
            Err(e) if checkpoint::is_halt(&e) => {
                let u = until.expect("only a rung halts");
                let state = checkpoint::read_state(&dir.join("checkpoints").join(format!("step-{u:07}")))?;
                Outcome {
                    steps: u,
                    objective: state.best.map(|b| b.1),
                    status: Status::Paused,
                    seconds,
                    test: None,
                    error: None,
                }
            }
            // A diverging trial is a result (a bad learning rate), not a reason to stop.
            Err(e @ Error::Diverged { .. }) => Outcome {
                steps: checkpoint::list(&dir.join("checkpoints"))?.pop().map_or(0, |c| c.0),
                objective: None,
                status: Status::Failed,
                seconds,
                test: None,
                error: Some(e.to_string()),
            },
            Err(e) => return Err(e),
        };
        let value = outcome.objective.map_or("none".to_string(), |v| format!("{v:.4}"));
        eprintln!(
            "trial {trial}: {:?} at step {}, validation objective {value} ({seconds:.1}s)",
            outcome.status, outcome.steps
        );
        Ok(outcome)
    }

    fn logged(&mut self, study: &Study) -> Result<()> {
        report::write_all(study, self.space, false)
    }
}

/// The outcome of a run that ended by itself, from its report.json.
fn finished(dir: &Path, metric: Option<StopMetric>, seconds: f64) -> Result<Outcome> {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.clone(), message: e.to_string() })?;
    let objective = report["best"]["value"].as_f64();
    let metric_name = report["best"]["metric"].as_str().map(str::to_string).or(metric.map(|m| m.name().to_string()));
    let test = metric_name.and_then(|m| report["test"][m.as_str()].as_f64());
    let stopped = !report["stopped_early_at"].is_null();
    Ok(Outcome {
        steps: report["steps"].as_u64().unwrap_or(0) as usize,
        objective,
        status: match (objective, stopped) {
            (None, _) => Status::Failed,
            (_, true) => Status::StoppedEarly,
            _ => Status::Complete,
        },
        seconds,
        test,
        error: objective.is_none().then(|| "the run has no validation metric (give it validation data)".to_string()),
    })
}
