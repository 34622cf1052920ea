//! One interface for every editing method, and the edit pipeline that drives it: context
//! templates → the method → the update-size guard → the did-it-take check. `edit apply` (and
//! the evaluation loop to come) call [`run_edit`] and never branch on the method.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::hparams::{Hparams, Method};
use super::linalg::LayerStats;
use super::optimize::LossPoint;
use super::requests::Request;
use super::templates::{self, ContextTemplates};
use super::verify::{check_edits, EditCheck};
use super::Deltas;
use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

/// What a method reads besides the model.
pub struct EditInputs<'a> {
    pub tok: &'a Tokenizer,
    pub requests: &'a [Request],
    pub hparams: &'a Hparams,
    /// Second-moment statistics of the edited layers (empty when the method needs none).
    pub stats: &'a mut BTreeMap<usize, LayerStats>,
    pub templates: &'a ContextTemplates,
    pub pad_id: u32,
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
}

/// What a method returns: the weight changes and its reports. The model is left as found.
pub struct EditOutcome {
    pub deltas: Deltas,
    pub requests: Vec<RequestOutcome>,
    pub modules: Vec<ModuleUpdate>,
    pub sizes: Vec<UpdateSize>,
}

/// An editing method: ROME, MEMIT, and those to come, driven the same way.
pub trait EditMethod {
    fn method(&self) -> Method;

    /// Whether the method reads second-moment statistics of `hp.layers`.
    fn needs_stats(&self, hp: &Hparams) -> bool;

    /// The context templates the method samples from the model (the config may fix them).
    fn sample_templates(&self, model: &dyn CausalLm, tok: &Tokenizer, hp: &Hparams, seed: u64) -> Result<ContextTemplates>;

    /// Computes the edit of `inputs.requests`; the model is left as it was found.
    fn edit(&self, model: &mut dyn CausalLm, inputs: EditInputs) -> Result<EditOutcome>;
}

/// The implementation of `method`.
pub fn method_impl(method: Method) -> Box<dyn EditMethod> {
    match method {
        Method::Rome => Box::new(super::rome::Rome),
        Method::Memit => Box::new(super::memit::Memit),
    }
}

/// An edit and what was learned about it.
pub struct EditRun {
    pub outcome: EditOutcome,
    /// One per request, in request order.
    pub checks: Vec<EditCheck>,
    pub templates: ContextTemplates,
}

impl EditRun {
    /// Indices of the requests whose edit did not take.
    pub fn failed(&self) -> Vec<usize> {
        self.outcome.requests.iter().zip(&self.checks).filter(|(_, c)| !c.took).map(|(r, _)| r.index).collect()
    }
}

/// The edit pipeline after statistics: templates (the config's, or sampled with `seed`), the
/// method, the refusal of updates larger than `max_update_ratio` × the weight (a numerical
/// failure; nothing is to be written then), and the check of every request on the edited model.
#[allow(clippy::too_many_arguments)]
pub fn run_edit(
    method: &dyn EditMethod,
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    requests: &[Request],
    hp: &Hparams,
    stats: &mut BTreeMap<usize, LayerStats>,
    seed: u64,
    pad_id: u32,
    max_update_ratio: f64,
) -> Result<EditRun> {
    let templates = match &hp.context_templates {
        Some(t) => templates::from_config(t, method.method()),
        None => method.sample_templates(&*model, tok, hp, seed)?,
    };
    tracing::debug!("context templates: {:?}", templates.flat());
    let outcome = method.edit(model, EditInputs { tok, requests, hparams: hp, stats, templates: &templates, pad_id })?;
    for s in &outcome.sizes {
        // A NaN norm is refused too.
        let within = s.update_norm.is_finite() && s.update_norm <= max_update_ratio * s.weight_norm;
        if !within {
            return Err(Error::Numerical(format!(
                "{}: the update's norm {:.3e} is {:.0}x the weight's ({:.3e}{}), beyond --max-update-ratio {max_update_ratio}; \
                 nothing was written. {}",
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
    let checks = check_edits(model, tok, requests, &outcome.deltas, &losses, pad_id)?;
    Ok(EditRun { outcome, checks, templates })
}

/// A method report as a JSON object (reports are plain structs; this cannot fail for them).
pub(crate) fn report_json(report: &impl Serialize) -> Value {
    serde_json::to_value(report).unwrap_or(Value::Null)
}
