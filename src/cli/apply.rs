//! `edit apply`: compute a ROME or MEMIT edit and write the patched model and/or the delta.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use edit::editing::hparams::{self, Hparams, Method};
use edit::editing::linalg::LayerStats;
use edit::editing::memit::apply_memit;
use edit::editing::requests::{self, Request};
use edit::editing::rome::apply_rome;
use edit::editing::templates::{self, ContextTemplates};
use edit::editing::verify::{check_edits, EditCheck};
use edit::editing::Deltas;
use edit::fsutil::Outputs;
use edit::hub::ModelFiles;
use edit::patch::{self, DeltaMeta};
use edit::stats::cache::{self, ModelIdentity};
use edit::stats::resolve::{self, CachedSet};
use edit::stats::Precision;
use edit::tokenizer::Tokenizer;
use edit::ModelConfig;
use serde::Serialize;

use super::stats::{check_corpus_available, chosen_corpus, collect_missing, lookup, DatasetArg, Ensured, StatsDirArg, StatsPlan};
use super::{ComputeArgs, GlobalArgs, ModelArgs};

/// Exit status when `--require-success` finds an edit that did not take.
pub const EXIT_EDIT_FAILED: u8 = 3;

/// Compute a ROME or MEMIT edit of the facts in REQUESTS and write the patched model (--out)
/// and/or the weight delta (--delta-out).
///
/// Hyperparameters come from the shipped config for the model (the reference values where they
/// exist; `-v` prints which), or --config FILE (the reference's hparams JSON format), with
/// --set key=value overrides. Second-moment statistics come from the `edit stats` cache (any
/// corpus cached for this model; --dataset/--text choose one) and are computed first when none
/// are cached.
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
    /// The editing method: rome (one rank-one update per fact, applied in turn) or memit (one
    /// batch update spread over several layers).
    #[arg(long, value_parser = ["rome", "memit"])]
    pub method: String,
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
    /// Hyperparameter file (reference hparams JSON format) instead of the shipped one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one hyperparameter, e.g. --set v_lr=0.1 --set layers=[3,4] --set rome.original_implementation=false.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Seed of the context-template sampling [default: the config's `seed`, else 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Refuse an update whose Frobenius norm exceeds this multiple of the edited weight's norm.
    #[arg(long, default_value_t = 10.0)]
    pub max_update_ratio: f64,
    /// Print one JSON object per request and a summary line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Fail (exit code 3, nothing written) when any edit did not take.
    #[arg(long)]
    pub require_success: bool,
    #[command(flatten)]
    pub stats: StatsSourceArgs,
}

/// Where missing statistics are computed from (as `edit stats`) and where they are cached.
#[derive(Args, Debug)]
pub struct StatsSourceArgs {
    /// Texts sampled for statistics [default: any cached; else the config's `mom2_n_samples`].
    #[arg(long)]
    pub samples: Option<usize>,
    /// A local corpus file for statistics (.txt, .jsonl, .parquet); repeat for several.
    #[arg(long, value_name = "FILE", conflicts_with = "dataset")]
    pub text: Vec<PathBuf>,
    /// Statistics corpus [default: whatever is cached for this model, preferring the config's
    /// `mom2_dataset`; else that corpus].
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetArg>,
    /// Use the cached statistics of this corpus, by its name in the cache (`wikipedia` for
    /// imported reference files, `wikitext-2-test-embedded`, `files-<digest>`, ...).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["dataset", "text"])]
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

#[derive(Serialize)]
struct Summary<'a> {
    summary: bool,
    method: &'a str,
    model: &'a str,
    config_source: &'a str,
    requests: usize,
    seed: u64,
    templates: &'a ContextTemplates,
    modules: Vec<ModuleSummary>,
    /// Requests whose edit did not take (indices).
    failed: Vec<usize>,
    statistics: Option<StatsUsed>,
    out: Option<&'a PathBuf>,
    delta_out: Option<&'a PathBuf>,
    seconds: f64,
}

/// One request's report with its check.
#[derive(Serialize)]
struct Reported<'a, R: Serialize> {
    #[serde(flatten)]
    report: &'a R,
    check: &'a EditCheck,
}

#[derive(Serialize)]
struct ModuleSummary {
    module: String,
    update_norm: f64,
    weight_norm: f64,
}

/// Which statistics an edit used.
#[derive(Clone, Serialize)]
struct StatsUsed {
    dataset: String,
    samples: usize,
    precision: Precision,
    files: BTreeMap<usize, PathBuf>,
}

/// Where the statistics of an edit will come from, decided before any weights are read.
enum StatsSource {
    Cached(CachedSet),
    Compute(StatsPlan),
}

fn precision_of(hp: &Hparams) -> Precision {
    match hp.mom2_dtype.as_str() {
        "float64" => Precision::F64,
        _ => Precision::F32,
    }
}

/// Chooses cached statistics (see `edit::stats::resolve` for the order) or the corpus to
/// compute them on; fails here, before loading, when neither is possible.
fn decide_stats(args: &ApplyArgs, hp: &Hparams, files: &ModelFiles, cfg: &ModelConfig, global: &GlobalArgs) -> anyhow::Result<StatsSource> {
    let st = &args.stats;
    let stats_dir = st.dir.dir();
    let explicit = chosen_corpus(st.dataset, &st.text, &stats_dir)?;
    let explicit_precision = st.precision.as_deref().map(Precision::parse).transpose()?;
    let config_corpus = resolve::config_corpus(&hp.mom2_dataset);
    let identity = ModelIdentity::of(files)?;
    let found = resolve::scan(&stats_dir, &identity, cfg, &hp.layers)?;
    let explicit_id = explicit.as_ref().map(|c| c.id()).or_else(|| st.stats_corpus.clone());
    let config_id = config_corpus.as_ref().map(|c| c.id());
    let config_names: Vec<String> = config_id.iter().cloned().chain([hp.mom2_dataset.clone()]).collect();
    let wanted = resolve::Wanted {
        dataset: explicit_id.as_deref(),
        samples: st.samples,
        precision: explicit_precision,
        config_datasets: &config_names,
        config_samples: hp.mom2_n_samples,
        config_precision: precision_of(hp),
    };
    let sets = resolve::complete_sets(&found, &hp.layers);
    let cached_names = || {
        let mut v: Vec<String> = sets.iter().map(|s| format!("{} ({} samples, {})", s.dataset, s.samples, s.precision.reference_name())).collect();
        v.dedup();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    if let Some(name) = &st.stats_corpus {
        if resolve::choose(sets.clone(), &wanted).is_none() {
            bail!(
                "no cached statistics of corpus `{name}` cover layer(s) {:?} of this model (with the --samples/--precision given) in {}; \
                 cached for these layers: {}",
                hp.layers,
                stats_dir.display(),
                cached_names()
            );
        }
    }
    if let Some(set) = resolve::choose(sets.clone(), &wanted) {
        tracing::info!(
            "statistics for layer(s) {:?}: cached, {} ({} samples, {} tokens, {}) in {}",
            hp.layers,
            set.dataset,
            set.samples,
            set.tokens(),
            set.precision.reference_name(),
            stats_dir.display()
        );
        if let Some(f) = set.layers.values().find(|f| f.meta.identity.weights_fingerprint != identity.weights_fingerprint) {
            tracing::info!(
                "the statistics were computed on {} (weights {}), the model this one was edited from",
                f.meta.identity.model,
                f.meta.identity.weights_fingerprint
            );
        }
        if explicit_id.is_none() && !config_names.contains(&set.dataset) {
            tracing::warn!(
                "the config names statistics of `{}` ({} samples), but the cached ones are of {} ({} samples): using those. \
                 Pass --dataset or --text to choose a corpus (missing statistics are then computed)",
                hp.mom2_dataset,
                hp.mom2_n_samples,
                set.dataset,
                set.samples
            );
        }
        return Ok(StatsSource::Cached(set));
    }
    let corpus = match explicit.or(config_corpus) {
        Some(c) => c,
        None => bail!(
            "no statistics of this model are cached for layer(s) {:?} (in {}; complete sets cached: {}), and the config's \
             mom2_dataset `{}` is not a corpus edit can fetch. Compute them first, e.g. `edit stats --model {} --layers {}` \
             (the embedded WikiText-2 sample, offline), or pass --dataset embedded|wikitext|wikipedia or --text FILE",
            hp.layers,
            stats_dir.display(),
            cached_names(),
            hp.mom2_dataset,
            args.model.id(),
            hp.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")
        ),
    };
    check_corpus_available(&corpus, args.model.offline, global)?;
    Ok(StatsSource::Compute(StatsPlan {
        corpus,
        samples: st.samples.unwrap_or(hp.mom2_n_samples),
        precision: explicit_precision.unwrap_or(precision_of(hp)),
        batch_tokens: st.batch_tokens,
        max_len: st.max_len,
        stats_dir,
        checkpoint_secs: 60,
        force: false,
        abort_after_chunks: None,
        offline: args.model.offline,
        announce_computing: true,
    }))
}

/// The statistics files of every edited layer: the cached set, or computed now.
fn stats_files(source: StatsSource, lm: &edit::LoadedModel, layers: &[usize], global: &GlobalArgs) -> anyhow::Result<StatsUsed> {
    match source {
        StatsSource::Cached(set) => Ok(StatsUsed {
            dataset: set.dataset.clone(),
            samples: set.samples,
            precision: set.precision,
            files: set.layers.iter().map(|(&l, f)| (l, f.path.clone())).collect(),
        }),
        StatsSource::Compute(plan) => {
            let identity = ModelIdentity::of(&lm.files)?;
            let (cached, todo) = lookup(&plan, &identity, lm.config(), layers)?;
            let mut ensured = Ensured { reports: cached, dataset: plan.corpus.id(), identity, ..Default::default() };
            if !todo.is_empty() {
                collect_missing(lm, &todo, &plan, global, &mut ensured)?;
            }
            ensured.reports.sort_by_key(|r| r.layer);
            // The texts actually used (fewer than asked when the corpus is smaller).
            let samples = match ensured.reports.first() {
                Some(r) => cache::load_meta(&r.file)?.0.samples,
                None => plan.samples,
            };
            Ok(StatsUsed {
                dataset: ensured.dataset,
                samples,
                precision: plan.precision,
                files: ensured.reports.into_iter().map(|r| (r.layer, r.file)).collect(),
            })
        }
    }
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
    }
    let tok: Tokenizer = edit::model::load_tokenizer(&files)?.ok_or_else(|| edit::model::no_tokenizer(&files))?;
    requests::validate(&reqs, &tok, cfg.n_ctx)?;
    let resolved = hparams::resolve(method, &cfg, args.model.id(), args.config.as_deref(), &args.sets)?;
    let hp = resolved.hparams.clone();
    hp.validate(method, &cfg)?;
    let seed = args.seed.unwrap_or(hp.seed);
    tracing::info!("{} config: {}", method.name(), resolved.source);
    tracing::debug!("config: {}", serde_json::to_string(&resolved.json).unwrap_or_default());
    // Statistics for every edited layer (ROME without mom2_adjustment needs none).
    let needs_stats = method == Method::Memit || hp.mom2_adjustment;
    let stats_source = if needs_stats { Some(decide_stats(&args, &hp, &files, &cfg, global)?) } else { None };

    let mut lm = args.model.load_files(files, &args.compute)?;
    let pad_id = lm.pad_id();

    let mut stats: BTreeMap<usize, LayerStats> = BTreeMap::new();
    let mut stats_used = None;
    if let Some(source) = stats_source {
        let used = stats_files(source, &lm, &hp.layers, global)?;
        let identity = ModelIdentity::of(&lm.files)?;
        for (&layer, file) in &used.files {
            let m = cache::load(file)?;
            m.check(&identity, &edit::models::modules::mlp_down(&cfg, layer)?)?;
            stats.insert(layer, LayerStats::from_moments(&m)?);
        }
        stats_used = Some(used);
    }

    let templates = match &hp.context_templates {
        Some(t) => templates::from_config(t, method),
        None => match method {
            Method::Rome => {
                let eos = tok.token_id("<|endoftext|>").or(cfg.eos_token_id).unwrap_or(0);
                let params = hp.context_template_length_params.clone().unwrap_or_default();
                templates::rome_templates(&*lm.model, &tok, &params, eos, seed)?
            }
            Method::Memit => templates::memit_templates(&*lm.model, &tok, seed)?,
        },
    };
    tracing::debug!("context templates: {:?}", templates.flat());

    let first_last = |l: &[edit::editing::optimize::LossPoint]| {
        (l.first().map(|p| p.total).unwrap_or(f64::NAN), l.last().map(|p| p.total).unwrap_or(f64::NAN))
    };
    let lines: Vec<String>;
    let mut checks: Vec<EditCheck>;
    let (deltas, modules): (Deltas, Vec<ModuleSummary>) = match method {
        Method::Rome => {
            let outcome = apply_rome(&mut *lm.model, &tok, &reqs, &hp, &mut stats, &templates, pad_id)?;
            for r in &outcome.reports {
                if r.update_norm > args.max_update_ratio * r.weight_norm {
                    bail!(
                        "request {} ({:?} → {:?}): the update's norm {:.3e} is {:.0}x the weight's ({:.3e}; u·k = {:.3e}), \
                         beyond --max-update-ratio {}; nothing was written. Try --set original_implementation=false (r-ROME) or raise the limit",
                        r.index, r.subject, r.target_new, r.update_norm, r.update_norm / r.weight_norm, r.weight_norm, r.division_factor, args.max_update_ratio
                    );
                }
            }
            let losses: Vec<(f64, f64)> = outcome.reports.iter().map(|r| first_last(&r.losses)).collect();
            checks = check_edits(&mut *lm.model, &tok, &reqs, &outcome.deltas, &losses, pad_id)?;
            lines = report_lines(&outcome.reports, &checks, args.json, |r| {
                let (l0, l1) = first_last(&r.losses);
                format!("{:>4}  {} → {}: loss {l0:.3} → {l1:.3} in {} steps, ‖ΔW‖ {:.3}, {:.2}s",
                    r.index, r.subject, r.target_new.trim(), r.steps, r.update_norm, r.seconds)
            })?;
            let mods = outcome
                .deltas
                .iter()
                .map(|(m, d)| Ok(ModuleSummary { module: m.clone(), update_norm: edit::editing::frobenius_norm(d)?, weight_norm: outcome.reports.first().map(|r| r.weight_norm).unwrap_or(0.0) }))
                .collect::<anyhow::Result<_>>()?;
            (outcome.deltas, mods)
        }
        Method::Memit => {
            let outcome = apply_memit(&mut *lm.model, &tok, &reqs, &hp, &mut stats, &templates, pad_id)?;
            for l in &outcome.layers {
                if l.update_norm > args.max_update_ratio * l.weight_norm {
                    let worst = outcome.requests.iter().max_by(|a, b| a.delta_norm.total_cmp(&b.delta_norm));
                    bail!(
                        "layer {}: the MEMIT update's norm {:.3e} is {:.0}x the weight's ({:.3e}), beyond --max-update-ratio {}; nothing was written. \
                         The request with the largest target shift is {}; raise mom2_update_weight or the limit",
                        l.layer, l.update_norm, l.update_norm / l.weight_norm, l.weight_norm, args.max_update_ratio,
                        worst.map(|w| format!("{} ({:?} → {:?})", w.index, w.subject, w.target_new)).unwrap_or_default()
                    );
                }
            }
            let losses: Vec<(f64, f64)> = outcome.requests.iter().map(|r| first_last(&r.losses)).collect();
            checks = check_edits(&mut *lm.model, &tok, &reqs, &outcome.deltas, &losses, pad_id)?;
            lines = report_lines(&outcome.requests, &checks, args.json, |r| {
                let (l0, l1) = first_last(&r.losses);
                format!("{:>4}  {} → {}: loss {l0:.3} → {l1:.3} in {} steps, ‖δ‖ {:.3}",
                    r.index, r.subject, r.target_new.trim(), r.steps, r.delta_norm)
            })?;
            let mods = outcome
                .layers
                .iter()
                .map(|l| ModuleSummary { module: l.module.clone(), update_norm: l.update_norm, weight_norm: l.weight_norm })
                .collect();
            (outcome.deltas, mods)
        }
    };
    checks.truncate(reqs.len());
    let failed: Vec<usize> = reqs.iter().zip(&checks).filter(|(_, c)| !c.took).map(|(r, _)| r.index).collect();
    for (r, c) in reqs.iter().zip(&checks).filter(|(_, c)| !c.took) {
        tracing::warn!("request {} ({:?} → {:?}) did not take: {}", r.index, r.subject, r.target_new, c.problems.join("; "));
    }
    let refused = args.require_success && !failed.is_empty();

    if !refused {
        write_outputs(&args, &lm, &cfg, &deltas, &reqs, &resolved, method, seed, delta_in_out.as_deref())?;
    }
    let summary = Summary {
        summary: true,
        method: method.name(),
        model: args.model.id(),
        config_source: &resolved.source,
        requests: reqs.len(),
        seed,
        templates: &templates,
        modules,
        failed: failed.clone(),
        statistics: stats_used,
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
        for m in &summary.modules {
            writeln!(out, "{}: ‖ΔW‖ {:.4} (‖W‖ {:.4})", m.module, m.update_norm, m.weight_norm)?;
        }
        let took = summary.requests - failed.len();
        writeln!(out, "{} request(s) edited with {} in {:.1}s; {took} took, {} did not", summary.requests, summary.method, summary.seconds, failed.len())?;
    }
    if refused {
        out.flush()?;
        tracing::error!(
            "{} of {} edit(s) did not take (request(s) {failed:?}) and --require-success is set: nothing was written",
            failed.len(),
            reqs.len()
        );
        return Ok(ExitCode::from(EXIT_EDIT_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// One stdout line per request: its report and check as JSON, or `text` with a mark when the
/// edit did not take.
fn report_lines<R: Serialize>(reports: &[R], checks: &[EditCheck], json: bool, text: impl Fn(&R) -> String) -> anyhow::Result<Vec<String>> {
    reports
        .iter()
        .zip(checks)
        .map(|(report, check)| {
            Ok(if json {
                serde_json::to_string(&Reported { report, check })?
            } else {
                format!("{}{}", text(report), if check.took { "" } else { "  (did not take)" })
            })
        })
        .collect()
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
    resolved: &hparams::ResolvedHparams,
    method: Method,
    seed: u64,
    delta_in_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let meta = DeltaMeta {
        method: method.name().to_string(),
        requests: serde_json::Value::Array(reqs.iter().map(Request::to_reference_json).collect()),
        config: resolved.json.clone(),
        seed: Some(seed),
        base_model: ModelIdentity::of(&lm.files)?,
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
