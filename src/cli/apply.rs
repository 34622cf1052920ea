//! `edit apply`: compute a ROME or MEMIT edit and write the patched model and/or the delta.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use edit::data::{Corpus, HubDataset};
use edit::editing::hparams::{self, Method};
use edit::editing::linalg::LayerStats;
use edit::editing::memit::apply_memit;
use edit::editing::requests::{self, Request};
use edit::editing::rome::apply_rome;
use edit::editing::templates::{self, ContextTemplates};
use edit::editing::Deltas;
use edit::patch::{self, DeltaMeta};
use edit::stats::cache::{self, ModelIdentity};
use edit::stats::Precision;
use edit::tokenizer::Tokenizer;
use edit::ModelConfig;
use serde::Serialize;

use super::stats::{chosen_corpus, ensure_stats, DatasetArg, StatsDirArg, StatsPlan};
use super::{GlobalArgs, ModelArgs};

/// Compute a ROME or MEMIT edit of the facts in REQUESTS and write the patched model (--out)
/// and/or the weight delta (--delta-out).
///
/// Hyperparameters come from the shipped config for the model (the reference values where they
/// exist; `-v` prints which), or --config FILE (the reference's hparams JSON format), with
/// --set key=value overrides. Second-moment statistics come from the `edit stats` cache and are
/// computed first when missing.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Edit requests: a JSON list (or JSONL) of {"prompt": "{} plays the sport of", "subject":
    /// "LeBron James", "target_new": {"str": "football"}}, or CounterFact records.
    #[arg(value_name = "REQUESTS")]
    pub requests: PathBuf,
    #[arg(long, value_parser = ["rome", "memit"])]
    pub method: String,
    #[command(flatten)]
    pub model: ModelArgs,
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
    #[command(flatten)]
    pub stats: StatsSourceArgs,
}

/// Where missing statistics are computed from (as `edit stats`) and where they are cached.
#[derive(Args, Debug)]
pub struct StatsSourceArgs {
    /// Texts sampled for statistics [default: the config's `mom2_n_samples`].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Local corpus files for statistics (.txt, .jsonl, .parquet).
    #[arg(long, num_args = 1.., value_name = "FILE", conflicts_with = "dataset")]
    pub text: Vec<PathBuf>,
    /// Hub dataset for statistics [default: from the config's `mom2_dataset`].
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetArg>,
    /// Statistics precision [default: the config's `mom2_dtype`].
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
    out: Option<&'a PathBuf>,
    delta_out: Option<&'a PathBuf>,
    seconds: f64,
}

#[derive(Serialize)]
struct ModuleSummary {
    module: String,
    update_norm: f64,
    weight_norm: f64,
}

fn corpus_for(args: &StatsSourceArgs, mom2_dataset: &str) -> anyhow::Result<Corpus> {
    if let Some(c) = chosen_corpus(args.dataset, &args.text) {
        return Ok(c);
    }
    Ok(match mom2_dataset {
        "wikipedia" => Corpus::Hub(HubDataset::Wikipedia),
        d if d.starts_with("wikitext") => Corpus::Hub(HubDataset::Wikitext),
        other => bail!(
            "the config's mom2_dataset `{other}` is not a dataset edit can fetch; \
             pass --text FILE (the corpus the statistics were computed on), --dataset, or --set mom2_dataset=wikipedia"
        ),
    })
}

pub fn run(args: ApplyArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let method: Method = args.method.parse()?;
    if args.out.is_none() && args.delta_out.is_none() {
        bail!("nothing to write: pass --out DIR (a patched model) and/or --delta-out FILE.safetensors (the weight delta)");
    }
    if let (Some(o), Some(d)) = (&args.out, &args.delta_out) {
        if o == d {
            bail!("--out and --delta-out are the same path {}: the model directory and the delta file need different paths", o.display());
        }
    }
    if let Some(d) = &args.delta_out {
        if d.exists() && !args.force {
            bail!("{} already exists: choose another --delta-out or pass --force", d.display());
        }
    }
    // Everything cheap is checked before any weights are read.
    let reqs = requests::read_requests(&args.requests).with_context(|| format!("cannot read requests from {}", args.requests.display()))?;
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    if let Some(out) = &args.out {
        patch::check_out_dir(&files, out, args.force)?;
    }
    let tok: Tokenizer = edit::model::load_tokenizer(&files)?.ok_or_else(|| edit::model::no_tokenizer(&files))?;
    requests::validate(&reqs, &tok, cfg.n_ctx)?;
    let resolved = hparams::resolve(method, &cfg, args.model.id(), args.config.as_deref(), &args.sets)?;
    let hp = resolved.hparams.clone();
    hp.validate(method, &cfg)?;
    let seed = args.seed.unwrap_or(hp.seed);
    tracing::info!("{} config: {}", method.name(), resolved.source);
    tracing::debug!("config: {}", serde_json::to_string(&resolved.json).unwrap_or_default());

    let mut lm = args.model.load(global)?;
    let pad_id = lm.pad_id();

    // Statistics for every edited layer (ROME without mom2_adjustment needs none).
    let needs_stats = method == Method::Memit || hp.mom2_adjustment;
    let mut stats: BTreeMap<usize, LayerStats> = BTreeMap::new();
    if needs_stats {
        let precision = Precision::parse(args.stats.precision.as_deref().unwrap_or(match hp.mom2_dtype.as_str() {
            "float64" => "f64",
            _ => "f32",
        }))?;
        let plan = StatsPlan {
            corpus: corpus_for(&args.stats, &hp.mom2_dataset)?,
            samples: args.stats.samples.unwrap_or(hp.mom2_n_samples),
            precision,
            batch_tokens: args.stats.batch_tokens,
            max_len: args.stats.max_len,
            stats_dir: args.stats.dir.dir(),
            checkpoint_secs: 60,
            force: false,
            abort_after_chunks: None,
            offline: args.model.offline,
            announce_computing: true,
        };
        let ensured = ensure_stats(&lm, &hp.layers, &plan, global)?;
        for r in &ensured.reports {
            let m = cache::load(&r.file)?;
            m.check(&ensured.identity, &edit::models::modules::mlp_down(&cfg, r.layer)?)?;
            stats.insert(r.layer, LayerStats::from_moments(&m)?);
        }
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

    let mut out = std::io::stdout().lock();
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
            if args.json {
                for r in &outcome.reports {
                    serde_json::to_writer(&mut out, r)?;
                    writeln!(out)?;
                }
            } else {
                for r in &outcome.reports {
                    let last = r.losses.last().map(|l| l.total).unwrap_or(f64::NAN);
                    writeln!(out, "{:>4}  {} → {}: loss {:.3} → {:.3} in {} steps, ‖ΔW‖ {:.3}, {:.2}s",
                        r.index, r.subject, r.target_new.trim(), r.losses.first().map(|l| l.total).unwrap_or(f64::NAN), last, r.steps, r.update_norm, r.seconds)?;
                }
            }
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
            if args.json {
                for r in &outcome.requests {
                    serde_json::to_writer(&mut out, r)?;
                    writeln!(out)?;
                }
            } else {
                for r in &outcome.requests {
                    writeln!(out, "{:>4}  {} → {}: loss {:.3} → {:.3} in {} steps, ‖δ‖ {:.3}",
                        r.index, r.subject, r.target_new.trim(), r.losses.first().map(|l| l.total).unwrap_or(f64::NAN),
                        r.losses.last().map(|l| l.total).unwrap_or(f64::NAN), r.steps, r.delta_norm)?;
                }
            }
            let mods = outcome
                .layers
                .iter()
                .map(|l| ModuleSummary { module: l.module.clone(), update_norm: l.update_norm, weight_norm: l.weight_norm })
                .collect();
            (outcome.deltas, mods)
        }
    };

    let meta = DeltaMeta {
        method: method.name().to_string(),
        requests: serde_json::Value::Array(reqs.iter().map(Request::to_reference_json).collect()),
        config: resolved.json.clone(),
        seed: Some(seed),
        base_model: ModelIdentity::of(&lm.files)?,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // The model directory first: a --delta-out inside --out must not be taken for an existing
    // --out (nor be deleted when --force replaces it).
    if let Some(dir) = &args.out {
        patch::write_model_dir(&lm.files, &cfg, &deltas, 1.0, dir, args.force)
            .with_context(|| format!("cannot write the patched model to {}", dir.display()))?;
        tracing::info!("patched model written to {}", dir.display());
    }
    if let Some(path) = &args.delta_out {
        patch::save_delta(path, &cfg, &deltas, &meta).with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!("delta written to {}", path.display());
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
        out: args.out.as_ref(),
        delta_out: args.delta_out.as_ref(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        for m in &summary.modules {
            writeln!(out, "{}: ‖ΔW‖ {:.4} (‖W‖ {:.4})", m.module, m.update_norm, m.weight_norm)?;
        }
        writeln!(out, "{} request(s) edited with {} in {:.1}s", summary.requests, summary.method, summary.seconds)?;
    }
    Ok(ExitCode::SUCCESS)
}
