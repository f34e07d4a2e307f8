//! The command line end to end, one test binary (one device and pipeline cache) with a module
//! per subject: `kiln train` on the tiny Llama and the tiny BERT ([`train`]), training then
//! `generate` and `export --merge` ([`export`]), `kiln data` ([`data`]), `kiln eval` ([`eval`]),
//! `kiln tune` ([`tune`]), `kiln bench` ([`bench`]), the memory savers (16-bit bases,
//! checkpointing, packing: [`memory`]), DoRA ([`dora`]), `kiln train` on images ([`vision`])
//! and `kiln devices` ([`devices`]).
//!
//! A command is built with [`kiln`] (`kiln("train").model(&ws.model).data(&ws.data)...`), run
//! with [`Kiln::run`] (it must succeed) or [`Kiln::fails_naming`] (it must fail, without a panic,
//! with a message naming each given thing). The workspaces ([`lm_workspace`],
//! [`bert_workspace`]) hold a tiny model and its data; the argument sets several tests share
//! are functions ([`lm_run`], [`classifier_run`]).

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod data;
mod devices;
mod dora;
mod eval;
mod export;
mod gguf_export;
mod memory;
mod predict;
mod train;
mod tune;
mod vision;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `kiln` command line being built.
#[derive(Clone, Debug)]
pub struct Kiln {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

/// `kiln SUBCOMMAND...`: `sub` may hold several words (`"data clean"`).
pub fn kiln(sub: &str) -> Kiln {
    Kiln { args: sub.split_whitespace().map(OsString::from).collect(), envs: Vec::new() }
}

impl Kiln {
    /// Appends arguments as they are.
    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Kiln {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable of the command (e.g. `KILN_CACHE`).
    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Kiln {
        self.envs.push((name.into(), value.as_ref().to_os_string()));
        self
    }

    /// Appends `--name value`.
    pub fn flag(self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Kiln {
        let value = value.as_ref().to_os_string();
        self.args([OsString::from(format!("--{name}")), value])
    }

    /// Appends a switch: `--name`.
    pub fn on(self, name: &str) -> Kiln {
        self.args([format!("--{name}")])
    }

    pub fn model(self, path: &Path) -> Kiln {
        self.flag("model", path)
    }

    pub fn data(self, path: &Path) -> Kiln {
        self.flag("data", path)
    }

    pub fn out(self, path: &Path) -> Kiln {
        self.flag("out", path)
    }

    /// Runs the command as it is.
    pub fn output(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&self.args)
            .env("XDG_RUNTIME_DIR", "/tmp")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// Runs the command, which must succeed; its stdout and stderr.
    pub fn run(&self) -> (String, String) {
        let out = self.output();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
        assert!(out.status.success(), "kiln {:?} failed:\n{stdout}\n{stderr}", self.args);
        (stdout, stderr)
    }

    /// Runs the command with `--json`, which must succeed; stdout parsed.
    pub fn json(&self) -> serde_json::Value {
        let (stdout, _) = self.clone().on("json").run();
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("kiln {:?}: stdout is not JSON ({e}):\n{stdout}", self.args))
    }

    /// Runs the command, which must fail with a message (not a panic) naming each of `names`;
    /// the message.
    pub fn fails_naming(&self, names: &[&str]) -> String {
        let out = self.output();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "kiln {:?} should fail", self.args);
        assert!(!err.contains("panicked"), "kiln {:?} panicked:\n{err}", self.args);
        for name in names {
            assert!(err.contains(name), "kiln {:?}: the message does not name `{name}`:\n{err}", self.args);
        }
        err
    }
}

/// A temporary folder with a model and its data (`model/`, `data/`), and room for runs.
pub struct Workspace {
    pub tmp: tempfile::TempDir,
    pub model: PathBuf,
    pub data: PathBuf,
}

impl Workspace {
    pub fn new(make_model: impl FnOnce(&Path), make_data: impl FnOnce(&Path)) -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
        for d in [&model, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        make_model(&model);
        make_data(&data);
        Workspace { tmp, model, data }
    }

    /// A path in the workspace.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// The tiny Llama (or another decoder fixture) with the counting tasks.
pub fn lm_workspace_of(fixture: &str) -> Workspace {
    Workspace::new(|m| common::tiny_model_of(fixture, m), counting_data)
}

pub fn lm_workspace() -> Workspace {
    lm_workspace_of("llama_tiny")
}

/// The tiny BERT with the labelled texts.
pub fn bert_workspace() -> Workspace {
    Workspace::new(common::tiny_bert, labelled_data)
}

/// `kiln train` of the tiny LM on its counting data into `out`, at the learning rate every LM
/// test uses.
pub fn lm_run(ws: &Workspace, out: &Path) -> Kiln {
    kiln("train").model(&ws.model).data(&ws.data).out(out).flag("lr", "3e-2")
}

/// `kiln train` of the tiny BERT on its labelled texts into `out` with `strategy`, batches of 8.
pub fn classifier_run(ws: &Workspace, out: &Path, strategy: &str) -> Kiln {
    kiln("train").model(&ws.model).data(&ws.data).out(out).flag("strategy", strategy).flag("batch-size", "8")
}

/// Counting tasks: prompt `w{s} w{s+1} w{s+2}`, completion the next three numbers.
pub fn counting_data(dir: &Path) {
    let line = |s: usize| {
        let w = |k: usize| format!("w{}", 3 + (s + k) % 90);
        format!("{{\"prompt\": \"{} {} {}\", \"completion\": \" {} {} {}\"}}\n", w(0), w(1), w(2), w(3), w(4), w(5))
    };
    // Validation windows start between training ones: every step n -> n+1 is seen in training.
    std::fs::write(dir.join("train.jsonl"), (0..80).filter(|s| s % 5 != 0).map(line).collect::<String>()).unwrap();
    std::fs::write(dir.join("valid.jsonl"), (0..80).filter(|s| s % 5 == 0).map(line).collect::<String>()).unwrap();
}

/// "pos" texts carry w10 twice, "neg" texts w60; the rest are filler words. The group says
/// which filler range was used, so per-group scores have something to report.
pub fn labelled_data(dir: &Path) {
    let line = |i: usize| {
        let (label, marker) = if i.is_multiple_of(2) { ("pos", 10) } else { ("neg", 60) };
        let filler: Vec<String> = (0..3).map(|k| format!("w{}", 20 + (i * 7 + k * 13) % 30)).collect();
        let group = if i.is_multiple_of(3) { "a" } else { "b" };
        format!(
            "{{\"text\": \"w{marker} {} w{marker}\", \"label\": \"{label}\", \"group\": \"{group}\"}}\n",
            filler.join(" ")
        )
    };
    std::fs::write(dir.join("train.jsonl"), (0..64).map(line).collect::<String>()).unwrap();
    std::fs::write(dir.join("test.jsonl"), (64..96).map(line).collect::<String>()).unwrap();
}

/// A JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of a jsonl file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The events of a run's metrics.jsonl of one kind (`step`, `eval`, ...).
pub fn events(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    read_jsonl(&run.join("metrics.jsonl")).into_iter().filter(|e| e["event"] == kind).collect()
}

/// One number of each event of a kind (`values(run, "step", "loss")`).
pub fn values(run: &Path, kind: &str, key: &str) -> Vec<f64> {
    events(run, kind).iter().map(|e| e[key].as_f64().unwrap()).collect()
}

/// The step and validation events of a run, without their wall-clock times.
pub fn curve(run: &Path) -> Vec<serde_json::Value> {
    read_jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|e| e["event"] == "step" || e["event"] == "eval")
        .map(|mut e| {
            e.as_object_mut().unwrap().remove("seconds");
            e
        })
        .collect()
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The largest absolute difference of two equally long vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
}
