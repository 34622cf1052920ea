//! What an evaluation writes about itself: `run.json` (what the run is; a resumed run must be
//! the same run) and the rows of `summary.json` (each `num_edits` value's scores with the run's
//! provenance). `eval merge` reads both back.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::run::NumEditsRun;
use crate::editing::pipeline::Editor;
use crate::editing::records::DatasetFormat;
use crate::error::Result;
use crate::identity::ModelIdentity;

/// An evaluation run, as `run.json` records it.
pub struct RunDescription<'a> {
    /// The method's name, or `none`.
    pub method: &'a str,
    /// The method's final config (none for `none`).
    pub config: Option<Value>,
    pub seed: u64,
    pub identity: &'a ModelIdentity,
    /// The model as the user named it.
    pub model_id: &'a str,
    pub dataset: &'a Path,
    pub dataset_format: DatasetFormat,
    /// `answers` or `alt`.
    pub zsre_target: &'a str,
    pub limit: Option<usize>,
    pub num_edits: &'a [usize],
    pub sequential: bool,
    pub shard: Option<(usize, usize)>,
    /// The generation test's interval, when it runs.
    pub generation: Option<u64>,
    pub attribute_prompts: bool,
    pub snippets: Option<&'a Path>,
    pub tfidf: Option<&'a Path>,
    pub max_update_ratio: f64,
}

impl RunDescription<'_> {
    /// `run.json`'s content (the dataset's SHA-256 read here).
    pub fn to_json(&self) -> Result<Value> {
        Ok(json!({
            "method": self.method,
            "config": self.config,
            "seed": self.seed,
            "model": self.identity,
            "dataset": self.dataset.display().to_string(),
            "dataset_sha256": crate::digest::file_sha256(self.dataset)?,
            "dataset_format": self.dataset_format,
            "zsre_target": self.zsre_target,
            "limit": self.limit,
            "num_edits": self.num_edits,
            "sequential": self.sequential,
            "shard": self.shard,
            "generation": self.generation,
            "attribute_prompts": self.attribute_prompts,
            "snippets": self.snippets.map(|p| p.display().to_string()),
            "tfidf": self.tfidf.map(|p| p.display().to_string()),
            "max_update_ratio": self.max_update_ratio,
            "tool_version": env!("CARGO_PKG_VERSION"),
        }))
    }

    /// `summary.json`'s rows: each run's summary with what the run was and took (`seconds`:
    /// the whole command's wall time).
    pub fn summaries(&self, runs: &[NumEditsRun], editor: Option<&Editor>, seconds: f64) -> Vec<Value> {
        runs.iter()
            .map(|r| {
                let mut s: Map<String, Value> = r.summary.clone();
                for (k, v) in [
                    ("method", json!(self.method)),
                    ("config_source", json!(editor.map(Editor::config_source))),
                    ("config", json!(self.config)),
                    ("seed", json!(self.seed)),
                    ("model", json!(self.model_id)),
                    ("weights_fingerprint", json!(self.identity.weights_fingerprint)),
                    ("dataset", json!(self.dataset.display().to_string())),
                    ("dataset_format", json!(self.dataset_format)),
                    ("sequential", json!(self.sequential)),
                    ("statistics", json!(editor.and_then(Editor::stats_used))),
                    ("seconds", json!(seconds)),
                ] {
                    s.insert(k.into(), v);
                }
                Value::Object(s)
            })
            .collect()
    }
}
