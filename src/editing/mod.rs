//! Knowledge-editing methods (ROME, MEMIT) and what they share: requests, hyperparameters,
//! context templates, subject positions, the target-vector optimisation and the linear algebra.
//!
//! A method is a function from (model, tokenizer, statistics, requests, hyperparameters) to
//! weight deltas; the model is left as it was found. Every method implements
//! [`method::EditMethod`], and [`method::run_edit`] drives any of them. Loading, saving and the
//! CLI stay outside.

pub mod hparams;
pub mod ft_loss;
pub mod linalg;
pub mod memit;
pub mod method;
pub mod optimize;
pub mod positions;
pub mod reprs;
pub mod requests;
pub mod rome;
pub mod templates;
pub mod verify;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::models::modules::find;
use crate::models::{CausalLm, Site};
use hparams::Hparams;
use optimize::OptimizeParams;

/// Weight changes keyed by the reference's module name (`transformer.h.17.mlp.c_proj`), each
/// `[out, in]`, f32, on the CPU.
pub type Deltas = BTreeMap<String, Tensor>;

pub(crate) fn optimize_params(hp: &Hparams, site: Site, layer: usize) -> OptimizeParams {
    OptimizeParams {
        site,
        layer,
        steps: hp.v_num_grad_steps,
        lr: hp.v_lr,
        weight_decay: hp.v_weight_decay,
        clamp_norm_factor: hp.clamp_norm_factor,
        kl_factor: hp.kl_factor,
    }
}

/// ‖v‖₂ accumulated in f64.
pub(crate) fn vec_norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

/// ‖t‖_F of a tensor of any float dtype, accumulated in f64.
pub fn frobenius_norm(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

/// Sets module `name` to `base + upd` (`upd` is `[out, in]`), computed in f32.
fn set_sum(model: &mut dyn CausalLm, name: &str, base: &Tensor, upd: &Tensor) -> Result<()> {
    let m = find(model.config(), name)?;
    let d = m.from_out_in(upd)?.to_device(base.device())?;
    let new = (base.to_dtype(DType::F32)? + d.to_dtype(DType::F32)?)?;
    model.set_weight(&m.name, new)
}

/// Adds `sign · Δ` to the model's weights in memory (e.g. to score an edit without writing it).
pub fn apply_deltas(model: &mut dyn CausalLm, deltas: &Deltas, sign: f64) -> Result<()> {
    for (name, delta) in deltas {
        let w = model.weight(name)?;
        set_sum(model, name, &w, &delta.affine(sign, 0.0)?)?;
    }
    Ok(())
}

/// Keeps the original weights a method touches, so the model can be put back exactly as it
/// was (tensors are reference-counted: keeping them costs no copy).
pub(crate) struct ModelRestorer {
    originals: BTreeMap<String, Tensor>,
}

impl ModelRestorer {
    pub fn new(model: &dyn CausalLm, names: &[String]) -> Result<Self> {
        let mut originals = BTreeMap::new();
        for n in names {
            originals.insert(n.clone(), model.weight(n)?);
        }
        Ok(Self { originals })
    }

    /// ‖W‖_F of the original weight.
    pub fn original_norm(&self, name: &str) -> Result<f64> {
        frobenius_norm(&self.originals[name])
    }

    /// W ← W + upd (`upd` is `[out, in]`).
    pub fn add(&mut self, model: &mut dyn CausalLm, name: &str, upd: &Tensor) -> Result<()> {
        let w = model.weight(name)?;
        set_sum(model, name, &w, upd)
    }

    /// W ← W_original + upd (`upd` is `[out, in]`).
    pub fn set_from_original(&mut self, model: &mut dyn CausalLm, name: &str, upd: &Tensor) -> Result<()> {
        set_sum(model, name, &self.originals[name], upd)
    }

    pub fn restore(self, model: &mut dyn CausalLm) -> Result<()> {
        for (n, w) in self.originals {
            model.set_weight(&n, w)?;
        }
        Ok(())
    }
}
