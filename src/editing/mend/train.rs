//! Training a MEND hypernetwork (spec §5.4, eric-mitchell/mend `trainer.py`): per step one edit
//! example and one locality text; the edit's gradient factors through the hypernetwork (in
//! training mode: the normalisation statistics updated by every edit's rows) give the updates;
//! the model with them added (through the hook points: the weights themselves never change)
//! scores L = cedit·NLL(edit_outer) + cloc·KL(base ‖ edited) on the locality text; gradients
//! reach only the hypernetwork and its step sizes (no base-model weight gradient is formed),
//! are divided by `accumulate_bs`, skipped when not finite, and summed; every `accumulate_bs`
//! steps they are clipped to `grad_clip` and Adam steps. Validation every `val_interval` steps
//! keeps the best hypernetwork (the result) and stops early after `early_stop_patience` steps
//! without improvement.
//!
//! Reproducible: the initial weights and every step's draws come from seeded generators (a
//! step's from the seed and its index), and a checkpoint holds all the state, so a resumed run
//! ends with the same file as an uninterrupted one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::data::{EditExample, Labelled};
use super::hparams::MendTraining;
use super::hypernet::{inner_params, read_stats, stats_tensors, Hypernetwork, InnerParam, MendMeta};
use super::network::{kept_rows, pseudo_gradient, GradientTransform};
use crate::editing::adam::{Adam, AdamSlot};
use crate::editing::factors::{factors_of, label_logprobs, label_positions, module_at};
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::models::modules::EditableModule;
use crate::models::{Batch, CausalLm, ForwardOpts, HookPoint, Hooks, Logits, NoHooks};
use crate::pyrandom::PyRandom;

/// What training reads: edit examples and locality texts, each split into train and validation
/// (the locality texts may be empty when every example carries its own).
pub struct TrainData {
    pub train: Vec<EditExample>,
    pub val: Vec<EditExample>,
    pub loc_train: Vec<Vec<u32>>,
    pub loc_val: Vec<Vec<u32>>,
}

/// One step's losses (`skipped`: the statistics had too few rows yet, or a gradient was not
/// finite; nothing was accumulated).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepLoss {
    pub step: u64,
    pub edit: f64,
    pub loc: f64,
    pub total: f64,
    pub skipped: bool,
}

/// A validation's averages over its examples.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Validation {
    pub step: u64,
    /// The early-stopping key, `loss/total_edit_val`: cedit·NLL + cloc·KL.
    pub total_edit: f64,
    pub edit_loss: f64,
    pub loc_kl: f64,
    /// Fraction of edit_outer target tokens that are the edited model's top prediction.
    pub edit_acc: f64,
    /// Next-token accuracy on the locality texts before and after the edit; drawdown = pre − post.
    pub loc_acc_pre: f64,
    pub loc_acc_post: f64,
    pub drawdown: f64,
}

/// What a training run has done (kept in the checkpoint).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    /// Steps taken so far.
    pub step: u64,
    pub losses: Vec<StepLoss>,
    pub validations: Vec<Validation>,
    /// The best validation's step and loss.
    pub best: Option<(u64, f64)>,
    pub stopped_early: bool,
}

/// Updates to add at each inner module's output: `x · U` with `U` = `[in, out]`.
struct DeltaHooks<'a> {
    modules: &'a [EditableModule],
    updates: &'a [Tensor],
    x: Vec<Option<Tensor>>,
}

impl Hooks for DeltaHooks<'_> {
    fn wants(&self, p: HookPoint) -> bool {
        module_at(self.modules, p).is_some()
    }

    fn at(&mut self, p: HookPoint, h: Tensor) -> Result<Tensor> {
        let i = module_at(self.modules, p).expect("wanted points only");
        if let HookPoint::LinearIn(..) = p {
            self.x[i] = Some(h.clone());
            return Ok(h);
        }
        let x = self.x[i].take().ok_or_else(|| Error::Internal("a linear module's output came before its input".into()))?;
        let (b, s, d) = x.dims3()?;
        let u = self.updates[i].to_dtype(x.dtype())?;
        let add = x.reshape((b * s, d))?.matmul(&u)?.reshape((b, s, u.dim(1)?))?;
        Ok((h + add)?)
    }
}

/// A hypernetwork in training.
pub struct Trainer<'a> {
    model: &'a dyn CausalLm,
    hp: MendTraining,
    pad_id: u32,
    /// What the result's file will say of itself (its base and origin are added at the end).
    meta: MendMeta,
    inner: Vec<InnerParam>,
    modules: Vec<EditableModule>,
    /// Every trained parameter by name (the reference checkpoint's), `edit_lrs` last.
    names: Vec<String>,
    vars: Vec<Var>,
    transforms: BTreeMap<String, GradientTransform>,
    adam: Adam,
    /// The step sizes' own optimiser (`separate_lr_opt`).
    lr_adam: Option<Adam>,
    accum: Vec<Option<Tensor>>,
    pub history: History,
    /// The best validation's parameters and statistics (the result).
    best: Option<Vec<(String, Tensor)>>,
}

/// A normal draw (Box-Muller) from the seeded generator.
fn gauss(rng: &mut PyRandom) -> f32 {
    let u1 = rng.random().max(f64::MIN_POSITIVE);
    let u2 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl<'a> Trainer<'a> {
    /// A fresh hypernetwork for `names` on `model` (the reference's "id" init: every layer the
    /// identity, U = 0, V ~ N(0, 1), seeded), step sizes `edit_lr`.
    pub fn new(model: &'a dyn CausalLm, names: &[String], hp: MendTraining) -> Result<Self> {
        let pad_id = model.config().pad_id();
        let cfg = model.config();
        let dev = model.device().clone();
        let meta = MendMeta { inner_params: names.to_vec(), rank: hp.rank, n_hidden: hp.n_hidden, norm: hp.norm, base: None, origin: String::new() };
        // The initial values, seeded, in a VarMap that the network is then built from.
        let varmap = VarMap::new();
        let mut rng = PyRandom::new(hp.seed);
        let mut seen = std::collections::BTreeSet::new();
        let params = inner_params(cfg, names)?;
        for p in &params {
            if !seen.insert(p.shape_key.clone()) {
                continue;
            }
            let n_modes = params.iter().filter(|q| q.shape_key == p.shape_key).count();
            let dim = p.module.in_dim + p.module.out_dim;
            let r = hp.rank.min(dim);
            let mut data = varmap.data().lock().expect("varmap lock");
            for i in 0..=hp.n_hidden {
                let at = |t: &str| format!("mend.{}.mlp.layers.{i}.{t}", p.shape_key);
                let v: Vec<f32> = (0..r * dim).map(|_| gauss(&mut rng)).collect();
                for (name, t) in [
                    (at("u"), Tensor::zeros((dim, r), DType::F32, &dev)?),
                    (at("v"), Tensor::from_vec(v, (r, dim), &dev)?),
                    (at("bias"), Tensor::zeros(dim, DType::F32, &dev)?),
                    (at("mode_scale.weight"), Tensor::ones((n_modes, dim), DType::F32, &dev)?),
                    (at("mode_shift.weight"), Tensor::zeros((n_modes, dim), DType::F32, &dev)?),
                ] {
                    data.insert(name, Var::from_tensor(&t)?);
                }
            }
        }
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let Hypernetwork { inner, transforms, .. } = Hypernetwork::build(cfg, meta.clone(), vb, &HashMap::new(), vec![hp.edit_lr as f32; params.len()])?;
        let modules: Vec<EditableModule> = inner.iter().map(|p| p.module.clone()).collect();
        let lrs = Var::from_tensor(&Tensor::full(hp.edit_lr as f32, inner.len(), &dev)?)?;
        let mut named: Vec<(String, Var)> = varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.push(("edit_lrs".into(), lrs));
        let (names, vars): (Vec<String>, Vec<Var>) = named.into_iter().unzip();
        let n = vars.len();
        let (adam, lr_adam) = if hp.separate_lr_opt {
            let outer: Vec<&Tensor> = vars[..n - 1].iter().map(Var::as_tensor).collect();
            (Adam::new(&outer, hp.lr, 0.0)?, Some(Adam::new(&[vars[n - 1].as_tensor()], hp.lr_lr, 0.0)?))
        } else {
            (Adam::new(&vars.iter().map(Var::as_tensor).collect::<Vec<_>>(), hp.lr, 0.0)?, None)
        };
        Ok(Self {
            model,
            hp,
            pad_id,
            meta,
            inner,
            modules,
            names,
            vars,
            transforms,
            adam,
            lr_adam,
            accum: vec![None; n],
            history: History::default(),
            best: None,
        })
    }

    fn lrs(&self) -> &Var {
        self.vars.last().expect("edit_lrs")
    }

    /// The updates (`[in, out]`, in inner order) for an edit example; `training` updates the
    /// statistics first (None when they still have too few rows to normalise with).
    fn updates(&mut self, ex: &Labelled, training: bool) -> Result<Option<Vec<Tensor>>> {
        let (_, factors) = factors_of(self.model, std::slice::from_ref(&ex.ids), &vec![ex.labels.clone()], &self.modules)?;
        let lrs = self.lrs().as_tensor().clone();
        let mut out = Vec::with_capacity(factors.len());
        let mut ready = true;
        for (i, (p, f)) in self.inner.iter().zip(&factors).enumerate() {
            let t = self.transforms.get_mut(&p.shape_key).expect("one transform per shape");
            let (x, d) = kept_rows(&f.x, &f.delta)?;
            if training {
                t.observe(&x, &d)?;
            }
            if t.count < 2 {
                ready = false;
                continue;
            }
            let (xt, dt) = t.transform(&x, &d, p.mode)?;
            out.push(pseudo_gradient(&xt, &dt)?.broadcast_mul(&lrs.i(i)?)?);
        }
        Ok(ready.then_some(out))
    }

    /// Edit loss (mean NLL of `outer`'s labels), KL(base ‖ edited) over `loc`'s tokens, and
    /// the accuracies, with `updates` added.
    fn losses(&self, updates: &[Tensor], outer: &Labelled, loc: &[u32], differentiable: bool) -> Result<(Tensor, Tensor, f64, f64, f64)> {
        let dev = self.model.device();
        let loc_positions: Vec<(usize, usize)> = (0..loc.len()).map(|p| (0, p)).collect();
        let base_batch = Batch::from_sequences(&[loc.to_vec()], self.pad_id, dev)?;
        let base = self.model.forward_hooked(&base_batch, &ForwardOpts { logits: Logits::At(loc_positions), ..Default::default() }, &mut NoHooks)?;
        let base_lp = crate::editing::optimize::log_softmax(&base.expect("logits").to_dtype(DType::F32)?)?.detach();
        let seqs = vec![outer.ids.clone(), loc.to_vec()];
        let (mut positions, wanted) = label_positions(&seqs[..1], &vec![outer.labels.clone()]);
        let n_edit = positions.len();
        positions.extend((0..loc.len()).map(|p| (1, p)));
        let batch = Batch::from_sequences(&seqs, self.pad_id, dev)?;
        let mut hooks = DeltaHooks { modules: &self.modules, updates, x: vec![None; self.modules.len()] };
        let opts = ForwardOpts { logits: Logits::At(positions), differentiable, ..Default::default() };
        let logits = self.model.forward_hooked(&batch, &opts, &mut hooks)?.expect("logits").to_dtype(DType::F32)?;
        let edit_logits = logits.narrow(0, 0, n_edit)?;
        let loc_lp = crate::editing::optimize::log_softmax(&logits.narrow(0, n_edit, loc.len())?)?;
        let top = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.argmax(1)?.to_device(&Device::Cpu)?.to_vec1::<u32>()?) };
        let edit_acc = top(&edit_logits)?.iter().zip(&wanted).filter(|(a, b)| a == b).count() as f64 / n_edit as f64;
        let next: Vec<u32> = loc[1..].to_vec();
        let acc = |lp: &Tensor| -> Result<f64> {
            let t = top(&lp.narrow(0, 0, loc.len() - 1)?)?;
            Ok(t.iter().zip(&next).filter(|(a, b)| a == b).count() as f64 / next.len() as f64)
        };
        let (pre, post) = (acc(&base_lp)?, acc(&loc_lp)?);
        let nll = (label_logprobs(&edit_logits, wanted)?.mean_all()? * -1.0)?;
        let kl = (base_lp.exp()? * (&base_lp - &loc_lp)?)?.sum(1)?.mean_all()?;
        Ok((nll, kl, edit_acc, pre, post))
    }

    /// One training step (index `self.history.step`).
    pub fn step(&mut self, data: &TrainData) -> Result<StepLoss> {
        let step = self.history.step;
        let mut rng = PyRandom::new(self.hp.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step));
        let ex = &data.train[rng.randbelow(data.train.len() as u64) as usize];
        let outer = &ex.outer[rng.randbelow(ex.outer.len() as u64) as usize];
        let loc = match ex.loc.len() {
            0 => &data.loc_train[rng.randbelow(data.loc_train.len() as u64) as usize],
            n => &ex.loc[rng.randbelow(n as u64) as usize],
        };
        let mut report = StepLoss { step, skipped: true, ..Default::default() };
        if let Some(updates) = self.updates(&ex.inner, true)? {
            let (nll, kl, ..) = self.losses(&updates, outer, loc, true)?;
            let total = ((&nll * self.hp.cedit)? + (&kl * self.hp.cloc)?)?;
            report.edit = f64::from(nll.to_scalar::<f32>()?);
            report.loc = f64::from(kl.to_scalar::<f32>()?);
            report.total = f64::from(total.to_scalar::<f32>()?);
            let grads = total.backward()?;
            let scaled: Vec<Option<Tensor>> =
                self.vars.iter().map(|v| grads.get(v.as_tensor()).map(|g| g / self.hp.accumulate_bs as f64).transpose()).collect::<candle_core::Result<_>>()?;
            let finite = scaled.iter().flatten().map(|g| Ok(g.sqr()?.sum_all()?.to_scalar::<f32>()?.is_finite())).collect::<Result<Vec<bool>>>()?;
            if finite.iter().all(|&f| f) && report.total.is_finite() {
                for (acc, g) in self.accum.iter_mut().zip(scaled) {
                    *acc = match (acc.take(), g) {
                        (Some(a), Some(g)) => Some((a + g)?),
                        (a, g) => a.or(g),
                    };
                }
                report.skipped = false;
            } else {
                tracing::debug!("step {step}: a gradient is not finite; skipped");
            }
        }
        if step > 0 && step.is_multiple_of(self.hp.accumulate_bs as u64) {
            self.optimizer_step()?;
        }
        self.history.step += 1;
        self.history.losses.push(report.clone());
        Ok(report)
    }

    /// Clips the summed gradients' norm to `grad_clip` and steps Adam.
    fn optimizer_step(&mut self) -> Result<()> {
        let mut sq = 0f64;
        for g in self.accum.iter().flatten() {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
        let norm = sq.sqrt();
        let coef = (self.hp.grad_clip / (norm + 1e-6)).min(1.0);
        let grads: Vec<Option<Tensor>> =
            self.accum.iter_mut().map(|g| g.take().map(|g| if coef < 1.0 { g * coef } else { Ok(g) }).transpose()).collect::<candle_core::Result<_>>()?;
        let n = self.vars.len();
        let vars: Vec<&Var> = self.vars.iter().collect();
        match &mut self.lr_adam {
            Some(lr_adam) => {
                self.adam.step(&vars[..n - 1], &grads[..n - 1])?;
                lr_adam.step(&vars[n - 1..], &grads[n - 1..])?;
            }
            None => self.adam.step(&vars, &grads)?,
        }
        Ok(())
    }

    /// Validation over the first `val_steps` held-out examples (evaluation mode: statistics as
    /// they are), each with its first paraphrase and a locality text in turn.
    pub fn validate(&mut self, data: &TrainData) -> Result<Validation> {
        let n = self.hp.val_steps.min(data.val.len());
        let mut v = Validation { step: self.history.step, ..Default::default() };
        let mut counted = 0usize;
        for (k, ex) in data.val.iter().take(n).enumerate() {
            let Some(updates) = self.updates(&ex.inner, false)? else { continue };
            let loc = ex.loc.first().unwrap_or_else(|| &data.loc_val[k % data.loc_val.len()]);
            let (nll, kl, acc, pre, post) = self.losses(&updates, &ex.outer[0], loc, false)?;
            let (nll, kl) = (f64::from(nll.to_scalar::<f32>()?), f64::from(kl.to_scalar::<f32>()?));
            v.edit_loss += nll;
            v.loc_kl += kl;
            v.edit_acc += acc;
            v.loc_acc_pre += pre;
            v.loc_acc_post += post;
            counted += 1;
        }
        if counted == 0 {
            return Err(Error::Numerical("validation: the normalisation statistics have fewer than 2 rows".into()));
        }
        let c = counted as f64;
        for x in [&mut v.edit_loss, &mut v.loc_kl, &mut v.edit_acc, &mut v.loc_acc_pre, &mut v.loc_acc_post] {
            *x /= c;
        }
        v.total_edit = self.hp.cedit * v.edit_loss + self.hp.cloc * v.loc_kl;
        v.drawdown = v.loc_acc_pre - v.loc_acc_post;
        let improved = self.history.best.is_none_or(|(_, b)| v.total_edit < b);
        if improved {
            self.history.best = Some((v.step, v.total_edit));
            self.best = Some(self.network_tensors()?);
        }
        self.history.validations.push(v.clone());
        Ok(v)
    }

    /// Whether training is over: `max_iters` steps, or no validation improvement for
    /// `early_stop_patience` steps.
    pub fn done(&mut self) -> bool {
        if let Some((best, _)) = self.history.best {
            if self.history.step.saturating_sub(best) >= self.hp.early_stop_patience as u64 {
                self.history.stopped_early = true;
                return true;
            }
        }
        self.history.step >= self.hp.max_iters as u64
    }

    /// The hypernetwork's tensors under the reference's names (parameters, statistics).
    fn network_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self.names.iter().zip(&self.vars).map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?))).collect::<Result<_>>()?;
        for (key, t) in &self.transforms {
            out.extend(stats_tensors(key, t)?);
        }
        Ok(out)
    }

    /// The result: the best validation's hypernetwork (the current one if none was validated).
    pub fn result(&self, base: Option<ModelIdentity>, origin: String) -> Result<(MendMeta, Vec<(String, Tensor)>)> {
        let tensors = match &self.best {
            Some(b) => b.clone(),
            None => self.network_tensors()?,
        };
        Ok((MendMeta { base, origin, ..self.meta.clone() }, tensors))
    }

    /// Everything a resumed run needs, as tensors and a JSON header.
    pub fn save_checkpoint(&self, path: &Path, fingerprint: &str) -> Result<()> {
        let cpu = |t: &Tensor| t.to_device(&Device::Cpu);
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, t) in self.network_tensors()? {
            tensors.push((format!("now.{name}"), cpu(&t)?));
        }
        if let Some(best) = &self.best {
            for (name, t) in best {
                tensors.push((format!("best.{name}"), cpu(t)?));
            }
        }
        let mut adam_steps = Vec::new();
        for (opt, which) in std::iter::once((&self.adam, "adam")).chain(self.lr_adam.as_ref().map(|a| (a, "lr_adam"))) {
            let offset = if which == "adam" { 0 } else { self.vars.len() - 1 };
            for (i, slot) in opt.slots.iter().enumerate() {
                let name = &self.names[offset + i];
                tensors.push((format!("{which}.m.{name}"), cpu(&slot.m)?));
                tensors.push((format!("{which}.v.{name}"), cpu(&slot.v)?));
                adam_steps.push((format!("{which}.{name}"), slot.step));
            }
        }
        for (name, g) in self.names.iter().zip(&self.accum) {
            if let Some(g) = g {
                tensors.push((format!("accum.{name}"), cpu(g)?));
            }
        }
        let header = CheckpointHeader { fingerprint: fingerprint.to_string(), history: self.history.clone(), adam_steps: adam_steps.into_iter().collect() };
        let mut md = HashMap::new();
        md.insert(CHECKPOINT_KEY.to_string(), serde_json::to_string(&header).expect("json"));
        crate::fsutil::write_safetensors(path, &tensors, Some(md))
    }

    /// Restores a checkpoint written for the same run (`fingerprint`: the config and data).
    pub fn load_checkpoint(&mut self, path: &Path, fingerprint: &str) -> Result<()> {
        let md = crate::checkpoint::file_metadata(path)?;
        let header: CheckpointHeader = md
            .get(CHECKPOINT_KEY)
            .and_then(|h| serde_json::from_str(h).ok())
            .ok_or_else(|| Error::Input(format!("{} is not a MEND training checkpoint", path.display())))?;
        if header.fingerprint != fingerprint {
            return Err(Error::Input(format!(
                "{} is a checkpoint of a different training run (other model, data or config); delete it to start over, or \
                 rerun with the same options to resume",
                path.display()
            )));
        }
        let dev = self.model.device().clone();
        let t = candle_core::safetensors::load(path, &dev)?;
        let get = |k: &str| t.get(k).cloned().ok_or_else(|| Error::Input(format!("{}: `{k}` is missing", path.display())));
        for (name, var) in self.names.iter().zip(&self.vars) {
            var.set(&get(&format!("now.{name}"))?)?;
        }
        for (key, tr) in self.transforms.iter_mut() {
            (tr.u, tr.v, tr.count) = read_stats(key, &|k: &str| get(&format!("now.{k}")))?;
        }
        let n = self.vars.len();
        let names = self.names.clone();
        let restore = |opt: &mut Adam, which: &str, names: &[String]| -> Result<()> {
            for (slot, name) in opt.slots.iter_mut().zip(names) {
                *slot = AdamSlot {
                    m: get(&format!("{which}.m.{name}"))?,
                    v: get(&format!("{which}.v.{name}"))?,
                    step: header.adam_steps.get(&format!("{which}.{name}")).copied().unwrap_or(0),
                };
            }
            Ok(())
        };
        match &mut self.lr_adam {
            Some(lr) => {
                restore(&mut self.adam, "adam", &names[..n - 1])?;
                restore(lr, "lr_adam", &names[n - 1..])?;
            }
            None => restore(&mut self.adam, "adam", &names)?,
        }
        self.accum = names.iter().map(|name| t.get(&format!("accum.{name}")).cloned()).collect();
        self.best = if header.history.best.is_some() {
            let mut best = Vec::new();
            for (k, v) in &t {
                if let Some(name) = k.strip_prefix("best.") {
                    best.push((name.to_string(), v.clone()));
                }
            }
            best.sort_by(|a, b| a.0.cmp(&b.0));
            Some(best)
        } else {
            None
        };
        self.history = header.history;
        Ok(())
    }
}

/// The metadata key of a training checkpoint.
pub const CHECKPOINT_KEY: &str = "edit.mend.train";

#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    fingerprint: String,
    history: History,
    adam_steps: BTreeMap<String, u64>,
}
