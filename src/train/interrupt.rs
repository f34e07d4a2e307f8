//! Ctrl-C (SIGINT) and SIGTERM during training: the first finishes the current optimizer step,
//! writes a checkpoint and ends the run with [`Error::Interrupted`](crate::Error::Interrupted)
//! (exit code 130) so `--resume` continues exactly; a second quits at once.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Set while a training loop runs: outside one (loading, feature extraction, the final
/// evaluation) there is no step to finish, so a signal quits at once.
static ARMED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Exit code of a run stopped by a signal, as shells report SIGINT (128 + 2).
pub const EXIT_CODE: i32 = 130;

/// Installs the handler (once per process; later calls do nothing). A process that cannot
/// install one (another handler is already set) trains on without it.
pub fn install() {
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            if !ARMED.load(Ordering::SeqCst) {
                eprintln!("\ninterrupted");
                std::process::exit(EXIT_CODE);
            }
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: quitting without a checkpoint");
                std::process::exit(EXIT_CODE);
            }
            eprintln!("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again quits now)");
        });
        if let Err(e) = installed {
            eprintln!("warning: no Ctrl-C handler ({e}); an interrupted run keeps only its periodic checkpoints");
        }
    });
}

/// Whether a stop was asked for since the process started.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Marks a training loop as running until the guard is dropped.
pub fn arm() -> Armed {
    ARMED.store(true, Ordering::SeqCst);
    Armed
}

pub struct Armed;

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.store(false, Ordering::SeqCst);
    }
}
