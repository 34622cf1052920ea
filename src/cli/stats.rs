//! `edit stats`: collect (or import) second-moment statistics of MLP keys into the cache.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use clap::{Args, Subcommand};
use edit::data::Corpus;
use edit::identity::ModelIdentity;
use edit::stats::ensure::{check_corpus_available, check_layers, collect_missing, finished_shard, lookup, Ensured, LayerReport, Progress, StatsPlan};
use edit::stats::import::NpzStats;
use edit::stats::{parse_layers, Precision, Samples, AUTO_SAMPLE, DEFAULT_TOLERANCE};
use edit::ModelConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::args::{chosen_corpus, named, parse_shard, DatasetArg, StatsDirArg};
use super::{interrupt, logging, ComputeArgs, GlobalArgs, ModelArgs};

/// Collect the second moment C = E[k kᵀ] of MLP down-projection inputs (the ROME/MEMIT
/// keys) over a text corpus, for many layers in one pass; results are cached per layer and an
/// interrupted job resumes where it stopped.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct StatsArgs {
    #[command(subcommand)]
    pub action: Option<StatsAction>,
    #[command(flatten)]
    pub collect: CollectArgs,
}

#[derive(Subcommand, Debug)]
pub enum StatsAction {
    /// Import a reference `.npz` statistics file (`mom2.mom2`, `mom2.count`) into the cache.
    Import(ImportArgs),
    /// Add the shard files of one job (`edit stats … --shard I/N` for every I) into the statistics
    /// a single run would have written, filed in the cache.
    Merge(MergeArgs),
    /// Download statistics from a Hugging Face repository into the cache, each file checked
    /// against the local model first (edit's files and the reference's `.npz` layout).
    Pull(PullArgs),
    /// Write a model's cached statistics into a folder with a dataset card, ready for
    /// `huggingface-cli upload` (`edit stats pull` reads it back).
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// The Hub repository holding the statistics, e.g. `someone/gpt2-xl-stats`.
    pub repo: String,
    /// The model the statistics are for: local directory or Hub id.
    #[arg(short, long, value_name = "DIR|HUB_ID")]
    pub model: String,
    /// The model's Hub revision [default: main].
    #[arg(long)]
    pub model_revision: Option<String>,
    /// The statistics repository's revision (branch, tag or commit) [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// The kind of repository the statistics are in.
    #[arg(long, value_enum, default_value_t = RepoTypeArg::Dataset)]
    pub repo_type: RepoTypeArg,
    /// Only the files under this path of the repository (one model's folder of a shared one).
    #[arg(long, value_name = "PATH")]
    pub include: Option<String>,
    /// Use only the local Hugging Face cache (also: HF_HUB_OFFLINE=1); HF_TOKEN is sent for private repositories.
    #[arg(long)]
    pub offline: bool,
    /// Replace cached statistics that differ from the pulled ones (kept by default).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub dir: StatsDirArg,
    /// Print a JSON object on stdout: {repo, commit, pulled: [{name, layer, module, dataset, samples, auto, tokens, file, status}], refused: [{name, reason}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RepoTypeArg {
    Dataset,
    Model,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The folder to write (created if missing); upload it with
    /// `huggingface-cli upload --repo-type dataset REPO DIR .`
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Only these layers' statistics: `17`, `13-17`, `3,5,7` [default: every cached layer].
    #[arg(short, long, value_name = "LAYERS")]
    pub layers: Option<String>,
    #[command(flatten)]
    pub dir: StatsDirArg,
    /// Print a JSON object on stdout: {dir, card, files: [{path, layer, module, dataset, samples, auto, precision, tokens}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Every shard file of the job (`layers-…shard-I-of-N.safetensors`), once each, any order.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    #[command(flatten)]
    pub dir: StatsDirArg,
    /// Print a JSON object on stdout: {layers: [{layer, module, file, tokens}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CollectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Layers whose MLP keys to collect: `17`, `3-8`, `3,5,7` (`3, 5, 7` too). All in one
    /// forward pass.
    #[arg(short, long, required = true, num_args = 1.., value_name = "LAYERS")]
    pub layers: Vec<String>,
    /// Number of texts sampled (seed-1 shuffle of the corpus, as the reference). Reference: 100000.
    /// `auto`: from the reference's sample of 100,000, only until the estimate has converged
    /// (--tolerance), filed beside the full sample's statistics (docs/statistics.md).
    #[arg(long, default_value = "100000")]
    pub samples: Samples,
    /// `--samples auto`: stop once C⁻¹k of held-out keys moves by less than this (relative)
    /// between doublings of the tokens.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE)]
    pub tolerance: f64,
    /// A local corpus file instead of the embedded sample: .txt (a text per line), .jsonl
    /// (`text` field), .parquet (`text` column). Repeat for several files.
    #[arg(long, value_name = "FILE", conflicts_with = "dataset")]
    pub text: Vec<PathBuf>,
    /// A Hub dataset instead of the embedded WikiText-2 sample.
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetArg>,
    /// Accumulation precision of the sums (the reference uses f32).
    #[arg(long, default_value = "f32", value_parser = named(&Precision::ALL, Precision::name))]
    pub precision: Precision,
    /// Bound on width × rows of one forward batch [default: 3 × context, the reference's, for
    /// contexts up to 2,048 tokens; 6,144 for longer ones].
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Truncate texts to this many tokens [default: the model's context].
    #[arg(long)]
    pub max_len: Option<usize>,
    #[command(flatten)]
    pub dir: StatsDirArg,
    /// Seconds between progress checkpoints of a running job.
    #[arg(long, default_value_t = 60)]
    pub checkpoint_secs: u64,
    /// Recompute layers that are already cached.
    #[arg(long)]
    pub force: bool,
    /// Compute part I of N of the job (every N-th chunk of 100 sampled texts, from chunk I) and
    /// write it as a shard file beside the statistics; `edit stats merge` adds the N shards.
    /// For array jobs over many machines (see docs/statistics.md).
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Testing aid: stop with an error after N chunks of this run, as if killed after a checkpoint.
    #[arg(long, hide = true)]
    pub abort_after_chunks: Option<usize>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The reference `.npz` file, e.g. `transformer.h.17.mlp.c_proj_float32_mom2_100000.npz`.
    pub file: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layer the file belongs to [default: read from the file name].
    #[arg(long)]
    pub layer: Option<usize>,
    /// Dataset name to file it under [default: from the `<name>_stats` folder, else `imported`].
    #[arg(long)]
    pub dataset: Option<String>,
    /// Texts the statistics were computed on [default: the file's `sample_size`, or its name].
    #[arg(long)]
    pub samples: Option<usize>,
    #[command(flatten)]
    pub dir: StatsDirArg,
    /// Print one JSON object on stdout: {layer, module, file, tokens, cached}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Summary {
    model: String,
    dataset: String,
    note: Option<String>,
    samples: usize,
    texts: u64,
    tokens: u64,
    seconds: f64,
    tokens_per_second: f64,
    resumed_from_chunk: usize,
    layers: Vec<LayerReport>,
    /// A `--shard` job's output (no statistics are filed by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    shard_file: Option<PathBuf>,
    /// `--samples auto`: how the collection stopped (absent when the layers were cached).
    #[serde(skip_serializing_if = "Option::is_none")]
    auto: Option<edit::stats::cache::AutoMeta>,
}

/// `edit stats`'s progress: a bar on an interactive stderr, and Ctrl-C asking for a checkpoint.
pub struct BarProgress {
    bar: ProgressBar,
    visible: bool,
    collecting: Option<interrupt::Collecting>,
}

impl BarProgress {
    pub fn new(global: &GlobalArgs) -> Self {
        Self { bar: ProgressBar::hidden(), visible: logging::show_progress(global), collecting: None }
    }
}

impl Progress for BarProgress {
    fn visible(&self) -> bool {
        self.visible
    }
    fn start(&mut self, total: usize, done: usize) {
        // From here on a signal asks for a checkpoint instead of ending the process.
        self.collecting = Some(interrupt::Collecting::start());
        if self.visible {
            self.bar = ProgressBar::new(total as u64);
            self.bar
                .set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} texts, {msg}, ETA {eta}").expect("valid template"));
            self.bar.set_position(done as u64);
        }
    }
    fn advance(&mut self, texts_seen: usize, tokens: u64, rate: f64) {
        self.bar.set_position(texts_seen as u64);
        self.bar.set_message(format!("{tokens} tokens, {rate:.0} tok/s"));
    }
    fn finish(&mut self) {
        self.bar.finish_and_clear();
        self.collecting = None;
    }
    fn stop_requested(&self) -> bool {
        interrupt::requested()
    }
}

pub fn run(args: StatsArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(StatsAction::Import(a)) => import(a, global),
        Some(StatsAction::Merge(a)) => merge(a),
        Some(StatsAction::Pull(a)) => pull(a, global),
        Some(StatsAction::Export(a)) => export(a, global),
        None => collect_cmd(args.collect, global),
    }
}

fn collect_cmd(args: CollectArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // Validate everything cheap before loading anything.
    let layers = parse_layers(&args.layers.join(" "))?;
    let precision = args.precision;
    let (samples, auto) = match args.samples {
        Samples::Count(0) => bail!("--samples must be at least 1"),
        Samples::Count(n) => (n, None),
        Samples::Auto if !(args.tolerance > 0.0 && args.tolerance < 1.0) => bail!("--tolerance must be between 0 and 1 (a relative change)"),
        Samples::Auto if args.shard.is_some() => bail!("--samples auto cannot be sharded: where it stops depends on every text before; drop --shard"),
        Samples::Auto => (AUTO_SAMPLE, Some(args.tolerance)),
    };
    args.compute.parse()?;
    let stats_dir = args.dir.dir();
    let corpus = chosen_corpus(args.dataset, &args.text, &stats_dir)?.unwrap_or(Corpus::Embedded);
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    check_layers(&cfg, &layers)?;
    let identity = ModelIdentity::of(&files)?;
    let plan = StatsPlan {
        corpus,
        samples,
        precision,
        batch_tokens: args.batch_tokens,
        max_len: args.max_len,
        stats_dir,
        checkpoint_secs: args.checkpoint_secs,
        force: args.force,
        abort_after_chunks: args.abort_after_chunks,
        offline: args.model.offline,
        announce_computing: false,
        shard: args.shard.map(|(index, count)| edit::stats::collect::Shard { index, count }),
        auto,
    };
    let started = Instant::now();
    // A shard job computes its part whatever statistics are cached.
    let (cached, todo) = if plan.force || plan.shard.is_some() { (Vec::new(), layers.clone()) } else { lookup(&plan, &identity, &cfg, &layers)? };
    let mut ensured = Ensured { reports: cached, dataset: plan.corpus.id(), identity, ..Default::default() };
    // A finished shard is found before the model is loaded.
    let finished = finished_shard(&plan, &ensured.identity, &cfg, &todo)?;
    if let Some((path, header)) = finished {
        ensured.finished_before(path, &header);
    } else if !todo.is_empty() {
        check_corpus_available(&plan.corpus, plan.offline, logging::show_progress(global))?;
        let lm = args.model.load_files_for(files, &args.compute, edit::threads::Workload::Bulk)?;
        collect_missing(&lm, &todo, &plan, &mut BarProgress::new(global), &mut ensured)?;
    }
    let Ensured { mut reports, note, texts: texts_used, tokens, resumed_from, dataset, identity, shard_file, auto: auto_report } = ensured;
    reports.sort_by_key(|r| r.layer);
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        model: identity.model.clone(),
        dataset,
        note,
        samples,
        texts: texts_used,
        tokens,
        seconds,
        tokens_per_second: if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 },
        resumed_from_chunk: resumed_from,
        layers: reports,
        shard_file: shard_file.as_ref().map(|(p, _)| p.clone()),
        auto: auto_report,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else if let Some((path, finished_before)) = &shard_file {
        let shard = args.shard.map(|(i, n)| format!("{i}/{n}")).unwrap_or_default();
        writeln!(
            out,
            "shard {shard}: {} texts, {} tokens  {}{}",
            summary.texts,
            summary.tokens,
            path.display(),
            if *finished_before { "  (finished before)" } else { "" }
        )?;
    } else {
        for r in &summary.layers {
            write_layer(&mut out, r)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One layer's statistics file as `edit stats`, `import` and `merge` print it.
fn write_layer(out: &mut impl Write, r: &LayerReport) -> std::io::Result<()> {
    writeln!(out, "{:<40} {:>12} tokens  {}{}", r.module, r.tokens, r.file.display(), if r.cached { "  (cached)" } else { "" })
}

fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let reports = edit::stats::merge::merge(&args.shards, &args.dir.dir())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &serde_json::json!({ "layers": reports }))?;
        writeln!(out)?;
    } else {
        for r in &reports {
            write_layer(&mut out, r)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn import(args: ImportArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let npz = NpzStats::read(&args.file, args.layer)?;
    let files = args.model.resolve(global)?;
    let report = npz.file_into(&files, &args.dir.dir(), args.dataset.clone(), args.samples)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_layer(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn pull(args: PullArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let model = ModelArgs { model: Some(args.model.clone()), revision: args.model_revision.clone(), offline: args.offline };
    let files = model.resolve(global)?;
    let kind = match args.repo_type {
        RepoTypeArg::Dataset => edit::hub::RepoKind::Dataset,
        RepoTypeArg::Model => edit::hub::RepoKind::Model,
    };
    let req = edit::stats::pull::PullRequest {
        repo: &args.repo,
        kind,
        hub: edit::hub::HubOptions { revision: args.revision.clone(), offline: args.offline, cache_dir: None, progress: logging::show_progress(global) },
        include: args.include.as_deref(),
        force: args.force,
    };
    let report = edit::stats::pull::pull(&req, &files, &args.dir.dir())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        use edit::stats::pull::PullStatus;
        for p in &report.pulled {
            let status = match p.status {
                PullStatus::Filed => "",
                PullStatus::AlreadyCached => "  (already cached)",
                PullStatus::KeptCached => "  (other statistics cached under this name: kept; --force replaces them)",
            };
            writeln!(out, "{:<40} {:>12} tokens  {}{status}", p.module, p.tokens, p.file.display())?;
        }
    }
    if report.refused.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for r in &report.refused {
        eprintln!("refused {}: {}", r.name, r.reason);
    }
    eprintln!(
        "error: {} of {} file(s) of {} refused and not filed (listed above){}",
        report.refused.len(),
        report.refused.len() + report.pulled.len(),
        report.repo,
        if report.pulled.is_empty() { "" } else { "; the others are filed" }
    );
    Ok(ExitCode::from(4))
}

fn export(args: ExportArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let layers = args.layers.as_deref().map(parse_layers).transpose()?;
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let identity = ModelIdentity::of(&files)?;
    let report = edit::stats::export::export(&args.dir.dir(), &identity, &cfg, layers.as_deref(), &args.out)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        for f in &report.files {
            writeln!(out, "{:<40} {:>12} tokens  {}", f.module, f.tokens, report.dir.join(&f.path).display())?;
        }
        writeln!(out, "{}", report.card.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
