//! `edit apply`: compute an edit (ROME, MEMIT, AlphaEdit, FT, MEND) and write the patched model and/or the delta.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use edit::editing::hparams::Method;
use edit::editing::method::{prepare, MethodSource, ModuleUpdate, PreparedMethod};
use edit::editing::pipeline::EditPlan;
use edit::editing::requests::{self, Request};
use edit::editing::templates::ContextTemplates;
use edit::editing::Deltas;
use edit::fsutil::Outputs;
use edit::identity::ModelIdentity;
use edit::patch::{self, DeltaMeta};
use edit::stats::ensure::{StatsUsed, StatsWanted};
use edit::stats::Precision;
use edit::tokenizer::Tokenizer;
use edit::ModelConfig;
use serde::Serialize;

use super::stats::{chosen_corpus, BarProgress, DatasetArg, StatsDirArg};
use super::{logging, ComputeArgs, GlobalArgs, ModelArgs};

/// Exit status when `--require-success` finds an edit that did not take.
pub const EXIT_EDIT_FAILED: u8 = 3;

/// Compute an edit of the facts in REQUESTS (ROME, MEMIT, AlphaEdit, fine-tuning or MEND) and write the patched
/// model (--out) and/or the weight delta (--delta-out).
///
/// Hyperparameters come from the shipped config for the model (the reference values where they
/// exist; `-v` prints which), or --config FILE (the reference's hparams JSON format) or the name
/// of a shipped config (`--config ft/gpt2-xl_attn`), with --set key=value overrides. ROME and
/// MEMIT read second-moment statistics from the `edit stats` cache (any corpus cached for this
/// model; --dataset/--text choose one), computed first when none are cached; FT needs none.
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
    /// requests' gradient to the update; all requests one batch) or alphaedit (MEMIT's update
    /// projected so that it leaves the preserved knowledge's keys alone, and with --state the
    /// earlier batches' keys too).
    #[arg(long, value_parser = ["rome", "memit", "ft", "mend", "alphaedit"])]
    pub method: String,
    /// AlphaEdit: a directory holding what earlier batches' edits left (the null spaces and
    /// their keys), read before the edit and updated once the outputs are written. Edit the
    /// model each call writes (--out), batch after batch.
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

/// The method's config and the options every edit takes (`edit apply`, `edit eval`).
#[derive(Args, Debug)]
pub struct MethodArgs {
    /// Hyperparameter file (reference hparams JSON format), or a shipped config by name
    /// (`ft/gpt2-xl_unconstr`; see configs/README.md), instead of the model's default.
    #[arg(long, value_name = "FILE|NAME")]
    pub config: Option<PathBuf>,
    /// Override one hyperparameter, e.g. --set v_lr=0.1 --set layers=[3,4] --set rome.original_implementation=false.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Seed of the context-template sampling [default: the config's `seed`, else 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// MEND's trained hypernetwork (written by `edit mend import` or `edit mend train`).
    #[arg(long, value_name = "FILE.safetensors")]
    pub mend: Option<PathBuf>,
    /// Refuse an update whose Frobenius norm exceeds this multiple of the edited weight's norm
    /// (`edit eval` records such an edit as failed and goes on).
    #[arg(long, default_value_t = 10.0)]
    pub max_update_ratio: f64,
}

impl MethodArgs {
    /// The method's settings as the library takes them.
    pub fn source<'a>(&'a self, identity: Option<&'a ModelIdentity>) -> MethodSource<'a> {
        MethodSource { config: self.config.as_deref(), sets: &self.sets, hypernetwork: self.mend.as_deref(), identity, state: None, history: None }
    }
}

/// Where missing statistics are computed from (as `edit stats`) and where they are cached.
#[derive(Args, Debug)]
pub struct StatsSourceArgs {
    /// Texts sampled for statistics [default: any cached; else the config's `mom2_n_samples`].
    #[arg(long)]
    pub samples: Option<usize>,
    /// A local corpus file for statistics (.txt, .jsonl, .parquet); repeat for several.
    #[arg(long, value_name = "FILE")]
    pub text: Vec<PathBuf>,
    /// Use the cached statistics of this corpus, by its name in the cache (`wikipedia` for
    /// imported reference files, `wikitext-2-test-embedded`, `files-<digest>`, ...).
    #[arg(long, value_name = "NAME", conflicts_with = "text")]
    pub stats_corpus: Option<String>,
    /// Statistics precision [default: any cached, preferring the config's `mom2_dtype`].
    #[arg(long, value_parser = ["f32", "f64"])]
    pub precision: Option<String>,
    #[arg(long, hide = true)]
    pub batch_tokens: Option<usize>,
    #[arg(long, hide = true)]
    pub max_len: Option<usize>,
    #[command(flatten)]
    pub dir: StatsDirArg,
}

impl StatsSourceArgs {
    /// What the caller asks of the statistics; `dataset` is the statistics corpus option
    /// (`--dataset` here, `--stats-dataset` in `edit eval`, where `--dataset` is the evaluation data).
    pub fn wanted(&self, dataset: Option<DatasetArg>, dataset_flag: &str, model: &ModelArgs) -> anyhow::Result<StatsWanted> {
        if dataset.is_some() && !self.text.is_empty() {
            bail!("{dataset_flag} and --text both name a statistics corpus; give one");
        }
        if dataset.is_some() && self.stats_corpus.is_some() {
            bail!("{dataset_flag} and --stats-corpus both name a statistics corpus; give one");
        }
        let stats_dir = self.dir.dir();
        Ok(StatsWanted {
            corpus: chosen_corpus(dataset, &self.text, &stats_dir)?,
            cached_corpus: self.stats_corpus.clone(),
            samples: self.samples,
            precision: self.precision.as_deref().map(Precision::parse).transpose()?,
            batch_tokens: self.batch_tokens,
            max_len: self.max_len,
            stats_dir,
            offline: model.offline,
            model_id: model.id().to_string(),
        })
    }
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
    let method: Method = args.method.parse()?;
    // Everything cheap is checked before any weights are read: outputs, requests, config,
    // statistics.
    if args.out.is_none() && args.delta_out.is_none() {
        bail!("nothing to write: pass --out DIR (a patched model) and/or --delta-out FILE.safetensors (the weight delta)");
    }
    if let (Some(o), Some(d)) = (&args.out, &args.delta_out) {
        if edit::fsutil::normalize(o) == edit::fsutil::normalize(d) {
            bail!("--out and --delta-out are the same path {}: the model directory and the delta file need different paths", o.display());
        }
    }
    let delta_in_out = match (&args.out, &args.delta_out) {
        (Some(o), Some(d)) => {
            let (o, d) = (edit::fsutil::normalize(o), edit::fsutil::normalize(d));
            d.strip_prefix(&o).ok().filter(|r| !r.as_os_str().is_empty()).map(|r| r.to_path_buf())
        }
        _ => None,
    };
    if let Some(d) = &args.delta_out {
        // A delta inside --out lands with the directory; --out's own check covers it.
        if delta_in_out.is_none() {
            edit::fsutil::check_file_target(d, args.force, "--delta-out")?;
        }
    }
    args.compute.parse()?;
    let reqs = read_requests(&args.requests)?;
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    if let Some(out) = &args.out {
        patch::check_out_dir(&files, out, args.force)?;
        edit::fsutil::check_writable_ancestor(edit::fsutil::parent_dir(out), "--out", out)?;
        // The written directory carries the tokenizer and generation config, as apply-delta's does.
        edit::hub::fetch_companions(&files, &args.model.hub_options(global));
    }
    // The weights' identity, read once: it picks the statistics, checks them and goes into the delta.
    let identity = ModelIdentity::of(&files)?;
    let tok: Tokenizer = edit::model::load_tokenizer(&files)?.ok_or_else(|| edit::model::no_tokenizer(&files))?;
    requests::validate(&reqs, &tok, cfg.n_ctx)?;
    let history = match &args.state {
        Some(_) => Some(edit::editing::alphaedit::ModelHistory {
            base_fingerprint: identity.root_fingerprint().to_string(),
            applied: patch::applied_to_model(&files)?,
            base_sampled: identity.base_fingerprint.is_none().then(|| identity.sampled_fingerprint.clone()).flatten(),
        }),
        None => None,
    };
    let mut source = args.method_args.source(Some(&identity));
    source.state = args.state.as_deref();
    source.history = history.as_ref();
    let prepared = prepare(method, &cfg, args.model.id(), source)?;
    let seed = args.method_args.seed.unwrap_or(prepared.method.default_seed());
    tracing::info!("{} config: {}", method.name(), prepared.source);
    tracing::debug!("config: {}", serde_json::to_string(&prepared.json).unwrap_or_default());
    // Where the statistics come from, when the method reads them: decided before any weights are read.
    let wanted = match prepared.method.stats_need() {
        Some(_) => Some(args.stats.wanted(args.dataset, "--dataset", &args.model)?),
        None => None,
    };
    let plan = EditPlan::new(prepared, wanted, &identity, &cfg, logging::show_progress(global))?;

    let mut lm = args.model.load_files(files, &args.compute)?;
    let pad_id = lm.pad_id();
    let mut editor = plan.load(&lm, &identity, &mut BarProgress::new(global))?;
    editor.one_edit_only();
    let run = editor.run(&mut *lm.model, &tok, &reqs, seed, pad_id, args.method_args.max_update_ratio).context("no edit was made; nothing was written")?;
    let prepared = &editor.prepared;
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
        write_outputs(&args, &lm, &cfg, deltas, &reqs, prepared, method, seed, &identity, delta_in_out.as_deref())?;
        if let Some(dir) = &args.state {
            prepared
                .method
                .keep(deltas)
                .with_context(|| format!("the outputs were written, but the AlphaEdit state in {} could not be updated", dir.display()))?;
            tracing::info!("AlphaEdit state in {} updated: edit the model written to --out next", dir.display());
        }
    }
    let summary = Summary {
        summary: true,
        method: method.name(),
        model: args.model.id(),
        config_source: &prepared.source,
        requests: reqs.len(),
        seed,
        templates: run.templates.as_ref(),
        modules: &run.outcome.modules,
        failed: failed.clone(),
        statistics: editor.stats_used.clone(),
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

/// Writes the patched model and/or the delta, all or nothing: both are staged as temporaries
/// and renamed into place together.
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    args: &ApplyArgs,
    lm: &edit::LoadedModel,
    cfg: &ModelConfig,
    deltas: &Deltas,
    reqs: &[Request],
    prepared: &PreparedMethod,
    method: Method,
    seed: u64,
    identity: &ModelIdentity,
    delta_in_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let meta = DeltaMeta {
        method: method.name().to_string(),
        requests: serde_json::Value::Array(reqs.iter().map(Request::to_reference_json).collect()),
        config: prepared.json.clone(),
        seed: Some(seed),
        base_model: identity.clone(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut outputs = Outputs::new();
    let mut staged_dir = None;
    if let Some(dir) = &args.out {
        let report = patch::stage_model_dir(&lm.files, cfg, deltas, 1.0, dir, args.force, &mut outputs)
            .with_context(|| format!("cannot write the patched model to {}", dir.display()))?;
        staged_dir = Some(report.staged);
    }
    if let Some(path) = &args.delta_out {
        let tmp = match (delta_in_out, &staged_dir) {
            (Some(rel), Some(staged)) => staged.join(rel),
            _ => outputs.stage(path)?,
        };
        patch::write_delta_file(&tmp, cfg, deltas, &meta).with_context(|| format!("cannot write {}", path.display()))?;
    }
    outputs.commit().context("cannot move the outputs into place")?;
    if let Some(dir) = &args.out {
        tracing::info!("patched model written to {}", dir.display());
    }
    if let Some(path) = &args.delta_out {
        tracing::info!("delta written to {}", path.display());
    }
    Ok(())
}
