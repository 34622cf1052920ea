//! Finding cached statistics for a model without loading it: every file under the stats
//! directory whose metadata names this model's weights and one of the wanted layers, grouped by
//! corpus, sample count and precision, and a documented choice among complete groups.
//!
//! Preference when the caller names no corpus (`edit apply` without `--text`/`--dataset`):
//! 1. the corpus the config names (`mom2_dataset`), at its `mom2_n_samples` if cached, else the
//!    largest sample of it;
//! 2. otherwise Wikipedia, then WikiText-103, then local files or imported statistics, then the
//!    embedded WikiText-2 sample, the larger sample first within each;
//!
//! Within one corpus, statistics over a whole sample come before `--samples auto` ones (collected
//! until they converged), and the config's precision before the other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cache::{self, StatsMeta};
use super::Precision;
use crate::config::ModelConfig;
use crate::data::{Corpus, HubDataset};
use crate::error::Result;
use crate::identity::ModelIdentity;
use crate::models::modules::mlp_down;

/// One cached statistics file that fits the model.
#[derive(Clone, Debug)]
pub struct Found {
    pub layer: usize,
    pub path: PathBuf,
    pub meta: StatsMeta,
}

/// Statistics of every wanted layer from one corpus, sample and precision.
#[derive(Clone, Debug)]
pub struct CachedSet {
    pub dataset: String,
    pub samples: usize,
    pub precision: Precision,
    /// `--samples auto` statistics (fewer texts than `samples`, see [`StatsMeta::auto`]).
    pub auto: bool,
    pub layers: BTreeMap<usize, Found>,
}

impl CachedSet {
    pub fn tokens(&self) -> u64 {
        self.layers.values().map(|f| f.meta.tokens).min().unwrap_or(0)
    }
}

/// Whether statistics filed under `meta` answer a request for `requested` texts: the same
/// number, or the whole corpus when it has fewer rows than requested (the sample is the same).
pub fn answers(meta: &StatsMeta, requested: usize) -> bool {
    meta.auto.is_none() && same_sample(meta, requested)
}

/// Whether `meta`'s statistics were drawn from the sample of `requested` texts: the same number,
/// or the whole corpus when it has fewer rows than requested (the sample is the same).
fn same_sample(meta: &StatsMeta, requested: usize) -> bool {
    meta.samples == requested || meta.corpus_rows.is_some_and(|rows| meta.samples >= rows && requested >= rows)
}

/// Whether `--samples auto` statistics filed under `meta` answer a request for auto statistics
/// drawn from a sample of `requested` texts at `tolerance`: the same sample, converged at that
/// tolerance or a tighter one.
pub fn answers_auto(meta: &StatsMeta, requested: usize, tolerance: f64) -> bool {
    same_sample(meta, requested) && meta.auto.as_ref().is_some_and(|a| a.converged && a.tolerance <= tolerance)
}

/// Every statistics file under `stats_dir` (`<model>/<dataset>/<module>_...`) computed on these
/// weights for one of `layers`. Any model folder counts: the same weights may have been reached
/// through another path or name.
pub fn scan(stats_dir: &Path, identity: &ModelIdentity, cfg: &ModelConfig, layers: &[usize]) -> Result<Vec<Found>> {
    let modules = layers.iter().map(|&l| Ok((l, mlp_down(cfg, l)?))).collect::<Result<Vec<_>>>()?;
    let mut found = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    for model_dir in dirs(stats_dir) {
        for dataset_dir in dirs(&model_dir) {
            let Ok(rd) = std::fs::read_dir(&dataset_dir) else { continue };
            let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for path in files {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                // AlphaEdit caches null spaces beside the statistics (`<stats>.nullspace-<t>.safetensors`).
                if name.starts_with('.') || !name.ends_with(".safetensors") || name.contains(".nullspace-") {
                    continue;
                }
                for (layer, module) in &modules {
                    if !name.starts_with(&format!("{}_", module.name)) {
                        continue;
                    }
                    match cache::load_meta(&path) {
                        Ok((meta, dims)) if meta.check(&dims, identity, module).is_ok() => {
                            found.push(Found { layer: *layer, path: path.clone(), meta });
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!("skipping {}: {e}", path.display()),
                    }
                }
            }
        }
    }
    Ok(found)
}

/// Groups `found` by (corpus, samples, precision), keeping the groups that cover every layer.
pub fn complete_sets(found: &[Found], layers: &[usize]) -> Vec<CachedSet> {
    let mut groups: BTreeMap<(String, usize, &'static str, bool), CachedSet> = BTreeMap::new();
    for f in found {
        let key = (f.meta.dataset.clone(), f.meta.samples, f.meta.precision.reference_name(), f.meta.auto.is_some());
        let set = groups.entry(key).or_insert_with(|| CachedSet {
            dataset: f.meta.dataset.clone(),
            samples: f.meta.samples,
            precision: f.meta.precision,
            auto: f.meta.auto.is_some(),
            layers: BTreeMap::new(),
        });
        set.layers.entry(f.layer).or_insert_with(|| f.clone());
    }
    groups.into_values().filter(|s| layers.iter().all(|l| s.layers.contains_key(l))).collect()
}

/// The corpus a reference config's `mom2_dataset` names, when edit can fetch it. The reference
/// knows exactly two: `wikipedia` and `wikitext` (wikitext-103-raw-v1).
pub fn config_corpus(mom2_dataset: &str) -> Option<Corpus> {
    match mom2_dataset {
        "wikipedia" => Some(Corpus::Hub(HubDataset::Wikipedia)),
        "wikitext" | "wikitext-103" | "wikitext-103-raw-v1" => Some(Corpus::Hub(HubDataset::Wikitext)),
        _ => None,
    }
}

fn corpus_rank(dataset: &str) -> u8 {
    match dataset {
        "wikipedia-20231101.en" | "wikipedia" => 4,
        "wikitext-103-raw-v1" | "wikitext" => 3,
        "wikitext-2-test-embedded" => 1,
        _ => 2,
    }
}

/// What the caller asked for; `None` means "any".
pub struct Wanted<'a> {
    /// The corpus named on the command line (`--text`/`--dataset`).
    pub dataset: Option<&'a str>,
    pub samples: Option<usize>,
    pub precision: Option<Precision>,
    /// The names the config's corpus goes by in the cache: its id when edit knows it (e.g.
    /// `wikipedia-20231101.en`) and the config's own name (`wikipedia`, as statistics imported
    /// from the reference's `wikipedia_stats` folder are filed). Preferred.
    pub config_datasets: &'a [String],
    pub config_samples: usize,
    pub config_precision: Precision,
}

/// The best complete set for `wanted`, by the preference order of this module's docs.
pub fn choose<'s>(sets: &'s [CachedSet], wanted: &Wanted) -> Option<&'s CachedSet> {
    sets.iter()
        .filter(|s| wanted.dataset.is_none_or(|d| s.dataset == d))
        .filter(|s| wanted.precision.is_none_or(|p| s.precision == p))
        .filter(|s| wanted.samples.is_none_or(|n| s.layers.values().all(|f| answers(&f.meta, n))))
        .max_by_key(|s| {
            (
                wanted.config_datasets.contains(&s.dataset),
                corpus_rank(&s.dataset),
                // Of one corpus, statistics over the whole sample before converged ones.
                !s.auto,
                s.samples == wanted.config_samples,
                s.precision == wanted.config_precision,
                s.samples,
            )
        })
}
