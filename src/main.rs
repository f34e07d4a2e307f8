//! The `kiln` binary: parse the command line, call the library, map errors to a message and
//! a non-zero exit code.

use clap::Parser;

fn main() {
    let cli = kiln::cli::Cli::parse();
    if let Err(e) = kiln::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
