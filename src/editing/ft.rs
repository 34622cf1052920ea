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

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use serde::Serialize;

use super::ft_loss::{ft_loss, Objective};
use super::requests::Request;
use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

/// The reference's loss threshold: no step below it, and an epoch below it ends the run.
const STOP_LOSS: f64 = 1e-2;
/// PyTorch `Adam` defaults.
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

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

struct AdamState {
    m: Tensor,
    v: Tensor,
}

/// Fine-tunes on `requests` (targets get their leading space) and returns the deltas; the model
/// is left as it was found.
pub fn fine_tune(model: &mut dyn CausalLm, tok: &Tokenizer, requests: &[Request], params: &FtParams, pad_id: u32) -> Result<FtOutcome> {
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
        let mut state: Vec<AdamState> = w0
            .iter()
            .map(|w| Ok(AdamState { m: w.zeros_like()?, v: w.zeros_like()? }))
            .collect::<candle_core::Result<_>>()?;
        let texts: Vec<String> = requests.iter().map(Request::filled_prompt).collect();
        let targets: Vec<String> = requests.iter().map(Request::target_new_spaced).collect();
        let unk = tok.token_id("<|endoftext|>");
        let mut epochs = Vec::new();
        let mut t = 0usize;
        for epoch in 0..params.num_steps {
            let (mut sum, mut count) = (0.0, 0usize);
            for (txt, tgt) in texts.chunks(params.batch_size).zip(targets.chunks(params.batch_size)) {
                let loss = ft_loss(&*model, tok, txt, tgt, params.objective, pad_id, unk)?;
                let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
                if !value.is_finite() {
                    return Err(Error::Numerical(format!("the fine-tuning loss became {value} at epoch {epoch}; refusing the edit")));
                }
                sum += value * txt.len() as f64;
                count += txt.len();
                if value >= STOP_LOSS {
                    let grads = loss.backward()?;
                    t += 1;
                    let bc1 = 1.0 - BETA1.powi(t as i32);
                    let bc2 = 1.0 - BETA2.powi(t as i32);
                    for (var, st) in vars.iter().zip(state.iter_mut()) {
                        let Some(g) = grads.get(var.as_tensor()) else { continue };
                        let w = var.as_tensor();
                        let g = if params.weight_decay != 0.0 { (g + w.affine(params.weight_decay, 0.0)?)? } else { g.clone() };
                        st.m = ((&st.m * BETA1)? + (&g * (1.0 - BETA1))?)?;
                        st.v = ((&st.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                        let denom = ((&st.v / bc2)?.sqrt()? + EPS)?;
                        let step = (st.m.broadcast_div(&denom)? * (params.lr / bc1))?;
                        var.set(&(w - step)?)?;
                    }
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
        Ok(FtOutcome { deltas, epochs, steps: t })
    })();
    for (n, t) in &originals {
        model.set_parameter(n, t)?;
    }
    result
}
