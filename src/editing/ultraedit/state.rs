//! UltraEdit's "lifelong" normalisation: per weight shape (in, out), running statistics of the
//! cached rows [k, g] (a key and its output gradient, side by side) that every turn updates and
//! no turn resets (XiaojieGu/UltraEdit `nets.py` `RunningMeanStd`), in memory and on disk.
//!
//! The update from a turn's m rows x (the reference's, kept as it is):
//! n' = n + m, δ = mean(x) − μ, μ += m·δ/n', v += m·var(x) + n·m·δ²/n', σ = √(v / (n' − 1 + ε)),
//! with var the unbiased (n − 1) variance and ε float32's machine epsilon; a row is normalised as
//! (x − μ)/(σ + ε). One deviation: a sub-batch of a single row has no unbiased variance (the
//! reference's is NaN, which would poison every later turn); it counts as zero here.
//!
//! A state directory (`edit apply --method ultraedit --state DIR`, [`state_dir`]) holds
//! `state.json` (with the config's `edit_modules`) and `norm-<in>x<out>-<step>.safetensors` per
//! shape (`n`, `mean`, `var`, `std`, f64).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use faer::Mat;
use serde::{Deserialize, Serialize};

use super::UltraEditHparams;
use crate::editing::registry::Method;
use crate::editing::state_dir::{self, StateFile};
use crate::editing::Deltas;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;

/// float32's machine epsilon: the reference's rows are float32.
pub const EPS: f64 = f32::EPSILON as f64;

/// The running statistics of one weight shape's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningNorm {
    pub n: f64,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub std: Vec<f64>,
}

impl RunningNorm {
    pub fn new(size: usize) -> Self {
        Self { n: 0.0, mean: vec![0.0; size], var: vec![0.0; size], std: vec![0.0; size] }
    }

    /// Folds in `x` (`[m, size]`).
    pub fn update(&mut self, x: &Mat<f64>) {
        let m = x.nrows() as f64;
        if x.nrows() == 0 {
            return;
        }
        let n = self.n + m;
        for j in 0..x.ncols() {
            let col = x.col(j);
            let bm = (0..x.nrows()).map(|i| col[i]).sum::<f64>() / m;
            let bvar = if x.nrows() > 1 { (0..x.nrows()).map(|i| (col[i] - bm).powi(2)).sum::<f64>() / (m - 1.0) } else { 0.0 };
            let delta = bm - self.mean[j];
            self.mean[j] += m * delta / n;
            self.var[j] += m * bvar + self.n * m * delta * delta / n;
            self.std[j] = (self.var[j] / (n - 1.0 + EPS)).sqrt();
        }
        self.n = n;
    }

    /// The normalised value of column `j`'s `x`.
    pub fn normalise(&self, j: usize, x: f64) -> f64 {
        (x - self.mean[j]) / (self.std[j] + EPS)
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let v = |d: &[f64]| Tensor::from_vec(d.to_vec(), d.len(), &Device::Cpu);
        Ok(vec![
            ("n".into(), Tensor::from_vec(vec![self.n], 1, &Device::Cpu)?),
            ("mean".into(), v(&self.mean)?),
            ("var".into(), v(&self.var)?),
            ("std".into(), v(&self.std)?),
        ])
    }

    fn from_tensors(t: &std::collections::HashMap<String, Tensor>, size: usize, what: &dyn Fn(String) -> Error) -> Result<Self> {
        let get = |name: &str| -> Result<Vec<f64>> {
            let v: Vec<f64> = t.get(name).ok_or_else(|| what(format!("no `{name}`")))?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            Ok(v)
        };
        let n = get("n")?;
        let (mean, var, std) = (get("mean")?, get("var")?, get("std")?);
        if n.len() != 1 || [mean.len(), var.len(), std.len()] != [size; 3] {
            return Err(what(format!("its statistics are not of width {size}")));
        }
        Ok(Self { n: n[0], mean, var, std })
    }
}

/// A weight shape, (in, out): the reference keeps one normaliser per shape, shared by the
/// modules of that shape.
pub type Shape = (usize, usize);

/// UltraEdit's own part of `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UltraSettings {
    pub edit_modules: Vec<String>,
}

/// What UltraEdit remembers between turns.
pub struct UltraState {
    pub norms: BTreeMap<Shape, RunningNorm>,
    /// The last edit's statistics (the kept ones updated with its rows), until it is kept.
    pub pending: Option<(BTreeMap<Shape, RunningNorm>, usize)>,
    pub file: StateFile<UltraSettings>,
}

fn norm_file(dir: &Path, shape: Shape, step: usize) -> PathBuf {
    dir.join(format!("norm-{}x{}-{step}.safetensors", shape.0, shape.1))
}

impl UltraState {
    /// A fresh state in memory (nothing kept yet).
    pub fn new(hp: &UltraEditHparams, model: Option<&ModelIdentity>) -> Self {
        let settings = UltraSettings { edit_modules: hp.edit_modules.clone() };
        let config = serde_json::to_value(hp).expect("the config serialises");
        Self { norms: BTreeMap::new(), pending: None, file: StateFile::new(Method::UltraEdit, settings, model, config) }
    }

    /// Reads the state in `dir`, or starts one there (nothing is written until an edit is
    /// kept). The config's modules must be the state's, and `model` the weights its last kept
    /// edit was applied to.
    pub fn open(dir: &Path, hp: &UltraEditHparams, model: Option<&ModelIdentity>) -> Result<Self> {
        let bad = |why: String| state_dir::bad(Method::UltraEdit, dir, why);
        let Some(file) = StateFile::<UltraSettings>::read(dir, Method::UltraEdit, model)? else {
            return Ok(Self::new(hp, model));
        };
        if file.own.edit_modules != hp.edit_modules {
            return Err(bad(format!(
                "it was built for edit_modules {:?}, the config has {:?}; edit with the config it was built with (state.json records it under `config`), or start a new --state directory",
                file.own.edit_modules, hp.edit_modules
            )));
        }
        let mut norms = BTreeMap::new();
        let prefix = "norm-";
        let suffix = format!("-{}.safetensors", file.step);
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let name = entry.map_err(|e| Error::io(dir, e))?.file_name().to_string_lossy().into_owned();
            let Some(shape) = name.strip_prefix(prefix).and_then(|s| s.strip_suffix(&suffix)) else { continue };
            let Some((i, o)) = shape.split_once('x').and_then(|(i, o)| Some((i.parse::<usize>().ok()?, o.parse::<usize>().ok()?))) else { continue };
            let path = dir.join(&name);
            let tensors = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
            let norm = RunningNorm::from_tensors(&tensors, i + o, &|why| bad(format!("{}: {why}", path.display())))?;
            norms.insert((i, o), norm);
        }
        if file.requests > 0 && norms.is_empty() {
            return Err(bad(format!("state.json says {} edits were kept, but there are no norm-*-{}.safetensors files", file.requests, file.step)));
        }
        tracing::info!("UltraEdit state {}: {} edits kept in {} turns", dir.display(), file.requests, file.applied.len());
        Ok(Self { norms, pending: None, file })
    }

    /// Folds the last edit (its delta `deltas`) into the kept statistics.
    pub fn keep(&mut self, deltas: &Deltas) -> Result<()> {
        let (norms, requests) = self.pending.take().ok_or_else(|| Error::Internal("UltraEdit: an edit was kept before one was made".into()))?;
        self.norms = norms;
        self.file.kept(deltas, requests)
    }

    /// Writes the state to `dir` (see [`state_dir`] for the order).
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        let norms = &self.norms;
        let write = |dir: &Path, step: usize| -> Result<()> {
            for (&shape, norm) in norms {
                state_dir::write_tensors(&norm_file(dir, shape, step), &norm.tensors()?)?;
            }
            Ok(())
        };
        let shapes: Vec<Shape> = norms.keys().copied().collect();
        self.file.save(dir, write, |dir, step| shapes.iter().map(|&s| norm_file(dir, s, step)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_statistics_are_the_references_formulas() {
        // Two batches by hand: [1, 2, 4] then [3, 7] in one column.
        let mut r = RunningNorm::new(1);
        r.update(&Mat::from_fn(3, 1, |i, _| [1.0, 2.0, 4.0][i]));
        // mean 7/3, unbiased var of the batch 7/3, v = 3·7/3 = 7.
        assert!((r.mean[0] - 7.0 / 3.0).abs() < 1e-12 && (r.var[0] - 7.0).abs() < 1e-12);
        assert!((r.std[0] - (7.0 / (2.0 + EPS)).sqrt()).abs() < 1e-12);
        r.update(&Mat::from_fn(2, 1, |i, _| [3.0, 7.0][i]));
        // δ = 5 − 7/3 = 8/3; μ = 7/3 + 2·(8/3)/5 = 17/5; v = 7 + 2·8 + 3·2·(64/9)/5 = 23 + 128/15.
        assert!((r.mean[0] - 17.0 / 5.0).abs() < 1e-12);
        assert!((r.var[0] - (23.0 + 128.0 / 15.0)).abs() < 1e-12, "{}", r.var[0]);
        assert_eq!(r.n, 5.0);
        assert!((r.normalise(0, 17.0 / 5.0)).abs() < 1e-12);
        // One row: no variance of its own (the reference's NaN), only the shift of the mean.
        r.update(&Mat::from_fn(1, 1, |_, _| 3.4));
        assert!(r.var[0].is_finite() && (r.var[0] - (23.0 + 128.0 / 15.0)).abs() < 1e-12);
    }

    #[test]
    fn a_saved_state_reads_back_and_refuses_another_config() {
        let dir = tempfile::tempdir().unwrap();
        let hp = UltraEditHparams {
            edit_modules: vec!["transformer.h.1.mlp.c_proj".into()],
            lr: 1e-6,
            batch_size: 10,
            token: super::super::Positions::Ans,
            ridge: 1.0,
            solver: super::super::UltraSolver::Auto,
            sub_batches_per_pass: 1,
        };
        let mut s = UltraState::open(dir.path(), &hp, None).unwrap();
        let mut norm = RunningNorm::new(5);
        norm.update(&Mat::from_fn(4, 5, |i, j| (i * 3 + j) as f64 / 7.0 - 0.2 * (i * j) as f64));
        s.pending = Some(([((3, 2), norm.clone())].into_iter().collect(), 4));
        let mut deltas = Deltas::new();
        deltas.insert("transformer.h.1.mlp.c_proj".into(), Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap());
        s.keep(&deltas).unwrap();
        s.save(dir.path()).unwrap();
        let back = UltraState::open(dir.path(), &hp, None).unwrap();
        assert_eq!(back.norms[&(3, 2)], norm);
        assert_eq!(back.file.requests, 4);
        let mut other = hp.clone();
        other.edit_modules.push("transformer.h.2.mlp.c_proj".into());
        let e = UltraState::open(dir.path(), &other, None).err().unwrap().to_string();
        assert!(e.contains("edit_modules"), "{e}");
        // AlphaEdit's reader refuses UltraEdit's state by name.
        let e = StateFile::<serde_json::Value>::read(dir.path(), Method::AlphaEdit, None).err().unwrap().to_string();
        assert!(e.contains("UltraEdit's state, not AlphaEdit's"), "{e}");
    }
}
