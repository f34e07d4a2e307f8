//! `kiln train`: flags to [`TrainSettings`], [`train::run`](crate::train::run) on the chosen
//! adapter, and its summary (or report.json with `--json`) to the terminal. The run itself (the
//! task, the loop, the run folder) is the library's.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use super::AdapterArgs;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::train::{Progress, TrainSettings};

#[derive(clap::Args, Debug, serde::Serialize)]
#[command(after_help = "Examples:\n  kiln train --task cmudict --steps 100\n  \
    kiln train --model path/to/model.gguf --data my_jsonl_folder --epochs 2 --out runs/mine")]
pub struct TrainArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub settings: TrainSettings,
    /// Print the summary as JSON
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
    /// Settings from a TOML file, one key per flag (`lr = 5e-4`); flags given here win. Every run
    /// folder holds its resolved settings as config.toml
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Recorded in config.toml through `settings.adapter`.
    #[command(flatten)]
    #[serde(skip)]
    pub adapter: AdapterArgs,
    /// Print nothing on stdout (the run folder has it all): `kiln tune`'s trials.
    #[arg(skip)]
    #[serde(skip)]
    pub quiet: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    crate::train::interrupt::install();
    let gpu = args.adapter.open()?;
    run_on(args, &gpu)
}

/// `kiln train` on an adapter already open (`kiln tune` runs its trials on one).
pub fn run_on(mut args: TrainArgs, gpu: &Gpu) -> Result<()> {
    args.settings.adapter = args.adapter.adapter.clone();
    let report = crate::train::run(gpu, &args.settings, &mut Bar::default())?;
    if args.quiet {
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json).expect("json"));
    } else {
        print!("{}", report.text);
    }
    Ok(())
}

/// A run's progress on the terminal: the step bar with the loss, a bar for each stretch of
/// other work (retain samples, scoring), and the notes above them (on stderr when the bars are
/// hidden, as when the output is piped to a log).
#[derive(Default)]
struct Bar {
    steps: Option<ProgressBar>,
    work: Option<ProgressBar>,
}

impl Progress for Bar {
    fn note(&mut self, line: &str) {
        match self.steps.as_ref().or(self.work.as_ref()) {
            Some(bar) => super::say(bar, line.to_string()),
            None => eprintln!("{line}"),
        }
    }

    fn step(&mut self, step: usize, total: usize, message: &str) {
        let bar = self.steps.get_or_insert_with(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
                    .expect("a valid template"),
            );
            bar
        });
        bar.set_length(total as u64);
        bar.set_position(step as u64);
        bar.set_message(message.to_string());
    }

    fn count(&mut self, what: &str, done: usize, total: usize) {
        let bar = self.work.get_or_insert_with(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("a valid template"));
            bar
        });
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
        if done >= total {
            bar.finish_and_clear();
            self.work = None;
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.steps.take() {
            bar.finish();
        }
    }
}
