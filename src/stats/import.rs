//! Reference statistics files (`<module>_float32_mom2_100000.npz`, as kmeng01/rome's
//! `layer_stats.py` writes them) filed into the cache, so an edit uses them as it would its own.

use std::path::Path;

use super::cache::{self, StatsMeta};
use super::ensure::LayerReport;
use super::Precision;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hub::ModelFiles;
use crate::identity::ModelIdentity;
use crate::models::modules::mlp_down;

/// Facts read off a reference file name such as
/// `data/stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz`.
#[derive(Debug, Default, PartialEq)]
pub struct NpzName {
    pub layer: Option<usize>,
    pub dataset: Option<String>,
    pub precision: Option<Precision>,
    pub samples: Option<usize>,
}

pub fn parse_npz_name(path: &Path) -> NpzName {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parts: Vec<&str> = name.split('.').collect();
    let layer = parts.windows(2).find_map(|w| (w[0].ends_with('h') || w[0].ends_with("layers")).then(|| w[1].parse().ok()).flatten());
    let precision = if name.contains("float64") {
        Some(Precision::F64)
    } else if name.contains("float32") {
        Some(Precision::F32)
    } else {
        None
    };
    let samples = name.strip_suffix(".npz").and_then(|s| s.rsplit('_').next()).and_then(|s| s.parse().ok());
    let dataset = path.parent().and_then(|p| p.file_name()).and_then(|d| d.to_string_lossy().strip_suffix("_stats").map(str::to_string));
    NpzName { layer, dataset, precision, samples }
}

/// The arrays an `.npz` file holds (`mom2.mom2.npy` → `mom2.mom2`).
fn npz_members(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).map_err(|e| Error::Input(format!("cannot open {}: {e}", path.display())))?;
    let zip = zip::ZipArchive::new(f).map_err(|e| Error::Input(format!("{} is not a readable .npz (zip) file: {e}", path.display())))?;
    let mut names = Vec::new();
    for n in zip.file_names() {
        let n = n.map_err(|e| Error::Input(format!("{}: unreadable member name: {e}", path.display())))?;
        names.push(n.strip_suffix(".npy").unwrap_or(&n).to_string());
    }
    Ok(names)
}

/// One array of an `.npz` file, read by candle's npy reader (the reference's files also hold a
/// `mom2.constructor` string, which is never read).
fn npz_array(path: &Path, name: &str) -> Result<candle_core::Tensor> {
    let mut v = candle_core::Tensor::read_npz_by_name(path, &[name]).map_err(|e| {
        let hint = if e.to_string().contains("fortran") { "; the array is stored in Fortran order: save it with np.ascontiguousarray first" } else { "" };
        Error::Input(format!("{}: cannot read array `{name}`: {e}{hint}", path.display()))
    })?;
    Ok(v.remove(0))
}

fn npz_scalar(path: &Path, name: &str) -> Result<f64> {
    let t = npz_array(path, name)?;
    if t.elem_count() != 1 {
        return Err(Error::Input(format!("{}: `{name}` should be a single number, but has shape {:?}", path.display(), t.dims())));
    }
    Ok(t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}

/// A reference `.npz` read and checked: its sum, count and what its name tells.
pub struct NpzStats {
    file: std::path::PathBuf,
    members: Vec<String>,
    sum: candle_core::Tensor,
    count: f64,
    layer: usize,
    guessed: NpzName,
}

impl NpzStats {
    /// Reads `file`'s `mom2.mom2` and `mom2.count`; the layer is `layer` or read from the name.
    pub fn read(file: &Path, layer: Option<usize>) -> Result<Self> {
        let guessed = parse_npz_name(file);
        let members = npz_members(file)?;
        let shown = file.display();
        if !members.iter().any(|m| m == "mom2.mom2") {
            return Err(Error::Input(format!("{shown} has no `mom2.mom2` array (it holds {}): not a reference second-moment file", members.join(", "))));
        }
        if !members.iter().any(|m| m == "mom2.count") {
            return Err(Error::Input(format!("{shown} has no `mom2.count` array: not a reference second-moment file")));
        }
        let sum = npz_array(file, "mom2.mom2")?;
        let count = npz_scalar(file, "mom2.count")?;
        let layer = layer.or(guessed.layer).ok_or_else(|| Error::Input(format!("cannot tell the layer from the file name {shown}; pass --layer")))?;
        Ok(Self { file: file.to_path_buf(), members, sum, count, layer, guessed })
    }

    /// Checks the statistics against the model (its config and identity) and says where and how
    /// they are filed in `stats_dir`: under `dataset` (default: the `<name>_stats` folder they came from, else
    /// `imported`) and `samples` (default: the file's `sample_size`, else its name's), with
    /// `source` as their origin (default: `imported from <file>`).
    pub fn prepare(
        self,
        cfg: &ModelConfig,
        identity: &ModelIdentity,
        stats_dir: &Path,
        dataset: Option<String>,
        samples: Option<usize>,
        source: Option<String>,
    ) -> Result<Prepared> {
        let shown = self.file.display();
        let layer = self.layer;
        if layer >= cfg.n_layer {
            return Err(Error::Input(format!("{shown} is for layer {layer}, but the model has {} layers: it belongs to another model", cfg.n_layer)));
        }
        let module = mlp_down(cfg, layer)?;
        let name = self.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(named) = module_in_name(&name).filter(|m| *m != module.name) {
            return Err(Error::Input(format!(
                "{shown} is for module `{named}`, but layer {layer} of this model is `{}`: it belongs to another model",
                module.name
            )));
        }
        let d = module.in_dim;
        if self.sum.dims() != [d, d] {
            return Err(Error::Input(format!(
                "{shown}: `mom2.mom2` is {:?} but layer {layer} of this model has {d}-wide keys ({}): the file belongs to another model",
                self.sum.dims(),
                module.name
            )));
        }
        let precision = match self.sum.dtype() {
            candle_core::DType::F32 => Precision::F32,
            candle_core::DType::F64 => Precision::F64,
            other => return Err(Error::Input(format!("{shown}: `mom2.mom2` is {other:?}; it must be a float32 or float64 array"))),
        };
        if !(self.count >= 1.0 && self.count.is_finite()) {
            return Err(Error::Input(format!("{shown}: `mom2.count` is {}: a sum over no tokens", self.count)));
        }
        cache::check_sum_tensor(&self.sum).map_err(|why| Error::Input(format!("{shown}: `mom2.mom2` holds {why}: the file is corrupt")))?;
        let samples = match samples {
            Some(n) => n,
            None if self.members.iter().any(|m| m == "sample_size") => npz_scalar(&self.file, "sample_size")? as usize,
            None => self.guessed.samples.unwrap_or(0),
        };
        let dataset = dataset.or(self.guessed.dataset).unwrap_or_else(|| "imported".into());
        let meta = StatsMeta {
            format: 1,
            identity: identity.clone(),
            module: module.name.clone(),
            layer,
            d_ff: d,
            dataset: dataset.clone(),
            samples,
            corpus_rows: None,
            texts: samples as u64,
            tokens: self.count as u64,
            precision,
            max_len: cfg.n_ctx,
            batch_tokens: 0,
            source: source.unwrap_or_else(|| format!("imported from {shown}")),
            corpus_digest: None,
            sampling: None,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            auto: None,
        };
        let path = cache::stats_path(stats_dir, identity, &dataset, &module.name, precision, samples);
        Ok(Prepared { path, sum: self.sum, count: self.count as u64, meta })
    }

    /// [`Self::prepare`]s the statistics and files them.
    pub fn file_into(self, files: &ModelFiles, stats_dir: &Path, dataset: Option<String>, samples: Option<usize>) -> Result<LayerReport> {
        let (cfg, identity) = (ModelConfig::from_file(&files.config)?, ModelIdentity::of(files)?);
        let p = self.prepare(&cfg, &identity, stats_dir, dataset, samples, None)?;
        p.save(&p.path)?;
        Ok(p.report())
    }
}

/// Imported statistics, checked, with the cache path they belong at.
pub struct Prepared {
    pub path: std::path::PathBuf,
    pub sum: candle_core::Tensor,
    pub count: u64,
    pub meta: StatsMeta,
}

impl Prepared {
    /// Writes the statistics file at `path` (the cache path, or a staging file for it).
    pub fn save(&self, path: &Path) -> Result<()> {
        cache::save(path, &self.sum, self.count, &self.meta)
    }

    pub fn report(&self) -> LayerReport {
        LayerReport { layer: self.meta.layer, module: self.meta.module.clone(), file: self.path.clone(), tokens: self.count, cached: false }
    }
}

/// The module a reference file's name is for: what precedes `_float32_` / `_float64_`.
fn module_in_name(name: &str) -> Option<&str> {
    ["_float32_", "_float64_"].iter().find_map(|p| name.find(p).map(|i| &name[..i])).filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_file_names_are_understood() {
        let p = Path::new("data/stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz");
        assert_eq!(parse_npz_name(p), NpzName { layer: Some(17), dataset: Some("wikipedia".into()), precision: Some(Precision::F32), samples: Some(100000) });
        let p = Path::new("gpt_neox.layers.5.mlp.dense_4h_to_h_float64_mom2_1000.npz");
        assert_eq!(parse_npz_name(p).layer, Some(5));
        assert_eq!(parse_npz_name(p).precision, Some(Precision::F64));
        assert_eq!(module_in_name("gpt_neox.layers.5.mlp.dense_4h_to_h_float64_mom2_1000.npz"), Some("gpt_neox.layers.5.mlp.dense_4h_to_h"));
        assert_eq!(module_in_name("stats.npz"), None);
    }
}
