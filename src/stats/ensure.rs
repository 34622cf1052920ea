//! Making sure statistics are at hand: found in the cache for a model's weights, or collected
//! in one pass (resuming an interrupted job) and filed. Shared by `edit stats` and the edit
//! pipeline; the caller supplies a [`Progress`] (a progress bar, an interrupt flag).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::cache::{self, AutoMeta, JobKey, StatsMeta};
use super::collect::{self, Accumulator, CollectPlan, Observer};
use super::converge::Convergence;
use super::resolve::{self, CachedSet};
use super::Precision;
use crate::config::ModelConfig;
use crate::data::Corpus;
use crate::error::{Error, Result};
use crate::hub::HubOptions;
use crate::identity::ModelIdentity;
use crate::model::LoadedModel;
use crate::models::modules::mlp_down;

/// What a long collection reports to, and asks of, its caller.
pub trait Progress {
    /// Whether progress is shown (Hub downloads show theirs then).
    fn visible(&self) -> bool {
        false
    }
    /// A collection of `total` texts starts, `done` of them already done (a resumed job).
    fn start(&mut self, _total: usize, _done: usize) {}
    fn advance(&mut self, _texts_seen: usize, _tokens: u64, _tokens_per_second: f64) {}
    fn finish(&mut self) {}
    /// The user asked to stop: checkpoint and return [`Error::Interrupted`].
    fn stop_requested(&self) -> bool {
        false
    }
}

/// No progress shown, never interrupted.
pub struct Quiet;

impl Progress for Quiet {}

/// Makes sure a Hub corpus is at hand (in the cache, or fetched) before any weights are read.
pub fn check_corpus_available(corpus: &Corpus, offline: bool, hub_progress: bool) -> Result<()> {
    if let Corpus::Hub(ds) = corpus {
        let hub = HubOptions { revision: None, offline, cache_dir: None, progress: hub_progress };
        crate::hub::dataset_files(ds.repo(), ds.prefix(), ".parquet", &hub).map_err(|e| {
            Error::Input(format!(
                "the statistics corpus {} is not available: {e}; without network, `--dataset embedded` uses the small \
                 WikiText-2 sample built into edit, and `--text FILE` a local corpus",
                ds.repo()
            ))
        })?;
    }
    Ok(())
}

/// One layer's statistics file and whether it was already cached.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub module: String,
    pub file: PathBuf,
    pub tokens: u64,
    pub cached: bool,
}

pub fn check_layers(cfg: &ModelConfig, layers: &[usize]) -> Result<()> {
    if let Some(&bad) = layers.iter().find(|&&l| l >= cfg.n_layer) {
        return Err(Error::Input(format!("layer {bad} does not exist: the model has {} layers (0-{})", cfg.n_layer, cfg.n_layer - 1)));
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
    /// Compute one part of the job and write it as a shard file (`edit stats --shard`).
    pub shard: Option<collect::Shard>,
    /// `--samples auto`: collect from the sample of `samples` texts only until the estimate has
    /// converged to this tolerance (see [`super::converge`]).
    pub auto: Option<f64>,
}

/// Held-out texts whose keys are `--samples auto`'s probes (the last of the sample, left out of
/// the sums), and the keys taken from each (after its BOS).
const PROBE_TEXTS: usize = 32;
const PROBE_TOKENS_PER_TEXT: usize = 64;

#[derive(Default)]
pub struct Ensured {
    pub reports: Vec<LayerReport>,
    pub note: Option<String>,
    pub texts: u64,
    pub tokens: u64,
    pub resumed_from: usize,
    pub dataset: String,
    pub identity: ModelIdentity,
    /// The shard file written (or found finished) by a `--shard` job; no statistics are filed then.
    pub shard_file: Option<(PathBuf, bool)>,
    /// How a `--samples auto` collection stopped.
    pub auto: Option<AutoMeta>,
}

/// The layers of `layers` already cached for the plan's corpus, sample count and precision
/// (reported), and those still to compute. Reads file headers only.
pub fn lookup(plan: &StatsPlan, identity: &ModelIdentity, cfg: &ModelConfig, layers: &[usize]) -> Result<(Vec<LayerReport>, Vec<usize>)> {
    let dataset = plan.corpus.id();
    let found = resolve::scan(&plan.stats_dir, identity, cfg, layers)?;
    let mut reports = Vec::new();
    let mut todo = Vec::new();
    for &l in layers {
        let hit = found
            .iter()
            .filter(|f| f.layer == l && f.meta.dataset == dataset && f.meta.precision == plan.precision)
            .filter(|f| resolve::answers(&f.meta, plan.samples) || plan.auto.is_some_and(|t| resolve::answers_auto(&f.meta, plan.samples, t)))
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

/// The batch size in tokens and the longest text a job of `plan` on this model uses. The
/// reference batches 3 × the context; for the long contexts of the newer models (8,192 to 131,072
/// tokens) that would be up to hundreds of thousands of tokens in one forward, so the default is
/// bounded at 3 × 2,048 (GPT-2's and GPT-J's own): batches only order the sums, and a text longer
/// than a batch is a batch of its own. Texts are truncated to the context, as the reference does
/// (or to an explicit `--batch-tokens`, which bounds every forward).
fn job_shape(plan: &StatsPlan, cfg: &ModelConfig) -> (usize, usize) {
    let batch_tokens = plan.batch_tokens.unwrap_or(3 * cfg.n_ctx.min(2048));
    let bound = plan.batch_tokens.unwrap_or(cfg.n_ctx);
    let max_len = plan.max_len.unwrap_or(cfg.n_ctx).min(cfg.n_ctx).min(bound).max(1);
    (batch_tokens, max_len)
}

/// A `--shard` job's own shard file when it is already finished, found from the plan alone:
/// before the model is loaded or the texts sampled. (The job's sample count is the requested
/// one, or the whole corpus's when that is smaller, which only sampling tells: a file of either
/// count is the job's.) Reads file headers only.
pub fn finished_shard(plan: &StatsPlan, identity: &ModelIdentity, cfg: &ModelConfig, layers: &[usize]) -> Result<Option<(PathBuf, cache::ShardHeader)>> {
    let (Some(shard), false, Some(&first)) = (plan.shard, plan.force, layers.first()) else {
        return Ok(None);
    };
    let dataset = plan.corpus.id();
    let (batch_tokens, max_len) = job_shape(plan, cfg);
    let stats_file = cache::stats_path(&plan.stats_dir, identity, &dataset, &mlp_down(cfg, first)?.name, plan.precision, plan.samples);
    let dir = stats_file.parent().expect("stats path has a parent");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    for path in entries.flatten().map(|e| e.path()) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !cache::is_shard_file_name(name, layers, plan.precision, shard) {
            continue;
        }
        let Ok(h) = cache::read_shard_header(&path) else { continue };
        let want = JobKey {
            identity: identity.clone(),
            dataset: dataset.clone(),
            samples: h.key.samples,
            layers: layers.to_vec(),
            precision: plan.precision,
            max_len,
            batch_tokens,
            shard: Some(shard),
            auto: None,
        };
        let whole_corpus = h.info.corpus_rows.is_some_and(|rows| h.key.samples >= rows && plan.samples >= rows);
        if h.key == want && (h.key.samples == plan.samples || whole_corpus) {
            return Ok(Some((path, h)));
        }
    }
    Ok(None)
}

impl Ensured {
    /// Reports a `--shard` job whose shard file was finished before.
    pub fn finished_before(&mut self, path: PathBuf, h: &cache::ShardHeader) {
        tracing::info!("shard {} of this job is already finished: {}", key_shard(&h.key), path.display());
        self.texts = h.texts;
        self.tokens = h.count;
        self.shard_file = Some((path, true));
    }
}

/// Collects the statistics of `todo` in one pass (resuming an interrupted job) and files them.
pub fn collect_missing(lm: &LoadedModel, todo: &[usize], plan: &StatsPlan, progress: &mut dyn Progress, ensured: &mut Ensured) -> Result<()> {
    let cfg = lm.config().clone();
    let precision = plan.precision;
    let identity = ensured.identity.clone();
    let dataset = plan.corpus.id();
    let (batch_tokens, max_len) = job_shape(plan, &cfg);
    if plan.announce_computing {
        let size = match plan.auto {
            Some(t) => format!("--samples auto: until they converge to {t}, within {} texts", plan.samples),
            None => format!("{} texts", plan.samples),
        };
        tracing::warn!(
            "no cached statistics for layer(s) {todo:?} ({size} of {}, {}); computing them now (same as `edit stats`)",
            plan.corpus.describe(),
            precision.reference_name()
        );
    }
    let mut sample = sample_texts(plan, progress.visible(), ensured)?;
    // The sample of n ≥ rows texts is the whole corpus whatever n is: file it under what was used.
    let samples = sample.texts.len();
    if plan.auto.is_some() && plan.shard.is_some() {
        return Err(Error::Input("--samples auto cannot be sharded: where it stops depends on every text before; drop --shard".into()));
    }
    let probe_texts = match plan.auto {
        Some(_) => sample.texts.split_off(samples - PROBE_TEXTS.min(samples / 10)),
        None => Vec::new(),
    };
    tracing::info!(
        "{samples} texts sampled from {} ({} rows); layers {todo:?}; batch tokens {batch_tokens}, max length {max_len}",
        plan.corpus.describe(),
        sample.corpus_rows
    );
    let key = JobKey {
        identity: identity.clone(),
        dataset: dataset.clone(),
        samples,
        layers: todo.to_vec(),
        precision,
        max_len,
        batch_tokens,
        shard: plan.shard,
        auto: plan.auto.map(|t| t.to_string()),
    };
    let targets: Vec<(usize, String, PathBuf)> = todo
        .iter()
        .map(|&l| {
            let module = mlp_down(&cfg, l)?.name;
            let path = cache::filed_path(&plan.stats_dir, &identity, &dataset, &module, precision, samples, plan.auto.is_some());
            Ok((l, module, path))
        })
        .collect::<Result<_>>()?;
    let final_dir = targets[0].2.parent().expect("stats path has a parent").to_path_buf();
    let partial = cache::partial_path(&final_dir, todo, precision, samples, plan.shard, plan.auto.is_some());
    let shard_file = plan.shard.map(|sh| cache::shard_path(&final_dir, todo, precision, samples, sh));
    if let Some(path) = shard_file.as_ref().filter(|p| p.is_file() && !plan.force) {
        if let Some(done) = cache::read_shard_header(path).ok().filter(|h| h.key == key) {
            ensured.finished_before(path.clone(), &done);
            return Ok(());
        }
    }
    let device = lm.model.device().clone();
    let (acc, saved_convergence) = match cache::load_partial(&partial, &key, &device)? {
        Some((acc, saved)) => {
            // Said at warn level: a user who interrupted a job wants to see that it resumed.
            tracing::warn!(
                "resuming an interrupted job from {} ({} of {samples} texts done, {} tokens)",
                partial.display(),
                (acc.next_chunk * collect::CHUNK_TEXTS).min(samples),
                acc.count
            );
            (acc, saved)
        }
        None => (Accumulator::new(todo, cfg.d_ff, precision, &device)?, None),
    };
    ensured.resumed_from = acc.next_chunk;
    progress.start(sample.texts.len(), (acc.next_chunk * collect::CHUNK_TEXTS).min(sample.texts.len()));
    let mut driver = Driver {
        progress,
        started: Instant::now(),
        last_checkpoint: Instant::now(),
        every: std::time::Duration::from_secs(plan.checkpoint_secs),
        partial: partial.clone(),
        key,
        base_tokens: acc.count,
        chunks_this_run: 0,
        abort_after: plan.abort_after_chunks,
        total_texts: sample.texts.len(),
        convergence: match plan.auto {
            Some(tolerance) => {
                let mut c = Convergence::new(&probe_keys(lm, &probe_texts, todo, max_len)?, tolerance)?;
                if let Some((state, last)) = saved_convergence {
                    c.restore(state, &last)?;
                }
                Some(c)
            }
            None => None,
        },
    };
    let cplan = CollectPlan { layers: todo.to_vec(), precision, batch_tokens, max_len };
    let acc = collect::collect_shard(&*lm.model, lm.tokenizer()?, &sample.texts, &cplan, plan.shard, acc, &mut driver);
    driver.progress.finish();
    let acc = acc?;
    let source = format!("collected from {}", plan.corpus.describe());
    let sampling = sample.sampling(max_len, probe_texts.len());
    if let Some(path) = shard_file {
        // A shard may hold no texts (more shards than chunks); merging still needs it.
        let info = cache::ShardInfo {
            modules: targets.iter().map(|(l, m, _)| (*l, m.clone())).collect(),
            d_ff: cfg.d_ff,
            corpus_rows: Some(sample.corpus_rows),
            source,
            corpus_digest: Some(sample.corpus_digest.clone()),
            sampling: Some(sampling.clone()),
        };
        cache::save_shard(&path, &driver.key, &info, &acc)?;
        tracing::info!("shard {}: {} texts, {} tokens → {}", key_shard(&driver.key), acc.texts, acc.count, path.display());
        let _ = std::fs::remove_file(&partial);
        ensured.texts = acc.texts;
        ensured.tokens = acc.count;
        ensured.shard_file = Some((path, false));
        return Ok(());
    }
    if acc.count == 0 {
        return Err(Error::Input("the corpus produced no tokens: every sampled text was empty".into()));
    }
    let auto = driver.convergence.as_ref().map(|c| AutoMeta {
        tolerance: c.tolerance(),
        converged: c.converged(),
        probe_texts: probe_texts.len(),
        curve: c.curve.clone(),
    });
    if auto.as_ref().is_some_and(|a| !a.converged) {
        tracing::warn!(
            "--samples auto: the statistics did not converge to {} within the {samples} sampled texts; filed as they are (see the curve in `edit stats --json`, or sample more texts)",
            plan.auto.unwrap_or_default()
        );
    }
    ensured.auto = auto.clone();
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
            source: source.clone(),
            corpus_digest: Some(sample.corpus_digest.clone()),
            sampling: Some(sampling.clone()),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            auto: auto.clone(),
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

/// The keys of `texts` at `layers` (up to [`PROBE_TOKENS_PER_TEXT`] per text, after its BOS), as
/// `[n, d]` f64 per layer: `--samples auto`'s probes.
fn probe_keys(lm: &LoadedModel, texts: &[String], layers: &[usize], max_len: usize) -> Result<BTreeMap<usize, candle_core::Tensor>> {
    let tok = lm.tokenizer()?;
    let deepest = layers.iter().copied().max().unwrap_or(0);
    let spec = crate::models::TraceSpec { keys: layers.iter().copied().collect(), stop_after: Some(deepest), ..Default::default() };
    let mut per: BTreeMap<usize, Vec<candle_core::Tensor>> = BTreeMap::new();
    for t in texts {
        let mut ids = tok.encode_input(t)?;
        ids.truncate(max_len);
        let skip = tok.bos().len();
        if ids.len() <= skip {
            continue;
        }
        let n = (ids.len() - skip).min(PROBE_TOKENS_PER_TEXT);
        let batch = crate::models::Batch::from_sequences(&[ids], lm.config().pad_id(), lm.model.device())?;
        let trace = lm.model.forward(&batch, &spec, &[])?;
        for &l in layers {
            let k = trace.keys[&l].squeeze(0)?.narrow(0, skip, n)?.to_dtype(candle_core::DType::F64)?.to_device(&candle_core::Device::Cpu)?;
            per.entry(l).or_default().push(k);
        }
    }
    if per.is_empty() {
        return Err(Error::Input("--samples auto: the held-out texts produced no keys to measure convergence with".into()));
    }
    per.into_iter().map(|(l, v)| Ok((l, candle_core::Tensor::cat(&v, 0)?))).collect()
}

/// The job's texts, sampled from its corpus as the reference samples them; says when the
/// corpus holds fewer than asked (all are used) and when it is the small embedded one (also
/// kept in `ensured.note`).
fn sample_texts(plan: &StatsPlan, show_progress: bool, ensured: &mut Ensured) -> Result<crate::data::Sample> {
    let hub = HubOptions { revision: None, offline: plan.offline, cache_dir: None, progress: show_progress };
    let sample = crate::data::sample(&plan.corpus, plan.samples, &hub)?;
    let samples = sample.texts.len();
    if samples < plan.samples && plan.auto.is_none() {
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
    Ok(sample)
}

fn key_shard(key: &JobKey) -> String {
    key.shard.map(|s| s.to_string()).unwrap_or_default()
}

struct Driver<'p> {
    progress: &'p mut dyn Progress,
    convergence: Option<Convergence>,
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

impl Driver<'_> {
    fn aborting(&self) -> bool {
        self.abort_after.is_some_and(|n| self.chunks_this_run >= n)
    }
}

impl Observer for Driver<'_> {
    fn chunk_done(&mut self, acc: &Accumulator, texts_seen: usize) -> Result<bool> {
        self.chunks_this_run += 1;
        let rate = (acc.count - self.base_tokens) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.progress.advance(texts_seen, acc.count, rate);
        Ok(self.aborting() || self.progress.stop_requested() || self.last_checkpoint.elapsed() >= self.every)
    }

    fn convergence(&mut self) -> Option<&mut Convergence> {
        self.convergence.as_mut()
    }

    fn checkpoint(&mut self, acc: &Accumulator, sums: &collect::SumView) -> Result<()> {
        let convergence = self.convergence.as_ref().map(Convergence::state).transpose()?;
        cache::save_partial(&self.partial, &self.key, acc, sums, convergence)?;
        self.last_checkpoint = Instant::now();
        tracing::debug!("checkpoint at chunk {} written to {}", acc.next_chunk, self.partial.display());
        if self.aborting() {
            return Err(Error::Input(format!("aborted after {} chunks (--abort-after-chunks)", self.chunks_this_run)));
        }
        if self.progress.stop_requested() {
            self.progress.finish();
            return Err(Error::Interrupted(format!(
                "interrupted after {} of {} texts; progress saved to {}: run the same command again to resume",
                (acc.next_chunk * collect::CHUNK_TEXTS).min(self.total_texts),
                self.total_texts,
                self.partial.display()
            )));
        }
        Ok(())
    }
}

/// Which statistics an edit used.
#[derive(Clone, Debug, Serialize)]
pub struct StatsUsed {
    pub dataset: String,
    pub samples: usize,
    pub precision: Precision,
    pub files: BTreeMap<usize, PathBuf>,
}

/// Where the statistics of an edit will come from, decided before any weights are read.
pub enum StatsSource {
    Cached(CachedSet),
    Compute(StatsPlan),
}

/// The statistics a method asks for: the config's `mom2_*` fields at its layers.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsNeed {
    pub layers: Vec<usize>,
    /// The config's `mom2_dataset` (`wikipedia`, `wikitext`, or a name edit cannot fetch).
    pub dataset: String,
    pub samples: super::Samples,
    pub precision: Precision,
}

/// What the caller of an edit says about its statistics (`edit apply`'s options); `None`
/// leaves the choice to the cache and the config.
pub struct StatsWanted {
    /// A corpus given explicitly (`--text` / `--dataset`).
    pub corpus: Option<Corpus>,
    /// A cached corpus by its name in the cache (`--stats-corpus`).
    pub cached_corpus: Option<String>,
    pub samples: Option<super::Samples>,
    pub precision: Option<Precision>,
    pub batch_tokens: Option<usize>,
    pub max_len: Option<usize>,
    pub stats_dir: PathBuf,
    pub offline: bool,
    /// Shown in messages (`edit stats --model <this>`).
    pub model_id: String,
}

/// Chooses cached statistics (see [`super::resolve`] for the order) or the corpus to compute
/// them on; fails here, before any weights are read, when neither is possible.
pub fn decide(st: StatsWanted, hp: &StatsNeed, identity: &ModelIdentity, cfg: &ModelConfig, hub_progress: bool) -> Result<StatsSource> {
    let stats_dir = st.stats_dir.clone();
    let explicit = st.corpus.clone();
    let explicit_precision = st.precision;
    let config_corpus = resolve::config_corpus(&hp.dataset);
    let found = resolve::scan(&stats_dir, identity, cfg, &hp.layers)?;
    let explicit_id = explicit.as_ref().map(|c| c.id()).or_else(|| st.cached_corpus.clone());
    let config_id = config_corpus.as_ref().map(|c| c.id());
    let config_names: Vec<String> = config_id.iter().cloned().chain([hp.dataset.clone()]).collect();
    let wanted = resolve::Wanted {
        dataset: explicit_id.as_deref(),
        // `auto` takes any cached statistics of the corpus (whole samples first).
        samples: st.samples.and_then(|s| match s {
            super::Samples::Count(n) => Some(n),
            super::Samples::Auto => None,
        }),
        precision: explicit_precision,
        config_datasets: &config_names,
        config_samples: hp.samples.sample(),
        config_precision: hp.precision,
    };
    let sets = resolve::complete_sets(&found, &hp.layers);
    // The sets are distinct (corpus, samples, precision) groups: each is named once.
    let cached_names = || {
        let v: Vec<String> = sets.iter().map(|s| format!("{} ({} samples, {})", s.dataset, s.samples, s.precision.reference_name())).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let chosen = resolve::choose(&sets, &wanted);
    if let Some(name) = &st.cached_corpus {
        if chosen.is_none() {
            return Err(Error::Input(format!(
                "no cached statistics of corpus `{name}` cover layer(s) {:?} of this model (with the --samples/--precision given) in {}; \
                 cached for these layers: {}",
                hp.layers,
                stats_dir.display(),
                cached_names()
            )));
        }
    }
    if let Some(set) = chosen {
        tracing::info!(
            "statistics for layer(s) {:?}: cached, {} ({} samples, {} tokens, {}) in {}",
            hp.layers,
            set.dataset,
            set.samples,
            set.tokens(),
            set.precision.reference_name(),
            stats_dir.display()
        );
        if let Some(f) = set.layers.values().find(|f| !identity.is_weights(&f.meta.identity.weights_fingerprint)) {
            tracing::info!(
                "the statistics were computed on {} (weights {}), the model this one was edited from",
                f.meta.identity.model,
                f.meta.identity.weights_fingerprint
            );
        }
        if explicit_id.is_none() && !config_names.contains(&set.dataset) {
            tracing::warn!(
                "the config names statistics of `{}` ({} samples), but the cached ones are of {} ({}): using those. \
                 Pass --dataset or --text to choose a corpus (missing statistics are then computed)",
                hp.dataset,
                hp.samples,
                set.dataset,
                describe_set(set)
            );
        } else if set.auto {
            tracing::info!("using the statistics of {} ({})", set.dataset, describe_set(set));
        }
        return Ok(StatsSource::Cached(set.clone()));
    }
    let corpus = match explicit.or(config_corpus) {
        Some(c) => c,
        None => {
            return Err(Error::Input(format!(
                "no statistics of this model are cached for layer(s) {:?} (in {}; complete sets cached: {}), and the config's \
             mom2_dataset `{}` is not a corpus edit can fetch. Compute them first, e.g. `edit stats --model {} --layers {}` \
             (the embedded WikiText-2 sample, offline), or pass --dataset embedded|wikitext|wikipedia or --text FILE",
                hp.layers,
                stats_dir.display(),
                cached_names(),
                hp.dataset,
                st.model_id,
                hp.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")
            )))
        }
    };
    check_corpus_available(&corpus, st.offline, hub_progress)?;
    Ok(StatsSource::Compute(StatsPlan {
        corpus,
        samples: st.samples.unwrap_or(hp.samples).sample(),
        precision: explicit_precision.unwrap_or(hp.precision),
        batch_tokens: st.batch_tokens,
        max_len: st.max_len,
        stats_dir,
        checkpoint_secs: 60,
        force: false,
        abort_after_chunks: None,
        offline: st.offline,
        announce_computing: true,
        shard: None,
        auto: st.samples.unwrap_or(hp.samples).auto_tolerance(),
    }))
}

/// A cached set's size, in words: its sample, or for `--samples auto` statistics the tokens they
/// converged at.
fn describe_set(set: &CachedSet) -> String {
    match set.auto {
        true => format!("--samples auto: {} tokens, converged within a sample of {} texts", set.tokens(), set.samples),
        false => format!("{} samples", set.samples),
    }
}

/// The statistics files of every edited layer: the cached set, or computed now.
/// `identity` is the loaded model's (as [`decide`] was given it).
pub fn stats_files(source: StatsSource, lm: &LoadedModel, identity: &ModelIdentity, layers: &[usize], progress: &mut dyn Progress) -> Result<StatsUsed> {
    match source {
        StatsSource::Cached(set) => Ok(StatsUsed {
            dataset: set.dataset.clone(),
            samples: set.samples,
            precision: set.precision,
            files: set.layers.iter().map(|(&l, f)| (l, f.path.clone())).collect(),
        }),
        StatsSource::Compute(plan) => {
            let (cached, todo) = lookup(&plan, identity, lm.config(), layers)?;
            let mut ensured = Ensured { reports: cached, dataset: plan.corpus.id(), identity: identity.clone(), ..Default::default() };
            if !todo.is_empty() {
                collect_missing(lm, &todo, &plan, progress, &mut ensured)?;
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

/// The statistics of every edited layer, ready for a method: [`stats_files`], each file read
/// and checked against this model's weights and module.
pub fn load_stats(
    source: StatsSource,
    lm: &LoadedModel,
    identity: &ModelIdentity,
    layers: &[usize],
    progress: &mut dyn Progress,
) -> Result<(BTreeMap<usize, crate::linalg::LayerStats>, StatsUsed)> {
    let used = stats_files(source, lm, identity, layers, progress)?;
    let mut stats = BTreeMap::new();
    for (&layer, file) in &used.files {
        // Checked now, read when the method first needs them.
        let (meta, dims) = cache::load_meta(file)?;
        let module = mlp_down(lm.config(), layer)?;
        meta.check(&dims, identity, &module)?;
        stats.insert(layer, crate::linalg::LayerStats::from_file(file, &module.name));
    }
    Ok((stats, used))
}
