//! The statistics cache: one safetensors file per (model, layer, dataset, samples, precision),
//! holding the uncentred sum `mom2.sum` (`[d_ff, d_ff]`), the token count `mom2.count`, and
//! JSON metadata under the `edit.stats` key. Consumers use C = sum / count.
//!
//! Layout: `<stats-dir>/<model>/<dataset>/<module>_<precision>_<samples>.safetensors`, e.g.
//! `~/.cache/edit/stats/gpt2-xl/wikitext-103-raw-v1/transformer.h.17.mlp.c_proj_float32_100000.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::collect::{Accumulator, SumView};
use super::Precision;
use crate::error::{Error, Result};
use crate::fsutil::Lazy;
use crate::identity::ModelIdentity;
use crate::models::EditableModule;

pub const META_KEY: &str = "edit.stats";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsMeta {
    pub format: u32,
    pub identity: ModelIdentity,
    pub module: String,
    pub layer: usize,
    pub d_ff: usize,
    pub dataset: String,
    /// Texts sampled: `--samples`, or the corpus's row count when it has fewer rows.
    pub samples: usize,
    /// Rows of the whole corpus (absent in files of edit 0.1.0 before this field).
    #[serde(default)]
    pub corpus_rows: Option<usize>,
    /// Non-empty texts actually used.
    pub texts: u64,
    pub tokens: u64,
    pub precision: Precision,
    pub max_len: usize,
    pub batch_tokens: usize,
    /// `collected` or `imported from <file>`.
    pub source: String,
    /// The corpus's content digest ([`crate::data::Sample::corpus_digest`]); absent in files
    /// written before edit recorded it, and in imported ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_digest: Option<String>,
    /// How the texts were drawn from the corpus ([`crate::data::Sample::sampling`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<String>,
    pub tool_version: String,
    /// Statistics collected until they converged (`--samples auto`) rather than over all
    /// `samples` texts: how, and where they stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoMeta>,
}

/// How a `--samples auto` collection stopped (see [`super::converge`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoMeta {
    /// The tolerance on the relative change of C⁻¹K between doublings.
    pub tolerance: f64,
    /// Whether the change fell below it (else the collection reached the end of its sample).
    pub converged: bool,
    /// Held-out texts whose keys were the probes (not in the sums).
    pub probe_texts: usize,
    /// The convergence curve: per check, the tokens and each layer's change.
    pub curve: Vec<super::converge::Checkpoint>,
}

pub struct Moments {
    pub sum: Tensor,
    pub count: u64,
    pub meta: StatsMeta,
}

impl Moments {
    /// C = Σ k kᵀ / count, in the stored precision.
    pub fn second_moment(&self) -> Result<Tensor> {
        Ok((&self.sum / self.count as f64)?)
    }

    /// Refuses statistics of another model or another layer width.
    pub fn check(&self, identity: &ModelIdentity, module: &EditableModule) -> Result<()> {
        self.meta.check(self.sum.dims(), identity, module)
    }
}

impl StatsMeta {
    /// Refuses statistics (whose sum has shape `sum_dims`) of another model or layer width.
    pub fn check(&self, sum_dims: &[usize], identity: &ModelIdentity, module: &EditableModule) -> Result<()> {
        let m = self;
        if m.d_ff != module.in_dim || sum_dims != [module.in_dim, module.in_dim] {
            return Err(Error::Input(format!(
                "statistics for `{}` are {}x{} but `{}` has {}-wide keys: they belong to a different model; recompute them with `edit stats`",
                m.module, m.d_ff, m.d_ff, module.name, module.in_dim
            )));
        }
        if m.module != module.name {
            return Err(Error::Input(format!("statistics file is for module `{}`, not `{}`", m.module, module.name)));
        }
        if !identity.stats_fit(&m.identity) {
            return Err(Error::Input(format!(
                "statistics were computed on model {} (weights {}), not on {} (weights {}): recompute them with `edit stats --model {}`",
                m.identity.model, m.identity.weights_fingerprint, identity.model, identity.weights_fingerprint, identity.model
            )));
        }
        Ok(())
    }
}

/// The default stats directory: `$EDIT_STATS_DIR`, else `$XDG_CACHE_HOME/edit/stats`, else `~/.cache/edit/stats`.
pub fn default_stats_dir() -> PathBuf {
    if let Ok(d) = std::env::var("EDIT_STATS_DIR") {
        return PathBuf::from(d);
    }
    crate::digest::cache_home().join("stats")
}

pub fn stats_path(stats_dir: &Path, identity: &ModelIdentity, dataset: &str, module: &str, precision: Precision, samples: usize) -> PathBuf {
    stats_dir.join(identity.slug()).join(crate::data::sanitize(dataset)).join(format!("{module}_{}_{samples}.safetensors", precision.reference_name()))
}

/// Where statistics drawn from a sample of `samples` texts are filed: [`stats_path`], or for
/// `--samples auto` ones (`auto`) beside it, never in its place (they hold fewer of its texts).
pub fn filed_path(stats_dir: &Path, identity: &ModelIdentity, dataset: &str, module: &str, precision: Precision, samples: usize, auto: bool) -> PathBuf {
    let full = stats_path(stats_dir, identity, dataset, module, precision, samples);
    match auto {
        true => full.with_file_name(format!("{module}_{}_{samples}-auto.safetensors", precision.reference_name())),
        false => full,
    }
}

/// Where an interrupted job keeps its progress.
/// (A shard's job keeps its own; so does a `--samples auto` job.)
pub fn partial_path(final_dir: &Path, layers: &[usize], precision: Precision, samples: usize, shard: Option<super::collect::Shard>, auto: bool) -> PathBuf {
    let layers: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
    let part = shard.map(|s| format!(".shard-{}-of-{}", s.index, s.count)).unwrap_or_default();
    let auto = if auto { "-auto" } else { "" };
    final_dir.join(format!(".partial_layers-{}_{}_{samples}{auto}{part}.safetensors", layers.join("-"), precision.reference_name()))
}

/// Writes a statistics file, the sum streamed from its storage (no copy of it is made).
pub fn save(path: &Path, sum: &Tensor, count: u64, meta: &StatsMeta) -> Result<()> {
    let count = Tensor::new(&[count as i64], &Device::Cpu)?;
    let mut md = HashMap::new();
    md.insert(META_KEY.to_string(), serde_json::to_string(meta).expect("metadata serialises"));
    let sum = sum.to_device(&Device::Cpu)?;
    write_file(path, &[Lazy::ready("mom2.count", &count), Lazy::ready("mom2.sum", &sum)], md)
}

/// Writes a statistics or progress file (its folder made if missing), tensors streamed.
fn write_file(path: &Path, tensors: &[Lazy<'_>], metadata: HashMap<String, String>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::fsutil::write_safetensors_streamed(path, tensors, metadata)
}

/// A statistics or partial file, mapped once: its `edit.stats` metadata and its tensors.
struct StatsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    meta: Option<String>,
}

impl StatsFile {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Safety: read-only mapping of a file we only ever replace by rename, never rewrite.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| Error::BadSafetensors { path: path.to_path_buf(), reason: e.to_string() })?;
        let meta = header.metadata().as_ref().and_then(|m| m.get(META_KEY).cloned());
        Ok(Self { path: path.to_path_buf(), mmap, meta })
    }

    fn stats_meta(&self) -> Result<StatsMeta> {
        let meta = self.meta.as_deref().ok_or_else(|| Error::BadSafetensors {
            path: self.path.clone(),
            reason: format!("no `{META_KEY}` metadata: not a statistics file written by edit"),
        })?;
        serde_json::from_str(meta).map_err(|e| Error::BadSafetensors { path: self.path.clone(), reason: format!("unreadable `{META_KEY}` metadata: {e}") })
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadSafetensors { path: self.path.clone(), reason }
    }

    /// The tensor `name` as the mapped bytes it is stored in.
    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        let st = safetensors::SafeTensors::deserialize(&self.mmap).map_err(|e| self.bad(e.to_string()))?;
        st.tensor(name).map_err(|e| self.bad(format!("tensor `{name}`: {e}")))
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        use candle_core::safetensors::Load;
        Ok(self.view(name)?.load(device)?)
    }

    /// The token count `mom2.count` of a statistics file.
    fn count(&self) -> Result<u64> {
        Ok(self.load("mom2.count", &Device::Cpu)?.to_dtype(DType::I64)?.to_vec1::<i64>()?[0] as u64)
    }
}

/// A statistics file's metadata and the shape of its sum, without reading the sum.
pub fn load_meta(path: &Path) -> Result<(StatsMeta, Vec<usize>)> {
    let st = StatsFile::open(path)?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&st.mmap).map_err(|e| Error::BadSafetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    let dims = header
        .info("mom2.sum")
        .map(|i| i.shape.clone())
        .ok_or_else(|| Error::BadSafetensors { path: path.to_path_buf(), reason: "no `mom2.sum` tensor: not a statistics file written by edit".into() })?;
    Ok((st.stats_meta()?, dims))
}

pub fn load(path: &Path) -> Result<Moments> {
    let st = StatsFile::open(path)?;
    let meta = st.stats_meta()?;
    let sum = st.load("mom2.sum", &Device::Cpu)?;
    Ok(Moments { sum, count: st.count()?, meta })
}

/// A statistics file's stored sum, as the bytes of its mapping (little-endian, row-major).
pub enum SumBytes<'a> {
    F32 { bytes: &'a [u8], rows: usize, cols: usize, count: u64 },
    F64 { bytes: &'a [u8], rows: usize, cols: usize, count: u64 },
}

/// Hands `read` the sum of a statistics file straight from its memory map, without a tensor
/// copy (a caller converting it to f64 then holds one copy, not three).
pub fn read_sum<T>(path: &Path, read: impl FnOnce(SumBytes<'_>) -> T) -> Result<T> {
    let st = StatsFile::open(path)?;
    let count = st.count()?;
    let view = st.view("mom2.sum")?;
    let (rows, cols) = match view.shape() {
        &[r, c] => (r, c),
        other => return Err(st.bad(format!("`mom2.sum` has shape {other:?}, not a matrix"))),
    };
    let bytes = view.data();
    Ok(read(match view.dtype() {
        safetensors::Dtype::F32 => SumBytes::F32 { bytes, rows, cols, count },
        safetensors::Dtype::F64 => SumBytes::F64 { bytes, rows, cols, count },
        other => return Err(st.bad(format!("`mom2.sum` is {other:?}; statistics are stored in f32 or f64"))),
    }))
}

/// Checks the values of a `d`×`d` sum of k kᵀ: every entry finite, no negative diagonal entry.
/// Says what is wrong and where.
pub fn check_sum_values(values: impl Iterator<Item = f64>, d: usize) -> std::result::Result<(), String> {
    for (i, v) in values.enumerate() {
        if !v.is_finite() {
            return Err(format!("a non-finite value ({v}) at row {}, column {}", i / d, i % d));
        }
        if i % (d + 1) == 0 && v < 0.0 {
            return Err(format!("a negative diagonal entry ({v}) at row {}, which a sum of k kᵀ cannot have", i / d));
        }
    }
    Ok(())
}

/// [`check_sum_values`] of a square sum tensor.
pub fn check_sum_tensor(sum: &Tensor) -> std::result::Result<(), String> {
    let d = sum.dim(0).map_err(|e| e.to_string())?;
    let flat = sum.flatten_all().map_err(|e| e.to_string())?;
    match sum.dtype() {
        DType::F64 => check_sum_values(flat.to_vec1::<f64>().map_err(|e| e.to_string())?.into_iter(), d),
        _ => check_sum_values(flat.to_dtype(DType::F32).and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?.into_iter().map(f64::from), d),
    }
}

/// [`check_sum_values`] of a statistics file's sum, read from its mapping without a copy.
pub fn check_sum_bytes(sum: &SumBytes<'_>) -> std::result::Result<(), String> {
    match *sum {
        SumBytes::F32 { bytes, cols, .. } => check_sum_values(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64), cols),
        SumBytes::F64 { bytes, cols, .. } => check_sum_values(bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))), cols),
    }
}

/// Job parameters a partial file must match to be resumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobKey {
    pub identity: ModelIdentity,
    pub dataset: String,
    pub samples: usize,
    pub layers: Vec<usize>,
    pub precision: Precision,
    pub max_len: usize,
    pub batch_tokens: usize,
    /// A part of the job (`edit stats --shard`); absent for a whole one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<super::collect::Shard>,
    /// A `--samples auto` job: its tolerance, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<String>,
}

/// What a finished shard file carries besides its sums, so that `edit stats merge` can file the
/// merged statistics exactly as a single run would, without the model at hand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Module name of each layer.
    pub modules: BTreeMap<usize, String>,
    pub d_ff: usize,
    pub corpus_rows: Option<usize>,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct PartialMeta {
    key: JobKey,
    count: u64,
    texts: u64,
    next_chunk: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_shard: Option<ShardInfo>,
    /// A `--samples auto` job's convergence checks so far (its last solutions are `conv.<layer>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    convergence: Option<super::converge::ConvergenceState>,
}

/// A `--samples auto` job's checkpointed convergence state and last solutions per layer.
pub type SavedConvergence = (super::converge::ConvergenceState, BTreeMap<usize, Tensor>);

/// A finished shard: its job, sums and what the merged files need.
pub struct ShardFile {
    pub key: JobKey,
    pub info: ShardInfo,
    pub acc: Accumulator,
}

/// Where a finished shard of a job is written (beside the statistics it is a part of).
pub fn shard_path(final_dir: &Path, layers: &[usize], precision: Precision, samples: usize, shard: super::collect::Shard) -> PathBuf {
    final_dir.join(shard_file_name(layers, precision, &samples.to_string(), shard))
}

fn shard_file_name(layers: &[usize], precision: Precision, samples: &str, shard: super::collect::Shard) -> String {
    let layers: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
    format!("layers-{}_{}_{samples}.shard-{}-of-{}.safetensors", layers.join("-"), precision.reference_name(), shard.index, shard.count)
}

/// Whether `name` is the name [`shard_path`] gives this job's shard file for some sample count.
pub fn is_shard_file_name(name: &str, layers: &[usize], precision: Precision, shard: super::collect::Shard) -> bool {
    let pattern = shard_file_name(layers, precision, "\0", shard);
    let (prefix, suffix) = pattern.split_once('\0').expect("the placeholder is in the name");
    name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix)).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

pub fn save_shard(path: &Path, key: &JobKey, info: &ShardInfo, acc: &Accumulator) -> Result<()> {
    acc.with_view(|sums| write_partial(path, key, acc, sums, Some(info.clone()), None))
}

/// A finished shard file's job and counts, from its header only (no sums are read).
pub struct ShardHeader {
    pub key: JobKey,
    pub info: ShardInfo,
    pub count: u64,
    pub texts: u64,
}

fn shard_meta(st: &StatsFile, path: &Path) -> Result<(PartialMeta, ShardInfo)> {
    let bad = |reason: &str| Error::BadSafetensors { path: path.to_path_buf(), reason: reason.to_string() };
    let mut meta: PartialMeta = st
        .meta
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| bad("no shard metadata: not a shard file written by `edit stats --shard`"))?;
    match (meta.finished_shard.take(), meta.key.shard) {
        (Some(info), Some(_)) => Ok((meta, info)),
        _ => Err(bad("not a finished shard (an interrupted job's progress file?): rerun its `edit stats --shard` command to finish it")),
    }
}

/// Reads a finished shard file's header (any job's).
pub fn read_shard_header(path: &Path) -> Result<ShardHeader> {
    let (meta, info) = shard_meta(&StatsFile::open(path)?, path)?;
    Ok(ShardHeader { key: meta.key, info, count: meta.count, texts: meta.texts })
}

/// Reads a finished shard file (any job's).
pub fn load_shard(path: &Path) -> Result<ShardFile> {
    let st = StatsFile::open(path)?;
    let (meta, info) = shard_meta(&st, path)?;
    let mut sums = BTreeMap::new();
    for &l in &meta.key.layers {
        sums.insert(l, st.load(&format!("sum.{l}"), &Device::Cpu)?);
    }
    let acc = Accumulator { sums, count: meta.count, texts: meta.texts, next_chunk: meta.next_chunk };
    Ok(ShardFile { key: meta.key, info, acc })
}

/// One layer's sum of a finished shard file (any job's), read alone.
pub fn load_shard_sum(path: &Path, layer: usize) -> Result<Tensor> {
    let st = StatsFile::open(path)?;
    shard_meta(&st, path)?;
    st.load(&format!("sum.{layer}"), &Device::Cpu)
}

/// Writes a job's progress: `acc`'s counts and position, its `sums` (one layer's copy made at a
/// time), and a `--samples auto` job's convergence state.
pub fn save_partial(path: &Path, key: &JobKey, acc: &Accumulator, sums: &SumView, convergence: Option<SavedConvergence>) -> Result<()> {
    write_partial(path, key, acc, sums, None, convergence)
}

fn write_partial(
    path: &Path,
    key: &JobKey,
    acc: &Accumulator,
    sums: &SumView,
    finished_shard: Option<ShardInfo>,
    convergence: Option<SavedConvergence>,
) -> Result<()> {
    let mut tensors: Vec<Lazy<'_>> = sums
        .layers
        .iter()
        .map(|&l| Lazy {
            name: format!("sum.{l}"),
            dtype: sums.dtype,
            dims: vec![sums.dim, sums.dim],
            make: Box::new(move || Ok((sums.get)(l)?.to_device(&Device::Cpu)?)),
        })
        .collect();
    let convergence = convergence.map(|(state, last)| {
        for (l, t) in last {
            tensors.push(Lazy::ready(&format!("conv.{l}"), &t));
        }
        state
    });
    let meta = PartialMeta { key: key.clone(), count: acc.count, texts: acc.texts, next_chunk: acc.next_chunk, finished_shard, convergence };
    let mut md = HashMap::new();
    md.insert(META_KEY.to_string(), serde_json::to_string(&meta).expect("metadata serialises"));
    write_file(path, &tensors, md)
}

/// The saved progress of an identical job, if any. A partial file of a different job is
/// reported and ignored (it will be overwritten).
pub fn load_partial(path: &Path, key: &JobKey, device: &Device) -> Result<Option<(Accumulator, Option<SavedConvergence>)>> {
    if !path.is_file() {
        return Ok(None);
    }
    let st = StatsFile::open(path)?;
    let Some(meta) = st.meta.as_deref().and_then(|m| serde_json::from_str::<PartialMeta>(m).ok()) else {
        tracing::warn!("ignoring unreadable partial statistics {}", path.display());
        return Ok(None);
    };
    if &meta.key != key {
        tracing::warn!("ignoring partial statistics {} of a different job (settings changed); starting over", path.display());
        return Ok(None);
    }
    let mut sums = BTreeMap::new();
    for &l in &key.layers {
        sums.insert(l, st.load(&format!("sum.{l}"), device)?);
    }
    let convergence = match meta.convergence {
        Some(state) => {
            let mut last = BTreeMap::new();
            for &l in &key.layers {
                if let Ok(t) = st.load(&format!("conv.{l}"), &Device::Cpu) {
                    last.insert(l, t);
                }
            }
            Some((state, last))
        }
        None => None,
    };
    Ok(Some((Accumulator { sums, count: meta.count, texts: meta.texts, next_chunk: meta.next_chunk }, convergence)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::collect::Shard;

    #[test]
    fn shard_file_names_are_recognised_for_any_sample_count_only() {
        let shard = Shard { index: 1, count: 3 };
        let name = |layers: &[usize], p, samples, s| shard_path(Path::new("d"), layers, p, samples, s).file_name().unwrap().to_str().unwrap().to_string();
        assert!(is_shard_file_name(&name(&[1, 3], Precision::F32, 520, shard), &[1, 3], Precision::F32, shard));
        assert!(is_shard_file_name(&name(&[1, 3], Precision::F32, 7, shard), &[1, 3], Precision::F32, shard));
        assert!(!is_shard_file_name(&name(&[1, 3], Precision::F64, 520, shard), &[1, 3], Precision::F32, shard));
        assert!(!is_shard_file_name(&name(&[1], Precision::F32, 520, shard), &[1, 3], Precision::F32, shard));
        assert!(!is_shard_file_name(&name(&[1, 3], Precision::F32, 520, Shard { index: 2, count: 3 }), &[1, 3], Precision::F32, shard));
        assert!(!is_shard_file_name("layers-1-3_float32_.shard-1-of-3.safetensors", &[1, 3], Precision::F32, shard));
        assert!(!is_shard_file_name(
            &partial_path(Path::new("d"), &[1, 3], Precision::F32, 520, Some(shard), false).display().to_string(),
            &[1, 3],
            Precision::F32,
            shard
        ));
    }
}
