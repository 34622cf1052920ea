//! `edit`: thin entry point. Parse, set up logging, run, print the error chain once.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
