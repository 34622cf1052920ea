//! MEMIT (reference spec §2): many edits at once, spread over several MLP layers.
//!
//! 1. For each request, z = the block output at the last edited layer that makes the target
//!    likely (optimised on the unedited model; requests in batches of `z_batch_size`).
//! 2. For each layer l in ascending order, on the model as edited so far: keys K at the
//!    subject's last token (½ bare prompt, ½ the mean over the sampled contexts), the current
//!    block output h at the last layer, R = (Z − h) / (layers left), and
//!    ΔW_l = R Kᵀ (λC + KKᵀ)⁻¹ in f64, applied at once so later layers see it.

pub mod hparams;

pub use hparams::{MemitHparams, Solver};

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Device;
use faer::Mat;
use serde::Serialize;

use super::hparams::Common;
use super::optimize::{optimize_targets, LossPoint, OptimizedTarget};
use super::reprs::{at_subject_last, Wanted};
use super::requests::Request;
use super::templates::ContextTemplates;
use super::{optimize_params, vec_norm, Deltas, ModelRestorer};
use crate::error::{Error, Result};
use crate::linalg::{memit_solve_direct, memit_solve_push_through, memit_solve_spd, to_mat, to_tensor, LayerStats};
use crate::models::modules::mlp_down;
use crate::models::{CausalLm, Site};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, Serialize)]
pub struct MemitRequestReport {
    pub index: usize,
    pub case_id: Option<serde_json::Value>,
    pub subject: String,
    pub target_new: String,
    /// ‖z₀‖: the block output before the edit.
    pub init_norm: f64,
    pub delta_norm: f64,
    pub steps: usize,
    pub losses: Vec<LossPoint>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemitLayerReport {
    pub layer: usize,
    pub module: String,
    /// Mean ‖k‖ over the requests.
    pub key_norm: f64,
    /// Mean ‖z − h‖ over the requests before this layer's update.
    pub residual_norm: f64,
    pub update_norm: f64,
    pub weight_norm: f64,
    /// Which form of the solve was used (`solver`; `auto` picks by size).
    pub solver: &'static str,
    pub seconds: f64,
}

pub struct MemitOutcome {
    pub deltas: Deltas,
    pub requests: Vec<MemitRequestReport>,
    pub layers: Vec<MemitLayerReport>,
    pub z_seconds: f64,
}

/// The z vectors of all requests, `batch` requests optimised together (1 = one by one, as the
/// reference).
pub fn compute_zs(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    requests: &[Request],
    hp: &Common,
    templates: &ContextTemplates,
    batch: usize,
) -> Result<Vec<OptimizedTarget>> {
    let z_layer = *hp.layers.last().ok_or_else(|| Error::Input("MEMIT needs at least one layer".into()))?;
    let params = optimize_params(hp, Site::BlockOut, z_layer);
    let flat = templates.flat();
    // Requests of similar length share a batch, so little compute goes to padding.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    let lens: Vec<usize> = requests.iter().map(|r| r.token_count(tok)).collect::<Result<_>>()?;
    order.sort_by_key(|&i| lens[i]);
    let chunks: Vec<&[usize]> = order.chunks(batch.max(1)).collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    // Each chunk's optimisation reads the model only: on small models they run side by side.
    let zs = crate::threads::map_parallel(chunks.len(), crate::threads::request_workers(), |c| {
        let refs: Vec<&Request> = chunks[c].iter().map(|&i| &requests[i]).collect();
        let zs = optimize_targets(model, tok, &refs, &flat, &params)?;
        let n = done.fetch_add(chunks[c].len(), std::sync::atomic::Ordering::Relaxed) + chunks[c].len();
        tracing::debug!("z vectors: {n}/{}", requests.len());
        Ok::<_, Error>(zs)
    })?;
    let mut slots: Vec<Option<OptimizedTarget>> = (0..requests.len()).map(|_| None).collect();
    for (chunk, zs) in chunks.iter().zip(zs) {
        for (&i, z) in chunk.iter().zip(zs) {
            slots[i] = Some(z);
        }
    }
    let out: Vec<OptimizedTarget> = slots.into_iter().map(|z| z.expect("every request optimised")).collect();
    for (r, z) in requests.iter().zip(&out) {
        if z.target.iter().any(|x| !x.is_finite()) {
            return Err(Error::Numerical(format!(
                "request {} ({:?} → {:?}): its target vector is not finite; refusing to write the edit",
                r.index, r.subject, r.target_new
            )));
        }
    }
    Ok(out)
}

/// MEMIT keys: per request, the mean over each template group, then over the groups.
fn memit_keys(model: &dyn CausalLm, tok: &Tokenizer, requests: &[Request], templates: &ContextTemplates, layer: usize) -> Result<Mat<f64>> {
    let mut items = Vec::new();
    for r in requests {
        for g in &templates.groups {
            for t in g {
                items.push((t.replacen("{}", &r.prompt, 1), r.subject.clone()));
            }
        }
    }
    let wanted = Wanted { keys: Some(layer), ..Wanted::default() };
    let keys = to_mat(&at_subject_last(model, tok, &items, &wanted)?.keys.expect("keys"))?;
    let d_ff = keys.ncols();
    let groups: Vec<usize> = templates.groups.iter().map(Vec::len).filter(|&n| n > 0).collect();
    let per_request: usize = groups.iter().sum();
    // K is [d_ff, n] as in the reference's solve.
    let mut k = Mat::<f64>::zeros(d_ff, requests.len());
    for j in 0..requests.len() {
        let mut row = j * per_request;
        for &n in &groups {
            let w = 1.0 / (n as f64 * groups.len() as f64);
            for _ in 0..n {
                for f in 0..d_ff {
                    k[(f, j)] += w * keys[(row, f)];
                }
                row += 1;
            }
        }
    }
    Ok(k)
}

/// Computes MEMIT's updates for all `requests` at once; the model is left unchanged.
pub fn apply_memit(
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    requests: &[Request],
    hp: &MemitHparams,
    stats: &mut BTreeMap<usize, LayerStats>,
    templates: &ContextTemplates,
) -> Result<MemitOutcome> {
    let lambda = hp.mom2_update_weight;
    check_stats(&hp.layers, stats)?;
    let n = requests.len();
    let z_batch = hp.z_batch(model.device());
    edit_by_layers(model, tok, requests, hp, z_batch, templates, &mut |layer, k, resid| {
        let st = stats.get_mut(&layer).ok_or_else(|| Error::Internal(format!("layer {layer}'s statistics vanished")))?;
        let (adj_k, solver_used) = match hp.solver {
            Solver::Direct => (memit_solve_direct(st.c()?, lambda, k), "direct (d_ff×d_ff, LU)"),
            Solver::Auto if n >= k.nrows() => (memit_solve_spd(st.c()?, lambda, k)?, "direct (d_ff×d_ff, Cholesky)"),
            Solver::PushThrough | Solver::Auto => (memit_solve_push_through(st.factor()?, lambda, k)?, "push-through (n×n)"),
        };
        st.done();
        Ok((resid * adj_k.transpose(), solver_used))
    })
}

/// Refuses an edit of layers whose statistics are not loaded.
pub(crate) fn check_stats(layers: &[usize], stats: &BTreeMap<usize, LayerStats>) -> Result<()> {
    match layers.iter().find(|l| !stats.contains_key(l)) {
        Some(l) => Err(Error::Input(format!("no second-moment statistics loaded for layer {l}"))),
        None => Ok(()),
    }
}

/// An edit built on MEMIT's targets (MEMIT's own, AlphaEdit's): the z vectors of all requests
/// (`z_batch` optimised together), then their spreading over the edited layers, `solve` giving
/// each layer's update. The model is left unchanged.
pub(crate) fn edit_by_layers(
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    requests: &[Request],
    hp: &Common,
    z_batch: usize,
    templates: &ContextTemplates,
    solve: &mut LayerSolve,
) -> Result<MemitOutcome> {
    let started = Instant::now();
    let zs = compute_zs(&*model, tok, requests, hp, templates, z_batch)?;
    let z_seconds = started.elapsed().as_secs_f64();
    let (deltas, layers) = spread_over_layers(model, tok, requests, hp, templates, &zs, solve)?;
    Ok(MemitOutcome { deltas, requests: request_reports(requests, zs), layers, z_seconds })
}

/// Per request, what its target vector's optimisation did.
fn request_reports(requests: &[Request], zs: Vec<OptimizedTarget>) -> Vec<MemitRequestReport> {
    requests
        .iter()
        .zip(zs)
        .map(|(r, z)| MemitRequestReport {
            index: r.index,
            case_id: r.case_id.clone(),
            subject: r.subject.clone(),
            target_new: r.target_new.clone(),
            init_norm: vec_norm(&z.init),
            delta_norm: vec_norm(&z.delta),
            steps: z.steps,
            losses: z.losses,
        })
        .collect()
}

/// A layer's update from its keys `K` `[d_ff, n]` and its share of the residuals `R` `[d, n]`:
/// ΔW `[d, d_ff]` (`[out, in]`) and the name of the solve used. Called with the layer's number.
pub(crate) type LayerSolve<'a> = dyn FnMut(usize, &Mat<f64>, &Mat<f64>) -> Result<(Mat<f64>, &'static str)> + 'a;

/// MEMIT's spreading of the targets `zs` over the edited layers: for each layer in ascending order, on the model as edited so far,
/// the keys K, the current block output h at the last layer, R = (Z − h) / (layers left), and
/// the update `solve` returns, applied at once so that later layers see it. Returns the
/// deltas and a report per layer; the model is left unchanged.
fn spread_over_layers(
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    requests: &[Request],
    hp: &Common,
    templates: &ContextTemplates,
    zs: &[OptimizedTarget],
    solve: &mut LayerSolve,
) -> Result<(Deltas, Vec<MemitLayerReport>)> {
    let z_layer = *hp.layers.last().ok_or_else(|| Error::Input("MEMIT needs at least one layer".into()))?;
    let names: Vec<String> = hp.layers.iter().map(|&l| Ok(mlp_down(model.config(), l)?.name)).collect::<Result<_>>()?;
    let d = model.config().d_model;
    let n = requests.len();
    let z_mat = Mat::from_fn(d, n, |i, j| f64::from(zs[j].target[i]));
    let bare: Vec<(String, String)> = requests.iter().map(|r| (r.prompt.clone(), r.subject.clone())).collect();

    let mut restorer = ModelRestorer::new(&mut *model, &names)?;
    let result = (|| {
        let mut deltas = Deltas::new();
        let mut layer_reports = Vec::new();
        for (i, (&layer, name)) in hp.layers.iter().zip(&names).enumerate() {
            let t0 = Instant::now();
            let k = memit_keys(&*model, tok, requests, templates, layer)?;
            let wanted = Wanted { block_out: Some(z_layer), ..Wanted::default() };
            let cur = to_mat(&at_subject_last(&*model, tok, &bare, &wanted)?.block_out.expect("block out"))?;
            // targets [d, n] = Z − h, spread over the layers left (this one included).
            let left = (hp.layers.len() - i) as f64;
            let resid = Mat::from_fn(d, n, |a, j| (z_mat[(a, j)] - cur[(j, a)]) / left);
            let (upd, solver_used) = solve(layer, &k, &resid)?; // [d, d_ff] = [out, in]
            tracing::info!("layer {layer}: {n} edits, {}-wide keys: solved {solver_used}", k.nrows());
            let upd_norm = upd.norm_l2();
            if !upd_norm.is_finite() {
                return Err(Error::Numerical(format!(
                    "layer {layer}: the update is not finite; refusing to write it (check the statistics and the config's regulariser)"
                )));
            }
            let upd_t = to_tensor(&upd, candle_core::DType::F32)?;
            restorer.set_from_original(model, name, &upd_t)?;
            let key_norm = (0..n).map(|j| (0..k.nrows()).map(|f| k[(f, j)] * k[(f, j)]).sum::<f64>().sqrt()).sum::<f64>() / n as f64;
            let residual_norm = (0..n).map(|j| (0..d).map(|a| (resid[(a, j)] * left).powi(2)).sum::<f64>().sqrt()).sum::<f64>() / n as f64;
            layer_reports.push(MemitLayerReport {
                layer,
                module: name.clone(),
                key_norm,
                residual_norm,
                update_norm: upd_norm,
                weight_norm: restorer.original_norm(name)?,
                solver: solver_used,
                seconds: t0.elapsed().as_secs_f64(),
            });
            tracing::info!("layer {layer}: mean ‖z − h‖ {residual_norm:.3}, ‖ΔW‖ {upd_norm:.3}");
            deltas.insert(name.clone(), upd_t.to_device(&Device::Cpu)?);
        }
        Ok((deltas, layer_reports))
    })();
    restorer.restore(model)?;
    result
}

/// MEMIT behind the common method interface, with its config.
pub struct Memit {
    pub hp: MemitHparams,
}

impl super::method::EditMethod for Memit {
    fn method(&self) -> super::registry::Method {
        super::registry::Method::Memit
    }

    fn stats_need(&self) -> Option<crate::stats::ensure::StatsNeed> {
        Some(self.hp.stats_need())
    }

    fn default_seed(&self) -> u64 {
        self.hp.seed
    }

    fn context_templates(&self, model: &dyn CausalLm, tok: &Tokenizer, seed: u64) -> Result<Option<ContextTemplates>> {
        memit_context_templates(&self.hp, model, tok, seed).map(Some)
    }

    fn edit(&self, model: &mut dyn CausalLm, inputs: super::method::EditInputs) -> Result<super::method::EditOutcome> {
        let templates = inputs.templates()?;
        let out = apply_memit(model, inputs.tok, inputs.requests, &self.hp, inputs.stats, templates)?;
        Ok(outcome_of(out))
    }
}

/// MEMIT's context templates (also AlphaEdit's): the config's, or sampled from the model.
pub(crate) fn memit_context_templates(hp: &Common, model: &dyn CausalLm, tok: &Tokenizer, seed: u64) -> Result<ContextTemplates> {
    match &hp.context_templates {
        Some(t) => Ok(super::templates::from_config(t, super::registry::Method::Memit)),
        None => super::templates::memit_templates(model, tok, seed),
    }
}

/// MEMIT's reports in the terms every method shares (also AlphaEdit's, which spreads its
/// updates the same way).
pub(crate) fn outcome_of(out: MemitOutcome) -> super::method::EditOutcome {
    use super::method::{report_json, EditOutcome, ModuleUpdate, RequestOutcome, UpdateSize};
    let worst = out
        .requests
        .iter()
        .max_by(|a, b| a.delta_norm.total_cmp(&b.delta_norm))
        .map(|w| format!("{} ({:?} → {:?})", w.index, w.subject, w.target_new))
        .unwrap_or_default();
    let sizes = out
        .layers
        .iter()
        .map(|l| UpdateSize {
            what: format!("layer {} ({})", l.layer, l.module),
            update_norm: l.update_norm,
            weight_norm: l.weight_norm,
            detail: String::new(),
            hint: format!("The request with the largest target shift is {worst}; raise the config's regulariser (mom2_update_weight, L2) or the limit"),
        })
        .collect();
    let requests = out
        .requests
        .iter()
        .map(|r| {
            let tail = format!("‖δ‖ {:.3}", r.delta_norm);
            RequestOutcome::new(r.index, &r.subject, &r.target_new, &r.losses, r.steps, tail, report_json(r))
        })
        .collect();
    let modules = out
        .layers
        .iter()
        .map(|l| ModuleUpdate { module: l.module.clone(), update_norm: l.update_norm, weight_norm: l.weight_norm, solver: Some(l.solver) })
        .collect();
    EditOutcome { deltas: out.deltas, requests, modules, sizes }
}
