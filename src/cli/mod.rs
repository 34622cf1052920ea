//! Command-line surface: clap definitions ("low args"), validated into plans by each command.

pub mod apply;
pub mod delta;
pub mod inspect;
pub mod logging;
pub mod predict;
pub mod stats;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use edit::hub::{resolve_model, HubOptions, ModelFiles};
use edit::LoadedModel;

/// Edit facts stored inside causal language models (GPT-2, GPT-J, GPT-NeoX/Pythia).
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
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr, no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Predict the next token for each prompt (top-k with log-probabilities).
    Predict(predict::PredictArgs),
    /// Describe a model: family, sizes, dtype, rotary settings, and the modules an edit can target.
    Inspect(inspect::InspectArgs),
    /// Collect (or import) the second-moment statistics of MLP keys that ROME and MEMIT need.
    Stats(Box<stats::StatsArgs>),
    /// Compute a ROME or MEMIT edit and write the patched model (--out) and/or its delta (--delta-out).
    Apply(Box<apply::ApplyArgs>),
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
}

/// How to find and load a model; shared by every command that reads one.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Local model directory, or a Hugging Face Hub id (gpt2, gpt2-xl, EleutherAI/gpt-j-6B,
    /// EleutherAI/pythia-160m, EleutherAI/gpt-neox-20b, ...).
    // An Option only so that `edit stats import` can share the struct; clap still requires it.
    #[arg(short, long, value_name = "DIR|HUB_ID", required = true)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit); default `main`.
    #[arg(long)]
    pub revision: Option<String>,
    /// Use only the local Hugging Face cache (also: HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Compute dtype. The reference computes in f32.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    pub fn id(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }

    /// Finds the model's files (local directory or Hub cache) without loading weights.
    pub fn resolve(&self, global: &GlobalArgs) -> anyhow::Result<ModelFiles> {
        let opts = HubOptions {
            revision: self.revision.clone(),
            offline: self.offline,
            cache_dir: None,
            progress: logging::show_progress(global),
        };
        resolve_model(self.id(), &opts).with_context(|| format!("cannot find model `{}`", self.id()))
    }

    pub fn load(&self, global: &GlobalArgs) -> anyhow::Result<LoadedModel> {
        let dtype = edit::device::parse_dtype(&self.dtype)?;
        let device = edit::device::parse_device(&self.device)?;
        let files = self.resolve(global)?;
        tracing::info!("loading {} ({} weight file(s))", self.id(), files.weights.len());
        let started = std::time::Instant::now();
        let model = edit::load_model(files, dtype, &device).with_context(|| format!("cannot load model `{}`", self.id()))?;
        tracing::info!("loaded in {:.2?}", started.elapsed());
        Ok(model)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Predict(args) => predict::run(args, &cli.global),
        Command::Inspect(args) => inspect::run(args, &cli.global),
        Command::Stats(args) => stats::run(*args, &cli.global),
        Command::Apply(args) => apply::run(*args, &cli.global),
        Command::ApplyDelta(args) => delta::apply(args, &cli.global),
        Command::Revert(args) => delta::revert(args, &cli.global),
    }
}

pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
