//! `edit stats`: collect (or import) second-moment statistics of MLP keys into the cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use edit::data::{Corpus, HubDataset};
use edit::hub::HubOptions;
use edit::models::modules::mlp_down;
use edit::stats::cache::{self, JobKey, ModelIdentity, StatsMeta};
use edit::stats::collect::{self, Accumulator, CollectPlan, Observer};
use edit::stats::{npz, parse_layers, resolve, Precision};
use edit::{LoadedModel, ModelConfig};
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

/// Makes sure a Hub corpus is at hand (in the cache, or fetched) before any weights are read.
pub fn check_corpus_available(corpus: &Corpus, offline: bool, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Corpus::Hub(ds) = corpus {
        let hub = HubOptions { revision: None, offline, cache_dir: None, progress: logging::show_progress(global) };
        edit::hub::dataset_files(ds.repo(), ds.prefix(), ".parquet", &hub).with_context(|| {
            format!(
                "the statistics corpus {} is not available; without network, `--dataset embedded` uses the small \
                 WikiText-2 sample built into edit, and `--text FILE` a local corpus",
                ds.repo()
            )
        })?;
    }
    Ok(())
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
    /// Bound on width × rows of one forward batch [default: 3 × context, the reference's].
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
pub struct LayerReport {
    pub layer: usize,
    pub module: String,
    pub file: PathBuf,
    pub tokens: u64,
    pub cached: bool,
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
}

pub fn run(args: StatsArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(StatsAction::Import(a)) => import(a, global),
        None => collect_cmd(args.collect, global),
    }
}

struct Driver {
    bar: ProgressBar,
    started: Instant,
    last_checkpoint: Instant,
    every: std::time::Duration,
    partial: PathBuf,
    key: JobKey,
    base_tokens: u64,
    chunks_this_run: usize,
    abort_after: Option<usize>,
    total_texts: usize,
}

impl Driver {
    fn aborting(&self) -> bool {
        self.abort_after.is_some_and(|n| self.chunks_this_run >= n)
    }
}

impl Observer for Driver {
    fn chunk_done(&mut self, acc: &Accumulator, texts_seen: usize) -> edit::Result<bool> {
        self.chunks_this_run += 1;
        self.bar.set_position(texts_seen as u64);
        let rate = (acc.count - self.base_tokens) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!("{} tokens, {rate:.0} tok/s", acc.count));
        Ok(self.aborting() || interrupt::requested() || self.last_checkpoint.elapsed() >= self.every)
    }

    fn checkpoint(&mut self, acc: &Accumulator) -> edit::Result<()> {
        cache::save_partial(&self.partial, &self.key, acc)?;
        self.last_checkpoint = Instant::now();
        tracing::debug!("checkpoint at chunk {} written to {}", acc.next_chunk, self.partial.display());
        if self.aborting() {
            return Err(edit::Error::Input(format!("aborted after {} chunks (--abort-after-chunks)", self.chunks_this_run)));
        }
        if interrupt::requested() {
            self.bar.finish_and_clear();
            return Err(edit::Error::Interrupted(format!(
                "interrupted after {} of {} texts; progress saved to {}: run the same command again to resume",
                (acc.next_chunk * collect::CHUNK_TEXTS).min(self.total_texts),
                self.total_texts,
                self.partial.display()
            )));
        }
        Ok(())
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
    };
    let started = Instant::now();
    let (cached, todo) = if plan.force { (Vec::new(), layers.clone()) } else { lookup(&plan, &identity, &cfg, &layers)? };
    let mut ensured = Ensured { reports: cached, dataset: plan.corpus.id(), identity, ..Default::default() };
    if !todo.is_empty() {
        check_corpus_available(&plan.corpus, plan.offline, global)?;
        let lm = args.model.load_files(files, &args.compute)?;
        collect_missing(&lm, &todo, &plan, global, &mut ensured)?;
    }
    let Ensured { mut reports, note, texts: texts_used, tokens, resumed_from, dataset, identity } = ensured;
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
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        for r in &summary.layers {
            writeln!(out, "{:<40} {:>12} tokens  {}{}", r.module, r.tokens, r.file.display(), if r.cached { "  (cached)" } else { "" })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn check_layers(cfg: &ModelConfig, layers: &[usize]) -> anyhow::Result<()> {
    if let Some(&bad) = layers.iter().find(|&&l| l >= cfg.n_layer) {
        bail!("layer {bad} does not exist: the model has {} layers (0-{})", cfg.n_layer, cfg.n_layer - 1);
    }
    Ok(())
}

/// Where statistics come from and where they are cached; shared by `edit stats` and `edit apply`.
pub struct StatsPlan {
    pub corpus: Corpus,
    pub samples: usize,
    pub precision: Precision,
    pub batch_tokens: Option<usize>,
    pub max_len: Option<usize>,
    pub stats_dir: PathBuf,
    pub checkpoint_secs: u64,
    pub force: bool,
    pub abort_after_chunks: Option<usize>,
    pub offline: bool,
    /// Warn before computing missing layers (when statistics are a side job, as in `edit apply`).
    pub announce_computing: bool,
}

#[derive(Default)]
pub struct Ensured {
    pub reports: Vec<LayerReport>,
    pub note: Option<String>,
    pub texts: u64,
    pub tokens: u64,
    pub resumed_from: usize,
    pub dataset: String,
    pub identity: ModelIdentity,
}

/// The layers of `layers` already cached for the plan's corpus, sample count and precision
/// (reported), and those still to compute. Reads file headers only.
pub fn lookup(plan: &StatsPlan, identity: &ModelIdentity, cfg: &ModelConfig, layers: &[usize]) -> anyhow::Result<(Vec<LayerReport>, Vec<usize>)> {
    let dataset = plan.corpus.id();
    let found = resolve::scan(&plan.stats_dir, identity, cfg, layers)?;
    let mut reports = Vec::new();
    let mut todo = Vec::new();
    for &l in layers {
        let hit = found
            .iter()
            .filter(|f| f.layer == l && f.meta.dataset == dataset && f.meta.precision == plan.precision && resolve::answers(&f.meta, plan.samples))
            .max_by_key(|f| f.meta.samples);
        match hit {
            Some(f) => {
                tracing::info!("layer {l}: cached at {}", f.path.display());
                reports.push(LayerReport { layer: l, module: f.meta.module.clone(), file: f.path.clone(), tokens: f.meta.tokens, cached: true });
            }
            None => todo.push(l),
        }
    }
    Ok((reports, todo))
}

/// Collects the statistics of `todo` in one pass (resuming an interrupted job) and files them.
pub fn collect_missing(lm: &LoadedModel, todo: &[usize], plan: &StatsPlan, global: &GlobalArgs, ensured: &mut Ensured) -> anyhow::Result<()> {
    let cfg = lm.config().clone();
    let precision = plan.precision;
    let identity = ensured.identity.clone();
    let dataset = plan.corpus.id();
    let batch_tokens = plan.batch_tokens.unwrap_or(3 * cfg.n_ctx);
    let max_len = plan.max_len.unwrap_or(cfg.n_ctx).min(cfg.n_ctx).min(batch_tokens).max(1);
    if plan.announce_computing {
        tracing::warn!(
            "no cached statistics for layer(s) {todo:?} ({} texts of {}, {}); computing them now (same as `edit stats`)",
            plan.samples,
            plan.corpus.describe(),
            precision.reference_name()
        );
    }
    let hub = HubOptions { revision: None, offline: plan.offline, cache_dir: None, progress: logging::show_progress(global) };
    let sample = edit::data::sample(&plan.corpus, plan.samples, &hub).context("cannot read the statistics corpus")?;
    // The sample of n ≥ rows texts is the whole corpus whatever n is: file it under what was used.
    let samples = sample.texts.len();
    if samples < plan.samples {
        tracing::warn!(
            "--samples {} is more than {} holds ({} texts): all {samples} are used, and the statistics are filed as {samples} samples",
            plan.samples,
            plan.corpus.describe(),
            sample.corpus_rows
        );
    }
    if matches!(plan.corpus, Corpus::Embedded) {
        let msg = format!(
            "using the embedded WikiText-2 test split ({} texts): a small sample, fine for trying things out; \
             the reference uses 100,000 Wikipedia articles (--dataset wikipedia, or --dataset wikitext / --text FILE)",
            sample.corpus_rows
        );
        tracing::warn!("{msg}");
        ensured.note = Some(msg);
    }
    tracing::info!("{samples} texts sampled from {} ({} rows); layers {todo:?}; batch tokens {batch_tokens}, max length {max_len}", plan.corpus.describe(), sample.corpus_rows);
    let key = JobKey {
        identity: identity.clone(),
        dataset: dataset.clone(),
        samples,
        layers: todo.to_vec(),
        precision,
        max_len,
        batch_tokens,
    };
    let targets: Vec<(usize, String, PathBuf)> = todo
        .iter()
        .map(|&l| {
            let module = mlp_down(&cfg, l)?.name;
            let path = cache::stats_path(&plan.stats_dir, &identity, &dataset, &module, precision, samples);
            Ok((l, module, path))
        })
        .collect::<anyhow::Result<_>>()?;
    let final_dir = targets[0].2.parent().expect("stats path has a parent").to_path_buf();
    let partial = cache::partial_path(&final_dir, todo, precision, samples);
    let device = lm.model.device().clone();
    let acc = match cache::load_partial(&partial, &key, &device)? {
        Some(acc) => {
            // Said at warn level: a user who interrupted a job wants to see that it resumed.
            tracing::warn!(
                "resuming an interrupted job from {} ({} of {samples} texts done, {} tokens)",
                partial.display(),
                (acc.next_chunk * collect::CHUNK_TEXTS).min(samples),
                acc.count
            );
            acc
        }
        None => Accumulator::new(todo, cfg.d_ff, precision, &device)?,
    };
    ensured.resumed_from = acc.next_chunk;
    let bar = if logging::show_progress(global) {
        let b = ProgressBar::new(sample.texts.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} texts, {msg}, ETA {eta}")
                .expect("valid template"),
        );
        b.set_position((acc.next_chunk * collect::CHUNK_TEXTS).min(sample.texts.len()) as u64);
        b
    } else {
        ProgressBar::hidden()
    };
    let mut driver = Driver {
        bar,
        started: Instant::now(),
        last_checkpoint: Instant::now(),
        every: std::time::Duration::from_secs(plan.checkpoint_secs),
        partial: partial.clone(),
        key,
        base_tokens: acc.count,
        chunks_this_run: 0,
        abort_after: plan.abort_after_chunks,
        total_texts: sample.texts.len(),
    };
    let cplan = CollectPlan { layers: todo.to_vec(), precision, batch_tokens, max_len, pad_id: lm.pad_id() };
    let acc = {
        let _collecting = interrupt::Collecting::start();
        collect::collect(&*lm.model, lm.tokenizer()?, &sample.texts, &cplan, acc, &mut driver)?
    };
    driver.bar.finish_and_clear();
    if acc.count == 0 {
        bail!("the corpus produced no tokens: every sampled text was empty");
    }
    for (l, module, path) in &targets {
        let meta = StatsMeta {
            format: 1,
            identity: identity.clone(),
            module: module.clone(),
            layer: *l,
            d_ff: cfg.d_ff,
            dataset: dataset.clone(),
            samples,
            corpus_rows: Some(sample.corpus_rows),
            texts: acc.texts,
            tokens: acc.count,
            precision,
            max_len,
            batch_tokens,
            source: format!("collected from {}", plan.corpus.describe()),
            tool_version: env!("CARGO_PKG_VERSION").into(),
        };
        cache::save(path, &acc.sums[l], acc.count, &meta)?;
        tracing::info!("layer {l}: {} tokens → {}", acc.count, path.display());
        ensured.reports.push(LayerReport { layer: *l, module: module.clone(), file: path.clone(), tokens: acc.count, cached: false });
    }
    let _ = std::fs::remove_file(&partial);
    ensured.texts = acc.texts;
    ensured.tokens = acc.count;
    Ok(())
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
    let dataset = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|d| d.to_string_lossy().strip_suffix("_stats").map(str::to_string));
    NpzName { layer, dataset, precision, samples }
}

fn import(args: ImportArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let guessed = parse_npz_name(&args.file);
    let arrays = npz::read_npz(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let mom2 = arrays.get("mom2.mom2").with_context(|| {
        format!("{} has no `mom2.mom2` array: not a reference second-moment file", args.file.display())
    })?;
    let count = arrays
        .get("mom2.count")
        .and_then(|a| a.scalar_f64())
        .with_context(|| format!("{} has no numeric `mom2.count`", args.file.display()))?;
    let layer = args.layer.or(guessed.layer).with_context(|| {
        format!("cannot tell the layer from the file name {}; pass --layer", args.file.display())
    })?;
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let module = mlp_down(&cfg, layer)?;
    let d = module.in_dim;
    if mom2.shape != [d, d] {
        bail!(
            "{}: `mom2.mom2` is {:?} but layer {layer} of this model has {d}-wide keys ({}): the file belongs to another model",
            args.file.display(),
            mom2.shape,
            module.name
        );
    }
    let (sum, precision) = match &mom2.data {
        npz::NpyData::F32(v) => (candle_core::Tensor::from_slice(v, (d, d), &candle_core::Device::Cpu)?, Precision::F32),
        npz::NpyData::F64(v) => (candle_core::Tensor::from_slice(v, (d, d), &candle_core::Device::Cpu)?, Precision::F64),
        _ => bail!("{}: `mom2.mom2` must be a float32 or float64 array", args.file.display()),
    };
    let samples = args
        .samples
        .or_else(|| arrays.get("sample_size").and_then(|a| a.scalar_f64()).map(|x| x as usize))
        .or(guessed.samples)
        .unwrap_or(0);
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
        writeln!(out, "{:<40} {:>12} tokens  {}", report.module, report.tokens, report.file.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_file_names_are_understood() {
        let p = Path::new("data/stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz");
        assert_eq!(
            parse_npz_name(p),
            NpzName { layer: Some(17), dataset: Some("wikipedia".into()), precision: Some(Precision::F32), samples: Some(100000) }
        );
        let p = Path::new("gpt_neox.layers.5.mlp.dense_4h_to_h_float64_mom2_1000.npz");
        assert_eq!(parse_npz_name(p).layer, Some(5));
        assert_eq!(parse_npz_name(p).precision, Some(Precision::F64));
    }
}
