//! Finding a model's files: a local directory, or a Hugging Face Hub repository through the
//! standard cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
//!
//! Offline mode (`--offline` or `HF_HUB_OFFLINE=1`) reads the cache only and, when a file is
//! missing, says which one and how to fetch it.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    pub revision: Option<String>,
    pub offline: bool,
    /// Overrides the cache location (tests; `HF_HUB_CACHE`).
    pub cache_dir: Option<PathBuf>,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubOptions {
    /// `HF_HUB_OFFLINE` accepts the values the Python client does.
    pub fn offline_from_env() -> bool {
        std::env::var("HF_HUB_OFFLINE").map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")).unwrap_or(false)
    }
}

/// Where a model came from, for metadata and messages.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelOrigin {
    Local { path: PathBuf },
    Hub { repo: String, revision: String, commit: Option<String> },
}

#[derive(Clone, Debug)]
pub enum TokenizerFiles {
    Json(PathBuf),
    VocabMerges { vocab: PathBuf, merges: PathBuf },
}

#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub origin: ModelOrigin,
    pub config: PathBuf,
    pub tokenizer: Option<TokenizerFiles>,
    /// Safetensors files in shard order.
    pub weights: Vec<PathBuf>,
    /// `model.safetensors.index.json` when sharded.
    pub index: Option<PathBuf>,
}

impl ModelFiles {
    /// The directory holding the config (a local model dir or a cache snapshot).
    pub fn dir(&self) -> &Path {
        self.config.parent().unwrap_or(Path::new("."))
    }
}

pub fn default_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("HUGGINGFACE_HUB_CACHE") {
        return PathBuf::from(p);
    }
    Cache::from_env().path().clone()
}

fn looks_like_path(spec: &str) -> bool {
    spec.starts_with('.') || spec.starts_with('/') || spec.starts_with('~') || spec.contains('\\') || spec.split('/').count() > 2
}

/// Resolves `spec` (a directory or a Hub id such as `gpt2-xl` or `EleutherAI/pythia-160m`).
pub fn resolve_model(spec: &str, opts: &HubOptions) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return local_model(path);
    }
    if path.exists() {
        return Err(Error::Input(format!("--model {spec} is a file; pass the model's directory")));
    }
    if looks_like_path(spec) {
        return Err(Error::Input(format!("model directory {spec} does not exist")));
    }
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let revision = opts.revision.clone().unwrap_or_else(|| "main".to_string());
    let offline = opts.offline || HubOptions::offline_from_env();
    let fetcher: Box<dyn Fetch> = if offline {
        Box::new(CacheFetch { cache: Cache::new(cache_dir.clone()), repo: spec.into(), revision: revision.clone() })
    } else {
        Box::new(ApiFetch::new(spec, &revision, &cache_dir, opts.progress)?)
    };
    hub_model(spec, &revision, fetcher.as_ref())
}

fn local_model(dir: &Path) -> Result<ModelFiles> {
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(Error::Input(format!("{} has no config.json: is it a Hugging Face model directory?", dir.display())));
    }
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(TokenizerFiles::Json(dir.join("tokenizer.json")))
    } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
        Some(TokenizerFiles::VocabMerges { vocab: dir.join("vocab.json"), merges: dir.join("merges.txt") })
    } else {
        None
    };
    let index = dir.join("model.safetensors.index.json");
    let (weights, index) = if index.is_file() {
        let shards = shard_names(&index)?;
        (shards.iter().map(|s| dir.join(s)).collect(), Some(index))
    } else if dir.join("model.safetensors").is_file() {
        (vec![dir.join("model.safetensors")], None)
    } else {
        return Err(Error::NoWeights { dir: dir.to_path_buf() });
    };
    Ok(ModelFiles { origin: ModelOrigin::Local { path: dir.to_path_buf() }, config, tokenizer, weights, index })
}

pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::BadSafetensors { path: index.to_path_buf(), reason: format!("index is not valid JSON: {e}") })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::BadSafetensors { path: index.to_path_buf(), reason: "index has no `weight_map` object".into() })?;
    let mut shards: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(Error::BadSafetensors { path: index.to_path_buf(), reason: "index lists no files".into() });
    }
    Ok(shards)
}

/// Gets one file of a Hub repo: `Ok(None)` when the repo does not have it.
trait Fetch {
    fn get(&self, file: &str) -> Result<Option<PathBuf>>;
    /// Says how to obtain a file that is required but not available.
    fn missing(&self, file: &str) -> Error;
    fn commit(&self) -> Option<String>;
}

struct CacheFetch {
    cache: Cache,
    repo: String,
    revision: String,
}

impl Fetch for CacheFetch {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        let repo = self.cache.repo(Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone()));
        if let Some(p) = repo.get(file) {
            return Ok(Some(p));
        }
        // A commit hash as revision has no ref file: look in its snapshot directly.
        let direct = self.snapshot_dir().map(|d| d.join(file));
        Ok(direct.filter(|p| p.exists()))
    }

    fn missing(&self, file: &str) -> Error {
        Error::Hub(format!(
            "offline mode: `{file}` of {} (revision {}) is not in the Hugging Face cache at {}; \
             run once without --offline / HF_HUB_OFFLINE to download it, or fetch it with \
             `huggingface-cli download {} {file} --revision {}`",
            self.repo,
            self.revision,
            self.cache.path().display(),
            self.repo,
            self.revision
        ))
    }

    fn commit(&self) -> Option<String> {
        self.snapshot_dir().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
    }
}

impl CacheFetch {
    fn snapshot_dir(&self) -> Option<PathBuf> {
        cached_snapshot(self.cache.path(), &self.repo, RepoType::Model, &self.revision)
    }
}

/// The cache snapshot a revision points to: `refs/<revision>` names the commit, and a
/// commit hash given as the revision has no ref file but names its snapshot directly.
fn cached_snapshot(cache_dir: &Path, repo_id: &str, kind: RepoType, revision: &str) -> Option<PathBuf> {
    let dir = cache_dir.join(Repo::new(repo_id.to_string(), kind).folder_name());
    let commit = std::fs::read_to_string(dir.join("refs").join(revision)).map(|s| s.trim().to_string()).unwrap_or_else(|_| revision.to_string());
    let snap = dir.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

struct ApiFetch {
    repo: hf_hub::api::sync::ApiRepo,
    id: String,
    revision: String,
    files: Vec<String>,
    commit: String,
}

impl ApiFetch {
    fn new(id: &str, revision: &str, cache_dir: &Path, progress: bool) -> Result<Self> {
        let api = hub_api(cache_dir, progress)?;
        let repo = api.repo(Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string()));
        let info = repo.info().map_err(|e| {
            Error::Hub(format!(
                "cannot reach the Hugging Face Hub for {id} (revision {revision}): {e}; check the id and your \
                 network, or use --offline (HF_HUB_OFFLINE=1) with a populated cache, or pass a local directory"
            ))
        })?;
        Ok(Self { repo, id: id.to_string(), revision: revision.to_string(), files: info.siblings.into_iter().map(|s| s.rfilename).collect(), commit: info.sha })
    }
}

impl Fetch for ApiFetch {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        if !self.files.iter().any(|f| f == file) {
            return Ok(None);
        }
        tracing::info!("fetching {file} from {} ({})", self.id, self.revision);
        self.repo.get(file).map(Some).map_err(|e| Error::Hub(format!("downloading {file} of {} failed: {e}", self.id)))
    }

    fn missing(&self, file: &str) -> Error {
        Error::Hub(format!("{} (revision {}) has no `{file}`", self.id, self.revision))
    }

    fn commit(&self) -> Option<String> {
        Some(self.commit.clone())
    }
}

/// Files beside the weights that transformers also reads, which a written copy of a model should
/// carry (the Hub cache holds only the files `edit` needed to run it).
pub const COMPANIONS: [&str; 6] =
    ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "added_tokens.json", "vocab.json", "merges.txt"];

/// For a Hub model, fetches the [`COMPANIONS`] its cached snapshot lacks, best effort (a repo
/// without one, or no network, is logged and skipped), so that a model directory written from
/// it (`edit apply --out`, `edit apply-delta`) is complete. Nothing to do for a local model.
pub fn fetch_companions(files: &ModelFiles, opts: &HubOptions) {
    let ModelOrigin::Hub { repo, revision, .. } = &files.origin else { return };
    let missing: Vec<&str> = COMPANIONS.iter().copied().filter(|f| !files.dir().join(f).exists()).collect();
    if missing.is_empty() {
        return;
    }
    if opts.offline || HubOptions::offline_from_env() {
        tracing::info!("offline: not fetching {} of {repo}; the output has only the cached files", missing.join(", "));
        return;
    }
    let cache = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let api = match hub_api(&cache, opts.progress) {
        Ok(api) => api,
        Err(e) => return tracing::debug!("{e}"),
    };
    let repo_api = api.repo(hf_hub::Repo::with_revision(repo.clone(), hf_hub::RepoType::Model, revision.clone()));
    for f in missing {
        match repo_api.get(f) {
            Ok(_) => tracing::info!("fetched {f} of {repo}"),
            Err(e) => tracing::debug!("{repo} has no {f} (or it cannot be fetched): {e}"),
        }
    }
}

/// The online client: our cache location, `HF_ENDPOINT` and `HF_TOKEN` honoured.
fn hub_api(cache_dir: &Path, progress: bool) -> Result<hf_hub::api::sync::Api> {
    let mut builder = ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf())).with_progress(progress);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    builder.build().map_err(|e| Error::Hub(format!("cannot set up the Hugging Face client: {e}")))
}

fn hub_model(id: &str, revision: &str, f: &dyn Fetch) -> Result<ModelFiles> {
    let config = f.get("config.json")?.ok_or_else(|| f.missing("config.json"))?;
    // Beside the tokenizer, what decides its BOS (`add_bos_token`) and what a written copy of the
    // model should carry along; neither is required.
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        f.get(optional)?;
    }
    let tokenizer = match f.get("tokenizer.json")? {
        Some(p) => Some(TokenizerFiles::Json(p)),
        None => match (f.get("vocab.json")?, f.get("merges.txt")?) {
            (Some(vocab), Some(merges)) => Some(TokenizerFiles::VocabMerges { vocab, merges }),
            _ => None,
        },
    };
    let (weights, index) = match f.get("model.safetensors.index.json")? {
        Some(index) => {
            let mut files = Vec::new();
            for shard in shard_names(&index)? {
                files.push(f.get(&shard)?.ok_or_else(|| f.missing(&shard))?);
            }
            (files, Some(index))
        }
        None => match f.get("model.safetensors")? {
            Some(p) => (vec![p], None),
            None => {
                let err = f.missing("model.safetensors");
                return Err(Error::Hub(format!(
                    "{err} (nor a sharded model.safetensors.index.json); edit reads safetensors weights only: \
                     if this revision has only pytorch_model.bin, pick a revision with safetensors \
                     (--revision) or convert it"
                )));
            }
        },
    };
    Ok(ModelFiles { origin: ModelOrigin::Hub { repo: id.to_string(), revision: revision.to_string(), commit: f.commit() }, config, tokenizer, weights, index })
}

/// Files of a Hub dataset repo whose path starts with `prefix` and ends with `suffix`
/// (e.g. the train parquet shards), fetched into (or, offline, found in) the cache.
pub fn dataset_files(repo_id: &str, prefix: &str, suffix: &str, opts: &HubOptions) -> Result<Vec<PathBuf>> {
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let revision = opts.revision.clone().unwrap_or_else(|| "main".to_string());
    let offline = opts.offline || HubOptions::offline_from_env();
    let how = format!("`huggingface-cli download --repo-type dataset {repo_id} --include '{prefix}*{suffix}'`");
    let wanted = |n: &str| n.starts_with(prefix) && n.ends_with(suffix);
    if offline {
        let snap = cached_snapshot(&cache_dir, repo_id, RepoType::Dataset, &revision);
        let files: Vec<PathBuf> = snap.map(|snap| snapshot_files(&snap, &wanted)).unwrap_or_default().into_iter().map(|f| f.path).collect();
        if files.is_empty() {
            return Err(Error::Hub(format!(
                "offline mode: no `{prefix}*{suffix}` files of dataset {repo_id} (revision {revision}) in the Hugging Face cache at {}; \
                 run once without --offline / HF_HUB_OFFLINE, or fetch them with {how}, or pass local files with --text",
                cache_dir.display()
            )));
        }
        // Shards are numbered `-NNNNN-of-MMMMM`: refuse a partial download, it would change the sample.
        if let Some(total) = files.first().and_then(|f| shard_total(f)) {
            if files.len() != total {
                return Err(Error::Hub(format!(
                    "offline mode: only {} of {total} `{prefix}*{suffix}` shards of {repo_id} are in the cache at {}; fetch the rest with {how}",
                    files.len(),
                    cache_dir.display()
                )));
            }
        }
        return Ok(files);
    }
    let api = hub_api(&cache_dir, opts.progress)?;
    let repo = api.repo(Repo::with_revision(repo_id.to_string(), RepoType::Dataset, revision.clone()));
    let info = repo.info().map_err(|e| {
        Error::Hub(format!("cannot reach the Hugging Face Hub for dataset {repo_id}: {e}; use --offline with a populated cache, or --text with local files"))
    })?;
    let files = fetch_listed(&repo, repo_id, info.siblings, &wanted)?;
    if files.is_empty() {
        return Err(Error::Hub(format!("dataset {repo_id} (revision {revision}) has no `{prefix}*{suffix}` files")));
    }
    Ok(files.into_iter().map(|f| f.path).collect())
}

/// What kind of Hub repository a statistics repository is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Dataset,
    Model,
}

impl RepoKind {
    fn hub(self) -> RepoType {
        match self {
            RepoKind::Dataset => RepoType::Dataset,
            RepoKind::Model => RepoType::Model,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            RepoKind::Dataset => " --repo-type dataset",
            RepoKind::Model => "",
        }
    }
}

/// One file of a Hub repository: its path in the repository, and where it lies in the cache.
#[derive(Clone, Debug)]
pub struct RepoFile {
    pub name: String,
    pub path: PathBuf,
}

/// The files of a Hub repository whose paths `wanted` accepts, fetched into (or, offline, found
/// in) the standard cache, in path order; and the commit they are of.
pub fn repo_files(repo_id: &str, kind: RepoKind, wanted: &dyn Fn(&str) -> bool, opts: &HubOptions) -> Result<(Option<String>, Vec<RepoFile>)> {
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let revision = opts.revision.clone().unwrap_or_else(|| "main".to_string());
    if opts.offline || HubOptions::offline_from_env() {
        let snap = cached_snapshot(&cache_dir, repo_id, kind.hub(), &revision).ok_or_else(|| {
            Error::Hub(format!(
                "offline mode: {repo_id} (revision {revision}) is not in the Hugging Face cache at {}; run once without --offline / \
                 HF_HUB_OFFLINE, or fetch it with `huggingface-cli download{} {repo_id} --revision {revision}`",
                cache_dir.display(),
                kind.flag()
            ))
        })?;
        let commit = snap.file_name().map(|n| n.to_string_lossy().into_owned());
        return Ok((commit, snapshot_files(&snap, wanted)));
    }
    let api = hub_api(&cache_dir, opts.progress)?;
    let repo = api.repo(Repo::with_revision(repo_id.to_string(), kind.hub(), revision.clone()));
    let info = repo.info().map_err(|e| {
        Error::Hub(format!(
            "cannot reach the Hugging Face Hub for {repo_id} (revision {revision}, a {} repository): {e}; check the id, --repo-type and \
             HF_TOKEN for a private repository, or use --offline with a populated cache",
            if kind == RepoKind::Dataset { "dataset" } else { "model" }
        ))
    })?;
    let files = fetch_listed(&repo, repo_id, info.siblings, wanted)?;
    Ok((Some(info.sha), files))
}

/// The files of a cached snapshot whose repository paths `wanted` accepts, in path order.
fn snapshot_files(snap: &Path, wanted: &dyn Fn(&str) -> bool) -> Vec<RepoFile> {
    let mut files = Vec::new();
    walk(snap, snap, &mut files);
    files.retain(|f| wanted(&f.name));
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// The files of a repository's listing that `wanted` accepts, fetched into the cache in path order.
fn fetch_listed(repo: &hf_hub::api::sync::ApiRepo, repo_id: &str, listing: Vec<hf_hub::api::Siblings>, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<RepoFile>> {
    let mut names: Vec<String> = listing.into_iter().map(|s| s.rfilename).filter(|n| wanted(n)).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            tracing::info!("fetching {name} of {repo_id}");
            let path = repo.get(&name).map_err(|e| Error::Hub(format!("downloading {name} of {repo_id} failed: {e}")))?;
            Ok(RepoFile { name, path })
        })
        .collect()
}

/// Every file under `dir` (a cache snapshot: its entries are links to blobs), named by its path
/// relative to `root` with `/` separators.
fn walk(root: &Path, dir: &Path, out: &mut Vec<RepoFile>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let path = e.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else if path.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let name = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/");
            out.push(RepoFile { name, path });
        }
    }
}

/// `M` of a `...-NNNNN-of-MMMMM.ext` shard name.
fn shard_total(p: &Path) -> Option<usize> {
    let name = p.file_stem()?.to_string_lossy().into_owned();
    let (_, total) = name.rsplit_once("-of-")?;
    total.parse().ok()
}
