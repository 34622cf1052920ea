//! ROME (reference spec §1): one rank-one update of one MLP down-projection per request,
//! requests applied one after another.
//!
//! ΔW = v uᵀ in `[out, in]`, with u = C⁻¹k̄ / ‖C⁻¹k̄‖ (k̄ the key averaged over the context
//! templates) and v = (v* − (W k + b)) / (u·k), where v* is the optimised MLP output. By
//! default k and W k + b come from the bare prompt, as in the reference; with
//! `original_implementation = false` they are the template averages (the r-ROME fix).

pub mod hparams;

pub use hparams::{RomeHparams, TemplatePrompt};

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::optimize::{optimize_targets, LossPoint};
use super::reprs::{at_subject_last, Wanted};
use super::requests::Request;
use super::templates::ContextTemplates;
use super::{frobenius_norm, optimize_params, vec_norm, Deltas, ModelRestorer};
use crate::error::{Error, Result};
use crate::linalg::{to_mat, LayerStats};
use crate::models::modules::mlp_down;
use crate::models::{CausalLm, Site};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, Serialize)]
pub struct RomeReport {
    pub index: usize,
    pub case_id: Option<serde_json::Value>,
    pub subject: String,
    pub target_new: String,
    pub module: String,
    /// ‖k̄‖: the template-averaged key.
    pub key_norm: f64,
    /// u·k, the denominator of v (small values give huge updates: the reference's known failure).
    pub division_factor: f64,
    /// ‖v₀‖: the MLP output before the edit (first template).
    pub init_norm: f64,
    pub delta_norm: f64,
    pub target_norm: f64,
    /// ‖ΔW‖_F = ‖v‖ since ‖u‖ = 1.
    pub update_norm: f64,
    /// ‖W‖_F of the weight before this request.
    pub weight_norm: f64,
    pub steps: usize,
    pub losses: Vec<LossPoint>,
    pub seconds: f64,
}

pub struct RomeOutcome {
    pub deltas: Deltas,
    pub reports: Vec<RomeReport>,
}

/// Computes ROME's updates for `requests` (sequentially: each sees the earlier edits) and
/// returns their sum; the model is left unchanged.
pub fn apply_rome(
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    requests: &[Request],
    hp: &RomeHparams,
    stats: &mut BTreeMap<usize, LayerStats>,
    templates: &ContextTemplates,
) -> Result<RomeOutcome> {
    let layer = *hp.layers.first().ok_or_else(|| Error::Input("ROME needs one layer in `layers`".into()))?;
    let module = mlp_down(model.config(), layer)?;
    if hp.mom2_adjustment && !stats.contains_key(&layer) {
        return Err(Error::Input(format!("no second-moment statistics loaded for layer {layer}")));
    }
    let mut restorer = ModelRestorer::new(&mut *model, std::slice::from_ref(&module.name))?;
    let result = (|| {
        let flat = templates.flat();
        let mut total = Tensor::zeros((module.out_dim, module.in_dim), DType::F32, &Device::Cpu)?;
        let mut reports = Vec::new();
        for req in requests {
            let started = Instant::now();
            // k̄ (and the template-averaged output, for r-ROME).
            let items: Vec<(String, String)> = flat.iter().map(|t| (t.replacen("{}", &req.prompt, 1), req.subject.clone())).collect();
            let wanted = Wanted { keys: Some(layer), mlp_out: Some(layer), block_out: None };
            let ctx = at_subject_last(&*model, tok, &items, &wanted)?;
            let k_mean = ctx.keys.expect("keys").mean(0)?;
            let out_mean = ctx.mlp_out.expect("mlp out").mean(0)?;
            let k_bar: Vec<f32> = k_mean.to_vec1()?;
            let params = optimize_params(hp, Site::MlpOut, layer);
            let opt = optimize_targets(&*model, tok, &[req], &flat, &params)?.remove(0);
            // u after v*: it does not depend on it, and C (read on first use) and the
            // optimisation's graph are then never in memory together.
            let mut u: Vec<f64> = if hp.mom2_adjustment {
                let st = stats.get_mut(&layer).ok_or_else(|| Error::Internal(format!("layer {layer}'s statistics vanished")))?;
                let k = to_mat(&k_mean.unsqueeze(1)?)?;
                let x = st.factor()?.solve(&k);
                (0..x.nrows()).map(|i| x[(i, 0)]).collect()
            } else {
                k_bar.iter().map(|&x| f64::from(x)).collect()
            };
            let un = u.iter().map(|x| x * x).sum::<f64>().sqrt();
            u.iter_mut().for_each(|x| *x /= un);

            let (cur_in, cur_out): (Vec<f32>, Vec<f32>) = if hp.original_implementation {
                let bare = at_subject_last(&*model, tok, &[(req.prompt.clone(), req.subject.clone())], &wanted)?;
                (bare.keys.expect("keys").squeeze(0)?.to_vec1()?, bare.mlp_out.expect("mlp").squeeze(0)?.to_vec1()?)
            } else {
                (k_bar.clone(), out_mean.to_vec1()?)
            };
            let denom: f64 = cur_in.iter().zip(&u).map(|(&k, &u)| f64::from(k) * u).sum();
            let right: Vec<f32> = opt.target.iter().zip(&cur_out).map(|(&t, &o)| ((f64::from(t) - f64::from(o)) / denom) as f32).collect();
            if !denom.is_finite() || right.iter().any(|x| !x.is_finite()) {
                return Err(Error::Numerical(format!(
                    "request {} ({:?} → {:?}): the update is not finite (u·k = {denom:e}); refusing to write it",
                    req.index, req.subject, req.target_new
                )));
            }
            let u32s: Vec<f32> = u.iter().map(|&x| x as f32).collect();
            let v_t = Tensor::from_vec(right.clone(), (module.out_dim, 1), &Device::Cpu)?;
            let u_t = Tensor::from_vec(u32s, (1, module.in_dim), &Device::Cpu)?;
            let upd = v_t.matmul(&u_t)?;
            let weight_norm = frobenius_norm(&model.weight(&module.name)?)?;
            restorer.add(model, &module.name, &upd)?;
            total = (total + &upd)?;
            reports.push(RomeReport {
                index: req.index,
                case_id: req.case_id.clone(),
                subject: req.subject.clone(),
                target_new: req.target_new.clone(),
                module: module.name.clone(),
                key_norm: vec_norm(&k_bar),
                division_factor: denom,
                init_norm: vec_norm(&opt.init),
                delta_norm: vec_norm(&opt.delta),
                target_norm: vec_norm(&opt.target),
                update_norm: vec_norm(&right),
                weight_norm,
                steps: opt.steps,
                losses: opt.losses,
                seconds: started.elapsed().as_secs_f64(),
            });
            tracing::info!(
                "request {}: {:?} → {:?}: loss {:.3} after {} steps, u·k {:.3e}, ‖ΔW‖ {:.3}",
                req.index,
                req.subject,
                req.target_new,
                reports.last().and_then(|r| r.losses.last()).map(|l| l.total).unwrap_or(f64::NAN),
                opt.steps,
                denom,
                vec_norm(&right)
            );
        }
        let mut deltas = Deltas::new();
        deltas.insert(module.name.clone(), total);
        Ok(RomeOutcome { deltas, reports })
    })();
    restorer.restore(model)?;
    result
}

/// ROME behind the common method interface, with its config.
pub struct Rome {
    pub hp: RomeHparams,
}

impl super::method::EditMethod for Rome {
    fn method(&self) -> super::registry::Method {
        super::registry::Method::Rome
    }

    fn stats_need(&self) -> Option<crate::stats::ensure::StatsNeed> {
        self.hp.mom2_adjustment.then(|| self.hp.stats_need())
    }

    fn default_seed(&self) -> u64 {
        self.hp.seed
    }

    fn context_templates(&self, model: &dyn CausalLm, tok: &Tokenizer, seed: u64) -> Result<Option<ContextTemplates>> {
        if let Some(t) = &self.hp.context_templates {
            return Ok(Some(super::templates::from_config(t, super::registry::Method::Rome)));
        }
        let params = self.hp.context_template_length_params.clone().unwrap_or_default();
        let start = super::templates::rome_start(model, tok, self.hp.context_template_prompt)?;
        super::templates::rome_templates(model, tok, &params, &start, seed).map(Some)
    }

    fn edit(&self, model: &mut dyn CausalLm, inputs: super::method::EditInputs) -> Result<super::method::EditOutcome> {
        use super::method::{report_json, EditOutcome, ModuleUpdate, RequestOutcome, UpdateSize};
        let templates = inputs.templates()?;
        let out = apply_rome(model, inputs.tok, inputs.requests, &self.hp, inputs.stats, templates)?;
        let what = |r: &RomeReport| format!("request {} ({:?} → {:?})", r.index, r.subject, r.target_new);
        let sizes = out
            .reports
            .iter()
            .map(|r| UpdateSize {
                what: what(r),
                update_norm: r.update_norm,
                weight_norm: r.weight_norm,
                detail: format!("u·k = {:.3e}", r.division_factor),
                hint: "Try --set original_implementation=false (r-ROME) or raise the limit".into(),
            })
            .collect();
        let requests = out
            .reports
            .iter()
            .map(|r| {
                let tail = format!("‖ΔW‖ {:.3}, {:.2}s", r.update_norm, r.seconds);
                RequestOutcome::new(r.index, &r.subject, &r.target_new, &r.losses, r.steps, tail, report_json(r))
            })
            .collect();
        let weight_norm = out.reports.first().map(|r| r.weight_norm).unwrap_or(0.0);
        let modules = out
            .deltas
            .iter()
            .map(|(m, d)| Ok(ModuleUpdate { module: m.clone(), update_norm: frobenius_norm(d)?, weight_norm, solver: None }))
            .collect::<Result<_>>()?;
        Ok(EditOutcome { deltas: out.deltas, requests, modules, sizes })
    }
}
