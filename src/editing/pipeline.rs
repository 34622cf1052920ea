//! The whole edit pipeline as two steps, so that `edit apply`, the evaluation loop and any other
//! program drive it the same way: an [`EditPlan`] (the method's config, its seed, and where its
//! statistics will come from, all decided before any weights are read) becomes an [`Editor`]
//! once the model is loaded (the statistics found or computed, read and checked), which then
//! runs edits ([`run_edit`]) and describes them ([`Editor::delta_meta`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::method::{run_edit, EditRun, MethodSource, PreparedMethod};
use super::registry::prepare;
use super::registry::Method;
use super::requests::Request;
use super::{DeltaMeta, Deltas};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::identity::ModelIdentity;
use crate::linalg::LayerStats;
use crate::model::LoadedModel;
use crate::models::CausalLm;
use crate::stats::ensure::{self, Progress, StatsNeed, StatsSource, StatsUsed, StatsWanted};
use crate::tokenizer::Tokenizer;

/// What an edit is asked to be, besides the model.
#[derive(Clone, Copy)]
pub struct EditSetup<'a> {
    pub method: Method,
    /// Hub id or directory, as the user named the model (picks the shipped config).
    pub model_id: &'a str,
    /// Where the method's settings come from (`--config`, `--set`, MEND's network, AlphaEdit's state).
    pub source: MethodSource<'a>,
    /// The context templates' seed; `None`: the config's `seed`, else 0.
    pub seed: Option<u64>,
    /// Whether a statistics corpus fetched from the Hub shows its download progress.
    pub hub_progress: bool,
}

/// A method with its config and seed, and the statistics it will read.
pub struct EditPlan {
    prepared: PreparedMethod,
    seed: u64,
    identity: ModelIdentity,
    stats: Option<(StatsNeed, StatsSource)>,
}

impl EditPlan {
    /// Resolves the method's config for this model ([`prepare`]) and decides where its
    /// statistics come from (cached, or a corpus to compute them on; see [`ensure::decide`]).
    /// `stats` says what the caller asks of them and is called only when the method reads
    /// statistics. Fails here, before any weights are read, when anything is missing.
    pub fn prepare(setup: EditSetup, cfg: &ModelConfig, identity: &ModelIdentity, stats: impl FnOnce() -> Result<StatsWanted>) -> Result<Self> {
        let source = MethodSource { identity: Some(identity), ..setup.source };
        let prepared = prepare(setup.method, cfg, setup.model_id, source)?;
        tracing::info!("{} config: {}", setup.method, prepared.source);
        tracing::debug!("config: {}", serde_json::to_string(&prepared.json).unwrap_or_default());
        let stats = match prepared.method.stats_need() {
            Some(need) => {
                let decided = ensure::decide(stats()?, &need, identity, cfg, setup.hub_progress)?;
                Some((need, decided))
            }
            None => None,
        };
        let seed = setup.seed.unwrap_or_else(|| prepared.method.default_seed());
        Ok(Self { prepared, seed, identity: identity.clone(), stats })
    }

    /// Whether the method reads statistics.
    pub fn needs_stats(&self) -> bool {
        self.stats.is_some()
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The final config as JSON (what delta files and evaluation runs record).
    pub fn config_json(&self) -> &Value {
        &self.prepared.json
    }

    /// Finds or computes the statistics on the loaded model and reads them.
    pub fn load(self, lm: &LoadedModel, progress: &mut dyn Progress) -> Result<Editor> {
        let (stats, stats_used) = match self.stats {
            Some((need, source)) => {
                let (stats, used) = ensure::load_stats(source, lm, &self.identity, &need.layers, progress)?;
                (stats, Some(used))
            }
            None => (BTreeMap::new(), None),
        };
        Ok(Editor { prepared: self.prepared, seed: self.seed, identity: self.identity, stats, stats_used, templates: None })
    }
}

/// A method ready to edit a loaded model, with its statistics.
pub struct Editor {
    prepared: PreparedMethod,
    seed: u64,
    identity: ModelIdentity,
    stats: BTreeMap<usize, LayerStats>,
    stats_used: Option<StatsUsed>,
    /// The context templates of the first edit, reused by the later ones: the reference samples
    /// them once per process (`CONTEXT_TEMPLATES_CACHE`), on the model before any edit, so a
    /// sequential evaluation's later chunks do not sample them again from the edited model.
    templates: Option<super::templates::ContextTemplates>,
}

impl Editor {
    pub fn method(&self) -> Method {
        self.prepared.method.method()
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The final config as JSON.
    pub fn config_json(&self) -> &Value {
        &self.prepared.json
    }

    /// Where the config came from (a file, a shipped config's name).
    pub fn config_source(&self) -> &str {
        &self.prepared.source
    }

    /// Which statistics were used (none when the method reads none).
    pub fn stats_used(&self) -> Option<&StatsUsed> {
        self.stats_used.as_ref()
    }

    /// Whether the method's edits depend on earlier kept edits (see
    /// [`super::method::EditMethod::remembers_edits`]).
    pub fn remembers_edits(&self) -> bool {
        self.prepared.method.remembers_edits()
    }

    /// The last edit's `deltas` stay on the model (see [`super::method::EditMethod::keep`]).
    pub fn keep(&self, deltas: &Deltas) -> Result<()> {
        self.prepared.method.keep(deltas)
    }

    /// Only one edit will be made: each layer's statistics may be dropped once the edit is done
    /// with them (MEMIT then holds one layer's C at a time; see [`LayerStats`]).
    pub fn one_edit_only(&mut self) {
        self.stats.values_mut().for_each(|s| s.keep_between_edits(false));
    }

    /// Samples the context templates now, on `model` as it is (before a sequential evaluation's
    /// first chunk, so that a resumed run, whose model is the unedited one at this point too,
    /// uses the same templates as an uninterrupted one).
    pub fn sample_templates(&mut self, model: &dyn CausalLm, tok: &Tokenizer) -> Result<()> {
        if self.templates.is_none() {
            self.templates = self.prepared.method.context_templates(model, tok, self.seed)?;
        }
        Ok(())
    }

    /// One edit of `requests` (see [`run_edit`]); the model is left as it was found. The context
    /// templates are sampled at the first edit and reused after.
    pub fn run(&mut self, model: &mut dyn CausalLm, tok: &Tokenizer, requests: &[Request], max_update_ratio: f64) -> Result<EditRun> {
        let run = run_edit(&*self.prepared.method, model, tok, requests, &mut self.stats, self.seed, self.templates.as_ref(), max_update_ratio)?;
        if self.templates.is_none() {
            self.templates = run.templates.clone();
        }
        Ok(run)
    }

    /// The provenance a delta of `requests` made by this editor records.
    pub fn delta_meta(&self, requests: &[Request]) -> DeltaMeta {
        DeltaMeta {
            method: self.method().name().to_string(),
            requests: Value::Array(requests.iter().map(Request::to_reference_json).collect()),
            config: self.prepared.json.clone(),
            seed: Some(self.seed),
            base_model: self.identity.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}
