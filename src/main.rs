//! The `kiln` binary: parse the command line, call the library, map errors to a message and
//! a non-zero exit code.

fn main() {
    let args = match kiln::cli::config::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let cli = kiln::cli::Cli::parse_args(args);
    if let Err(e) = kiln::cli::run(cli) {
        eprintln!("error: {e}");
        let code = match e {
            kiln::Error::Interrupted { .. } => kiln::train::interrupt::EXIT_CODE,
            _ => 1,
        };
        std::process::exit(code);
    }
}
