//! `edit stats`: collect (or import) second-moment statistics of MLP keys into the cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use edit::data::{Corpus, HubDataset};
use edit::identity::ModelIdentity;
use edit::models::modules::mlp_down;
use edit::stats::cache::{self, StatsMeta};
use edit::stats::ensure::{check_corpus_available, check_layers, collect_missing, finished_shard, lookup, Ensured, LayerReport, Progress, StatsPlan};
use edit::stats::{parse_layers, Precision};
use edit::ModelConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DatasetArg {
    /// Salesforce/wikitext, wikitext-103-raw-v1 train (parquet, ~300 MB).
    Wikitext,
    /// wikimedia/wikipedia, 20231101.en train (parquet, ~11 GB), the closest to the reference corpus.
    Wikipedia,
    /// The WikiText-2 test split embedded in the binary (small; what `edit stats` uses by default).
    Embedded,
}

/// The corpus named by `--dataset` or `--text`, if either was given. Files must exist; their
/// content digests are remembered under `stats_dir`.
pub fn chosen_corpus(dataset: Option<DatasetArg>, text: &[PathBuf], stats_dir: &Path) -> anyhow::Result<Option<Corpus>> {
    Ok(match dataset {
        Some(DatasetArg::Wikitext) => Some(Corpus::Hub(HubDataset::Wikitext)),
        Some(DatasetArg::Wikipedia) => Some(Corpus::Hub(HubDataset::Wikipedia)),
        Some(DatasetArg::Embedded) => Some(Corpus::Embedded),
        None if !text.is_empty() => {
            for f in text {
                if !f.is_file() {
                    bail!("--text {}: no such file", f.display());
                }
            }
            Some(Corpus::from_files(text.to_vec(), stats_dir)?)
        }
        None => None,
    })
}

#[derive(Args, Debug)]
pub struct StatsDirArg {
    /// Statistics cache directory [default: $EDIT_STATS_DIR, else ~/.cache/edit/stats].
    #[arg(long, value_name = "DIR")]
    pub stats_dir: Option<PathBuf>,
}

impl StatsDirArg {
    pub fn dir(&self) -> PathBuf {
        self.stats_dir.clone().unwrap_or_else(cache::default_stats_dir)
    }
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
    #[arg(long, default_value_t = 100_000)]
    pub samples: usize,
    /// A local corpus file instead of the embedded sample: .txt (a text per line), .jsonl
    /// (`text` field), .parquet (`text` column). Repeat for several files.
    #[arg(long, value_name = "FILE", conflicts_with = "dataset")]
    pub text: Vec<PathBuf>,
    /// A Hub dataset instead of the embedded WikiText-2 sample.
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetArg>,
    /// Accumulation precision of the sums (the reference uses f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f64"])]
    pub precision: String,
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
    #[arg(long, value_name = "I/N", value_parser = super::parse_shard)]
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
        None => collect_cmd(args.collect, global),
    }
}

fn collect_cmd(args: CollectArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // Validate everything cheap before loading anything.
    let layers = parse_layers(&args.layers.join(" "))?;
    let precision = Precision::parse(&args.precision)?;
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    args.compute.parse()?;
    let stats_dir = args.dir.dir();
    let corpus = chosen_corpus(args.dataset, &args.text, &stats_dir)?.unwrap_or(Corpus::Embedded);
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    check_layers(&cfg, &layers)?;
    let identity = ModelIdentity::of(&files)?;
    let plan = StatsPlan {
        corpus,
        samples: args.samples,
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
    let Ensured { mut reports, note, texts: texts_used, tokens, resumed_from, dataset, identity, shard_file } = ensured;
    reports.sort_by_key(|r| r.layer);
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        model: identity.model.clone(),
        dataset,
        note,
        samples: args.samples,
        texts: texts_used,
        tokens,
        seconds,
        tokens_per_second: if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 },
        resumed_from_chunk: resumed_from,
        layers: reports,
        shard_file: shard_file.as_ref().map(|(p, _)| p.clone()),
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

/// Facts read off a reference file name such as
/// `data/stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz`.
#[derive(Debug, Default, PartialEq)]
struct NpzName {
    layer: Option<usize>,
    dataset: Option<String>,
    precision: Option<Precision>,
    samples: Option<usize>,
}

fn parse_npz_name(path: &Path) -> NpzName {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parts: Vec<&str> = name.split('.').collect();
    let layer = parts.windows(2).find_map(|w| (w[0].ends_with('h') || w[0].ends_with("layers")).then(|| w[1].parse().ok()).flatten());
    let precision = if name.contains("float64") {
        Some(Precision::F64)
    } else if name.contains("float32") {
        Some(Precision::F32)
    } else {
        None
    };
    let samples = name.strip_suffix(".npz").and_then(|s| s.rsplit('_').next()).and_then(|s| s.parse().ok());
    let dataset = path.parent().and_then(|p| p.file_name()).and_then(|d| d.to_string_lossy().strip_suffix("_stats").map(str::to_string));
    NpzName { layer, dataset, precision, samples }
}

/// The arrays an `.npz` file holds (`mom2.mom2.npy` → `mom2.mom2`).
fn npz_members(path: &Path) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let zip = zip::ZipArchive::new(f).with_context(|| format!("{} is not a readable .npz (zip) file", path.display()))?;
    let mut names = Vec::new();
    for n in zip.file_names() {
        let n = n.with_context(|| format!("{}: unreadable member name", path.display()))?;
        names.push(n.strip_suffix(".npy").unwrap_or(&n).to_string());
    }
    Ok(names)
}

/// One array of an `.npz` file, read by candle's npy reader (the reference's files also hold a
/// `mom2.constructor` string, which is never read).
fn npz_array(path: &Path, name: &str) -> anyhow::Result<candle_core::Tensor> {
    let mut v = candle_core::Tensor::read_npz_by_name(path, &[name]).map_err(|e| {
        let hint = if e.to_string().contains("fortran") { "; the array is stored in Fortran order: save it with np.ascontiguousarray first" } else { "" };
        anyhow::anyhow!("{}: cannot read array `{name}`: {e}{hint}", path.display())
    })?;
    Ok(v.remove(0))
}

fn npz_scalar(path: &Path, name: &str) -> anyhow::Result<f64> {
    let t = npz_array(path, name)?;
    if t.elem_count() != 1 {
        bail!("{}: `{name}` should be a single number, but has shape {:?}", path.display(), t.dims());
    }
    Ok(t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}

fn import(args: ImportArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let guessed = parse_npz_name(&args.file);
    let members = npz_members(&args.file)?;
    let shown = args.file.display();
    if !members.iter().any(|m| m == "mom2.mom2") {
        bail!("{shown} has no `mom2.mom2` array (it holds {}): not a reference second-moment file", members.join(", "));
    }
    if !members.iter().any(|m| m == "mom2.count") {
        bail!("{shown} has no `mom2.count` array: not a reference second-moment file");
    }
    let mom2 = npz_array(&args.file, "mom2.mom2")?;
    let count = npz_scalar(&args.file, "mom2.count")?;
    let layer = args.layer.or(guessed.layer).with_context(|| format!("cannot tell the layer from the file name {shown}; pass --layer"))?;
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let module = mlp_down(&cfg, layer)?;
    let d = module.in_dim;
    if mom2.dims() != [d, d] {
        bail!(
            "{shown}: `mom2.mom2` is {:?} but layer {layer} of this model has {d}-wide keys ({}): the file belongs to another model",
            mom2.dims(),
            module.name
        );
    }
    let precision = match mom2.dtype() {
        candle_core::DType::F32 => Precision::F32,
        candle_core::DType::F64 => Precision::F64,
        other => bail!("{shown}: `mom2.mom2` is {other:?}; it must be a float32 or float64 array"),
    };
    let sum = mom2;
    let samples = match args.samples {
        Some(n) => n,
        None if members.iter().any(|m| m == "sample_size") => npz_scalar(&args.file, "sample_size")? as usize,
        None => guessed.samples.unwrap_or(0),
    };
    let dataset = args.dataset.clone().or(guessed.dataset).unwrap_or_else(|| "imported".into());
    let identity = ModelIdentity::of(&files)?;
    let meta = StatsMeta {
        format: 1,
        identity: identity.clone(),
        module: module.name.clone(),
        layer,
        d_ff: d,
        dataset: dataset.clone(),
        samples,
        corpus_rows: None,
        texts: samples as u64,
        tokens: count as u64,
        precision,
        max_len: cfg.n_ctx,
        batch_tokens: 0,
        source: format!("imported from {}", args.file.display()),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    };
    let path = cache::stats_path(&args.dir.dir(), &identity, &dataset, &module.name, precision, samples);
    cache::save(&path, &sum, count as u64, &meta)?;
    let report = LayerReport { layer, module: module.name, file: path, tokens: count as u64, cached: false };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_layer(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_file_names_are_understood() {
        let p = Path::new("data/stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz");
        assert_eq!(parse_npz_name(p), NpzName { layer: Some(17), dataset: Some("wikipedia".into()), precision: Some(Precision::F32), samples: Some(100000) });
        let p = Path::new("gpt_neox.layers.5.mlp.dense_4h_to_h_float64_mom2_1000.npz");
        assert_eq!(parse_npz_name(p).layer, Some(5));
        assert_eq!(parse_npz_name(p).precision, Some(Precision::F64));
    }
}
