//! `edit eval`: edit the records of a dataset chunk by chunk and score them as the reference
//! evaluators do; write per-case results and the summary, print a table.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use edit::editing::pipeline::{EditPlan, EditSetup};
use edit::editing::records::{read_dataset, Dataset, ZsreTarget};
use edit::eval::probes::{Generation, ScoreOptions};
use edit::eval::report::RunDescription;
use edit::eval::run::{evaluate, EvalPlan, EvalProgress};
use edit::eval::rundir::{RunDir, ORDER_FILE, SUMMARY_FILE};
use edit::identity::ModelIdentity;
use edit::ModelConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use super::args::{eval_method, named, parse_shard, DatasetArg, EvalMethod, MethodArgs, StatsSourceArgs};
use super::stats::BarProgress;
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
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub action: Option<EvalAction>,
    #[command(flatten)]
    pub run: EvalRunArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum EvalAction {
    /// Combine the output directories of the shards of one evaluation (`--shard I/N` runs) into
    /// the directory a single run would have written.
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' --out directories (every I of 0..N, once).
    #[arg(required = true, value_name = "DIR")]
    pub shards: Vec<PathBuf>,
    /// Where to write the merged cases.jsonl and summary.json.
    #[arg(short, long, value_name = "DIR", required = true)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the merged summaries as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalRunArgs {
    /// The editing method, or none (score the model as it is: the baseline, or a model written
    /// by `edit apply`).
    // Options only so that `edit eval merge` can do without them; clap still requires them.
    #[arg(long, value_parser = eval_method(), required = true)]
    pub method: Option<EvalMethod>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// The evaluation records: CounterFact / multi-CounterFact records, the simplified
    /// CounterFact layout, zsRE (`zsre_mend_eval.json`, or EasyEdit's layout with portability),
    /// KnowEdit, MQuAKE, WikiBigEdit, UltraEdit's zsRE and UltraEditBench, or request objects with
    /// `target_true` and optional `paraphrase_prompts` / `neighborhood_prompts`. A JSON list,
    /// or JSON Lines.
    #[arg(long, value_name = "FILE", required = true)]
    pub dataset: Option<PathBuf>,
    /// Edits per chunk; several values (comma-separated) run one after another, for a scaling curve.
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',', default_value = "1")]
    pub num_edits: Vec<usize>,
    /// Keep every chunk's edit (continual editing) instead of restoring the weights.
    #[arg(long)]
    pub sequential: bool,
    /// Evaluate only the first N records.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Read the dataset a chunk at a time instead of whole (for 100k+ records: WikiBigEdit,
    /// UltraEditBench): every record is checked in a first pass, then edited and scored chunk by
    /// chunk; with --sequential the file is read again at the end for the final scores. One
    /// --num-edits value; a streamed run is not resumable.
    #[arg(long, conflicts_with = "shard")]
    pub stream: bool,
    /// Evaluate only every N-th chunk, starting at chunk I (0-based), for one job of an array
    /// spread over machines; `edit eval merge` combines the shards' --out directories.
    #[arg(long, value_name = "I/N", value_parser = parse_shard, conflicts_with = "sequential")]
    pub shard: Option<(usize, usize)>,
    /// zsRE: the new target is `answers[0]` (the reference's) or `alt` (EasyEdit's). By default
    /// `answers` for `zsre_mend_eval.json` records and `alt` for EasyEdit's layout (with
    /// `portability`).
    #[arg(long, value_parser = named(&ZsreTarget::ALL, ZsreTarget::name))]
    pub zsre_target: Option<ZsreTarget>,
    /// Write cases.jsonl and summary.json here (a rerun of the same command resumes).
    #[arg(short, long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Start over in --out, discarding what is there.
    #[arg(long)]
    pub force: bool,
    /// Print the summaries as JSON (one array) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw ES/PS/NS/Score (zsRE: the accuracies) against the number of edits to this .svg or
    /// .png file: over the --num-edits values, or, with --sequential, after each chunk.
    #[arg(long, value_name = "FILE.svg|.png")]
    pub plot: Option<PathBuf>,
    /// Also run the generation test (CounterFact records with `generation_prompts`): a text of
    /// 100 tokens sampled (top-5, seeded by --seed and the case id) from each prompt, scored by
    /// its n-gram entropy (fluency, `*_ngram_entropy`).
    #[arg(long)]
    pub generation: bool,
    /// Run the generation test on the records whose case_id is a multiple of N (the reference's
    /// generation_test_interval).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "generation")]
    pub generation_interval: u64,
    /// The reference's attribute_snippets.json: adds the consistency (TF-IDF cosine of the texts
    /// with the snippets about other subjects with target_new, `*_reference_score`) and essence
    /// (perplexity on the subject's own snippets, `*_essence_score`) scores.
    #[arg(long, value_name = "FILE", requires = "generation")]
    pub snippets: Option<PathBuf>,
    /// A directory with the reference's idf.npy and tfidf_vocab.json for the consistency score
    /// [default: idf fitted on the snippets, as the reference does without them].
    #[arg(long, value_name = "DIR", requires = "snippets")]
    pub tfidf: Option<PathBuf>,
    /// Also score the records' `attribute_prompts` (as kmeng01/rome's evaluator; recorded as
    /// `attribute_prompts_probs`, not summarised, as there).
    #[arg(long)]
    pub attribute_prompts: bool,
    /// Texts per scoring forward.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub score_batch: usize,
    #[command(flatten)]
    pub method_args: MethodArgs,
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
            self.bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} records, {msg}, ETA {eta}").expect("valid template"),
            );
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

pub fn run(args: EvalArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(EvalAction::Merge(m)) => merge(m),
        None => run_eval(args.run, global),
    }
}

fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let summaries = edit::eval::merge::merge(&args.shards, &args.out, args.force)?;
    tracing::info!("merged {} shard(s) into {}", args.shards.len(), args.out.display());
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &summaries)?;
        writeln!(out)?;
    } else {
        let format = summaries.first().and_then(|s| s.get("dataset_format")).and_then(Value::as_str);
        let zsre = !matches!(format, Some("counter_fact" | "counter_fact_simplified" | "requests") | None);
        let sequential = summaries.first().and_then(|s| s.get("sequential")).and_then(Value::as_bool).unwrap_or(false);
        let rows: Vec<Map<String, Value>> = summaries.iter().filter_map(|s| s.as_object().cloned()).collect();
        write_table(&mut out, &rows, zsre, sequential)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_eval(args: EvalRunArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let chosen = args.method.expect("clap requires --method");
    let method_name = chosen.name();
    let dataset_path = args.dataset.clone().unwrap_or_default();
    let method = chosen.method();
    if args.num_edits.contains(&0) {
        bail!("--num-edits must be at least 1");
    }
    if method.is_none() && (args.method_args.config.is_some() || !args.method_args.sets.is_empty()) {
        bail!("--method none edits nothing, so --config and --set do not apply");
    }
    args.compute.parse()?;
    if let Some(p) = &args.plot {
        edit::eval::plot::check_path(p)?;
        edit::fsutil::check_writable_ancestor(edit::fsutil::parent_dir(p), "--plot", p)?;
    }
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let identity = ModelIdentity::of(&files)?;
    let tok = edit::model::load_tokenizer(&files)?.ok_or_else(|| edit::model::no_tokenizer(&files))?;
    let (dataset, streamed) = match args.stream {
        true => {
            if args.num_edits.len() != 1 {
                bail!("--stream runs one --num-edits value (the file is read chunk by chunk); run one command per value");
            }
            if args.generation {
                bail!("--generation needs CounterFact's generation prompts, which a streamed run does not keep; drop --stream or --generation");
            }
            let checked = edit::eval::stream::check(&dataset_path, args.zsre_target, args.limit, &tok, cfg.n_ctx)
                .with_context(|| format!("cannot read the evaluation records in {}", dataset_path.display()))?;
            tracing::info!("{}: {} {} (streamed)", dataset_path.display(), checked.records, checked.format.describe());
            (Dataset { format: checked.format, records: Vec::new(), zsre_target: checked.zsre_target }, Some(checked))
        }
        false => {
            let mut dataset =
                read_dataset(&dataset_path, args.zsre_target).with_context(|| format!("cannot read the evaluation records in {}", dataset_path.display()))?;
            if let Some(n) = args.limit {
                dataset.records.truncate(n);
            }
            tracing::info!("{}: {} {}", dataset_path.display(), dataset.records.len(), dataset.format.describe());
            dataset.check(&tok, cfg.n_ctx, &dataset_path.display().to_string())?;
            if args.generation {
                if dataset.format.is_zsre() {
                    bail!("--generation: zsRE records have no generation prompts; the generation test is CounterFact's");
                }
                if dataset.records.iter().all(|r| r.generation_prompts.is_empty()) {
                    bail!("--generation: no record of {} has generation_prompts (full CounterFact records have them)", dataset_path.display());
                }
            }
            (dataset, None)
        }
    };
    let snippets = match &args.snippets {
        Some(path) => Some(std::sync::Arc::new(
            edit::eval::consistency::Snippets::read(path, args.tfidf.as_deref())
                .with_context(|| format!("cannot read the attribute snippets {}", path.display()))?,
        )),
        None => None,
    };

    // The method, its config and its statistics, all before any weights are read.
    let plan = match method {
        Some(m) => {
            let setup = EditSetup {
                method: m,
                model_id: args.model.id(),
                source: args.method_args.source(),
                seed: args.method_args.seed,
                hub_progress: logging::show_progress(global),
            };
            Some(EditPlan::prepare(setup, &cfg, &identity, || args.stats.wanted(args.stats_dataset, "--stats-dataset", &args.model))?)
        }
        None => None,
    };
    let seed = plan.as_ref().map(EditPlan::seed).or(args.method_args.seed).unwrap_or(0);
    let description = RunDescription {
        method: method_name,
        config: plan.as_ref().map(|p| p.config_json().clone()),
        seed,
        identity: &identity,
        model_id: args.model.id(),
        dataset: &dataset_path,
        dataset_format: dataset.format,
        zsre_target: dataset.zsre_target.unwrap_or_default().name(),
        limit: args.limit,
        num_edits: &args.num_edits,
        sequential: args.sequential,
        shard: args.shard,
        generation: args.generation.then_some(args.generation_interval),
        attribute_prompts: args.attribute_prompts,
        snippets: args.snippets.as_deref(),
        tfidf: args.tfidf.as_deref(),
        max_update_ratio: args.method_args.max_update_ratio,
    };
    let run_description = description.to_json()?;
    let mut dir = match &args.out {
        Some(out) => {
            let d = RunDir::open(out, &run_description, args.force)?;
            if streamed.is_some() && !d.done.is_empty() {
                bail!("--out {} holds a streamed run's results; a streamed run cannot be resumed: pass --force to start over", out.display());
            }
            if streamed.is_none() {
                d.write_json(ORDER_FILE, &dataset.records.iter().map(|r| r.case_id).collect::<Vec<_>>())?;
            }
            Some(d)
        }
        None => None,
    };

    let mut lm = args.model.load_files(files, &args.compute)?;
    let mut editor = match plan {
        Some(p) => Some(p.load(&lm, &mut BarProgress::new(global))?),
        None => None,
    };
    let eval_plan = EvalPlan {
        dataset: &dataset,
        num_edits: args.num_edits.clone(),
        sequential: args.sequential,
        seed,
        max_update_ratio: args.method_args.max_update_ratio,
        scoring: ScoreOptions {
            zsre: dataset.format.is_zsre(),
            batch: args.score_batch,
            attribute_prompts: args.attribute_prompts,
            generation: match args.generation {
                true => Some(Generation { seed, interval: args.generation_interval.max(1), snippets: snippets.clone() }),
                false => None,
            },
        },
        shard: args.shard,
    };
    let mut bar = Bar { bar: ProgressBar::hidden(), visible: logging::show_progress(global) };
    let runs = match &streamed {
        Some(data) => vec![edit::eval::stream::evaluate_stream(&mut *lm.model, &tok, editor.as_mut(), &eval_plan, data, dir.as_mut(), &mut bar)?],
        None => evaluate(&mut *lm.model, &tok, editor.as_mut(), &eval_plan, dir.as_mut(), &mut bar)?,
    };

    let summaries = description.summaries(&runs, editor.as_ref(), started.elapsed().as_secs_f64());
    if let Some(d) = &dir {
        d.write_json(SUMMARY_FILE, &summaries)?;
        tracing::info!("results in {}", d.dir.display());
    }
    if let Some(p) = &args.plot {
        let (series, x_label) = edit::eval::plot::series(&runs, dataset.format.is_zsre(), args.sequential);
        let name = dataset_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        edit::eval::plot::write_plot(p, &format!("{method_name} on {name} ({})", args.model.id()), x_label, &series)?;
        tracing::info!("plot written to {}", p.display());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &summaries)?;
        writeln!(out)?;
    } else {
        let rows: Vec<Map<String, Value>> = runs.iter().map(|r| r.summary.clone()).collect();
        write_table(&mut out, &rows, dataset.format.is_zsre(), args.sequential)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The post-edit means: rows are num-edits values (summaries as `summary.json` holds them).
fn write_table(out: &mut impl Write, rows: &[Map<String, Value>], zsre: bool, sequential: bool) -> anyhow::Result<()> {
    let get = |r: &Map<String, Value>, k: &str| r.get(k).and_then(|v| v[0].as_f64()).map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    let num = |r: &Map<String, Value>, k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut cols: Vec<(String, String)> = edit::eval::summary::headline_metrics(zsre).iter().map(|(l, k)| (l.to_string(), k.to_string())).collect();
    for (name, key) in [("GE", "post_ngram_entropy"), ("RS", "post_reference_score")] {
        if rows.iter().any(|r| r.contains_key(key)) {
            cols.push((name.into(), key.into()));
        }
    }
    let groups: std::collections::BTreeSet<&String> = rows.iter().flat_map(|r| r.keys()).filter(|k| edit::eval::summary::is_group_headline(k)).collect();
    for key in groups {
        let label = key.trim_start_matches("post_").trim_end_matches("_acc");
        cols.push((label.to_string(), key.clone()));
    }
    let mut header = format!("{:>9} {:>7}", "num_edits", "cases");
    for (name, _) in &cols {
        header.push_str(&format!(" {name:>7}"));
    }
    header.push_str(&format!(" {:>7} {:>9}", "failed", "edit_s"));
    writeln!(out, "{header}")?;
    for r in rows {
        let mut line = format!("{:>9} {:>7}", num(r, "num_edits"), num(r, "num_cases"));
        for (name, key) in &cols {
            line.push_str(&format!(" {:>w$}", get(r, key), w = name.len().max(7)));
        }
        let time = r.get("time").and_then(|v| v[0].as_f64()).map(|x| format!("{x:.2}")).unwrap_or_default();
        line.push_str(&format!(" {:>7} {:>9}", num(r, "num_failed"), time));
        writeln!(out, "{line}")?;
        if sequential && r.contains_key("final_rewrite_success") {
            let mut line = format!("{:>9} {:>7}", "final", "");
            for (name, key) in &cols {
                line.push_str(&format!(" {:>w$}", get(r, &key.replacen("post_", "final_", 1)), w = name.len().max(7)));
            }
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
