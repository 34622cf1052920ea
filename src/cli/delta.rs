//! `edit apply-delta` / `edit revert`: write a copy of a model with a saved delta added to
//! (or subtracted from) its weights, as a Hugging Face directory transformers loads unchanged.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use edit::hub::ModelFiles;
use edit::identity::ModelIdentity;
use edit::patch::{self, DeltaMeta, WriteReport};
use edit::ModelConfig;
use serde::Serialize;

use super::{GlobalArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct DeltaArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The delta file (safetensors with `edit.delta` metadata) saved by an edit.
    #[arg(value_name = "DELTA.safetensors")]
    pub delta: PathBuf,
    /// Directory to write the patched model to (created; never the input model's directory).
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace --out if it exists and is not empty (only once the new model is complete); for
    /// revert, also subtract a delta the model has no record of holding (with a warning).
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Apply,
    Revert,
}

#[derive(Serialize)]
struct Summary<'a> {
    operation: Direction,
    model: &'a str,
    delta: &'a PathBuf,
    method: &'a str,
    requests: usize,
    #[serde(flatten)]
    report: &'a WriteReport,
}

pub fn apply(args: DeltaArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    run(args, global, Direction::Apply)
}

pub fn revert(args: DeltaArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    run(args, global, Direction::Revert)
}

pub fn run(args: DeltaArgs, global: &GlobalArgs, direction: Direction) -> anyhow::Result<ExitCode> {
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let (deltas, meta) = patch::load_delta(&args.delta, &cfg)?;
    patch::check_out_dir(&files, &args.out, args.force)?;
    match direction {
        Direction::Apply => warn_if_other_base(&files, &meta)?,
        Direction::Revert => check_holds_delta(&files, &cfg, &deltas, &args)?,
    }
    edit::hub::fetch_companions(&files, &args.model.hub_options(global));
    let (sign, verb) = match direction {
        Direction::Apply => (1.0, "applied"),
        Direction::Revert => (-1.0, "reverted"),
    };
    let report = patch::write_model_dir(&files, &cfg, &deltas, sign, &args.out, args.force)
        .with_context(|| format!("cannot write the patched model to {}", args.out.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary =
            Summary { operation: direction, model: args.model.id(), delta: &args.delta, method: &meta.method, requests: meta.request_count(), report: &report };
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        let n = meta.request_count();
        writeln!(
            out,
            "{verb} {} ({}, {n} request{}) to {}: wrote {} ({} tensor(s) changed in {} weight file(s), {} file(s) copied)",
            args.delta.display(),
            meta.method,
            if n == 1 { "" } else { "s" },
            args.model.id(),
            report.out.display(),
            report.tensors_changed.len(),
            report.files_written.len(),
            report.files_copied.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A delta computed on other weights still applies if the shapes fit, but rarely does what
/// was intended: say so.
fn warn_if_other_base(files: &ModelFiles, meta: &DeltaMeta) -> anyhow::Result<()> {
    let here = ModelIdentity::of(files)?;
    if !here.is_weights(&meta.base_model.weights_fingerprint) {
        tracing::warn!(
            "the delta was computed on {} (weights {}), but {} has weights {}: applying it anyway; \
             the edit may not behave as it did on its base model",
            meta.base_model.model,
            meta.base_model.weights_fingerprint,
            here.model,
            here.weights_fingerprint
        );
    }
    Ok(())
}

/// Reverting a delta the model never received would subtract an edit that is not there. The
/// weight files `edit` writes record the deltas they hold (`edit.applied`); refuse without it.
fn check_holds_delta(files: &ModelFiles, cfg: &ModelConfig, deltas: &edit::editing::Deltas, args: &DeltaArgs) -> anyhow::Result<()> {
    let id = edit::editing::delta_id(deltas)?;
    let shards = patch::applied_ids(files, cfg, deltas)?;
    let lacking: Vec<String> = shards
        .iter()
        .filter(|(_, ids)| !ids.contains(&id))
        .map(|(p, ids)| {
            let held = if ids.is_empty() { "no edits recorded".to_string() } else { format!("holds {}", ids.join(", ")) };
            format!("{} ({held})", p.display())
        })
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "{} does not hold the delta {} (id {id}): {}. Reverting would subtract an edit that was never added; pass the model \
         the delta was applied to (written by `edit apply --out` or `edit apply-delta`), or --force to subtract it anyway",
        args.model.id(),
        args.delta.display(),
        lacking.join("; ")
    );
    if args.force {
        tracing::warn!("{msg}; --force: reverting anyway");
        Ok(())
    } else {
        anyhow::bail!(msg)
    }
}
