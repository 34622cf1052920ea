//! Command-line surface: clap definitions ("low args"), validated into plans by each command.

pub mod apply;
pub mod args;
pub mod delta;
pub mod eval;
pub mod inspect;
pub mod interrupt;
pub mod logging;
pub mod mend;
pub mod mend_train;
pub mod predict;
pub mod stats;
pub mod trace;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use args::{ComputeArgs, ModelArgs};

/// Edit facts stored inside causal language models (GPT-2, GPT-J, GPT-NeoX/Pythia, Llama,
/// Mistral, Qwen, Gemma) with ROME, MEMIT, AlphaEdit, EMMET, UltraEdit, fine-tuning or MEND.
///
/// Models are loaded from a local Hugging Face directory or a Hub id through the standard
/// Hugging Face cache. Results go to stdout (JSON with --json); logs go to stderr.
#[derive(Parser, Debug)]
#[command(name = "edit", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// More of edit's own log output on stderr (-v debug, -vv trace); dependencies' logs only
    /// through RUST_LOG, which overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
    /// Only errors on stderr, no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose", help_heading = "Global options")]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Predict the next token for each prompt (top-k with log-probabilities).
    Predict(predict::PredictArgs),
    /// Describe a model: family, sizes, dtype, rotary settings, and the modules an edit can target.
    Inspect(inspect::InspectArgs),
    /// Collect the second-moment statistics of MLP keys that ROME and MEMIT need (or import, merge,
    /// export and pull them).
    Stats(Box<stats::StatsArgs>),
    /// Compute an edit (ROME, MEMIT, AlphaEdit, EMMET, UltraEdit, FT, MEND) and write the patched model (--out) and/or its delta (--delta-out).
    Apply(Box<apply::ApplyArgs>),
    /// Edit the records of a dataset chunk by chunk and score them as the reference evaluators do.
    Eval(Box<eval::EvalArgs>),
    /// Write a copy of a model with a saved delta added to its weights (W + ΔW).
    ///
    /// The output is a complete Hugging Face model directory (same files, shards, tensor names
    /// and dtypes; only the edited weights differ) that transformers and edit load unchanged.
    /// The input model is never modified. Warns when the delta was computed on other weights.
    #[command(name = "apply-delta")]
    ApplyDelta(delta::DeltaArgs),
    /// Write a copy of a patched model with a saved delta subtracted (W − ΔW), undoing apply-delta.
    ///
    /// --model is the model previously patched with the delta; the output matches the original
    /// weights to float rounding. The input model is never modified.
    Revert(delta::DeltaArgs),
    /// MEND hypernetworks: `edit mend import` converts a reference checkpoint, `edit mend train` trains one.
    Mend(mend::MendArgs),
    /// Causal tracing: where a model keeps a fact, and which layer to edit.
    ///
    /// Runs each prompt clean and with noise on the subject's token embeddings, then restores
    /// the clean state at every (token, layer): the answer's probability with it restored, as
    /// kmeng01/rome's causal_trace.py. One JSON line per fact and kind on stdout; the average
    /// effects and the suggested edit layer on stderr (--summary FILE for JSON).
    Trace(Box<trace::TraceArgs>),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Predict(args) => predict::run(args, &cli.global),
        Command::Inspect(args) => inspect::run(args, &cli.global),
        Command::Stats(args) => stats::run(*args, &cli.global),
        Command::Apply(args) => apply::run(*args, &cli.global),
        Command::Eval(args) => eval::run(*args, &cli.global),
        Command::ApplyDelta(args) => delta::apply(args, &cli.global),
        Command::Revert(args) => delta::revert(args, &cli.global),
        Command::Mend(args) => mend::run(args, &cli.global),
        Command::Trace(args) => trace::run(*args, &cli.global),
    }
}

pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The error and its causes, each said once: a cause whose text the message before it already
/// contains (a wrapped error that prints its source) is left out.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = anyhow::Error::new(edit::Error::io("/x/requests.json", io)).context("cannot read requests from /x/requests.json");
        let s = error_chain(&e);
        assert_eq!(s.matches("No such file").count(), 1, "{s}");
        assert!(s.starts_with("cannot read requests from /x/requests.json: "), "{s}");
    }
}
