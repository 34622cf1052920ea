//! `edit eval`: edit the records of a dataset chunk by chunk and score them as the reference
//! evaluators do; write per-case results and the summary, print a table.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use edit::editing::hparams::Method;
use edit::editing::method::prepare;
use edit::editing::pipeline::EditPlan;
use edit::eval::records::{read_dataset, ZsreTarget};
use edit::eval::run::{evaluate, EvalPlan, EvalProgress, NumEditsRun};
use edit::eval::rundir::{RunDir, SUMMARY_FILE};
use edit::stats::cache::ModelIdentity;
use edit::ModelConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::apply::StatsSourceArgs;
use super::stats::{BarProgress, DatasetArg};
use super::{logging, ComputeArgs, GlobalArgs, ModelArgs};

/// Edit the records of an evaluation dataset and score them as the reference evaluators do
/// (CounterFact: ES/PS/NS, EM/PM/NM, Score; zsRE: token accuracy).
///
/// The records are split into chunks of --num-edits; each chunk is one edit (as `edit apply`
/// computes it), every record of the chunk is scored on the edited model, and the weights are
/// restored — or, with --sequential, kept, so that edits accumulate; every edit is then scored
/// again on the final model. Pre-edit scores are computed once per record. --method none scores
/// the model as it is. With --out DIR the per-case results (`cases.jsonl`, the reference's
/// layout) and `summary.json` are written; rerunning the same command resumes.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The editing method, or none (score the model as it is: the baseline, or a model written
    /// by `edit apply`).
    #[arg(long, value_parser = ["rome", "memit", "ft", "none"])]
    pub method: String,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// The evaluation records: CounterFact / multi-CounterFact records, the simplified
    /// CounterFact layout, zsRE (`zsre_mend_eval.json` layout), or request objects with
    /// `target_true` and optional `paraphrase_prompts` / `neighborhood_prompts`.
    #[arg(long, value_name = "FILE")]
    pub dataset: PathBuf,
    /// Edits per chunk; several values (comma-separated) run one after another, for a scaling curve.
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',', default_value = "1")]
    pub num_edits: Vec<usize>,
    /// Keep every chunk's edit (continual editing) instead of restoring the weights.
    #[arg(long)]
    pub sequential: bool,
    /// Evaluate only the first N records.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// zsRE: the new target is `answers[0]` (the reference) or `alt` (EasyEdit).
    #[arg(long, value_parser = ["answers", "alt"], default_value = "answers")]
    pub zsre_target: String,
    /// Write cases.jsonl and summary.json here (a rerun of the same command resumes).
    #[arg(short, long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Start over in --out, discarding what is there.
    #[arg(long)]
    pub force: bool,
    /// Print the summaries as JSON (one array) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Texts per scoring forward.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub score_batch: usize,
    /// Hyperparameter file (reference hparams JSON format), or a shipped config by name.
    #[arg(long, value_name = "FILE|NAME")]
    pub config: Option<PathBuf>,
    /// Override one hyperparameter, as in `edit apply`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Seed of the context-template sampling [default: the config's `seed`, else 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Refuse (and record as failed) an update whose norm exceeds this multiple of the weight's.
    #[arg(long, default_value_t = 10.0)]
    pub max_update_ratio: f64,
    /// Statistics corpus (as `edit apply --dataset`).
    #[arg(long, value_enum)]
    pub stats_dataset: Option<DatasetArg>,
    #[command(flatten)]
    pub stats: StatsSourceArgs,
}

/// An indicatif bar on an interactive stderr.
struct Bar {
    bar: ProgressBar,
    visible: bool,
}

impl EvalProgress for Bar {
    fn start(&mut self, label: &str, total: usize, done: usize) {
        if self.visible {
            self.bar = ProgressBar::new(total as u64);
            self.bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} records, {msg}, ETA {eta}").expect("valid template"));
            self.bar.set_message(label.to_string());
            self.bar.set_position(done as u64);
        }
    }
    fn advance(&mut self, n: usize) {
        self.bar.inc(n as u64);
    }
    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn file_digest(path: &std::path::Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(edit::checkpoint::hex(&sha2::Sha256::digest(&bytes)))
}

pub fn run(args: EvalArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let method: Option<Method> = match args.method.as_str() {
        "none" => None,
        m => Some(m.parse()?),
    };
    if args.num_edits.contains(&0) {
        bail!("--num-edits must be at least 1");
    }
    if method.is_none() && (args.config.is_some() || !args.sets.is_empty()) {
        bail!("--method none edits nothing, so --config and --set do not apply");
    }
    args.compute.parse()?;
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let identity = ModelIdentity::of(&files)?;
    let tok = edit::model::load_tokenizer(&files)?.ok_or_else(|| edit::model::no_tokenizer(&files))?;
    let zsre_target = if args.zsre_target == "alt" { ZsreTarget::Alt } else { ZsreTarget::Answer };
    let mut dataset = read_dataset(&args.dataset, &tok, zsre_target).with_context(|| format!("cannot read the evaluation records in {}", args.dataset.display()))?;
    if let Some(n) = args.limit {
        dataset.records.truncate(n);
    }
    tracing::info!("{}: {} {}", args.dataset.display(), dataset.records.len(), dataset.format.describe());
    dataset.check(&tok, cfg.n_ctx, method.is_some(), &args.dataset.display().to_string())?;

    // The method, its config and its statistics, all before any weights are read.
    let plan = match method {
        Some(m) => {
            let prepared = prepare(m, &cfg, args.model.id(), args.config.as_deref(), &args.sets)?;
            tracing::info!("{m} config: {}", prepared.source);
            let wanted = match prepared.method.stats_need() {
                Some(_) => Some(args.stats.wanted(args.stats_dataset, "--stats-dataset", &args.model)?),
                None => None,
            };
            Some(EditPlan::new(prepared, wanted, &identity, &cfg, logging::show_progress(global))?)
        }
        None => None,
    };
    let seed = args.seed.or(plan.as_ref().map(|p| p.prepared.method.default_seed())).unwrap_or(0);
    let run_description = json!({
        "method": args.method,
        "config": plan.as_ref().map(|p| p.prepared.json.clone()),
        "seed": seed,
        "model": identity,
        "dataset": args.dataset.display().to_string(),
        "dataset_sha256": file_digest(&args.dataset)?,
        "dataset_format": dataset.format,
        "zsre_target": args.zsre_target,
        "limit": args.limit,
        "num_edits": args.num_edits,
        "sequential": args.sequential,
        "max_update_ratio": args.max_update_ratio,
        "tool_version": env!("CARGO_PKG_VERSION"),
    });
    let mut dir = match &args.out {
        Some(out) => Some(RunDir::open(out, &run_description, args.force)?),
        None => None,
    };

    let mut lm = args.model.load_files(files, &args.compute)?;
    let pad_id = lm.pad_id();
    let mut editor = match plan {
        Some(p) => Some(p.load(&lm, &identity, &mut BarProgress::new(global))?),
        None => None,
    };
    let eval_plan = EvalPlan {
        dataset: &dataset,
        num_edits: args.num_edits.clone(),
        sequential: args.sequential,
        seed,
        max_update_ratio: args.max_update_ratio,
        batch: args.score_batch,
        identity: &identity,
    };
    let mut bar = Bar { bar: ProgressBar::hidden(), visible: logging::show_progress(global) };
    let runs = evaluate(&mut *lm.model, &tok, pad_id, editor.as_mut(), &eval_plan, dir.as_mut(), &mut bar)?;

    let seconds = started.elapsed().as_secs_f64();
    let summaries: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut s = r.summary.clone();
            for (k, v) in [
                ("method", json!(args.method)),
                ("config_source", json!(editor.as_ref().map(|e| e.prepared.source.clone()))),
                ("config", run_description["config"].clone()),
                ("seed", json!(seed)),
                ("model", json!(args.model.id())),
                ("weights_fingerprint", json!(identity.weights_fingerprint)),
                ("dataset", json!(args.dataset.display().to_string())),
                ("dataset_format", json!(dataset.format)),
                ("sequential", json!(args.sequential)),
                ("statistics", json!(editor.as_ref().and_then(|e| e.stats_used.clone()))),
                ("seconds", json!(seconds)),
            ] {
                s.insert(k.into(), v);
            }
            Value::Object(s)
        })
        .collect();
    if let Some(d) = &dir {
        d.write_json(SUMMARY_FILE, &summaries)?;
        tracing::info!("results in {}", d.dir.display());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &summaries)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &runs, dataset.format.is_zsre(), args.sequential)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The post-edit means: rows are num-edits values.
fn write_table(out: &mut impl Write, runs: &[NumEditsRun], zsre: bool, sequential: bool) -> anyhow::Result<()> {
    let get = |r: &NumEditsRun, k: &str| r.summary.get(k).and_then(|v| v[0].as_f64()).map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    let time = |r: &NumEditsRun| r.summary.get("time").and_then(|v| v[0].as_f64()).map(|x| format!("{x:.2}")).unwrap_or_default();
    let cols: &[(&str, &str)] = if zsre {
        &[("Efficacy", "post_rewrite_acc"), ("Paraphrase", "post_paraphrase_acc"), ("Specificity", "post_neighborhood_acc")]
    } else {
        &[("ES", "post_rewrite_success"), ("PS", "post_paraphrase_success"), ("NS", "post_neighborhood_success"), ("Score", "post_score"), ("EM", "post_rewrite_diff"), ("PM", "post_paraphrase_diff"), ("NM", "post_neighborhood_diff")]
    };
    let mut header = format!("{:>9} {:>7}", "num_edits", "cases");
    for (name, _) in cols {
        header.push_str(&format!(" {name:>7}"));
    }
    header.push_str(&format!(" {:>7} {:>9}", "failed", "edit_s"));
    writeln!(out, "{header}")?;
    for r in runs {
        let mut line = format!("{:>9} {:>7}", r.num_edits, r.summary.get("num_cases").and_then(Value::as_u64).unwrap_or(0));
        for (_, key) in cols {
            line.push_str(&format!(" {:>7}", get(r, key)));
        }
        line.push_str(&format!(" {:>7} {:>9}", r.summary.get("num_failed").and_then(Value::as_u64).unwrap_or(0), time(r)));
        writeln!(out, "{line}")?;
        if sequential && r.summary.contains_key("final_rewrite_success") {
            let mut line = format!("{:>9} {:>7}", "final", "");
            for (_, key) in cols {
                line.push_str(&format!(" {:>7}", get(r, &key.replacen("post_", "final_", 1))));
            }
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
