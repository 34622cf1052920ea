//! Ctrl-C and SIGTERM. A statistics collection (hours on a large model) stops at the next
//! chunk, saves its progress and says how to resume; anywhere else the process ends at once,
//! after removing the temporaries of outputs not yet committed. A second signal ends it at once.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static COLLECTING: AtomicUsize = AtomicUsize::new(0);
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a process ended by SIGINT, as shells report it.
pub const EXIT_INTERRUPTED: u8 = 130;

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if COLLECTING.load(Ordering::SeqCst) > 0 && !REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupt: stopping after the current chunk and saving progress (press Ctrl-C again to quit now)");
            return;
        }
        edit::fsutil::remove_live_temporaries();
        eprintln!("\ninterrupted");
        std::process::exit(EXIT_INTERRUPTED as i32);
    });
}

/// Whether the user asked a collection to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Marks a stretch in which a signal asks for a graceful stop instead of ending the process.
pub struct Collecting(());

impl Collecting {
    pub fn start() -> Self {
        COLLECTING.fetch_add(1, Ordering::SeqCst);
        Collecting(())
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        COLLECTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The exit code for an error: 130 for an interruption, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    if err.chain().any(|e| matches!(e.downcast_ref::<edit::Error>(), Some(edit::Error::Interrupted(_)))) {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::FAILURE
    }
}
