//! What AlphaEdit remembers between edits, in memory and on disk.
//!
//! A state directory (`edit apply --method alphaedit --state DIR`, [`state_dir`]) holds
//! `state.json` (with the config's layers and threshold) and per layer
//! `layer-<l>-<step>.safetensors` with the null space's basis (`nullspace`, f32 `[d_ff, r]`) and
//! the kept edits' Σ K_pK_pᵀ (`kept_keys`, f64).
//!
//! Null spaces are also cached beside the statistics file they come from
//! (`<stats>.nullspace-<threshold>.safetensors`), so one-shot edits do not decompose C again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use faer::Mat;
use serde::{Deserialize, Serialize};

use super::AlphaEditHparams;
use super::NullSpace;
use crate::editing::registry::Method;
use crate::editing::state_dir;
use crate::editing::Deltas;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::linalg::{to_mat, to_tensor};

/// AlphaEdit's own part of `state.json`: the settings its state was built with.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AlphaSettings {
    pub layers: Vec<usize>,
    pub nullspace_threshold: f64,
}

pub type StateFile = state_dir::StateFile<AlphaSettings>;

pub struct AlphaState {
    pub null_spaces: BTreeMap<usize, Arc<NullSpace>>,
    /// Per layer, Σ K_pK_pᵀ over the kept edits.
    pub kept_keys: BTreeMap<usize, Mat<f64>>,
    /// The last edit's KKᵀ per layer, until it is kept (or replaced by the next edit).
    pub pending: Option<BTreeMap<usize, Mat<f64>>>,
    pub pending_requests: usize,
    pub file: StateFile,
}

impl Default for AlphaState {
    fn default() -> Self {
        Self {
            null_spaces: BTreeMap::new(),
            kept_keys: BTreeMap::new(),
            pending: None,
            pending_requests: 0,
            file: StateFile::new(Method::AlphaEdit, AlphaSettings::default(), None, serde_json::Value::Null),
        }
    }
}

fn layer_file(dir: &Path, layer: usize, step: usize) -> PathBuf {
    dir.join(format!("layer-{layer}-{step}.safetensors"))
}

fn bad(dir: &Path, why: String) -> Error {
    state_dir::bad(Method::AlphaEdit, dir, why)
}

impl AlphaState {
    /// Reads the state in `dir`, or starts one there (nothing is written until an edit is
    /// kept). The config's layers and threshold must be the state's, and `model` the weights
    /// its last kept edit was applied to.
    pub fn open(dir: &Path, hp: &AlphaEditHparams, model: Option<&ModelIdentity>) -> Result<Self> {
        let settings = AlphaSettings { layers: hp.layers.clone(), nullspace_threshold: hp.nullspace_threshold };
        let Some(file) = StateFile::read(dir, Method::AlphaEdit, model)? else {
            let config = serde_json::to_value(hp).expect("the config serialises");
            return Ok(Self { file: StateFile::new(Method::AlphaEdit, settings, model, config), ..Self::default() });
        };
        let own = &file.own;
        if own.layers != hp.layers || own.nullspace_threshold != hp.nullspace_threshold {
            return Err(bad(
                dir,
                format!(
                    "it was built with layers {:?} and nullspace_threshold {}, the config has {:?} and {}; edit with the config it was built with (pass the same --config; state.json records it under `config`), or start a new --state directory",
                    own.layers, own.nullspace_threshold, hp.layers, hp.nullspace_threshold
                ),
            ));
        }
        let mut state = Self { file, ..Self::default() };
        for &l in &state.file.own.layers.clone() {
            let p = layer_file(dir, l, state.file.step);
            let tensors = candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| bad(dir, format!("cannot read {}: {e}", p.display())))?;
            let get = |name: &str| tensors.get(name).ok_or_else(|| bad(dir, format!("{} has no `{name}`", p.display())));
            state.null_spaces.insert(l, Arc::new(NullSpace { basis: to_mat(get("nullspace")?)? }));
            state.kept_keys.insert(l, to_mat(get("kept_keys")?)?);
        }
        tracing::info!("AlphaEdit state {}: {} edits kept in {} batches", dir.display(), state.file.requests, state.file.applied.len());
        Ok(state)
    }

    /// Folds the last edit (its delta `deltas`) into the kept keys.
    pub fn keep(&mut self, deltas: &Deltas) -> Result<()> {
        let pending = self.pending.take().ok_or_else(|| Error::Internal("AlphaEdit: an edit was kept before one was made".into()))?;
        for (l, kkt) in pending {
            match self.kept_keys.get_mut(&l) {
                Some(k) => *k += &kkt,
                None => {
                    self.kept_keys.insert(l, kkt);
                }
            }
        }
        self.file.kept(deltas, self.pending_requests)
    }

    /// Writes the state to `dir` (see [`state_dir`] for the order).
    pub fn save(&mut self, dir: &Path, hp: &AlphaEditHparams) -> Result<()> {
        let (null_spaces, kept_keys) = (&self.null_spaces, &self.kept_keys);
        let write = |dir: &Path, step: usize| -> Result<()> {
            for &l in &hp.layers {
                let ns = null_spaces.get(&l).ok_or_else(|| Error::Internal(format!("AlphaEdit: no null space for layer {l}")))?;
                let width = ns.width();
                let kept = kept_keys.get(&l).cloned().unwrap_or_else(|| Mat::zeros(width, width));
                let tensors = [("nullspace".to_string(), to_tensor(&ns.basis, DType::F32)?), ("kept_keys".to_string(), to_tensor(&kept, DType::F64)?)];
                state_dir::write_tensors(&layer_file(dir, l, step), &tensors)?;
            }
            Ok(())
        };
        self.file.save(dir, write, |dir, step| hp.layers.iter().map(|&l| layer_file(dir, l, step)).collect())
    }
}

/// Where the null space of a statistics file's C below `threshold` is cached.
fn null_space_cache(stats: &Path, threshold: f64) -> PathBuf {
    let name = stats.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    stats.with_file_name(format!("{}.nullspace-{threshold:e}.safetensors", name.trim_end_matches(".safetensors")))
}

/// The statistics file's identity a cached null space records: its length and modification
/// time (statistics recomputed with `--force` replace the file).
fn stats_identity(stats: &Path) -> Option<String> {
    let m = std::fs::metadata(stats).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!("{}:{}.{:09}", m.len(), mtime.as_secs(), mtime.subsec_nanos()))
}

/// The cached null space of the statistics file `stats` below `threshold`, if there is one
/// for the file as it is now.
pub fn read_null_space(stats: &Path, threshold: f64) -> Result<Option<NullSpace>> {
    let path = null_space_cache(stats, threshold);
    if !path.exists() {
        return Ok(None);
    }
    let meta = crate::checkpoint::file_metadata(&path)?;
    if meta.get("edit.stats_file").cloned() != stats_identity(stats) {
        return Ok(None);
    }
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let Some(basis) = tensors.get("nullspace") else { return Ok(None) };
    tracing::debug!("null space read from {}", path.display());
    Ok(Some(NullSpace { basis: to_mat(basis)? }))
}

/// Caches `ns`, the null space of the statistics file `stats` below `threshold`, beside it.
pub fn write_null_space(stats: &Path, threshold: f64, ns: &NullSpace) -> Result<()> {
    let path = null_space_cache(stats, threshold);
    let identity = stats_identity(stats).ok_or_else(|| Error::Internal(format!("cannot read the statistics file {}", stats.display())))?;
    let md = std::collections::HashMap::from([("edit.stats_file".to_string(), identity)]);
    let tmp = crate::fsutil::sibling(&path, "tmp");
    crate::fsutil::write_safetensors(&tmp, &[("nullspace".to_string(), to_tensor(&ns.basis, DType::F32)?)], Some(md))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp() -> AlphaEditHparams {
        let cfg = crate::ModelConfig::from_json(
            &serde_json::json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 4, "vocab_size": 10, "n_positions": 16}),
            Path::new("c"),
        )
        .unwrap();
        let mut v = <AlphaEditHparams as crate::editing::hparams::MethodConfig>::starting_point(&cfg);
        v["layers"] = serde_json::json!([1, 2]);
        serde_json::from_value(v).unwrap()
    }

    fn mat(r: usize, c: usize, seed: usize) -> Mat<f64> {
        Mat::from_fn(r, c, |i, j| ((i * 7 + j * 3 + seed) % 11) as f64 / 3.0 - 1.5)
    }

    #[test]
    fn a_saved_state_reads_back_bit_for_bit_and_checks_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let hp = hp();
        let model = |base: &str, applied: Vec<String>| ModelIdentity { weights_fingerprint: base.into(), applied, ..Default::default() };
        let base = model("f00d", vec![]);
        let mut s = AlphaState::open(dir.path(), &hp, Some(&base)).unwrap();
        for l in [1, 2] {
            // f32 values, as null spaces are held.
            let basis = Mat::from_fn(32, 5, |i, j| f64::from((mat(32, 5, l)[(i, j)] / 7.0) as f32));
            s.null_spaces.insert(l, Arc::new(NullSpace { basis }));
        }
        s.pending = Some([(1, mat(32, 32, 1) / 3.0), (2, mat(32, 32, 2) * 1e-3)].into_iter().collect());
        s.pending_requests = 4;
        let mut deltas = Deltas::new();
        deltas.insert("transformer.h.1.mlp.c_proj".into(), candle_core::Tensor::ones((8, 32), DType::F32, &Device::Cpu).unwrap());
        s.keep(&deltas).unwrap();
        s.save(dir.path(), &hp).unwrap();
        let id = s.file.applied[0].clone();

        let edited = model("f00d", vec![id.clone()]);
        let back = AlphaState::open(dir.path(), &hp, Some(&edited)).unwrap();
        assert_eq!((back.file.requests, back.file.applied.clone(), back.file.step), (4, vec![id], 1));
        for l in [1, 2] {
            assert_eq!(back.kept_keys[&l], s.kept_keys[&l], "layer {l}'s kept keys");
            assert_eq!(back.null_spaces[&l].basis, s.null_spaces[&l].basis, "layer {l}'s null space");
        }
        // Only the current step's files remain after a second save.
        let mut again = back;
        again.pending = Some([(1, mat(32, 32, 3)), (2, mat(32, 32, 4))].into_iter().collect());
        again.keep(&deltas).unwrap();
        again.save(dir.path(), &hp).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["layer-1-2.safetensors", "layer-2-2.safetensors", "state.json"]);

        // The unedited model, another model, another config: refused with the reason.
        let err = |r: Result<AlphaState>| r.err().expect("refused").to_string();
        assert!(err(AlphaState::open(dir.path(), &hp, Some(&base))).contains("holds []"));
        assert!(err(AlphaState::open(dir.path(), &hp, Some(&model("beef", vec![])))).contains("other weights"));
        let mut other = hp.clone();
        other.common.layers = vec![1];
        assert!(err(AlphaState::open(dir.path(), &other, None)).contains("layers [1, 2]"));
    }
}
