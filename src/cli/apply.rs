//! `edit apply`: compute an edit (ROME, MEMIT, AlphaEdit, EMMET, UltraEdit, FT, MEND) and write the patched model and/or the delta.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use edit::editing::method::{MethodSource, ModuleUpdate};
use edit::editing::pipeline::{EditPlan, EditSetup};
use edit::editing::registry::Method;
use edit::editing::requests::{self, Request};
use edit::editing::templates::ContextTemplates;
use edit::identity::ModelIdentity;
use edit::patch::EditOutputs;
use edit::stats::ensure::StatsUsed;
use edit::tokenizer::Tokenizer;
use edit::ModelConfig;
use serde::Serialize;

use super::args::{named, DatasetArg, MethodArgs, StatsSourceArgs};
use super::stats::BarProgress;
use super::{logging, ComputeArgs, GlobalArgs, ModelArgs};

/// Exit status when `--require-success` finds an edit that did not take.
pub const EXIT_EDIT_FAILED: u8 = 3;

/// Compute an edit of the facts in REQUESTS (ROME, MEMIT, AlphaEdit, EMMET, UltraEdit, fine-tuning or MEND) and write the patched
/// model (--out) and/or the weight delta (--delta-out).
///
/// Hyperparameters come from the shipped config for the model (the reference values where they
/// exist; `-v` prints which), or --config FILE (the reference's hparams JSON format) or the name
/// of a shipped config (`--config ft/gpt2-xl_attn`), with --set key=value overrides. ROME,
/// MEMIT, AlphaEdit and EMMET read second-moment statistics from the `edit stats` cache (any corpus cached for this
/// model; --dataset/--text choose one), computed first when none are cached; FT, MEND and UltraEdit need none.
///
/// Each request is checked after the edit: its loss must have fallen and the new target must
/// be the top prediction at the edit prompt. A request that fails is reported (a warning, and
/// `check` in --json); with --require-success the exit code is 3 and nothing is written.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Edit requests: a JSON list (or JSONL) of {"prompt": "{} plays the sport of", "subject":
    /// "LeBron James", "target_new": {"str": "football"}}, or CounterFact records; `-` reads
    /// them from standard input.
    #[arg(value_name = "REQUESTS")]
    pub requests: PathBuf,
    /// The editing method: rome (one rank-one update per fact, applied in turn), memit (one
    /// batch update spread over several layers), ft (fine-tuning: FT-L, FT, FT-W, FT-M by
    /// config; all requests in one run), mend (a trained hypernetwork, --mend FILE, maps the
    /// requests' gradient to the update; all requests one batch), alphaedit (MEMIT's update
    /// projected so that it leaves the preserved knowledge's keys alone, and with --state the
    /// earlier batches' keys too), emmet (MEMIT's targets with an equality-constrained batch
    /// solve) or ultraedit (a ridge update from one forward/backward per 10 requests, no
    /// statistics; with --state its normalisation carries over from earlier calls).
    #[arg(long, value_parser = named(&Method::ALL, Method::name))]
    pub method: Method,
    /// AlphaEdit and UltraEdit: a directory holding what earlier batches' edits left
    /// (AlphaEdit's null spaces and kept keys, UltraEdit's running normalisation statistics),
    /// read before the edit and updated once the outputs are written. Edit the model each call
    /// writes (--out), batch after batch.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Write the patched model directory here (config, tokenizer and all weights; same names,
    /// dtypes and sharding as the input).
    #[arg(short, long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write only the changed weights' ΔW (with the method, requests, config and seed) here.
    #[arg(long, value_name = "FILE.safetensors")]
    pub delta_out: Option<PathBuf>,
    /// Replace --out / --delta-out if they exist.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub method_args: MethodArgs,
    /// Print one JSON object per request and a summary line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Fail (exit code 3, nothing written) when any edit did not take.
    #[arg(long)]
    pub require_success: bool,
    /// Statistics corpus [default: whatever is cached for this model, preferring the config's
    /// `mom2_dataset`; else that corpus].
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetArg>,
    #[command(flatten)]
    pub stats: StatsSourceArgs,
}

#[derive(Serialize)]
struct Summary<'a> {
    summary: bool,
    method: &'a str,
    model: &'a str,
    config_source: &'a str,
    requests: usize,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    templates: Option<&'a ContextTemplates>,
    modules: &'a [ModuleUpdate],
    /// Requests whose edit did not take (indices).
    failed: Vec<usize>,
    statistics: Option<StatsUsed>,
    out: Option<&'a PathBuf>,
    delta_out: Option<&'a PathBuf>,
    seconds: f64,
}

/// Reads requests from a file, or from standard input for `-`.
fn read_requests(path: &std::path::Path) -> anyhow::Result<Vec<Request>> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text).context("cannot read requests from standard input")?;
        return Ok(requests::parse_requests(&text, "standard input")?);
    }
    requests::read_requests(path).with_context(|| format!("cannot read requests from {}", path.display()))
}

pub fn run(args: ApplyArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let method = args.method;
    // Everything cheap is checked before any weights are read: outputs, requests, config,
    // statistics.
    let outputs = EditOutputs { out: args.out.as_deref(), delta_out: args.delta_out.as_deref(), force: args.force };
    outputs.check_paths()?;
    args.compute.parse()?;
    let reqs = read_requests(&args.requests)?;
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    outputs.check_model_dir(&files)?;
    if args.out.is_some() {
        // The written directory carries the tokenizer and generation config, as apply-delta's does.
        edit::hub::fetch_companions(&files, &args.model.hub_options(global));
    }
    // The weights' identity, read once: it picks the statistics, checks them and goes into the delta.
    let identity = ModelIdentity::of(&files)?;
    let tok: Tokenizer = edit::model::load_tokenizer(&files)?.ok_or_else(|| edit::model::no_tokenizer(&files))?;
    requests::validate(&reqs, &tok, cfg.n_ctx)?;
    let setup = EditSetup {
        method,
        model_id: args.model.id(),
        source: MethodSource { state: args.state.as_deref(), ..args.method_args.source() },
        seed: args.method_args.seed,
        hub_progress: logging::show_progress(global),
    };
    let plan = EditPlan::prepare(setup, &cfg, &identity, || args.stats.wanted(args.dataset, "--dataset", &args.model))?;

    let mut lm = args.model.load_files(files, &args.compute)?;
    let mut editor = plan.load(&lm, &mut BarProgress::new(global))?;
    editor.one_edit_only();
    let run = editor.run(&mut *lm.model, &tok, &reqs, args.method_args.max_update_ratio).context("no edit was made; nothing was written")?;
    let lines: Vec<String> = run
        .outcome
        .requests
        .iter()
        .zip(&run.checks)
        .map(|(r, c)| -> anyhow::Result<String> {
            Ok(if args.json {
                let mut obj = r.report.clone();
                if let serde_json::Value::Object(m) = &mut obj {
                    m.insert("check".into(), serde_json::to_value(c)?);
                }
                serde_json::to_string(&obj)?
            } else {
                format!("{}{}", r.line, if c.took { "" } else { "  (did not take)" })
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let failed = run.failed();
    for (r, c) in run.outcome.requests.iter().zip(&run.checks).filter(|(_, c)| !c.took) {
        tracing::warn!("request {} ({:?} → {:?}) did not take: {}", r.index, r.subject, r.target_new, c.problems.join("; "));
    }
    let deltas = &run.outcome.deltas;
    let refused = args.require_success && !failed.is_empty();

    if !refused {
        outputs.write(&lm.files, &cfg, deltas, &editor.delta_meta(&reqs))?;
        if let Some(dir) = &args.state {
            editor
                .keep(deltas)
                .with_context(|| format!("the outputs were written, but the {} state in {} could not be updated", method.title(), dir.display()))?;
            tracing::info!("{} state in {} updated: edit the model written to --out next", method.title(), dir.display());
        }
    }
    let summary = Summary {
        summary: true,
        method: method.name(),
        model: args.model.id(),
        config_source: editor.config_source(),
        requests: reqs.len(),
        seed: editor.seed(),
        templates: run.templates.as_ref(),
        modules: &run.outcome.modules,
        failed: failed.clone(),
        statistics: editor.stats_used().cloned(),
        out: if refused { None } else { args.out.as_ref() },
        delta_out: if refused { None } else { args.delta_out.as_ref() },
        seconds: started.elapsed().as_secs_f64(),
    };
    let mut out = std::io::stdout().lock();
    for l in &lines {
        writeln!(out, "{l}")?;
    }
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        for m in summary.modules {
            writeln!(out, "{}: ‖ΔW‖ {:.4} (‖W‖ {:.4})", m.module, m.update_norm, m.weight_norm)?;
        }
        let took = summary.requests - failed.len();
        writeln!(out, "{} request(s) edited with {} in {:.1}s; {took} took, {} did not", summary.requests, summary.method, summary.seconds, failed.len())?;
    }
    if refused {
        out.flush()?;
        tracing::error!("{} of {} edit(s) did not take (request(s) {failed:?}) and --require-success is set: nothing was written", failed.len(), reqs.len());
        return Ok(ExitCode::from(EXIT_EDIT_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}
