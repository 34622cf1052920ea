//! `edit mend`: MEND hypernetworks — `import` converts a reference checkpoint, `train` trains one.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use edit::editing::mend::hypernet;
use edit::editing::mend::import::import_checkpoint;
use edit::identity::ModelIdentity;
use edit::ModelConfig;
use serde::Serialize;

use super::args::MendConfigArgs;
use super::mend_train::{SampleArgs, TrainArgs};
use super::{GlobalArgs, ModelArgs};

/// MEND hypernetworks for `edit apply --method mend`: convert the reference's, or train one.
#[derive(Args, Debug)]
pub struct MendArgs {
    #[command(subcommand)]
    pub command: MendCommand,
}

#[derive(Subcommand, Debug)]
pub enum MendCommand {
    Import(ImportArgs),
    Train(Box<TrainArgs>),
    Sample(SampleArgs),
}

/// Convert a reference MEND checkpoint (`torch.save` file, e.g. mend-10tok-gpt2-xl.pt) into a
/// hypernetwork file for `edit apply --method mend --mend FILE`, without Python.
///
/// A reference checkpoint stores no weight names: the inner weights are the model's defaults
/// (the last three layers' MLP matrices, in the reference's `inner_params` order; GPT-2 XL 45-47
/// `c_proj`, `c_fc`; GPT-J 25-27 `fc_in`, `fc_out`), or --set inner_params=[...]. Only the
/// model's config is read, and its weights' fingerprint recorded.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The checkpoint: a trainer's `{"model": state_dict, "opt", ...}` or a bare state dict.
    #[arg(value_name = "CHECKPOINT.pt")]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to write the hypernetwork (safetensors).
    #[arg(short, long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    // Of the config, only `inner_params` matters here.
    #[command(flatten)]
    pub hparams: MendConfigArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ImportSummary<'a> {
    checkpoint: &'a std::path::Path,
    out: &'a std::path::Path,
    inner_params: &'a [String],
    transforms: Vec<String>,
    rank: usize,
    n_hidden: usize,
    skipped: &'a [String],
}

pub fn run(args: MendArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        MendCommand::Import(a) => import(a, global),
        MendCommand::Train(a) => super::mend_train::train(*a, global),
        MendCommand::Sample(a) => super::mend_train::sample(a, global),
    }
}

fn import(args: ImportArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    edit::fsutil::check_file_target(&args.out, args.force, "--out")?;
    if !args.checkpoint.is_file() {
        anyhow::bail!("{}: no such checkpoint file", args.checkpoint.display());
    }
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let names = args.hparams.resolve(&cfg, args.model.id())?.inner_params(&cfg);
    let identity = ModelIdentity::of(&files)?;
    let imported = import_checkpoint(&args.checkpoint, &cfg, &names, Some(identity)).with_context(|| format!("cannot import {}", args.checkpoint.display()))?;
    if !imported.skipped.is_empty() {
        tracing::info!("not part of the hypernetwork, skipped: {}", imported.skipped.join(", "));
    }
    hypernet::write(&args.out, &imported.meta, &imported.tensors).with_context(|| format!("cannot write {}", args.out.display()))?;
    let mut transforms: Vec<String> =
        imported.tensors.iter().filter_map(|(k, _)| Some(k.strip_prefix("mend.")?.split_once(").")?.0.to_string() + ")")).collect();
    transforms.dedup();
    let summary = ImportSummary {
        checkpoint: &args.checkpoint,
        out: &args.out,
        inner_params: &imported.meta.inner_params,
        transforms,
        rank: imported.meta.rank,
        n_hidden: imported.meta.n_hidden,
        skipped: &imported.skipped,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "wrote {}: {} inner weights ({}), transforms {} (rank {}, {} hidden layer(s))",
            args.out.display(),
            summary.inner_params.len(),
            summary.inner_params.join(", "),
            summary.transforms.join(", "),
            summary.rank,
            summary.n_hidden
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
