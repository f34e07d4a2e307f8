//! The command line: one file per subcommand, each a thin layer over library functions.

pub mod bench;
pub mod classify;
pub mod config;
pub mod data;
pub mod devices;
pub mod eval;
pub mod export;
pub mod generate;
pub mod models;
pub mod train;
pub mod tune;
pub mod vision;

use clap::{Parser, Subcommand};

use crate::error::Result;

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "Fine-tune transformers on any GPU (wgpu + WGSL kernels)")]
// A flag given twice keeps its last value: `--config` files put theirs first.
#[command(args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the adapters wgpu can see, with backend, type and limits.
    Devices(devices::DevicesArgs),
    /// The models kiln knows by name: size, whether cached; `fetch NAME` downloads one.
    Models(models::ModelsArgs),
    /// Time every kernel and print GFLOP/s or GB/s against rooflines measured in the same run.
    Bench(bench::BenchArgs),
    /// Fine-tune: a classifier on an encoder (head, top:N, LoRA or full) or a causal LM with
    /// LoRA, on a jsonl/csv folder or a built-in task.
    Train(Box<train::TrainArgs>),
    /// Generate text (or chat) with a model and optionally a LoRA adapter.
    Generate(generate::GenerateArgs),
    /// Write a model with its LoRA adapter merged as a Hugging Face folder.
    Export(export::ExportArgs),
    /// Import corpora into kiln's data formats.
    Data(data::DataArgs),
    /// Evaluate a finished model: scores, per-group gaps, counterfactual swaps, edge cases,
    /// latency and throughput, in one report.
    Eval(Box<eval::EvalArgs>),
    /// Hyperparameter search over `kiln train`: random, grid or TPE sampling, successive
    /// halving, a resumable study folder with a results table, the best config and a plot.
    Tune(Box<tune::TuneArgs>),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Devices(args) => devices::run(args),
        Command::Models(args) => models::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train::run(*args),
        Command::Generate(args) => generate::run(args),
        Command::Export(args) => export::run(args),
        Command::Data(args) => data::run(args),
        Command::Eval(args) => eval::run(*args),
        Command::Tune(args) => tune::run(*args),
    }
}

/// A line beside a progress bar: above it on a terminal, on stderr when the bar is hidden
/// (output piped to a log), where `ProgressBar::println` would drop it.
pub(crate) fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Refuses to replace an existing output (a file, or a folder with anything in it) unless the
/// user passed `--overwrite`: nothing the user had is lost by accident.
pub(crate) fn check_output(path: &std::path::Path, overwrite: bool) -> Result<()> {
    let occupied = match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => path.exists(),
    };
    if occupied && !overwrite {
        return Err(crate::Error::invalid(
            "--out",
            format!("{} already exists; pass --overwrite to replace it", path.display()),
        ));
    }
    Ok(())
}

/// The `--adapter` flag every GPU subcommand takes.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct AdapterArgs {
    /// Adapter to use: an index from `kiln devices` or part of its name [env: KILN_ADAPTER]
    /// [default: the best one: discrete GPU, then integrated, then CPU]
    #[arg(long)]
    pub adapter: Option<String>,
}

impl AdapterArgs {
    pub fn open(&self) -> Result<crate::Gpu> {
        crate::Gpu::new(&crate::gpu::AdapterChoice::from_flag_or_env(self.adapter.as_deref()))
    }
}
