//! `edit`: thin entry point. Parse, set up logging, run, print the error chain once.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// candle's worker threads spin this many times at its barrier before yielding (candle's default
/// is 25,000). Measured on fact-gpt2 ROME edits (benches/README.md, "threads"): the same wall time
/// on a quiet machine with a quarter less CPU, and 40% less wall time when another job holds a core.
const SPIN_LIMIT: &str = "1000";

/// mimalloc keeps freed pages for reuse: with glibc's allocator every large activation tensor of a
/// forward/backward step was a fresh `mmap` whose pages the kernel zeroed (a quarter of a ROME
/// edit's time on fact-gpt2; benches/README.md, "allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread exists (candle's pool reads it when it starts); the user's value wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT);
    }
    let args = cli::Cli::parse();
    cli::logging::init(&args.global);
    cli::interrupt::install();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            if cli::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", cli::error_chain(&err));
            cli::interrupt::exit_code(&err)
        }
    }
}
