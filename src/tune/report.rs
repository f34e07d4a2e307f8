//! What a study leaves behind, rewritten after every result: `results.md` (the trials sorted by
//! the objective, and the compute spent), `results.json` (the same for scripts), `best.toml`
//! (the best finished trial's settings, which `kiln train --config` takes) and `study.png` (the
//! objective per trial, and against the learning rate on a log axis).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::{Value, json};

use super::space::{Dist, Space};
use super::study::{Record, Status, Study};
use crate::error::{Error, Result};
use crate::util::plot::{Area, BLUE, DrawResult, GREEN, ORANGE, RED, padded_range, register_font, write_png};
use crate::util::write_atomic;

/// A trial's run folder: `DIR/trials/NNNN`.
pub fn trial_dir(study: &Path, trial: usize) -> PathBuf {
    study.join("trials").join(format!("{trial:04}"))
}

/// One trial as the tables show it.
#[derive(Clone, Debug)]
pub struct Row {
    pub trial: usize,
    pub params: super::space::Params,
    pub objective: Option<f64>,
    pub test: Option<f64>,
    pub steps: usize,
    pub seconds: f64,
    pub rung: usize,
    pub status: Option<Status>,
    pub error: Option<String>,
}

impl Row {
    /// Whether the trial trained its whole budget (or stopped on its own patience): only such
    /// trials can be the best, since a paused one was measured on fewer steps.
    pub fn finished(&self) -> bool {
        matches!(self.status, Some(Status::Complete | Status::StoppedEarly))
    }

    fn status_text(&self, study_done: bool) -> String {
        match self.status {
            None => "not run".into(),
            Some(Status::Complete) => "complete".into(),
            Some(Status::StoppedEarly) => "stopped early".into(),
            Some(Status::Paused) if study_done => format!("pruned at step {}", self.steps),
            Some(Status::Paused) => format!("paused at step {}", self.steps),
            Some(Status::Failed) => format!("failed: {}", self.error.as_deref().unwrap_or("")),
        }
    }
}

/// Every trial with its latest result, best first (finished trials before paused ones at equal
/// footing: further rungs first, then the objective; failures last).
pub fn rows(study: &Study) -> Vec<Row> {
    let mut rows: Vec<Row> = study
        .latest()
        .into_iter()
        .map(|(trial, params, last)| {
            let seconds = study
                .records
                .iter()
                .filter_map(|r| match r {
                    Record::Rung { trial: t, seconds, .. } if *t == trial => Some(*seconds),
                    _ => None,
                })
                .sum();
            let mut row = Row {
                trial,
                params: params.clone(),
                objective: None,
                test: None,
                steps: 0,
                seconds,
                rung: 0,
                status: None,
                error: None,
            };
            if let Some(Record::Rung { rung, steps, objective, status, test, error, .. }) = last {
                row.objective = *objective;
                row.test = *test;
                row.steps = *steps;
                row.rung = *rung;
                row.status = Some(*status);
                row.error = error.clone();
            }
            row
        })
        .collect();
    rows.sort_by(|a, b| {
        b.rung
            .cmp(&a.rung)
            .then(study.loss(a.objective).total_cmp(&study.loss(b.objective)))
            .then(a.trial.cmp(&b.trial))
    });
    rows
}

/// The best finished trial.
pub fn best(study: &Study) -> Option<Row> {
    let mut finished: Vec<Row> = rows(study).into_iter().filter(|r| r.finished() && r.objective.is_some()).collect();
    finished.sort_by(|a, b| study.loss(a.objective).total_cmp(&study.loss(b.objective)).then(a.trial.cmp(&b.trial)));
    finished.into_iter().next()
}

/// Steps and time spent, and what training every trial to the full budget would have cost.
pub fn compute(study: &Study) -> Value {
    let rows = rows(study);
    let steps: usize = rows.iter().map(|r| r.steps).sum();
    let seconds: f64 = rows.iter().map(|r| r.seconds).sum();
    let full = study.settings.halving.map(|h| rows.len() * h.max_steps);
    json!({
        "trials": rows.len(), "steps": steps, "seconds": seconds, "all_trials_to_max_steps": full,
        "fraction_of_full": full.map(|f| steps as f64 / f.max(1) as f64),
    })
}

fn fmt_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if !n.is_i64() && !n.is_u64() && x != 0.0 && (x.abs() < 1e-2 || x.abs() >= 1e4) => {
                format!("{x:.3e}")
            }
            Some(x) if !n.is_i64() && !n.is_u64() => format!("{}", super::space::round_sig(x)),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |x| format!("{x:.4}"))
}

/// The summary `--json` prints and results.json holds.
pub fn summary(study: &Study, done: bool) -> Value {
    let rows = rows(study);
    let best = best(study);
    json!({
        "study": study.dir, "metric": study.settings.metric, "higher_is_better": study.settings.higher_is_better,
        "sampler": study.settings.sampler, "halving": study.settings.halving, "finished": done,
        "best": best.as_ref().map(|b| json!({"trial": b.trial, "objective": b.objective, "test": b.test,
            "params": b.params, "config": study.dir.join("best.toml"), "run": trial_dir(&study.dir, b.trial)})),
        "compute": compute(study),
        "trials": rows.iter().map(|r| json!({"trial": r.trial, "params": r.params, "objective": r.objective,
            "test": r.test, "steps": r.steps, "seconds": r.seconds, "rung": r.rung,
            "status": r.status_text(done)})).collect::<Vec<_>>(),
    })
}

/// results.md: the settings, the table sorted by the objective, the compute spent.
pub fn results_md(study: &Study, space: &Space, done: bool) -> String {
    let s = &study.settings;
    let rows = rows(study);
    let mut md = String::new();
    let dir = if s.higher_is_better { "higher is better" } else { "lower is better" };
    let _ = writeln!(md, "# Study {}\n", study.dir.display());
    let _ = writeln!(md, "Objective: validation {} ({dir}), the best evaluation of each trial.", s.metric);
    let sampler = serde_json::to_value(s.sampler).expect("json");
    let _ = write!(md, "Sampler: {}, seed {}; {} trials", fmt_value(&sampler), s.seed, s.trials);
    match s.halving {
        Some(h) => {
            let rungs: Vec<String> = h.rungs().iter().map(|r| r.to_string()).collect();
            let _ = writeln!(
                md,
                "; successive halving: rungs at steps {}, the best 1/{} continue.",
                rungs.join(", "),
                h.eta
            );
        }
        None => md.push_str(", each to its own budget.\n"),
    }
    if !done {
        md.push_str("\n**The study is not finished**; run the same command again to continue it.\n");
    }
    md.push('\n');
    let names: Vec<&str> = space.params.iter().map(|p| p.name.as_str()).collect();
    let _ = writeln!(md, "| rank | trial | {} | {} | test | steps | time (s) | status |", names.join(" | "), s.metric);
    let _ = writeln!(md, "|---:|---:|{}---:|---:|---:|---:|---|", "---|".repeat(names.len()));
    for (i, r) in rows.iter().enumerate() {
        let values: Vec<String> = names.iter().map(|n| r.params.get(*n).map_or(String::new(), fmt_value)).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} |",
            i + 1,
            r.trial,
            values.join(" | "),
            fmt_opt(r.objective),
            fmt_opt(r.test),
            r.steps,
            r.seconds,
            r.status_text(done).replace('|', "\\|")
        );
    }
    let c = compute(study);
    let _ = write!(
        md,
        "\nCompute: {} optimizer steps and {:.0} s of training over {} trials",
        c["steps"],
        c["seconds"].as_f64().unwrap_or(0.0),
        c["trials"]
    );
    match (c["all_trials_to_max_steps"].as_u64(), c["fraction_of_full"].as_f64()) {
        (Some(full), Some(f)) => {
            let _ = writeln!(md, "; every trial to the full budget would be {full} steps ({:.0}% spent).", 100.0 * f);
        }
        _ => md.push_str(".\n"),
    }
    match best(study) {
        Some(b) => {
            let _ = writeln!(
                md,
                "\nBest: trial {} ({} {}); `kiln train --config {}` trains it again. Its run: `{}`.",
                b.trial,
                s.metric,
                fmt_opt(b.objective),
                study.dir.join("best.toml").display(),
                trial_dir(&study.dir, b.trial).display()
            );
        }
        None => md.push_str("\nNo trial has finished its budget yet.\n"),
    }
    md.push_str("\n![objective per trial and against the learning rate](study.png)\n");
    md
}

/// Writes results.md, results.json, best.toml and study.png.
pub fn write_all(study: &Study, space: &Space, done: bool) -> Result<()> {
    let dir = &study.dir;
    write_atomic(&dir.join("results.md"), results_md(study, space, done).as_bytes())?;
    let json = serde_json::to_string_pretty(&summary(study, done)).expect("json");
    write_atomic(&dir.join("results.json"), json.as_bytes())?;
    if let Some(b) = best(study) {
        let src = trial_dir(dir, b.trial).join("config.toml");
        let config = std::fs::read_to_string(&src).map_err(|e| Error::io(&src, e))?;
        let text = format!(
            "# kiln tune: trial {} of {}, validation {} {}\n# kiln train --config best.toml trains it again\n{config}",
            b.trial,
            dir.display(),
            study.settings.metric,
            fmt_opt(b.objective)
        );
        write_atomic(&dir.join("best.toml"), text.as_bytes())?;
    }
    plot(study, space, &dir.join("study.png"))
}

/// study.png: the objective of each trial (colour: how it ended), and the objective against the
/// learning rate (or the first numeric parameter), on a log axis when its range is log-uniform.
pub fn plot(study: &Study, space: &Space, path: &Path) -> Result<()> {
    let rows: Vec<Row> = rows(study).into_iter().filter(|r| r.objective.is_some_and(f64::is_finite)).collect();
    if rows.is_empty() {
        return Ok(());
    }
    register_font()?;
    let axis = space
        .params
        .iter()
        .find(|p| p.name == "lr")
        .or_else(|| space.params.iter().find(|p| !matches!(p.dist, Dist::Choice(_))))
        .cloned();
    let metric = study.settings.metric.clone();
    write_png(path, |area| {
        let (left, right) = area.split_horizontally(area.dim_in_pixel().0 / 2);
        draw_per_trial(&left, &rows, &metric)?;
        if let Some(p) = &axis {
            draw_against(&right, &rows, &metric, &p.name, matches!(p.dist, Dist::LogUniform { .. }))?;
        }
        Ok(())
    })
}

fn color_of(r: &Row) -> RGBColor {
    match r.status {
        Some(Status::Complete) => BLUE,
        Some(Status::StoppedEarly) => GREEN,
        Some(Status::Paused) => ORANGE,
        _ => RED,
    }
}

fn draw_per_trial(area: &Area, rows: &[Row], metric: &str) -> DrawResult {
    let y = padded_range(rows.iter().filter_map(|r| r.objective));
    let n = rows.iter().map(|r| r.trial).max().unwrap_or(0) + 1;
    let mut chart = ChartBuilder::on(area)
        .caption("Objective per trial", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, y)?;
    chart
        .configure_mesh()
        .x_desc("trial")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(format!("validation {metric}"))
        .draw()?;
    for (label, status, color) in [
        ("full budget", Status::Complete, BLUE),
        ("stopped early", Status::StoppedEarly, GREEN),
        ("pruned (at its last rung)", Status::Paused, ORANGE),
    ] {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.status == Some(status))
            .filter_map(|r| Some((r.trial as f64, r.objective?)))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 5, color.filled())))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    Ok(())
}

fn draw_against(area: &Area, rows: &[Row], metric: &str, name: &str, log: bool) -> DrawResult {
    let points: Vec<(f64, f64, RGBColor)> = rows
        .iter()
        .filter_map(|r| Some((r.params.get(name)?.as_f64()?, r.objective?, color_of(r))))
        .filter(|p| !log || p.0 > 0.0)
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let y = padded_range(points.iter().map(|p| p.1));
    let caption = format!("Objective against {name}");
    if log {
        let (lo, hi) = points.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
        let (lo, hi) = (lo / 1.5, hi * 1.5);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), y)?;
        chart
            .configure_mesh()
            .x_desc(format!("{name} (log scale)"))
            .x_label_formatter(&|x| format!("{x:.0e}"))
            .y_desc(format!("validation {metric}"))
            .draw()?;
        chart.draw_series(points.iter().map(|&(x, y, c)| Circle::new((x, y), 5, c.filled())))?;
    } else {
        let x = padded_range(points.iter().map(|p| p.0));
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x, y)?;
        chart.configure_mesh().x_desc(name).y_desc(format!("validation {metric}")).draw()?;
        chart.draw_series(points.iter().map(|&(x, y, c)| Circle::new((x, y), 5, c.filled())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::halving::Halving;
    use crate::tune::sampler::SamplerKind;
    use crate::tune::study::StudySettings;

    /// Three trials logged by hand: 0 pruned at step 10 with the best objective of all, 1
    /// finished, 2 failed at step 3 (steps spent: 10 + 30 + 3). The best config is the finished trial's (a pruned trial was measured
    /// on fewer steps), the table ranks by rung then objective, the plot is a PNG.
    #[test]
    fn writes_the_table_the_best_config_and_the_plot() {
        let tmp = tempfile::tempdir().unwrap();
        let flags = vec!["lr".to_string()];
        let space =
            Space::parse(&tmp.path().join("s.toml"), "[params]\nlr = { log_uniform = [1e-4, 1e-1] }", &flags).unwrap();
        let settings = StudySettings {
            space: space.path.clone(),
            space_fingerprint: space.fingerprint.clone(),
            sampler: SamplerKind::Random,
            trials: 3,
            halving: Some(Halving::new(10, 3, 30).unwrap()),
            metric: "macro_f1".into(),
            higher_is_better: true,
            seed: 0,
            train_flags: vec![],
        };
        let dir = tmp.path().join("study");
        let params = |lr: f64| super::super::space::Params::from([("lr".to_string(), Value::from(lr))]);
        let log = [
            json!({"event": "trial", "trial": 0, "params": {"lr": 1e-3}}),
            json!({"event": "rung", "trial": 0, "rung": 0, "steps": 10, "objective": 0.99, "status": "paused", "seconds": 1.0}),
            json!({"event": "trial", "trial": 1, "params": {"lr": 1e-2}}),
            json!({"event": "rung", "trial": 1, "rung": 0, "steps": 10, "objective": 0.8, "status": "paused", "seconds": 1.0}),
            json!({"event": "trial", "trial": 2, "params": {"lr": 1e-1}}),
            json!({"event": "rung", "trial": 2, "rung": 0, "steps": 3, "objective": null, "status": "failed", "seconds": 1.0,
                "error": "loss became NaN"}),
            json!({"event": "rung", "trial": 1, "rung": 1, "steps": 30, "objective": 0.9, "status": "complete", "seconds": 2.5,
                "test": 0.88}),
        ];
        std::fs::create_dir_all(trial_dir(&dir, 1)).unwrap();
        std::fs::write(trial_dir(&dir, 1).join("config.toml"), "lr = 0.01\nseed = 0\n").unwrap();
        std::fs::write(dir.join("trials.jsonl"), log.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let study = Study::open(&dir, settings).unwrap();
        assert_eq!(study.params(1), Some(&params(1e-2)));
        write_all(&study, &space, true).unwrap();

        let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
        let table: Vec<&str> = md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| rank")).collect();
        assert_eq!(table.len(), 3, "{md}");
        assert!(table[0].starts_with("| 1 | 1 | 0.01 | 0.9000 | 0.8800 | 30 | 3.5 | complete |"), "{md}");
        assert!(table[1].starts_with("| 2 | 0 | 1.000e-3 | 0.9900 | — | 10 | 1.0 | pruned at step 10 |"), "{md}");
        assert!(table[2].contains("failed: loss became NaN"), "{md}");
        assert!(md.contains("43 optimizer steps") && md.contains("would be 90 steps (48% spent)"), "{md}");
        let best = std::fs::read_to_string(dir.join("best.toml")).unwrap();
        assert!(best.starts_with("# kiln tune: trial 1 of") && best.ends_with("lr = 0.01\nseed = 0\n"), "{best}");
        let toml: toml::Table = best.parse().unwrap();
        assert_eq!(toml["lr"].as_float(), Some(0.01));

        let png = std::fs::read(dir.join("study.png")).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), (960, 540));
        let summary = summary(&study, true);
        assert_eq!(summary["best"]["trial"], 1);
        assert_eq!(summary["compute"]["fraction_of_full"].as_f64().map(|f| (f * 90.0).round()), Some(43.0));
    }
}
