//! Writing edits out: patched Hugging Face model directories and portable delta files.
//!
//! [`write_model_dir`] copies a model directory and adds `sign · ΔW` to the edited weights,
//! keeping every file name, shard, tensor name and dtype, so that transformers (or `edit`) loads
//! the result unchanged. Shards without edits and all non-weight files are copied byte for byte;
//! shards with edits are re-serialised with their unchanged tensors' bytes copied verbatim.
//! Everything is written into a temporary sibling directory and renamed into place at the end,
//! and the input model is never modified. Rewritten shards record in their metadata the ids of
//! the deltas they hold (`edit.applied`, for `revert`) and the fingerprint of the weights the
//! model was first edited from (`edit.base`, whose statistics still serve it).
//!
//! [`save_delta`] / [`load_delta`] (in `delta.rs`) store [`Deltas`] as delta files.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::checkpoint::{applied_list, Checkpoint, EDIT_APPLIED_KEY as APPLIED_KEY};
use crate::config::ModelConfig;
use crate::editing::Deltas;
use crate::error::{Error, Result};
use crate::hub::ModelFiles;
use crate::identity::ModelIdentity;
use crate::models::modules::EditableModule;

mod delta;
mod outputs;
pub use crate::editing::DeltaMeta;
pub use delta::{load_delta, save_delta, write_delta_file, DELTA_LAYOUT_KEY, DELTA_META_KEY};
pub use outputs::EditOutputs;

/// What a patched model directory received.
#[derive(Clone, Debug, Serialize)]
pub struct WriteReport {
    /// The output directory.
    pub out: PathBuf,
    /// Weight files re-serialised with edited tensors (paths relative to `out`).
    pub files_written: Vec<String>,
    /// Files copied byte for byte: non-weight files, untouched shards, the shard index.
    pub files_copied: Vec<String>,
    /// Files of the input directory left out: weights in other formats (`pytorch_model*.bin`,
    /// `tf_model*.h5`, ...) or stray safetensors models beside the ones read, which would still
    /// hold the unedited weights.
    pub files_skipped: Vec<String>,
    /// Checkpoint keys of the tensors that changed.
    pub tensors_changed: Vec<String>,
    /// Where the directory is staged until its transaction commits.
    #[serde(skip)]
    pub staged: PathBuf,
}

/// One validated delta, f32, on the CPU: a linear module's weight change (`[out, in]`), or
/// another parameter's (as stored).
struct CheckedDelta {
    module: Option<EditableModule>,
    /// The checkpoint tensor it changes, with the family prefix (`transformer.h.0.mlp.c_proj.weight`).
    tensor: String,
    delta: Tensor,
}

impl CheckedDelta {
    /// The delta in the checkpoint tensor's stored layout.
    fn stored(&self) -> Result<Tensor> {
        match &self.module {
            Some(m) => m.from_out_in(&self.delta),
            None => Ok(self.delta.clone()),
        }
    }
}

/// Checks every delta against the model: a known linear module with an `[out, in]` delta, or
/// another parameter name (its shape is checked against the checkpoint when written); finite
/// values; each tensor at most once. Returns them keyed by the checkpoint tensor name.
fn check_deltas(cfg: &ModelConfig, deltas: &Deltas) -> Result<BTreeMap<String, CheckedDelta>> {
    let mut checked = BTreeMap::new();
    for (name, delta) in deltas {
        let target = crate::editing::delta_target(cfg, name).map_err(|e| {
            Error::Input(format!("the delta for `{name}` cannot be applied: {e}; deltas must come from a model of the same architecture and size"))
        })?;
        let (module, tensor) = match target {
            crate::editing::DeltaTarget::Module(module) => {
                let want = [module.out_dim, module.in_dim];
                if delta.dims() != want {
                    return Err(Error::Input(format!(
                        "the delta for `{}` has shape {:?}, but the module's weight is [out, in] = {want:?}; \
                         the delta belongs to a model of a different size (or is transposed)",
                        module.name,
                        delta.dims()
                    )));
                }
                let tensor = format!("{}.weight", module.name);
                (Some(module), tensor)
            }
            crate::editing::DeltaTarget::Tensor(t) => (None, t),
        };
        let delta = delta.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if !all_finite(&delta)? {
            return Err(Error::Input(format!(
                "the delta for `{tensor}` contains NaN or infinite values; the edit diverged: recompute it \
                 (e.g. with a smaller learning rate or more regularisation)"
            )));
        }
        if checked.contains_key(&tensor) {
            return Err(Error::Input(format!("two deltas name `{tensor}` (`{name}` and another spelling of it); merge them into one")));
        }
        checked.insert(tensor.clone(), CheckedDelta { module, tensor, delta });
    }
    Ok(checked)
}

/// `0 · x` is 0 for finite x and NaN otherwise, so the sum is NaN iff any value is not finite.
fn all_finite(t: &Tensor) -> Result<bool> {
    let t = match t.dtype() {
        DType::F64 => t.clone(),
        _ => t.to_dtype(DType::F32)?,
    };
    let s = t.affine(0.0, 0.0)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(s.is_finite())
}

/// What is at `out` before writing.
#[derive(Debug, PartialEq)]
enum OutState {
    Absent,
    EmptyDir,
    Replace,
}

/// Checks, before any work, that `out` may receive a patched copy of the model: not the input
/// model's directory (or inside it), and not an existing non-empty directory unless `overwrite`.
pub fn check_out_dir(files: &ModelFiles, out: &Path, overwrite: bool) -> Result<()> {
    check_out(files, out, overwrite).map(|_| ())
}

fn check_out(files: &ModelFiles, out: &Path, overwrite: bool) -> Result<OutState> {
    let out_n = crate::fsutil::normalize(out);
    let in_dir = crate::fsutil::normalize(files.dir());
    if out_n.file_name().is_none() {
        return Err(Error::Input(format!("--out {} is not a usable directory name; choose another --out", out.display())));
    }
    if out_n.starts_with(&in_dir) {
        return Err(Error::Input(format!(
            "--out {} is the input model directory {} (or inside it); the input model is never modified: choose another --out",
            out.display(),
            files.dir().display()
        )));
    }
    let mut inputs: Vec<&Path> = vec![files.dir(), &files.config];
    inputs.extend(files.weights.iter().map(PathBuf::as_path));
    inputs.extend(files.index.iter().map(PathBuf::as_path));
    for p in inputs {
        if crate::fsutil::normalize(p).starts_with(&out_n) {
            return Err(Error::Input(format!(
                "--out {} contains the input model ({}); writing there would destroy it: choose another --out",
                out.display(),
                p.display()
            )));
        }
    }
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OutState::Absent),
        Err(e) => return Err(Error::io(out, e)),
    };
    if !meta.is_dir() {
        return Err(Error::Input(format!("--out {} exists and is not a directory; choose another --out", out.display())));
    }
    let empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
    if empty {
        Ok(OutState::EmptyDir)
    } else if overwrite {
        Ok(OutState::Replace)
    } else {
        Err(Error::Input(format!("--out {} already exists and is not empty; choose another --out or pass --force to replace it", out.display())))
    }
}

/// A file's name relative to the model directory (shard names may hold subfolders).
fn rel_name(dir: &Path, file: &Path) -> String {
    file.strip_prefix(dir)
        .ok()
        .filter(|r| !r.as_os_str().is_empty())
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

/// Weights in formats `edit` does not rewrite: copying them would ship the unedited model.
fn is_foreign_weight_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("pytorch_model")
        || lower.starts_with("tf_model")
        || lower.starts_with("flax_model")
        || lower.starts_with("model.ckpt")
        || lower.ends_with(".bin")
        || lower.ends_with(".h5")
        || lower.ends_with(".msgpack")
        || lower.ends_with(".onnx")
        || lower.ends_with(".gguf")
        || lower.ends_with(".pt")
        || lower.ends_with(".pth")
        // A stray single-file or sharded safetensors model beside the one we read: transformers
        // might pick it over ours.
        || (lower.starts_with("model") && (lower.ends_with(".safetensors") || lower.ends_with(".safetensors.index.json")))
}

/// The delta ids recorded in the shards that hold `deltas`' weights: per shard, its list
/// (empty for weights not written by edit).
pub fn applied_ids(files: &ModelFiles, cfg: &ModelConfig, deltas: &Deltas) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let ckpt = Checkpoint::open_files(files.weights.clone())?;
    let mut shards = BTreeSet::new();
    // Only the names matter here: where each changed tensor lives.
    for key in deltas.keys() {
        let tensor = match crate::editing::delta_target(cfg, key)? {
            crate::editing::DeltaTarget::Module(m) => format!("{}.weight", m.name),
            crate::editing::DeltaTarget::Tensor(t) => t,
        };
        if let Some(k) = ckpt.resolve(&tensor, cfg.family.prefix()) {
            shards.insert(ckpt.tensors()[k].file);
        }
    }
    drop(ckpt);
    shards.into_iter().map(|i| Ok((files.weights[i].clone(), applied_in_file(&files.weights[i])?))).collect()
}

/// The `edit.applied` list of one weight file's metadata (empty when it has none).
fn applied_in_file(path: &Path) -> Result<Vec<String>> {
    Ok(applied_list(&crate::checkpoint::file_metadata(path)?))
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::copy(from, to).map_err(|e| Error::io(from, e))?;
    Ok(())
}

/// A tensor of a rewritten shard: the original bytes, or a new tensor.
enum OutTensor<'a> {
    Raw(safetensors::tensor::TensorView<'a>),
    New(Tensor),
}

impl safetensors::View for OutTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            OutTensor::Raw(v) => v.dtype(),
            OutTensor::New(t) => safetensors::View::dtype(t),
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            OutTensor::Raw(v) => v.shape(),
            OutTensor::New(t) => t.dims(),
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            OutTensor::Raw(v) => Cow::Borrowed(v.data()),
            OutTensor::New(t) => safetensors::View::data(t),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            OutTensor::Raw(v) => v.data().len(),
            OutTensor::New(t) => safetensors::View::data_len(t),
        }
    }
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Safety: read-only mapping; like every mmap-based loader we rely on nobody truncating
    // the file while we run.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// `stored + sign · delta_stored`, computed in f32 (f64 for f64 weights), cast back to the
/// stored dtype.
fn patched(stored: &Tensor, delta_stored: &Tensor, sign: f64) -> Result<Tensor> {
    let work = if stored.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let w = stored.to_dtype(work)?;
    let d = delta_stored.to_dtype(work)?;
    let d = if sign == 1.0 { d } else { d.affine(sign, 0.0)? };
    Ok((w + d)?.to_dtype(stored.dtype())?)
}

/// Re-serialises one shard with the given tensors replaced, keeping its `__metadata__`.
fn rewrite_shard(src: &Path, dst: &Path, edits: &BTreeMap<String, Tensor>, sign: f64, id: &str, base: &str) -> Result<()> {
    use candle_core::safetensors::Load;
    let bad = |reason: String| Error::BadSafetensors { path: src.to_path_buf(), reason };
    let mmap = map_file(src)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| bad(e.to_string()))?;
    let mut out: Vec<(String, OutTensor)> = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        match edits.get(&name) {
            Some(delta_stored) => {
                let stored = view.load(&Device::Cpu).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
                let new = patched(&stored, delta_stored, sign)?;
                if !all_finite(&new)? {
                    return Err(Error::Input(format!(
                        "adding the delta to `{name}` of {} gives values that are not finite in {:?} \
                         (overflow); the delta is too large for this model's storage dtype",
                        src.display(),
                        view.dtype()
                    )));
                }
                out.push((name, OutTensor::New(new)));
            }
            None => out.push((name, OutTensor::Raw(view))),
        }
    }
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut metadata = header.metadata().clone().unwrap_or_default();
    metadata.entry(crate::checkpoint::EDIT_BASE_KEY.to_string()).or_insert_with(|| base.to_string());
    let mut applied = applied_list(&metadata);
    if sign > 0.0 {
        applied.push(id.to_string());
    } else if let Some(i) = applied.iter().rposition(|a| a == id) {
        applied.remove(i);
    }
    if applied.is_empty() {
        metadata.remove(APPLIED_KEY);
    } else {
        metadata.insert(APPLIED_KEY.to_string(), serde_json::to_string(&applied).expect("ids serialise"));
    }
    let metadata = if metadata.is_empty() { None } else { Some(metadata) };
    safetensors::serialize_to_file(out, metadata, dst).map_err(|e| Error::Input(format!("cannot write {}: {e}", dst.display())))?;
    crate::fsutil::default_permissions(dst)
}

/// Writes a complete model directory at `out`: the input model's files with
/// `W_new = W + sign · ΔW` for every delta (`sign` 1 applies, -1 reverts).
///
/// Refuses (with [`Error::Input`]) deltas for modules the model lacks, of the wrong shape or
/// not finite; an `out` that is (or is inside, or contains) the input model; and an existing,
/// non-empty `out` unless `overwrite`. Nothing is left half-written on failure.
pub fn write_model_dir(files: &ModelFiles, cfg: &ModelConfig, deltas: &Deltas, sign: f64, out: &Path, overwrite: bool) -> Result<WriteReport> {
    let mut outputs = crate::fsutil::Outputs::new();
    let report = stage_model_dir(files, cfg, deltas, sign, out, overwrite, &mut outputs)?;
    outputs.commit()?;
    Ok(report)
}

/// [`write_model_dir`] into a temporary of `outputs`: the directory appears at `out` only when
/// the caller commits `outputs` (with its other outputs). Returns the temporary's path too, so
/// that a file meant to live inside `out` can be staged there.
pub fn stage_model_dir(
    files: &ModelFiles,
    cfg: &ModelConfig,
    deltas: &Deltas,
    sign: f64,
    out: &Path,
    overwrite: bool,
    outputs: &mut crate::fsutil::Outputs,
) -> Result<WriteReport> {
    if !sign.is_finite() {
        return Err(Error::Input(format!("sign {sign} is not finite")));
    }
    let checked = check_deltas(cfg, deltas)?;
    check_out(files, out, overwrite)?;
    let id = crate::editing::delta_id(deltas)?;
    let base = ModelIdentity::of(files)?.root_fingerprint().to_string();

    // Find each edited tensor: per weight file, checkpoint key → delta in the stored layout.
    let ckpt = Checkpoint::open_files(files.weights.clone())?;
    let mut edits: BTreeMap<usize, BTreeMap<String, Tensor>> = BTreeMap::new();
    let mut tensors_changed = Vec::new();
    for c in checked.values() {
        let name = c.tensor.clone();
        let key = ckpt.resolve(&name, cfg.family.prefix()).ok_or_else(|| Error::MissingTensor {
            name: name.clone(),
            files: files.weights.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
        })?;
        let info = &ckpt.tensors()[key];
        let stored = c.stored()?;
        if info.shape != stored.dims() {
            return Err(Error::ShapeMismatch {
                name,
                file: files.weights[info.file].display().to_string(),
                expected: stored.dims().to_vec(),
                found: info.shape.clone(),
            });
        }
        use safetensors::Dtype as S;
        if !matches!(info.dtype, S::F32 | S::F16 | S::BF16 | S::F64) {
            return Err(Error::UnsupportedDtype { name, file: files.weights[info.file].display().to_string(), dtype: format!("{:?}", info.dtype) });
        }
        edits.entry(info.file).or_default().insert(key.to_string(), stored);
        tensors_changed.push(key.to_string());
    }
    drop(ckpt);
    tensors_changed.sort();

    let tmp = outputs.stage(out)?;
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;

    let dir = files.dir();
    let weight_names: Vec<String> = files.weights.iter().map(|w| rel_name(dir, w)).collect();
    let index_name = files.index.as_ref().map(|i| rel_name(dir, i));
    let mut files_written = Vec::new();
    let mut files_copied = Vec::new();
    let mut files_skipped = Vec::new();

    // Non-weight files: regular files (symlinks followed), no folders, no hidden files.
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.collect::<std::io::Result<Vec<_>>>().map_err(|e| Error::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    let reserved: BTreeSet<&str> = weight_names.iter().map(String::as_str).chain(index_name.as_deref()).collect();
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || reserved.contains(name.as_str()) {
            continue;
        }
        let path = e.path();
        if !std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            continue;
        }
        if is_foreign_weight_file(&name) {
            tracing::warn!("not copying {name}: it holds weights in a format edit does not rewrite, so they would stay unedited");
            files_skipped.push(name);
            continue;
        }
        copy_file(&path, &tmp.join(&name))?;
        files_copied.push(name);
    }

    // Weight files: edited shards rewritten, the others copied.
    for (i, (src, name)) in files.weights.iter().zip(&weight_names).enumerate() {
        let dst = tmp.join(name);
        match edits.get(&i) {
            Some(e) => {
                tracing::info!("writing {name} ({} edited tensor(s))", e.len());
                rewrite_shard(src, &dst, e, sign, &id, &base)?;
                files_written.push(name.clone());
            }
            None => {
                copy_file(src, &dst)?;
                files_copied.push(name.clone());
            }
        }
    }
    if let (Some(index), Some(name)) = (&files.index, &index_name) {
        copy_file(index, &tmp.join(name))?;
        files_copied.push(name.clone());
    }

    Ok(WriteReport { out: out.to_path_buf(), staged: tmp, files_written, files_copied, files_skipped, tensors_changed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_handles_missing_paths() {
        let tmp = std::env::temp_dir();
        let a = crate::fsutil::normalize(&tmp.join("no-such-dir-edit-patch").join("x").join("..").join("y"));
        assert!(a.ends_with("no-such-dir-edit-patch/y"), "{}", a.display());
        assert!(a.starts_with(tmp.canonicalize().unwrap()));
    }

    #[test]
    fn foreign_weights_are_recognised() {
        assert!(is_foreign_weight_file("pytorch_model.bin"));
        assert!(is_foreign_weight_file("pytorch_model.bin.index.json"));
        assert!(is_foreign_weight_file("tf_model.h5"));
        assert!(is_foreign_weight_file("model-00001-of-00002.safetensors"));
        assert!(!is_foreign_weight_file("tokenizer.json"));
        assert!(!is_foreign_weight_file("generation_config.json"));
    }

    #[test]
    fn finiteness() {
        let t = Tensor::new(&[1f32, -2.0, 3.5], &Device::Cpu).unwrap();
        assert!(all_finite(&t).unwrap());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::new(&[1f32, bad], &Device::Cpu).unwrap();
            assert!(!all_finite(&t).unwrap());
        }
    }

    #[test]
    fn patch_keeps_dtype_and_applies_sign() {
        let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let d = Tensor::new(&[[0.5f32, 0.0], [0.0, -1.0]], &Device::Cpu).unwrap();
        let p = patched(&w, &d, -1.0).unwrap();
        assert_eq!(p.dtype(), DType::BF16);
        let v: Vec<Vec<f32>> = p.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
        assert_eq!(v, vec![vec![0.5, 2.0], vec![3.0, 5.0]]);
    }
}
