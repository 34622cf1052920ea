//! A MEND hypernetwork for one model, and its file: a safetensors file whose tensors carry the
//! reference checkpoint's names (`edit_lrs`, `mend.<shape>.{u_mean, v_mean, u_std, v_std, u_s,
//! v_s, k}`, `mend.<shape>.mlp.layers.<i>.…`) and whose metadata `edit.mend` (JSON) names the
//! inner weights in the reference's `inner_params` order, the network's settings and the base
//! model; and the edit it computes (spec §5.3, §5.6): per inner weight, the factors through its
//! shape's transform, ΔW = edit_lr × lr_scale × Σ x̃ᵀ δ̃.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::factors::chunked_factors;
use super::network::{pseudo_gradient, GradientTransform, NormMode, RunningStats, TransformShape};
use crate::config::ModelConfig;
use crate::editing::requests::Request;
use crate::editing::Deltas;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::models::modules::{find, EditableModule};
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

/// The metadata key of a hypernetwork file.
pub const MEND_META_KEY: &str = "edit.mend";

/// What a hypernetwork file says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MendMeta {
    /// The inner weights, by checkpoint name, in the reference's `inner_params` order (which
    /// fixes each one's mode and step size).
    pub inner_params: Vec<String>,
    pub rank: usize,
    pub n_hidden: usize,
    /// Whether x and δ are normalised (the shipped `norm: True`).
    pub norm: bool,
    /// The model it was trained for (or imported for), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<ModelIdentity>,
    /// Where it came from, in words: `imported from mend-10tok-gpt2-xl.pt (sha256 …)`.
    #[serde(default)]
    pub origin: String,
}

/// An inner weight: its module, the key of its shape's transform, its mode there.
#[derive(Clone, Debug)]
pub struct InnerParam {
    pub name: String,
    pub module: EditableModule,
    /// `"(x_dim, delta_dim)"`, the reference's `str(tuple(shape))`.
    pub shape_key: String,
    pub mode: usize,
}

/// The reference's `str(tuple(shape))` of `(x_dim, delta_dim)`.
pub fn shape_key(x_dim: usize, delta_dim: usize) -> String {
    format!("({x_dim}, {delta_dim})")
}

/// Resolves the inner weights on `cfg`: each a linear module's `.weight`; modes by position
/// among those of the same shape, in the given order (the reference's `shape_dict`).
pub fn inner_params(cfg: &ModelConfig, names: &[String]) -> Result<Vec<InnerParam>> {
    let mut out: Vec<InnerParam> = Vec::with_capacity(names.len());
    for n in names {
        if !n.ends_with(".weight") {
            return Err(Error::Input(format!("MEND edits weights only; `{n}` is not a `.weight` (biases are not edited)")));
        }
        let module = find(cfg, n)?;
        let key = shape_key(module.in_dim, module.out_dim);
        let mode = out.iter().filter(|p| p.shape_key == key).count();
        out.push(InnerParam { name: n.clone(), module, shape_key: key, mode });
    }
    Ok(out)
}

/// How an edit applies the hypernetwork: the reference's `lr_scale`, the normalisation mode
/// (the authors' frozen statistics, or the executor's running ones), and whether the step sizes
/// are taken in the executor's order (swapping GPT-2's `c_fc` and `c_proj`).
#[derive(Clone, Copy, Debug)]
pub struct EditSettings {
    pub lr_scale: f64,
    pub norm: NormMode,
    pub executor_lr_order: bool,
    /// Requests per forward/backward (the executor's `max_batch_size`, 128).
    pub chunk: usize,
    /// Edit with the last chunk's factors only (the executor's hooks keep no others).
    pub last_chunk_only: bool,
}

impl EditSettings {
    /// The MEND authors' behaviour: trained statistics, each weight its own step size.
    pub fn authors(lr_scale: f64) -> Self {
        Self { lr_scale, norm: NormMode::Frozen, executor_lr_order: false, chunk: 128, last_chunk_only: false }
    }
}

/// A hypernetwork ready to edit.
pub struct Hypernetwork {
    pub meta: MendMeta,
    pub inner: Vec<InnerParam>,
    pub transforms: BTreeMap<String, GradientTransform>,
    /// Learned step sizes, in `inner_params` order.
    pub edit_lrs: Vec<f32>,
}

impl Hypernetwork {
    /// Builds the network from `vb` (a file's tensors, or a `VarMap` to train), with the
    /// normalisation statistics from `stats` (by shape key) when there are any.
    pub fn build(
        cfg: &ModelConfig,
        meta: MendMeta,
        vb: VarBuilder,
        stats: &HashMap<String, (RunningStats, RunningStats, usize)>,
        edit_lrs: Vec<f32>,
    ) -> Result<Self> {
        let inner = inner_params(cfg, &meta.inner_params)?;
        if edit_lrs.len() != inner.len() {
            return Err(Error::Input(format!("the hypernetwork has {} step sizes for {} inner weights", edit_lrs.len(), inner.len())));
        }
        let mut transforms = BTreeMap::new();
        for p in &inner {
            if transforms.contains_key(&p.shape_key) {
                continue;
            }
            let n_modes = inner.iter().filter(|q| q.shape_key == p.shape_key).count();
            let shape = TransformShape { x_dim: p.module.in_dim, delta_dim: p.module.out_dim, n_modes, rank: meta.rank, n_hidden: meta.n_hidden };
            let mut t = GradientTransform::load(vb.pp("mend").pp(&p.shape_key), shape, stats.get(&p.shape_key).cloned())?;
            t.norm = meta.norm;
            transforms.insert(p.shape_key.clone(), t);
        }
        Ok(Self { meta, inner, transforms, edit_lrs })
    }

    /// Reads a hypernetwork file for a model of `cfg`.
    pub fn read(path: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let meta = read_meta(path)?;
        let tensors = candle_core::safetensors::load(path, device)?;
        Self::from_tensors(cfg, meta, tensors, device).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
    }

    /// The network from its tensors under the reference's names.
    pub fn from_tensors(cfg: &ModelConfig, meta: MendMeta, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let get = |k: &str| tensors.get(k).cloned().ok_or_else(|| Error::Input(format!("tensor `{k}` is missing")));
        let edit_lrs = get("edit_lrs")?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut stats = HashMap::new();
        for p in inner_params(cfg, &meta.inner_params)? {
            if stats.contains_key(&p.shape_key) {
                continue;
            }
            let on_device = |k: &str| get(k).and_then(|t| Ok(t.to_dtype(DType::F32)?.to_device(device)?));
            stats.insert(p.shape_key.clone(), read_stats(&p.shape_key, &on_device)?);
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::build(cfg, meta, vb, &stats, edit_lrs)
    }

    /// Forgets the normalisation statistics, so that the next edit in [`NormMode::Running`]
    /// starts them from its own rows (what the executor's freshly built, training-mode
    /// transforms do with a checkpoint's statistics).
    pub fn restart_norm(&mut self) {
        for t in self.transforms.values_mut() {
            t.count = 0;
        }
    }

    /// The edit of `requests`: ΔW per inner weight (`[out, in]`, keyed by module name) =
    /// step × lr_scale × Σ x̃ᵀ δ̃, where step is the weight's learned step size — or, with
    /// `executor_lr_order`, the executor's (it indexes them in the model's parameter order,
    /// which for GPT-2 puts `c_fc` before `c_proj` and so swaps their step sizes).
    pub fn edit(&mut self, model: &dyn CausalLm, tok: &Tokenizer, requests: &[Request], how: EditSettings) -> Result<Deltas> {
        let EditSettings { lr_scale, norm, executor_lr_order: swapped_lrs, chunk, last_chunk_only } = how;
        let modules: Vec<EditableModule> = self.inner.iter().map(|p| p.module.clone()).collect();
        let factors = chunked_factors(model, tok, requests, &modules, chunk, last_chunk_only)?;
        let lrs = if swapped_lrs { executor_lr_order(&self.inner, &self.edit_lrs) } else { self.edit_lrs.clone() };
        let mut deltas = Deltas::new();
        for ((p, f), lr) in self.inner.iter().zip(factors).zip(lrs) {
            let t = self.transforms.get_mut(&p.shape_key).expect("one transform per shape");
            let (x, d) = t.forward(&f.x, &f.delta, p.mode, norm)?;
            let g = pseudo_gradient(&x, &d)?;
            let update = (g.t()?.contiguous()? * (f64::from(lr) * lr_scale))?.to_device(&Device::Cpu)?;
            deltas.insert(p.module.name.clone(), update);
        }
        Ok(deltas)
    }
}

/// A transform's normalisation buffers under the reference's names (`mend.<shape>.u_mean`, ...,
/// `mend.<shape>.k`), as its state dict holds them.
pub fn stats_tensors(key: &str, t: &GradientTransform) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(7);
    for (n, x) in [("u_mean", &t.u.mean), ("u_s", &t.u.s), ("u_std", &t.u.std), ("v_mean", &t.v.mean), ("v_s", &t.v.s), ("v_std", &t.v.std)] {
        out.push((format!("mend.{key}.{n}"), x.copy()?));
    }
    out.push((format!("mend.{key}.k"), Tensor::new(&[t.count as f32], t.u.mean.device())?));
    Ok(out)
}

/// The normalisation statistics of transform `key` and their row count, read by name through
/// `get` (a `k` that is not a finite count, as in an untrained checkpoint, reads as 0 rows).
pub fn read_stats(key: &str, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<(RunningStats, RunningStats, usize)> {
    let b = |n: &str| get(&format!("mend.{key}.{n}"));
    let k = b("k")?.flatten_all()?.to_vec1::<f32>()?.first().copied().unwrap_or(f32::NAN);
    let count = if k.is_finite() && k >= 0.0 { k as usize } else { 0 };
    let u = RunningStats { mean: b("u_mean")?, s: b("u_s")?, std: b("u_std")? };
    let v = RunningStats { mean: b("v_mean")?, s: b("v_s")?, std: b("v_std")? };
    Ok((u, v, count))
}

/// A hypernetwork file's metadata (its header only).
pub fn read_meta(path: &Path) -> Result<MendMeta> {
    if !path.is_file() {
        return Err(Error::Input(format!("--mend {}: no such file", path.display())));
    }
    let not_ours = || {
        let hint = if path.extension().is_some_and(|e| e == "pt" || e == "pth") {
            format!("; a reference checkpoint must be converted first: `edit mend import {} --model MODEL --out FILE.safetensors`", path.display())
        } else {
            String::new()
        };
        Error::Input(format!("{} is not a MEND hypernetwork written by edit (no `{MEND_META_KEY}` metadata){hint}", path.display()))
    };
    let md = crate::checkpoint::file_metadata(path).map_err(|_| not_ours())?;
    let m = md.get(MEND_META_KEY).ok_or_else(not_ours)?;
    serde_json::from_str(m).map_err(|e| Error::Input(format!("{}: unreadable `{MEND_META_KEY}` ({e})", path.display())))
}

/// The step sizes as the ROME/MEMIT executor applies them: it walks the model's parameters in
/// their own order and takes the next step size at each inner weight, while the sizes are stored
/// in `inner_params` order.
fn executor_lr_order(inner: &[InnerParam], lrs: &[f32]) -> Vec<f32> {
    // The model's order: by layer, then by the module's position in the block.
    let mut order: Vec<usize> = (0..inner.len()).collect();
    order.sort_by_key(|&i| (inner[i].module.layer, inner[i].module.kind));
    let mut out = vec![0.0; inner.len()];
    for (k, &i) in order.iter().enumerate() {
        out[i] = lrs[k];
    }
    out
}

/// Writes `tensors` (reference names) with the metadata (atomically: see
/// [`crate::fsutil::write_safetensors`]).
pub fn write(path: &Path, meta: &MendMeta, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut md = HashMap::new();
    md.insert(MEND_META_KEY.to_string(), serde_json::to_string(meta).expect("json"));
    crate::fsutil::write_safetensors(path, tensors, Some(md))
}
