//! `edit mend`: MEND hypernetworks — `import` converts a reference checkpoint, `train` trains one.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use edit::editing::hparams::{self, MendHparams};
use edit::editing::mend::hypernet;
use edit::editing::mend::import::import_checkpoint;
use edit::identity::ModelIdentity;
use edit::ModelConfig;
use serde::Serialize;

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

/// Train a MEND hypernetwork for a model (the objective and optimiser of eric-mitchell/mend).
///
/// Per step: an edit record (its rewrite prompt + target_new is the edit, a paraphrase the
/// text it must carry over to) and a locality text; loss = cedit·NLL(paraphrase | edited) +
/// cloc·KL(base ‖ edited) on the locality text; Adam on the hypernetwork and its step sizes,
/// gradients summed over `accumulate_bs` steps and clipped. The last --val-fraction of the
/// records and texts are held out for validation every `val_interval` steps; the best validated
/// hypernetwork is the result. Hyperparameters: the reference's (lr 1e-6, ...; `--config`, `--set`).
///
/// A checkpoint (OUT.ckpt) is written every --checkpoint-every steps and on Ctrl-C; running the
/// same command again resumes from it exactly. OUT is written atomically at the end.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: super::ComputeArgs,
    /// Edit records: CounterFact, zsRE or request objects (the layouts `edit eval` reads), or
    /// self-sampled texts written by `edit mend sample` (JSON Lines with `n_tokens`).
    #[arg(long, value_name = "FILE")]
    pub edits: PathBuf,
    /// Locality texts (.txt one per line, .jsonl `text`, .parquet); `embedded` (the WikiText-2
    /// test split compiled into edit); or `neighbors`: each record's own neighbourhood prompts
    /// with its true object (CounterFact; zsRE's NQ question), as EasyEdit trains on CounterFact.
    #[arg(long, value_name = "FILE|embedded|neighbors")]
    pub locality: String,
    /// Where to write the hypernetwork (safetensors).
    #[arg(short, long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// Replace --out if it exists (a checkpoint of the same run is still resumed).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub hparams: MendConfigArgs,
    /// Stop after this many steps [default: the config's `max_iters`].
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// The share of records and of locality texts held out for validation (the last ones).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Write the checkpoint every this many steps [default: the config's `val_interval`].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Seed of the initial weights and the draws [default: the config's `seed`].
    #[arg(long)]
    pub seed: Option<u64>,
    /// zsRE records: learn `answers[0]` (the reference) or `alt` (EasyEdit).
    #[arg(long, default_value = "answers", value_parser = ["answers", "alt"])]
    pub zsre_target: String,
    /// Draw the validation curves (edit success, locality accuracy) to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Print the run's history (every step's losses and every validation) as JSON at the end.
    #[arg(long)]
    pub json: bool,
}

/// Write self-sampled edit texts (MEND's "gen" training data, whose download is gone): prefixes
/// of texts continued by the model itself, for `edit mend train --edits FILE.jsonl`.
///
/// Each output line is {"text": prefix + continuation, "n_tokens": N}: the edit learns the last
/// N tokens, and its equivalents are the text with up to half its other tokens cut from the left.
#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: super::ComputeArgs,
    /// Texts whose prefixes are continued (.txt, .jsonl `text`, .parquet), or `embedded`.
    #[arg(long, value_name = "FILE|embedded")]
    pub texts: String,
    /// Where to write the JSON Lines.
    #[arg(short, long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// How many texts to write.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub count: usize,
    /// Tokens of each prefix (shorter texts are used whole).
    #[arg(long, default_value_t = 32)]
    pub prefix_tokens: usize,
    /// Tokens sampled after each prefix (the reference's data: 10, or 1).
    #[arg(long, default_value_t = 10)]
    pub n_tokens: usize,
    /// Seed of the prefixes' choice and the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The MEND config of `import` and `train`: a file or shipped name, and overrides.
#[derive(Args, Debug)]
pub struct MendConfigArgs {
    /// A MEND config file or shipped name (`mend/gpt2-xl_executor`) [default: the model's].
    #[arg(long, value_name = "FILE|NAME")]
    pub config: Option<PathBuf>,
    /// Override a MEND hyperparameter, e.g. --set lr=1e-4 or
    /// --set 'inner_params=["transformer.h.11.mlp.c_fc.weight"]'.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl MendConfigArgs {
    /// The config for this model (see `hparams::resolve`).
    pub fn resolve(&self, cfg: &ModelConfig, model_id: &str) -> edit::Result<MendHparams> {
        Ok(hparams::resolve::<MendHparams>(cfg, model_id, self.config.as_deref(), &self.sets)?.hparams)
    }
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
