//! The arguments several commands share, and the typed values options take: what clap turns
//! the command line into before any command runs. Names of the library's enums (methods,
//! statistics precisions, zsRE targets, trace kinds, image formats) are listed once, in the
//! library, and offered here through [`named`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use edit::data::{Corpus, HubDataset};
use edit::editing::hparams;
use edit::editing::mend::MendHparams;
use edit::editing::method::MethodSource;
use edit::editing::registry::Method;
use edit::hub::{resolve_model, HubOptions, ModelFiles};
use edit::stats::cache;
use edit::stats::ensure::StatsWanted;
use edit::stats::Precision;
use edit::LoadedModel;

use super::{logging, GlobalArgs};

/// Parses one of a library enum's values by the name the library gives it: clap lists the
/// names in `--help` and refuses any other, and the field gets the typed value.
pub fn named<T: Copy + Send + Sync + 'static>(all: &'static [T], name: fn(T) -> &'static str) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(all.iter().map(|v| name(*v))).map(move |s| *all.iter().find(|v| name(**v) == s).expect("clap accepts only the listed names"))
}

/// `--method` of `edit eval`: a method, or `none` (the model scored as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalMethod {
    None,
    Edit(Method),
}

impl EvalMethod {
    pub fn name(self) -> &'static str {
        match self {
            EvalMethod::None => "none",
            EvalMethod::Edit(m) => m.name(),
        }
    }

    pub fn method(self) -> Option<Method> {
        match self {
            EvalMethod::None => None,
            EvalMethod::Edit(m) => Some(m),
        }
    }
}

/// `--method` of `edit eval`: the methods' names and `none`.
pub fn eval_method() -> impl TypedValueParser<Value = EvalMethod> {
    PossibleValuesParser::new(Method::ALL.iter().map(|m| m.name()).chain(["none"])).map(|s| match s.as_str() {
        "none" => EvalMethod::None,
        m => EvalMethod::Edit(m.parse().expect("clap accepts only the methods' names")),
    })
}

/// `--dtype`: what the model computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl DTypeArg {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DTypeArg::F32 => candle_core::DType::F32,
            DTypeArg::F16 => candle_core::DType::F16,
            DTypeArg::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Texts named on the command line: `embedded` (the WikiText-2 test split compiled into edit)
/// or a file (.txt one per line, .jsonl `text`, .parquet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Texts {
    Embedded,
    File(PathBuf),
}

impl Texts {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Texts::Embedded),
            "" => Err("give a file or `embedded`".into()),
            file => Ok(Texts::File(PathBuf::from(file))),
        }
    }

    /// As the user wrote it.
    pub fn describe(&self) -> String {
        match self {
            Texts::Embedded => "embedded".into(),
            Texts::File(p) => p.display().to_string(),
        }
    }

    pub fn read(&self) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            Texts::Embedded => edit::data::EMBEDDED_WIKITEXT.lines().map(str::to_string).collect(),
            Texts::File(file) => edit::data::read_texts(file).with_context(|| format!("cannot read the texts {}", file.display()))?,
        })
    }
}

/// `--locality` of `edit mend train`: where the texts whose predictions must not move come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Locality {
    /// Each record's own neighbourhood prompts with its true object.
    Neighbors,
    Texts(Texts),
}

impl Locality {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "neighbors" => Ok(Locality::Neighbors),
            "" => Err("give a file, `embedded` or `neighbors`".into()),
            texts => Texts::parse(texts).map(Locality::Texts),
        }
    }
}

/// How to find a model; shared by every command that reads one.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Local model directory, or a Hugging Face Hub id (gpt2, gpt2-xl, EleutherAI/gpt-j-6B,
    /// EleutherAI/pythia-160m, EleutherAI/gpt-neox-20b, ...).
    // An Option only so that `edit stats import` can share the struct; clap still requires it.
    #[arg(short, long, value_name = "DIR|HUB_ID", required = true)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit); default `main`.
    #[arg(long)]
    pub revision: Option<String>,
    /// Use only the local Hugging Face cache (also: HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

/// Where and in what precision a model runs; only on commands that run one.
#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// Compute dtype. The reference computes in f32.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ComputeArgs {
    /// Checks dtype and device before any work, so a typo fails before weights are read.
    pub fn parse(&self) -> anyhow::Result<(candle_core::DType, candle_core::Device)> {
        Ok((self.dtype.dtype(), edit::device::parse_device(&self.device)?))
    }
}

impl ModelArgs {
    pub fn id(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }

    pub fn hub_options(&self, global: &GlobalArgs) -> HubOptions {
        HubOptions { revision: self.revision.clone(), offline: self.offline, cache_dir: None, progress: logging::show_progress(global) }
    }

    /// Finds the model's files (local directory or Hub cache) without loading weights.
    pub fn resolve(&self, global: &GlobalArgs) -> anyhow::Result<ModelFiles> {
        resolve_model(self.id(), &self.hub_options(global)).with_context(|| format!("cannot find model `{}`", self.id()))
    }

    pub fn load(&self, compute: &ComputeArgs, global: &GlobalArgs) -> anyhow::Result<LoadedModel> {
        let files = self.resolve(global)?;
        self.load_files(files, compute)
    }

    /// Loads already-resolved files (commands that check everything cheap first resolve early),
    /// for an editing workload.
    pub fn load_files(&self, files: ModelFiles, compute: &ComputeArgs) -> anyhow::Result<LoadedModel> {
        self.load_files_for(files, compute, edit::threads::Workload::Editing)
    }

    /// Loads for `work`, which decides how the CPU's threads are used (before any tensor work).
    pub fn load_files_for(&self, files: ModelFiles, compute: &ComputeArgs, work: edit::threads::Workload) -> anyhow::Result<LoadedModel> {
        let (dtype, device) = compute.parse()?;
        if device.is_cpu() {
            edit::threads::configure(&edit::ModelConfig::from_file(&files.config)?, work);
        }
        tracing::info!("loading {} ({} weight file(s))", self.id(), files.weights.len());
        let started = std::time::Instant::now();
        let model = edit::load_model(files, dtype, &device).with_context(|| format!("cannot load model `{}`", self.id()))?;
        tracing::info!("loaded in {:.2?}", started.elapsed());
        Ok(model)
    }
}

/// `--shard I/N` (0 ≤ I < N), as `edit eval` and `edit stats` take it.
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if n >= 1 && i < n => Ok((i, n)),
        _ => Err(format!("`{s}` is not a shard: write I/N with 0 <= I < N, e.g. 0/4")),
    }
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
    pub fn source(&self) -> MethodSource<'_> {
        MethodSource { config: self.config.as_deref(), sets: &self.sets, hypernetwork: self.mend.as_deref(), identity: None, state: None }
    }
}

/// Where missing statistics are computed from (as `edit stats`) and where they are cached.
#[derive(Args, Debug)]
pub struct StatsSourceArgs {
    /// Texts sampled for statistics, or `auto` (collected until they converge; see `edit stats
    /// --samples auto`) [default: any cached; else the config's `mom2_n_samples`].
    #[arg(long)]
    pub samples: Option<edit::stats::Samples>,
    /// A local corpus file for statistics (.txt, .jsonl, .parquet); repeat for several.
    #[arg(long, value_name = "FILE")]
    pub text: Vec<PathBuf>,
    /// Use the cached statistics of this corpus, by its name in the cache (`wikipedia` for
    /// imported reference files, `wikitext-2-test-embedded`, `files-<digest>`, ...).
    #[arg(long, value_name = "NAME", conflicts_with = "text")]
    pub stats_corpus: Option<String>,
    /// Statistics precision [default: any cached, preferring the config's `mom2_dtype`].
    #[arg(long, value_parser = named(&Precision::ALL, Precision::name))]
    pub precision: Option<Precision>,
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
    pub fn wanted(&self, dataset: Option<DatasetArg>, dataset_flag: &str, model: &ModelArgs) -> edit::Result<StatsWanted> {
        let both = |other: &str| edit::Error::Input(format!("{dataset_flag} and {other} both name a statistics corpus; give one"));
        if dataset.is_some() && !self.text.is_empty() {
            return Err(both("--text"));
        }
        if dataset.is_some() && self.stats_corpus.is_some() {
            return Err(both("--stats-corpus"));
        }
        let stats_dir = self.dir.dir();
        Ok(StatsWanted {
            corpus: chosen_corpus(dataset, &self.text, &stats_dir)?,
            cached_corpus: self.stats_corpus.clone(),
            samples: self.samples,
            precision: self.precision,
            batch_tokens: self.batch_tokens,
            max_len: self.max_len,
            stats_dir,
            offline: model.offline,
            model_id: model.id().to_string(),
        })
    }
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
pub fn chosen_corpus(dataset: Option<DatasetArg>, text: &[PathBuf], stats_dir: &Path) -> edit::Result<Option<Corpus>> {
    Ok(match dataset {
        Some(DatasetArg::Wikitext) => Some(Corpus::Hub(HubDataset::Wikitext)),
        Some(DatasetArg::Wikipedia) => Some(Corpus::Hub(HubDataset::Wikipedia)),
        Some(DatasetArg::Embedded) => Some(Corpus::Embedded),
        None if !text.is_empty() => {
            for f in text {
                if !f.is_file() {
                    return Err(edit::Error::Input(format!("--text {}: no such file", f.display())));
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

/// The MEND config of `import` and `train`: a file or shipped name, and overrides.
#[derive(Args, Debug)]
pub struct MendConfigArgs {
    /// A MEND config file or shipped name (`mend/gpt2-xl_executor`) [default: the model's].
    #[arg(long, value_name = "FILE|NAME")]
    pub config: Option<PathBuf>,
    /// Override a MEND hyperparameter, e.g. --set lr=1e-4 or
    /// --set 'inner_params=["transformer.h.11.mlp.c_fc.weight"]'.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl MendConfigArgs {
    /// The config for this model (see `hparams::resolve`).
    pub fn resolve(&self, cfg: &edit::ModelConfig, model_id: &str) -> edit::Result<MendHparams> {
        Ok(hparams::resolve::<MendHparams>(cfg, model_id, self.config.as_deref(), &self.sets)?.hparams)
    }
}
