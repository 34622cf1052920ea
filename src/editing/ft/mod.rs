//! The fine-tuning baselines' optimisation (reference spec §4.1, kmeng01/memit
//! `baselines/ft/ft_main.py`): FT, FT-L (an L∞ ball around the original weights), FT-W (weight
//! decay) and EasyEdit's FT-M objective, on every parameter whose name contains
//! `rewrite_module_tmp` with a layer filled in (a module's weight *and* bias; a whole block for
//! `transformer.h.{}`).
//!
//! The loop, as the reference: `num_steps` epochs over the requests in chunks of `batch_size`;
//! per chunk the loss, an Adam step (PyTorch's, with coupled L2 weight decay) only when the loss
//! is at least 1e-2, then the clamp to w₀ ± ε when a constraint is set; stop after an epoch whose
//! mean loss (weighted by chunk size) is below 1e-2. The deltas w − w₀ are returned and the model
//! is restored. Only the tuned tensors are `Var`s, so no other weight gets a gradient.

pub mod hparams;
pub mod loss;

pub use hparams::FtHparams;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use serde::Serialize;

use super::requests::Request;
use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;
use loss::{ft_loss, Objective};

/// The reference's loss threshold: no step below it, and an epoch below it ends the run.
const STOP_LOSS: f64 = 1e-2;

/// What one fine-tuning run does.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FtParams {
    pub layers: Vec<usize>,
    /// Tuned: every parameter whose name contains this with a layer in place of `{}`.
    pub rewrite_module_tmp: String,
    pub num_steps: usize,
    pub lr: f64,
    /// Adam's (coupled) weight decay.
    pub weight_decay: f64,
    /// FT-L: clamp every tuned element to w₀ ± ε after each step.
    pub norm_constraint: Option<f64>,
    pub batch_size: usize,
    pub objective: Objective,
}

/// One epoch's mean loss.
#[derive(Clone, Debug, Serialize)]
pub struct EpochLoss {
    pub epoch: usize,
    pub loss: f64,
}

/// The result of one run: per tuned parameter (checkpoint name, stored layout) its change.
#[derive(Debug)]
pub struct FtOutcome {
    pub deltas: BTreeMap<String, Tensor>,
    pub epochs: Vec<EpochLoss>,
    /// Per chunk of `batch_size` requests, its loss at each epoch (before that epoch's step).
    pub chunk_losses: Vec<Vec<f64>>,
    /// Adam steps taken (chunks whose loss was at least 1e-2).
    pub steps: usize,
}

/// The parameters `params` tunes, by name, with their current values.
pub fn tuned_parameters(model: &mut dyn CausalLm, params: &FtParams) -> Result<Vec<(String, Tensor)>> {
    let patterns: Vec<String> = params.layers.iter().map(|l| params.rewrite_module_tmp.replace("{}", &l.to_string())).collect();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for p in &patterns {
        for (n, t) in model.parameters_matching(p)? {
            if !out.iter().any(|(m, _)| *m == n) {
                out.push((n, t));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "`rewrite_module_tmp` {:?} with layers {:?} matches no parameter of this model ({}); `edit inspect` lists the modules",
            params.rewrite_module_tmp,
            params.layers,
            patterns.join(", ")
        )));
    }
    Ok(out)
}

/// Fine-tunes on `requests` (targets get their leading space) and returns the deltas; the model
/// is left as it was found.
pub fn fine_tune(model: &mut dyn CausalLm, tok: &Tokenizer, requests: &[Request], params: &FtParams) -> Result<FtOutcome> {
    if params.num_steps == 0 || params.batch_size == 0 {
        return Err(Error::Input("fine-tuning needs `num_steps` and `batch_size` of at least 1".into()));
    }
    let originals = tuned_parameters(model, params)?;
    tracing::info!(
        "fine-tuning {} tensor(s): {}",
        originals.len(),
        originals.iter().map(|(n, t)| format!("{n} {:?}", t.dims())).collect::<Vec<_>>().join(", ")
    );
    let result = (|| {
        // The tuned tensors become Vars in the model's compute dtype (f32 by default), so that
        // the model computes with exactly the values Adam updates.
        let w0: Vec<Tensor> = originals.iter().map(|(_, t)| t.copy()).collect::<candle_core::Result<_>>()?;
        let vars: Vec<Var> = w0.iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()?;
        for ((n, _), v) in originals.iter().zip(&vars) {
            model.set_parameter(n, v.as_tensor())?;
        }
        let mut adam = super::adam::Adam::new(&vars.iter().map(Var::as_tensor).collect::<Vec<_>>(), params.lr, params.weight_decay)?;
        let var_refs: Vec<&Var> = vars.iter().collect();
        let texts: Vec<String> = requests.iter().map(Request::filled_prompt).collect();
        let targets: Vec<String> = requests.iter().map(Request::target_new_spaced).collect();
        let unk = tok.token_id("<|endoftext|>");
        let mut epochs = Vec::new();
        let mut chunk_losses: Vec<Vec<f64>> = vec![Vec::new(); texts.len().div_ceil(params.batch_size)];
        let mut t = 0usize;
        for epoch in 0..params.num_steps {
            let (mut sum, mut count) = (0.0, 0usize);
            for (c, (txt, tgt)) in texts.chunks(params.batch_size).zip(targets.chunks(params.batch_size)).enumerate() {
                let loss = ft_loss(&*model, tok, txt, tgt, params.objective, unk)?;
                let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
                if !value.is_finite() {
                    return Err(Error::Numerical(format!(
                        "the fine-tuning loss became {value} at epoch {epoch}; refusing the edit. Lower `lr`, or \
                         set `norm_constraint` (FT-L)"
                    )));
                }
                chunk_losses[c].push(value);
                sum += value * txt.len() as f64;
                count += txt.len();
                if value >= STOP_LOSS {
                    let grads = loss.backward()?;
                    t += 1;
                    let g: Vec<Option<Tensor>> = vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect();
                    adam.step(&var_refs, &g)?;
                }
                if let Some(eps) = params.norm_constraint {
                    for (var, w0) in vars.iter().zip(&w0) {
                        let lo = w0.affine(1.0, -eps)?;
                        let hi = w0.affine(1.0, eps)?;
                        var.set(&var.as_tensor().maximum(&lo)?.minimum(&hi)?)?;
                    }
                }
            }
            let mean = sum / count as f64;
            tracing::debug!("epoch {epoch}: loss {mean:.4}");
            epochs.push(EpochLoss { epoch, loss: mean });
            if mean < STOP_LOSS {
                break;
            }
        }
        let mut deltas = BTreeMap::new();
        for (((n, _), var), w0) in originals.iter().zip(&vars).zip(&w0) {
            deltas.insert(n.clone(), (var.as_tensor() - w0)?.to_dtype(DType::F32)?);
        }
        Ok(FtOutcome { deltas, epochs, chunk_losses, steps: t })
    })();
    for (n, t) in &originals {
        model.set_parameter(n, t)?;
    }
    result
}

/// The fine-tuning methods behind the common interface, with their config: all requests are one
/// fine-tuning run (how FT-W edits 10,000 facts at once).
pub struct Ft {
    pub hp: FtHparams,
}

/// One request's report: the loss of its chunk, epoch by epoch.
#[derive(Serialize)]
struct FtReport<'a> {
    index: usize,
    subject: &'a str,
    target_new: &'a str,
    chunk: usize,
    losses: &'a [f64],
    epochs: usize,
    steps: usize,
    weight_decay: f64,
}

/// A tuned parameter's delta under its [`super::Deltas`] key: a linear module's weight by the
/// module's name as `[out, in]`, anything else by its checkpoint name as stored.
fn delta_entry(cfg: &crate::config::ModelConfig, name: &str, delta: Tensor) -> Result<(String, Tensor)> {
    use crate::models::modules::{find, is_linear_name};
    if name.ends_with(".weight") && is_linear_name(cfg, name) {
        let m = find(cfg, name)?;
        let d = m.to_out_in(&delta)?;
        return Ok((m.name, d));
    }
    Ok((name.to_string(), delta))
}

impl super::method::EditMethod for Ft {
    fn method(&self) -> super::registry::Method {
        super::registry::Method::Ft
    }

    fn edit(&self, model: &mut dyn CausalLm, inputs: super::method::EditInputs) -> Result<super::method::EditOutcome> {
        use super::method::{report_json, EditOutcome, ModuleUpdate, RequestOutcome, UpdateSize};
        use super::optimize::LossPoint;
        let n = inputs.requests.len();
        let params = self.hp.params(n);
        if let Some((a, b)) = self.hp.wd_power_law {
            if self.hp.wd_power_law_tuple_check {
                tracing::info!("weight decay {} (wd_power_law [{a}, {b}] ignored: the reference's tuple check)", params.weight_decay);
            } else {
                tracing::info!("weight decay {:.4e} = {n}^{a} · e^{b} for {n} edit(s) (wd_power_law)", params.weight_decay);
            }
        }
        let out = fine_tune(model, inputs.tok, inputs.requests, &params)?;
        let cfg = model.config().clone();
        let mut deltas = super::Deltas::new();
        let mut modules = Vec::new();
        for (name, d) in out.deltas {
            let weight_norm = super::frobenius_norm(&model.parameter(&name)?)?;
            let update_norm = super::frobenius_norm(&d)?;
            let (key, value) = delta_entry(&cfg, &name, d)?;
            modules.push(ModuleUpdate { module: key.clone(), update_norm, weight_norm, solver: None });
            deltas.insert(key, value);
        }
        modules.sort_by(|a, b| a.module.cmp(&b.module));
        let total = |f: fn(&ModuleUpdate) -> f64| modules.iter().map(|m| f(m).powi(2)).sum::<f64>().sqrt();
        let sizes = vec![UpdateSize {
            what: format!("the {} tuned tensor(s) together", modules.len()),
            update_norm: total(|m| m.update_norm),
            weight_norm: total(|m| m.weight_norm),
            detail: String::new(),
            hint: "Lower `lr` or `num_steps`, or set `norm_constraint` (FT-L), or raise the limit".into(),
        }];
        let requests = inputs
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let chunk = i / params.batch_size;
                let losses = &out.chunk_losses[chunk];
                let points: Vec<LossPoint> = losses.iter().map(|&l| LossPoint { nll: l, kl: 0.0, weight_decay: 0.0, total: l }).collect();
                let report = FtReport {
                    index: r.index,
                    subject: &r.subject,
                    target_new: &r.target_new,
                    chunk,
                    losses,
                    epochs: out.epochs.len(),
                    steps: out.steps,
                    weight_decay: params.weight_decay,
                };
                // The loss is its chunk's (the requests are tuned together), and the steps the run's.
                let together = inputs.requests[chunk * params.batch_size..].len().min(params.batch_size);
                let tail = match (out.chunk_losses.len(), together) {
                    (1, 1) => "one run".to_string(),
                    (1, k) => format!("one run of {k} requests (their mean loss)"),
                    (c, 1) => format!("chunk {chunk} of {c}"),
                    (c, k) => format!("chunk {chunk} of {c} ({k} requests, their mean loss)"),
                };
                RequestOutcome::new(r.index, &r.subject, &r.target_new, &points, out.steps, tail, report_json(&report))
            })
            .collect();
        Ok(EditOutcome { deltas, requests, modules, sizes })
    }
}
