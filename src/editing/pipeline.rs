//! The whole edit pipeline as two steps, so that `edit apply` and the evaluation loop drive it
//! the same way: an [`EditPlan`] (the method's config, and where its statistics will come from,
//! decided before any weights are read) becomes an [`Editor`] once the model is loaded (the
//! statistics found or computed, read and checked), which then runs edits ([`run_edit`]).

use std::collections::BTreeMap;

use super::linalg::LayerStats;
use super::method::{run_edit, EditRun, PreparedMethod};
use super::requests::Request;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::model::LoadedModel;
use crate::models::CausalLm;
use crate::stats::ensure::{self, Progress, StatsNeed, StatsSource, StatsUsed, StatsWanted};
use crate::tokenizer::Tokenizer;

/// A method with its config, and the statistics it will read.
pub struct EditPlan {
    pub prepared: PreparedMethod,
    stats: Option<(StatsNeed, StatsSource)>,
}

impl EditPlan {
    /// Decides where the method's statistics come from (cached, or a corpus to compute them
    /// on; see [`ensure::decide`]); `wanted` is what the caller asked for, needed only when the
    /// method reads statistics. Fails here, before any weights are read, when they cannot be had.
    pub fn new(prepared: PreparedMethod, wanted: Option<StatsWanted>, identity: &ModelIdentity, cfg: &ModelConfig, hub_progress: bool) -> Result<Self> {
        let stats = match prepared.method.stats_need() {
            Some(need) => {
                let wanted =
                    wanted.ok_or_else(|| Error::Internal(format!("{} needs statistics, but no statistics options were given", prepared.method.method())))?;
                let source = ensure::decide(wanted, &need, identity, cfg, hub_progress)?;
                Some((need, source))
            }
            None => None,
        };
        Ok(Self { prepared, stats })
    }

    /// Whether the method reads statistics.
    pub fn needs_stats(&self) -> bool {
        self.stats.is_some()
    }

    /// Finds or computes the statistics on the loaded model and reads them.
    pub fn load(self, lm: &LoadedModel, identity: &ModelIdentity, progress: &mut dyn Progress) -> Result<Editor> {
        let (stats, stats_used) = match self.stats {
            Some((need, source)) => {
                let (stats, used) = ensure::load_stats(source, lm, identity, &need.layers, progress)?;
                (stats, Some(used))
            }
            None => (BTreeMap::new(), None),
        };
        Ok(Editor { prepared: self.prepared, stats, stats_used, templates: None })
    }
}

/// A method ready to edit a loaded model, with its statistics.
pub struct Editor {
    pub prepared: PreparedMethod,
    pub stats: BTreeMap<usize, LayerStats>,
    /// Which statistics were used (none when the method reads none).
    pub stats_used: Option<StatsUsed>,
    /// The context templates of the first edit, reused by the later ones: the reference samples
    /// them once per process (`CONTEXT_TEMPLATES_CACHE`), on the model before any edit, so a
    /// sequential evaluation's later chunks do not sample them again from the edited model.
    templates: Option<super::templates::ContextTemplates>,
}

impl Editor {
    /// Only one edit will be made: each layer's statistics may be dropped once the edit is done
    /// with them (MEMIT then holds one layer's C at a time; see [`LayerStats`]).
    pub fn one_edit_only(&mut self) {
        self.stats.values_mut().for_each(|s| s.keep_between_edits(false));
    }

    /// Samples the context templates now, on `model` as it is (before a sequential evaluation's
    /// first chunk, so that a resumed run, whose model is the unedited one at this point too,
    /// uses the same templates as an uninterrupted one).
    pub fn sample_templates(&mut self, model: &dyn CausalLm, tok: &Tokenizer, seed: u64) -> Result<()> {
        if self.templates.is_none() {
            self.templates = self.prepared.method.context_templates(model, tok, seed)?;
        }
        Ok(())
    }

    /// One edit of `requests` (see [`run_edit`]); the model is left as it was found. The context
    /// templates are sampled with `seed` at the first edit and reused after.
    pub fn run(&mut self, model: &mut dyn CausalLm, tok: &Tokenizer, requests: &[Request], seed: u64, pad_id: u32, max_update_ratio: f64) -> Result<EditRun> {
        let run = run_edit(&*self.prepared.method, model, tok, requests, &mut self.stats, seed, self.templates.as_ref(), pad_id, max_update_ratio)?;
        if self.templates.is_none() {
            self.templates = run.templates.clone();
        }
        Ok(run)
    }
}
