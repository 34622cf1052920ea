//! One interface for every editing method, and the edit pipeline that drives it: the config
//! ([`super::registry::prepare`]) → statistics (`stats::ensure`, when [`EditMethod::stats_need`] asks) → context
//! templates → the method → the update-size guard → the did-it-take check ([`run_edit`]).
//! `edit apply` and `edit eval` call these and never branch on the method.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use std::path::Path;

use super::optimize::LossPoint;
use super::registry::Method;
use super::requests::Request;
use super::templates::ContextTemplates;
use super::verify::{check_edits, EditCheck};
use super::Deltas;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::linalg::LayerStats;
use crate::models::CausalLm;
use crate::stats::ensure::StatsNeed;
use crate::tokenizer::Tokenizer;

/// What a method reads besides the model and its own config.
pub struct EditInputs<'a> {
    pub tok: &'a Tokenizer,
    pub requests: &'a [Request],
    /// Second-moment statistics of the edited layers (empty when the method needs none).
    pub stats: &'a mut BTreeMap<usize, LayerStats>,
    /// The context templates, for methods that use them.
    pub templates: Option<&'a ContextTemplates>,
}

impl<'a> EditInputs<'a> {
    /// The templates, which this method needs.
    pub fn templates(&self) -> Result<&'a ContextTemplates> {
        self.templates.ok_or_else(|| Error::Internal("the method needs context templates, but none were given".into()))
    }
}

/// One request's result, in the terms every method shares.
#[derive(Clone, Debug)]
pub struct RequestOutcome {
    pub index: usize,
    pub subject: String,
    pub target_new: String,
    /// The method's optimisation loss, step by step (its first and last say whether it fell).
    pub losses: Vec<LossPoint>,
    /// One line for people: `   0  subject → target: loss a → b in n steps, ...`.
    pub line: String,
    /// The method's full report, a JSON object (what `--json` prints per request).
    pub report: Value,
}

impl RequestOutcome {
    /// An outcome whose line reads `index  subject → target: loss a → b in n steps, <tail>`.
    pub fn new(index: usize, subject: &str, target_new: &str, losses: &[LossPoint], steps: usize, tail: String, report: Value) -> Self {
        let first = losses.first().map(|l| l.total).unwrap_or(f64::NAN);
        let last = losses.last().map(|l| l.total).unwrap_or(f64::NAN);
        Self {
            index,
            subject: subject.to_string(),
            target_new: target_new.to_string(),
            losses: losses.to_vec(),
            line: format!("{index:>4}  {subject} → {}: loss {first:.3} → {last:.3} in {steps} steps, {tail}", target_new.trim()),
            report,
        }
    }

    pub fn first_last_loss(&self) -> (f64, f64) {
        (self.losses.first().map(|p| p.total).unwrap_or(f64::NAN), self.losses.last().map(|p| p.total).unwrap_or(f64::NAN))
    }
}

/// How large one update is against the weight it changes, for the `--max-update-ratio` guard.
#[derive(Clone, Debug)]
pub struct UpdateSize {
    /// What the update belongs to, in words (`request 0 ("Alon Javberg" → "Finnish")`, `layer 2`).
    pub what: String,
    pub update_norm: f64,
    pub weight_norm: f64,
    /// More about the update (`u·k = …`), may be empty.
    pub detail: String,
    /// What to try when it is refused.
    pub hint: String,
}

/// One changed module's totals.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleUpdate {
    pub module: String,
    pub update_norm: f64,
    pub weight_norm: f64,
    /// MEMIT: the form of the solve used for this layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver: Option<&'static str>,
}

/// What a method returns: the weight changes and its reports. The model is left as found.
pub struct EditOutcome {
    pub deltas: Deltas,
    pub requests: Vec<RequestOutcome>,
    pub modules: Vec<ModuleUpdate>,
    pub sizes: Vec<UpdateSize>,
}

/// An editing method with its config (ROME, MEMIT, AlphaEdit, FT, MEND), driven the same way.
pub trait EditMethod {
    fn method(&self) -> Method;

    /// The second-moment statistics the method reads, if any (none by default).
    fn stats_need(&self) -> Option<StatsNeed> {
        None
    }

    /// The config's seed (for the context templates), used when the caller gives none.
    fn default_seed(&self) -> u64 {
        0
    }

    /// The context templates the method uses (the config's, or sampled from the model with
    /// `seed`); `None` (the default) for methods that use none.
    fn context_templates(&self, _model: &dyn CausalLm, _tok: &Tokenizer, _seed: u64) -> Result<Option<ContextTemplates>> {
        Ok(None)
    }

    /// Computes the edit of `inputs.requests`; the model is left as it was found.
    fn edit(&self, model: &mut dyn CausalLm, inputs: EditInputs) -> Result<EditOutcome>;

    /// Whether the method's edits depend on earlier kept edits (AlphaEdit's kept keys), so
    /// that a sequence of edits cannot be resumed from saved deltas alone.
    fn remembers_edits(&self) -> bool {
        false
    }

    /// The last edit (its `deltas`) was applied to the model and stays: a sequential
    /// evaluation's chunk, or `edit apply` with a state directory. Methods that remember earlier
    /// edits fold it in (and save their state when they have a directory for it).
    fn keep(&self, _deltas: &Deltas) -> Result<()> {
        Ok(())
    }
}

/// A method ready to run, with the config it runs with.
pub struct PreparedMethod {
    pub method: Box<dyn EditMethod>,
    /// The final config as JSON (what delta files record).
    pub json: Value,
    /// Where the config came from (see [`hparams::ResolvedHparams::source`]).
    pub source: String,
}

/// Where a method's settings come from, besides the model.
#[derive(Clone, Copy, Default)]
pub struct MethodSource<'a> {
    /// `--config`: a file, or the name of a shipped config.
    pub config: Option<&'a Path>,
    /// `--set key=value` overrides, in order.
    pub sets: &'a [String],
    /// MEND's hypernetwork file (`--mend`).
    pub hypernetwork: Option<&'a Path>,
    /// The model's identity, when known (MEND checks its hypernetwork was made for it).
    pub identity: Option<&'a ModelIdentity>,
    /// AlphaEdit's state directory (`--state`), checked against the model's edit history
    /// (from `identity`).
    pub state: Option<&'a Path>,
}

/// An edit and what was learned about it.
pub struct EditRun {
    pub outcome: EditOutcome,
    /// One per request, in request order.
    pub checks: Vec<EditCheck>,
    /// The context templates used (none for methods without them).
    pub templates: Option<ContextTemplates>,
}

impl EditRun {
    /// Indices of the requests whose edit did not take.
    pub fn failed(&self) -> Vec<usize> {
        self.outcome.requests.iter().zip(&self.checks).filter(|(_, c)| !c.took).map(|(r, _)| r.index).collect()
    }
}

/// The edit pipeline after statistics: templates (`templates`, else the config's, else sampled
/// with `seed`), the
/// method, the refusal of updates larger than `max_update_ratio` × the weight (a numerical
/// failure; nothing is to be written then), and the check of every request on the edited model.
#[allow(clippy::too_many_arguments)]
pub fn run_edit(
    method: &dyn EditMethod,
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    requests: &[Request],
    stats: &mut BTreeMap<usize, LayerStats>,
    seed: u64,
    templates: Option<&ContextTemplates>,
    max_update_ratio: f64,
) -> Result<EditRun> {
    let templates = match templates {
        Some(t) => Some(t.clone()),
        None => method.context_templates(&*model, tok, seed)?,
    };
    if let Some(t) = &templates {
        tracing::debug!("context templates: {:?}", t.flat());
    }
    let outcome = method.edit(model, EditInputs { tok, requests, stats, templates: templates.as_ref() })?;
    for s in &outcome.sizes {
        // A NaN norm is refused too.
        let within = s.update_norm.is_finite() && s.update_norm <= max_update_ratio * s.weight_norm;
        if !within {
            return Err(Error::Numerical(format!(
                "{}: the update's norm {:.3e} is {:.0}x the weight's ({:.3e}{}), beyond --max-update-ratio {max_update_ratio}. {}",
                s.what,
                s.update_norm,
                s.update_norm / s.weight_norm,
                s.weight_norm,
                if s.detail.is_empty() { String::new() } else { format!("; {}", s.detail) },
                s.hint
            )));
        }
    }
    let losses: Vec<(f64, f64)> = outcome.requests.iter().map(RequestOutcome::first_last_loss).collect();
    let checks = check_edits(model, tok, requests, &outcome.deltas, &losses)?;
    Ok(EditRun { outcome, checks, templates })
}

/// One request's report from a method that edits in one step from a loss (MEND, UltraEdit).
#[derive(Serialize)]
struct OneStepReport<'a> {
    index: usize,
    subject: &'a str,
    target_new: &'a str,
    /// The edit loss (mean NLL of the target tokens) before and after the edit.
    loss_before: f64,
    loss_after: f64,
    /// Requests edited together.
    batch: usize,
}

/// The outcomes of a one-step edit of `requests` from each one's loss `before` and `after` it;
/// `tail` ends each line (`one MEND edit of 10 requests`).
pub(crate) fn one_step_outcomes(requests: &[Request], before: &[f64], after: &[f64], tail: &str) -> Vec<RequestOutcome> {
    requests
        .iter()
        .zip(before.iter().zip(after))
        .map(|(r, (&b, &a))| {
            let points = [b, a].map(|l| LossPoint { nll: l, kl: 0.0, weight_decay: 0.0, total: l });
            let report = OneStepReport { index: r.index, subject: &r.subject, target_new: &r.target_new, loss_before: b, loss_after: a, batch: requests.len() };
            RequestOutcome::new(r.index, &r.subject, &r.target_new, &points, 1, tail.to_string(), report_json(&report))
        })
        .collect()
}

/// A method report as a JSON object (reports are plain structs; this cannot fail for them).
pub(crate) fn report_json(report: &impl Serialize) -> Value {
    serde_json::to_value(report).unwrap_or(Value::Null)
}
