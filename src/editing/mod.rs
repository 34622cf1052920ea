//! Knowledge-editing methods (ROME, MEMIT, AlphaEdit, the fine-tuning baselines, MEND) and what they
//! share: requests, hyperparameters, context templates, subject positions, the target-vector optimisation and the linear algebra.
//!
//! A method is a function from (model, tokenizer, statistics, requests, hyperparameters) to
//! weight deltas; the model is left as it was found. Every method implements
//! [`method::EditMethod`], and [`method::run_edit`] drives any of them. Loading, saving and the
//! CLI stay outside.

pub mod adam;
pub mod alphaedit;
pub mod emmet;
pub mod factors;
pub mod ft;
pub mod hparams;
pub mod memit;
pub mod mend;
pub mod method;
pub mod optimize;
pub mod pipeline;
pub mod positions;
pub mod records;
pub mod registry;
pub mod reprs;
pub mod requests;
pub mod rome;
pub mod state_dir;
pub mod templates;
pub mod ultraedit;
pub mod verify;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::models::modules::find;
use crate::models::{CausalLm, Site};
use hparams::Common;
use optimize::OptimizeParams;

/// Weight changes, f32, on the CPU. A key naming a linear module (`transformer.h.17.mlp.c_proj`)
/// holds the change of its weight as `[out, in]`; a key naming any other parameter by its
/// checkpoint name (`transformer.h.0.mlp.c_proj.bias`, `transformer.h.3.ln_1.weight`, as the
/// fine-tuning methods change them) holds that tensor's change in its stored shape.
pub type Deltas = BTreeMap<String, Tensor>;

/// A delta's identity: SHA-256 of its module names and `[out, in]` f32 values (the first 16
/// hex digits). The same in memory and after a round trip through a delta file.
pub fn delta_id(deltas: &Deltas) -> crate::error::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, d) in deltas {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        let v = d.to_device(&candle_core::Device::Cpu)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        h.update((v.len() as u64).to_le_bytes());
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    Ok(crate::checkpoint::hex(&h.finalize()[..8]))
}

/// An edit's provenance, as delta files record it (`patch::write_delta_file`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeltaMeta {
    /// `rome`, `memit`, ...
    pub method: String,
    /// The edit requests (usually an array of request objects).
    pub requests: serde_json::Value,
    /// The method's hyperparameters.
    pub config: serde_json::Value,
    pub seed: Option<u64>,
    /// The model the delta was computed on.
    pub base_model: crate::identity::ModelIdentity,
    pub tool_version: String,
}

impl DeltaMeta {
    /// Number of edit requests: the array's length, 1 for a single object, 0 for null.
    pub fn request_count(&self) -> usize {
        match &self.requests {
            serde_json::Value::Array(a) => a.len(),
            serde_json::Value::Null => 0,
            _ => 1,
        }
    }
}

/// What a [`Deltas`] key changes.
#[derive(Clone, Debug, PartialEq)]
pub enum DeltaTarget {
    /// A linear module's weight (delta `[out, in]`).
    Module(crate::models::EditableModule),
    /// Any other parameter, by its checkpoint name with the family prefix (delta as stored).
    Tensor(String),
}

/// Classifies a delta key: a name shaped like a linear module's is that module (which must
/// exist); another parameter of this model is that tensor; anything else is refused.
pub fn delta_target(cfg: &crate::config::ModelConfig, key: &str) -> Result<DeltaTarget> {
    use crate::models::modules::{is_linear_name, parameter_name};
    if is_linear_name(cfg, key) {
        return Ok(DeltaTarget::Module(find(cfg, key)?));
    }
    match parameter_name(cfg, key) {
        Some(name) => Ok(DeltaTarget::Tensor(name)),
        // Not a parameter either: the module error names the expected spelling.
        None => Err(find(cfg, key).err().unwrap_or_else(|| crate::Error::Input(format!("`{key}` is not a parameter of this model")))),
    }
}

/// The current value of what `key` names: a module's stored weight, or a parameter.
fn current(model: &mut dyn CausalLm, key: &str) -> Result<Tensor> {
    match delta_target(model.config(), key)? {
        DeltaTarget::Module(m) => model.weight(&m.name),
        DeltaTarget::Tensor(name) => model.parameter(&name),
    }
}

fn set_current(model: &mut dyn CausalLm, key: &str, value: Tensor) -> Result<()> {
    match delta_target(model.config(), key)? {
        DeltaTarget::Module(m) => model.set_weight(&m.name, value),
        DeltaTarget::Tensor(name) => model.set_parameter(&name, &value),
    }
}

pub(crate) fn optimize_params(hp: &Common, site: Site, layer: usize) -> OptimizeParams {
    OptimizeParams {
        site,
        layer,
        steps: hp.v_num_grad_steps,
        lr: hp.v_lr,
        weight_decay: hp.v_weight_decay,
        clamp_norm_factor: hp.clamp_norm_factor,
        kl_factor: hp.kl_factor,
        grad_checkpoint: hp.grad_checkpoint,
        decoded_target_prefix: hp.decoded_target_prefix,
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

/// Sets what `key` names to `base + upd` (`upd` as [`Deltas`] holds it), computed in f32.
fn set_sum(model: &mut dyn CausalLm, key: &str, base: &Tensor, upd: &Tensor) -> Result<()> {
    let d = match delta_target(model.config(), key)? {
        DeltaTarget::Module(m) => m.from_out_in(upd)?,
        DeltaTarget::Tensor(_) => upd.clone(),
    };
    let d = d.to_device(base.device())?;
    let new = (base.to_dtype(DType::F32)? + d.to_dtype(DType::F32)?)?;
    set_current(model, key, new)
}

/// Adds `sign · Δ` to the model's weights in memory (e.g. to score an edit without writing it).
pub fn apply_deltas(model: &mut dyn CausalLm, deltas: &Deltas, sign: f64) -> Result<()> {
    for (key, delta) in deltas {
        let w = current(model, key)?;
        set_sum(model, key, &w, &delta.affine(sign, 0.0)?)?;
    }
    Ok(())
}

/// Edits applied to a model in memory, with the original value of every tensor they changed,
/// so that the model can be put back exactly (an evaluation applies and restores many edits).
#[derive(Default)]
pub struct Snapshot {
    originals: BTreeMap<String, Tensor>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self::default()
    }

    /// W ← W + Δ for every delta, keeping each tensor's value from before its first change.
    pub fn apply(&mut self, model: &mut dyn CausalLm, deltas: &Deltas) -> Result<()> {
        for (key, delta) in deltas {
            let w = current(model, key)?;
            self.originals.entry(key.clone()).or_insert_with(|| w.clone());
            set_sum(model, key, &w, delta)?;
        }
        Ok(())
    }

    /// Puts every changed tensor back to its original value; the snapshot is then empty.
    pub fn restore(&mut self, model: &mut dyn CausalLm) -> Result<()> {
        for (n, w) in std::mem::take(&mut self.originals) {
            set_current(model, &n, w)?;
        }
        Ok(())
    }
}

/// Keeps the original weights a method touches, so the model can be put back exactly as it
/// was (tensors are reference-counted: keeping them costs no copy).
pub(crate) struct ModelRestorer {
    originals: BTreeMap<String, Tensor>,
}

impl ModelRestorer {
    pub fn new(model: &mut dyn CausalLm, names: &[String]) -> Result<Self> {
        let mut originals = BTreeMap::new();
        for n in names {
            originals.insert(n.clone(), current(model, n)?);
        }
        Ok(Self { originals })
    }

    /// ‖W‖_F of the original weight.
    pub fn original_norm(&self, name: &str) -> Result<f64> {
        frobenius_norm(&self.originals[name])
    }

    /// W ← W + upd (`upd` as [`Deltas`] holds it).
    pub fn add(&mut self, model: &mut dyn CausalLm, name: &str, upd: &Tensor) -> Result<()> {
        let w = current(model, name)?;
        set_sum(model, name, &w, upd)
    }

    /// W ← W_original + upd (`upd` is `[out, in]`).
    pub fn set_from_original(&mut self, model: &mut dyn CausalLm, name: &str, upd: &Tensor) -> Result<()> {
        set_sum(model, name, &self.originals[name], upd)
    }

    pub fn restore(self, model: &mut dyn CausalLm) -> Result<()> {
        for (n, w) in self.originals {
            set_current(model, &n, w)?;
        }
        Ok(())
    }
}
