//! `edit stats pull`: statistics from a Hugging Face repository (dataset or model) filed into the
//! cache, where `edit apply` finds them. Every file is checked against the local model before it
//! is filed: edit's own files by the weights fingerprint, layer, module and shape they record and
//! their values; the reference's `.npz` files (which record no fingerprint) by module name,
//! shape and values. A file that fails is refused by name and not filed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cache::{self, StatsMeta};
use super::import::NpzStats;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hub::{HubOptions, ModelFiles, RepoFile, RepoKind};
use crate::identity::ModelIdentity;
use crate::models::modules::mlp_down;

/// Where to pull from.
pub struct PullRequest<'a> {
    pub repo: &'a str,
    pub kind: RepoKind,
    /// The repository's revision, offline mode and cache (`HubOptions::revision` is the repository's).
    pub hub: HubOptions,
    /// Only files whose path in the repository starts with this (a folder of a repository that
    /// holds several models' statistics).
    pub include: Option<&'a str>,
    /// Replace cached statistics that differ from the pulled ones.
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullStatus {
    /// Filed into the cache.
    Filed,
    /// The cache already held this very file.
    AlreadyCached,
    /// The cache holds other statistics under the same name, kept (`--force` replaces them).
    KeptCached,
}

#[derive(Clone, Debug, Serialize)]
pub struct Pulled {
    /// Path in the repository.
    pub name: String,
    pub layer: usize,
    pub module: String,
    pub dataset: String,
    pub samples: usize,
    pub auto: bool,
    pub tokens: u64,
    /// Where it is filed in the cache.
    pub file: PathBuf,
    pub status: PullStatus,
}

#[derive(Clone, Debug, Serialize)]
pub struct Refused {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct PullReport {
    pub repo: String,
    pub commit: Option<String>,
    pub pulled: Vec<Pulled>,
    pub refused: Vec<Refused>,
}

/// Whether a repository path looks like statistics: edit's `<module>_<precision>_<n>[-auto].safetensors`
/// or the reference's `<module>_<precision>_mom2_<n>.npz` (AlphaEdit's cached null spaces and
/// unfinished jobs' files are not).
pub fn is_stats_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let precision = name.contains("_float32_") || name.contains("_float64_");
    let edit = name.ends_with(".safetensors") && !name.contains(".nullspace-") && !name.contains(".shard-") && !name.starts_with('.');
    let reference = name.ends_with(".npz") && name.contains("_mom2_");
    precision && (edit || reference)
}

/// A checked file, ready to be filed at `target`.
struct Checked {
    target: PathBuf,
    pulled: Pulled,
    write: Write,
}

enum Write {
    /// edit's own file: copied byte for byte.
    Copy(PathBuf),
    /// A reference `.npz`: converted.
    Npz(Box<super::import::Prepared>),
}

/// Pulls `req.repo`'s statistics files for the model `files` into `stats_dir`. Refused files are
/// listed in the report; the others are filed together (staged, then moved into place).
pub fn pull(req: &PullRequest, files: &ModelFiles, stats_dir: &Path) -> Result<PullReport> {
    let cfg = ModelConfig::from_file(&files.config)?;
    let identity = ModelIdentity::of(files)?;
    let include = req.include.map(|p| p.trim_start_matches("./").to_string());
    let wanted = |n: &str| include.as_deref().is_none_or(|p| n.starts_with(p)) && is_stats_name(n);
    let (commit, repo_files) = crate::hub::repo_files(req.repo, req.kind, &wanted, &req.hub)?;
    if repo_files.is_empty() {
        let under = include.as_deref().map(|p| format!(" under `{p}`")).unwrap_or_default();
        return Err(Error::Input(format!(
            "{} has no statistics files{under} (`<module>_float32_<n>.safetensors` as `edit stats export` writes them, or the reference's \
             `<module>_float32_mom2_<n>.npz`); check the repository id, --repo-type and --include",
            req.repo
        )));
    }
    let at = format!("{}@{}", req.repo, commit.as_deref().unwrap_or("?"));
    let mut pulled = Vec::new();
    let mut refused = Vec::new();
    let mut targets: BTreeMap<PathBuf, String> = BTreeMap::new();
    // Each file is checked and staged before the next is read, so a converted `.npz` is held
    // one at a time; the staged files are moved into place together at the end.
    let mut outputs = crate::fsutil::Outputs::new();
    for f in &repo_files {
        let result = if f.name.ends_with(".npz") { check_npz(f, &cfg, &identity, stats_dir, &at) } else { check_edit_file(f, &cfg, &identity, stats_dir) };
        let mut c = match result {
            Ok(c) => c,
            Err(reason) => {
                refused.push(Refused { name: f.name.clone(), reason });
                continue;
            }
        };
        if let Some(first) = targets.get(&c.target) {
            refused.push(Refused { name: f.name.clone(), reason: format!("the same statistics as {first} (both would be filed as {})", c.target.display()) });
            continue;
        }
        targets.insert(c.target.clone(), f.name.clone());
        c.pulled.status = cached_status(&c, req.force);
        if c.pulled.status == PullStatus::Filed {
            let tmp = outputs.stage(&c.target)?;
            match &c.write {
                Write::Copy(from) => {
                    std::fs::copy(from, &tmp).map_err(|e| Error::io(from, e))?;
                }
                Write::Npz(p) => p.save(&tmp)?,
            }
        }
        pulled.push(c.pulled);
    }
    outputs.commit()?;
    Ok(PullReport { repo: req.repo.to_string(), commit, pulled, refused })
}

/// Whether `c`'s target is free, already this file, or other statistics to keep.
fn cached_status(c: &Checked, force: bool) -> PullStatus {
    if !c.target.exists() {
        return PullStatus::Filed;
    }
    let same = match &c.write {
        Write::Copy(from) => match (crate::digest::file_sha256(from), crate::digest::file_sha256(&c.target)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
        Write::Npz(p) => cache::load_meta(&c.target).is_ok_and(|(m, _)| m.source == p.meta.source && m.tokens == p.meta.tokens),
    };
    match (same, force) {
        (true, _) => PullStatus::AlreadyCached,
        (false, true) => PullStatus::Filed,
        (false, false) => {
            tracing::warn!("{} is already cached with other statistics; kept (--force replaces it)", c.target.display());
            PullStatus::KeptCached
        }
    }
}

/// Checks one of edit's statistics files against the local model.
fn check_edit_file(f: &RepoFile, cfg: &ModelConfig, identity: &ModelIdentity, stats_dir: &Path) -> std::result::Result<Checked, String> {
    let (meta, dims) = cache::load_meta(&f.path).map_err(|e| format!("not a readable statistics file: {e}"))?;
    if meta.layer >= cfg.n_layer {
        return Err(format!(
            "made for layer {} of {}, but this model has {} layers: it belongs to another model",
            meta.layer, meta.identity.model, cfg.n_layer
        ));
    }
    let module = mlp_down(cfg, meta.layer).map_err(|e| e.to_string())?;
    meta.check(&dims, identity, &module).map_err(|e| e.to_string())?;
    check_recorded(&meta, &f.path)?;
    let target = cache::filed_path(stats_dir, identity, &meta.dataset, &meta.module, meta.precision, meta.samples, meta.auto.is_some());
    Ok(Checked { pulled: pulled(f, &meta, &target), target, write: Write::Copy(f.path.clone()) })
}

/// The sum's stored precision and values, and the count, against what the file records.
fn check_recorded(meta: &StatsMeta, path: &Path) -> std::result::Result<(), String> {
    cache::read_sum(path, |sum| {
        let (precision, count) = match sum {
            cache::SumBytes::F32 { count, .. } => (super::Precision::F32, count),
            cache::SumBytes::F64 { count, .. } => (super::Precision::F64, count),
        };
        if precision != meta.precision {
            return Err(format!("the sum is stored in {} but the file says {}: the file is corrupt", precision.name(), meta.precision.name()));
        }
        if count == 0 || count != meta.tokens {
            return Err(format!("the count is {count} but the file records {} tokens: the file is corrupt", meta.tokens));
        }
        cache::check_sum_bytes(&sum).map_err(|why| format!("the sum holds {why}: the file is corrupt"))
    })
    .map_err(|e| format!("not a readable statistics file: {e}"))?
}

/// Checks a reference `.npz` (`stats/<model>/<dataset>_stats/<module>_float32_mom2_<n>.npz`)
/// against the local model, converted to the cache's format.
fn check_npz(f: &RepoFile, cfg: &ModelConfig, identity: &ModelIdentity, stats_dir: &Path, at: &str) -> std::result::Result<Checked, String> {
    // The repository's path names the corpus and sample; the cache's blob path does not.
    let named = crate::stats::import::parse_npz_name(Path::new(&f.name));
    let npz = NpzStats::read(&f.path, named.layer).map_err(|e| e.to_string().replace(&f.path.display().to_string(), &f.name))?;
    let prepared = npz
        .prepare(cfg, identity, stats_dir, named.dataset.clone(), named.samples, Some(format!("pulled from {at}: {}", f.name)))
        .map_err(|e| e.to_string().replace(&f.path.display().to_string(), &f.name))?;
    tracing::info!("{}: a reference file, which records no weights fingerprint: checked by module name, shape and values only", f.name);
    Ok(Checked { pulled: pulled(f, &prepared.meta, &prepared.path), target: prepared.path.clone(), write: Write::Npz(Box::new(prepared)) })
}

fn pulled(f: &RepoFile, meta: &StatsMeta, target: &Path) -> Pulled {
    Pulled {
        name: f.name.clone(),
        layer: meta.layer,
        module: meta.module.clone(),
        dataset: meta.dataset.clone(),
        samples: meta.samples,
        auto: meta.auto.is_some(),
        tokens: meta.tokens,
        file: target.to_path_buf(),
        status: PullStatus::Filed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_files_are_told_from_the_rest_of_a_repository() {
        assert!(is_stats_name("wikipedia-20231101.en/transformer.h.17.mlp.c_proj_float32_100000.safetensors"));
        assert!(is_stats_name("x/transformer.h.17.mlp.c_proj_float32_100000-auto.safetensors"));
        assert!(is_stats_name("stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz"));
        assert!(!is_stats_name("model.safetensors"));
        assert!(!is_stats_name("README.md"));
        assert!(!is_stats_name("x/transformer.h.17.mlp.c_proj_float32_100000.safetensors.nullspace-0.01.safetensors"));
        assert!(!is_stats_name("x/.partial_layers-1-3_float32_100000.safetensors"));
        assert!(!is_stats_name("x/layers-1-3_float32_520.shard-1-of-3.safetensors"));
        assert!(!is_stats_name("x/something_float32_.npz"));
    }
}
