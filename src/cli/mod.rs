//! The command line: one file per subcommand, each a thin layer over library functions.

pub mod bench;
pub mod config;
pub mod data;
pub mod devices;
pub mod eval;
pub mod export;
pub mod generate;
pub mod models;
pub mod predict;
pub mod train;
pub mod tune;

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
    /// Predictions for new, unlabelled inputs: each text's or image's label and class
    /// probabilities, or a language model's completion of each prompt, as jsonl or csv.
    Predict(predict::PredictArgs),
    /// Hyperparameter search over `kiln train`: random, grid or TPE sampling, successive
    /// halving, a resumable study folder with a results table, the best config and a plot.
    Tune(Box<tune::TuneArgs>),
}

impl Cli {
    /// kiln's command line: the derived one with negative numbers taken as values in every
    /// subcommand, so `--lr -1` reaches kiln's own range check (`--lr: -1; expected a positive
    /// number`) instead of clap's "unexpected argument '-1'". clap keeps this setting per
    /// command, hence the walk over the tree. (Not `allow_hyphen_values` on numeric flags: that
    /// would take the next flag as a forgotten value, `--lr --steps 3`, and hide clap's "a value
    /// is required". The cost: `-1e-3`, whose exponent has a sign, still needs `--lr=-1e-3`.)
    pub fn command_line() -> clap::Command {
        fn allow_negative(cmd: clap::Command) -> clap::Command {
            let mut cmd = cmd.allow_negative_numbers(true);
            for sub in cmd.get_subcommands_mut() {
                *sub = allow_negative(std::mem::take(sub));
            }
            cmd
        }
        allow_negative(<Cli as clap::CommandFactory>::command())
    }

    /// Parses a command line with [`Cli::command_line`]'s settings.
    pub fn try_parse_args<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command_line().try_get_matches_from(args)?;
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// [`Cli::try_parse_args`], printing clap's message (or the help) and exiting on an error.
    pub fn parse_args<I, T>(args: I) -> Cli
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_args(args).unwrap_or_else(|e| e.exit())
    }
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
        Command::Predict(args) => predict::run(args),
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

pub(crate) use crate::util::check_output;

/// The `--adapter` and `--precision` flags every GPU subcommand takes.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct AdapterArgs {
    /// Adapter to use: an index from `kiln devices` or part of its name [env: KILN_ADAPTER]
    /// [default: the best one: discrete GPU, then integrated, then CPU]
    #[arg(long)]
    pub adapter: Option<String>,
    /// Products of a frozen base (its forward and dX): `f16` rounds their inputs to f16 and runs
    /// them on cooperative matrices (tensor cores) with f32 accumulation, `f32` keeps every
    /// product f32 [env: KILN_PRECISION] [default: f16 on a GPU with cooperative matrices,
    /// else f32]
    #[arg(long, value_parser = ["f32", "f16"])]
    pub precision: Option<String>,
}

impl AdapterArgs {
    /// Opens the adapter and applies `--precision`, which is refused (naming the adapter and
    /// why) where f16 cannot run.
    pub fn open(&self) -> Result<crate::Gpu> {
        use crate::kernels::matmul_coop::{Precision, set_precision};
        let gpu = crate::Gpu::new(&crate::gpu::AdapterChoice::from_flag_or_env(self.adapter.as_deref()))?;
        if let Some(precision) = self.precision.as_deref().and_then(Precision::parse) {
            set_precision(&gpu, precision)?;
        }
        Ok(gpu)
    }
}
