//! `edit trace`: causal tracing of facts (where a model keeps them), as kmeng01/rome's
//! `experiments/causal_trace.py`, with the average effects over a file of facts and the layer
//! to edit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use edit::trace::plot::{self, Format};
use edit::trace::summary::{summarize, Summary};
use edit::trace::{self, Fact, FactTrace, Kind, NoiseRule, TraceOptions};

use super::args::named;
use super::{logging, ComputeArgs, GlobalArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// The prompt of one fact, with the subject in it ("The Eiffel Tower is located in the city of").
    #[arg(long, requires = "subject", conflicts_with = "facts")]
    pub prompt: Option<String>,
    /// The subject, as it appears in --prompt ("The Eiffel Tower").
    #[arg(long, requires = "prompt")]
    pub subject: Option<String>,
    /// The answer the model should predict ("Paris"). As the reference, a fact is traced only
    /// when the model's top token is this answer (see --trace-expected); without it, the
    /// model's own top token is traced.
    #[arg(long, requires = "prompt")]
    pub answer: Option<String>,
    /// A JSON list of facts: known_1000.json's layout (known_id, prompt, subject, attribute),
    /// CounterFact records (case_id, requested_rewrite; target_true is the expected answer) or edit
    /// requests (prompt with {}, subject, optional target_true).
    #[arg(long, value_name = "FILE", required_unless_present = "prompt")]
    pub facts: Option<PathBuf>,
    /// Trace only the first N facts of --facts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// What is restored: hidden (block outputs), mlp, attn (windows of layers); comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "hidden,mlp,attn", value_parser = named(&Kind::ALL, Kind::name))]
    pub kind: Vec<Kind>,
    /// Noise on the subject's token embeddings: a standard deviation (0.1), s<k> for k times
    /// the standard deviation of the facts' subjects' embeddings (the reference's default),
    /// or u<x> for uniform noise in [-x, x].
    #[arg(long, default_value = "s3")]
    pub noise: String,
    /// Corrupted runs per restoration.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub samples: u32,
    /// Layers restored together by the mlp and attn traces.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
    /// Seed of the noise (numpy's RandomState, re-created for every run as the reference does).
    #[arg(long, default_value_t = 1)]
    pub seed: u32,
    /// Replace the subject's embeddings by the noise instead of adding it.
    #[arg(long)]
    pub replace: bool,
    /// With --replace, compute low_score with the replacing noise too (the reference adds the
    /// noise for low_score whatever --replace says).
    #[arg(long, requires = "replace")]
    pub consistent_low_score: bool,
    /// Trace the expected answer's first token even when the model predicts another.
    #[arg(long)]
    pub trace_expected: bool,
    /// Write a heatmap per fact and kind, and the average indirect effect over the facts, here.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Image format of --plot.
    #[arg(long, default_value = "png", value_parser = named(&Format::ALL, Format::extension))]
    pub plot_format: Format,
    /// Write the average effects and the suggested layer as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
}

/// What the arguments ask for, checked before the model is loaded.
struct Plan {
    facts: Vec<Fact>,
    /// Subjects the `s<k>` rule measures: every fact of the file, as the reference.
    noise_subjects: Vec<String>,
    kinds: Vec<Kind>,
    noise: NoiseRule,
    opts: TraceOptions,
    plot: Option<(PathBuf, Format)>,
}

fn plan(args: &TraceArgs) -> anyhow::Result<Plan> {
    let noise: NoiseRule = args.noise.parse()?;
    let mut facts = match (&args.facts, &args.prompt, &args.subject) {
        (Some(path), _, _) => trace::read_facts(path).with_context(|| format!("cannot read facts from {}", path.display()))?,
        (None, Some(prompt), Some(subject)) => vec![Fact { id: None, prompt: prompt.clone(), subject: subject.clone(), expect: args.answer.clone() }],
        _ => bail!("give a fact (--prompt and --subject) or a file of facts (--facts)"),
    };
    if facts.is_empty() {
        bail!("{} holds no facts", args.facts.as_deref().unwrap_or(Path::new("")).display());
    }
    let noise_subjects = facts.iter().map(|f| f.subject.clone()).collect();
    if let Some(n) = args.limit {
        facts.truncate(n);
    }
    let mut kinds: Vec<Kind> = args.kind.clone();
    kinds.sort();
    kinds.dedup();
    let plot = match &args.plot {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create the plot directory {}", dir.display()))?;
            Some((dir.clone(), args.plot_format))
        }
        None => None,
    };
    if let Some(path) = &args.summary {
        edit::fsutil::check_file_target(path, true, "--summary")?;
        let dir = edit::fsutil::parent_dir(path);
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let opts = TraceOptions {
        samples: args.samples as usize,
        window: args.window as usize,
        // Set from `noise` once the model is loaded (trace::run::resolve_noise).
        noise_level: f64::NAN,
        replace: args.replace,
        seed: args.seed,
        consistent_low_score: args.consistent_low_score,
        trace_expected: args.trace_expected,
        ..TraceOptions::default()
    };
    Ok(Plan { facts, noise_subjects, kinds, noise, opts, plot })
}

/// A file name from the answer and the fact's id (the reference's `{answer}_{known_id}{_kind}`).
fn plot_name(t: &FactTrace, index: usize, format: Format) -> String {
    let id = match &t.id {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => index.to_string(),
    };
    let clean = |s: &str| -> String { s.trim().chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect() };
    let kind = if t.kind.is_empty() { String::new() } else { format!("_{}", t.kind) };
    format!("{}_{}{kind}.{}", clean(&t.answer), clean(&id), format.extension())
}

pub fn run(args: TraceArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut plan = plan(&args)?;
    let files = args.model.resolve(global)?;
    let lm = args.model.load_files(files, &args.compute)?;
    let tok = lm.tokenizer()?;
    let model = &*lm.model;
    let model_name = Path::new(args.model.id()).file_name().map_or_else(|| args.model.id().to_string(), |n| n.to_string_lossy().into_owned());

    // Every fact's subject is found in its prompt before any is traced.
    trace::run::check_facts(tok, &plan.facts)?;
    let n_layer = lm.config().n_layer;
    if plan.kinds.iter().any(|k| *k != Kind::Hidden) && plan.opts.window >= n_layer {
        tracing::warn!(
            "the window of {} layers covers all {n_layer} layers of this model: every mlp/attn score restores nearly the same layers; pass a smaller --window (e.g. {})",
            plan.opts.window,
            (n_layer / 4).max(1)
        );
    }
    let subjects: Vec<&str> = plan.noise_subjects.iter().map(String::as_str).collect();
    if let (Some(std), NoiseRule::SubjectStd(k)) = (trace::run::resolve_noise(model, tok, plan.noise, &subjects, &mut plan.opts)?, plan.noise) {
        tracing::info!("noise level {:.6}: {k} × the standard deviation {std:.6} of {} subjects' token embeddings", plan.opts.noise_level, subjects.len());
    }

    let bar = if logging::show_progress(global) { ProgressBar::new(plan.facts.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} facts, ETA {eta}").expect("valid template"));
    let started = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let mut skipped = 0;
    let all = trace::run::trace_facts(model, tok, &plan.facts, &plan.kinds, &plan.opts, |index, fact, traces| -> anyhow::Result<()> {
        if traces.iter().any(|t| !t.correct_prediction && t.scores.is_empty()) {
            skipped += 1;
            tracing::info!("skipping {:?}: the model predicts {:?}, not {:?}", fact.prompt, traces[0].answer, fact.expect.as_deref().unwrap_or(""));
        }
        for t in traces {
            serde_json::to_writer(&mut out, t)?;
            writeln!(out)?;
            if let (Some((dir, format)), false) = (&plan.plot, t.scores.is_empty()) {
                let path = dir.join(plot_name(t, index, *format));
                plot::write_heatmap(&path, *format, t, &model_name)?;
            }
        }
        out.flush()?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    let summary = summarize(plan.facts.len(), &all);
    tracing::info!("{} facts in {:.1?} ({} skipped)", plan.facts.len(), started.elapsed(), skipped);
    if let Some(path) = &args.summary {
        let mut json = serde_json::to_vec_pretty(&summary_json(&summary, &plan))?;
        json.push(b'\n');
        edit::fsutil::write_atomic(path, &json)?;
    }
    if let Some((dir, format)) = &plan.plot {
        let series: Vec<(Kind, Vec<f64>)> =
            plan.kinds.iter().filter_map(|k| summary.kinds.get(k.name()).map(|s| (*k, s.average_indirect_effect["last_subject"].clone()))).collect();
        if !series.is_empty() {
            let path = dir.join(format!("average_indirect_effect.{}", format.extension()));
            plot::write_effects(&path, *format, summary.traced, &series, &model_name)?;
        }
    }
    if !global.quiet {
        print_summary(&mut std::io::stderr().lock(), &summary, &plan.kinds)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn summary_json(s: &Summary, plan: &Plan) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("the summary serialises");
    v["noise"] =
        serde_json::json!({"rule": plan.noise.to_string(), "level": plan.opts.noise_level, "uniform": plan.opts.uniform, "replace": plan.opts.replace});
    v["samples"] = plan.opts.samples.into();
    v["window"] = plan.opts.window.into();
    v["seed"] = plan.opts.seed.into();
    v
}

fn print_summary(w: &mut impl Write, s: &Summary, kinds: &[Kind]) -> std::io::Result<()> {
    writeln!(w, "traced {} of {} facts (the others' prediction is not the expected answer)", s.traced, s.facts)?;
    let Some(first) = kinds.iter().find_map(|k| s.kinds.get(k.name())) else { return Ok(()) };
    writeln!(w, "average total effect {:.4} (clean {:.4}, corrupted {:.4})", first.average_total_effect, first.average_high_score, first.average_low_score)?;
    writeln!(w, "average indirect effect at the last subject token:")?;
    let shown: Vec<Kind> = kinds.iter().copied().filter(|k| s.kinds.contains_key(k.name())).collect();
    write!(w, "  {:>5}", "layer")?;
    for k in &shown {
        write!(w, "  {:>8}", k.name())?;
    }
    writeln!(w)?;
    let n_layer = first.average_indirect_effect["last_subject"].len();
    for l in 0..n_layer {
        write!(w, "  {l:>5}")?;
        for k in &shown {
            write!(w, "  {:>8.4}", s.kinds[k.name()].average_indirect_effect["last_subject"][l])?;
        }
        writeln!(w)?;
    }
    if let (Some(layer), Some(from)) = (s.suggested_layer, s.suggested_from) {
        writeln!(w, "suggested edit layer: {layer} (the peak {from} effect at the last subject token); edit there with --set layers=[{layer}]")?;
    }
    Ok(())
}
