//! Delta files: [`Deltas`] stored as safetensors, one f32 tensor per changed checkpoint tensor,
//! under its checkpoint name (`<module>.weight`, `<module>.bias`, `<block>.ln_1.weight`) and in
//! its stored layout (so `W + Δ` works on the checkpoint tensor directly), with the edit's
//! provenance as JSON under `edit.delta`; and a delta's id.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};

use super::{check_deltas, map_file};
use crate::config::ModelConfig;
use crate::editing::{DeltaMeta, Deltas};
use crate::error::{Error, Result};
use crate::models::modules;

/// Metadata key holding the JSON [`DeltaMeta`] of a delta file.
pub const DELTA_META_KEY: &str = "edit.delta";
/// Metadata key naming the orientation of a delta file's tensors (always `stored`).
pub const DELTA_LAYOUT_KEY: &str = "edit.layout";
const STORED_LAYOUT: &str = "stored";

/// Saves `deltas` (`[out, in]`) as a delta file: one f32 tensor `<module>.weight` per edited
/// weight in the checkpoint's stored layout, `meta` as JSON under `edit.delta`, and
/// `edit.layout = "stored"`. Written to a temporary file and renamed into place.
pub fn save_delta(path: &Path, cfg: &ModelConfig, deltas: &Deltas, meta: &DeltaMeta) -> Result<()> {
    let mut outputs = crate::fsutil::Outputs::new();
    let tmp = outputs.stage(path)?;
    write_delta_file(&tmp, cfg, deltas, meta)?;
    outputs.commit()
}

/// Writes the delta file itself at `path` (callers stage it through an [`crate::fsutil::Outputs`]).
pub fn write_delta_file(path: &Path, cfg: &ModelConfig, deltas: &Deltas, meta: &DeltaMeta) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::Input(format!("{} is not a file path; name the delta file, e.g. delta.safetensors", path.display())));
    }
    let checked = check_deltas(cfg, deltas)?;
    let mut tensors = Vec::with_capacity(checked.len());
    for c in checked.values() {
        tensors.push((c.tensor.clone(), c.stored()?.contiguous()?));
    }
    let mut md = HashMap::new();
    md.insert(DELTA_META_KEY.to_string(), serde_json::to_string(meta).map_err(|e| Error::Input(format!("cannot serialise the delta metadata: {e}")))?);
    md.insert(DELTA_LAYOUT_KEY.to_string(), STORED_LAYOUT.to_string());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::fsutil::write_safetensors(path, &tensors, Some(md))
}

/// Reads a delta file written by [`save_delta`], returning [`Deltas`] checked against `cfg`:
/// linear weights as `[out, in]` under their module names, other parameters as stored under
/// their tensor names.
pub fn load_delta(path: &Path, cfg: &ModelConfig) -> Result<(Deltas, DeltaMeta)> {
    use candle_core::safetensors::Load;
    let shown = path.display();
    let not_delta = |why: String| {
        Error::Input(format!("{shown} is not a delta file written by edit ({why}); pass a delta saved by `edit` (e.g. by an edit run that saves its delta)"))
    };
    let mmap = map_file(path)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| not_delta(format!("not a readable safetensors file: {e}")))?;
    let md = header.metadata().as_ref();
    let meta = md.and_then(|m| m.get(DELTA_META_KEY)).ok_or_else(|| not_delta(format!("it has no `{DELTA_META_KEY}` metadata")))?;
    let meta: DeltaMeta = serde_json::from_str(meta).map_err(|e| not_delta(format!("its `{DELTA_META_KEY}` metadata is unreadable: {e}")))?;
    match md.and_then(|m| m.get(DELTA_LAYOUT_KEY)).map(String::as_str) {
        Some(STORED_LAYOUT) => {}
        other => {
            return Err(Error::Input(format!(
                "{shown}: unknown delta layout {other:?} (expected `{STORED_LAYOUT}` under `{DELTA_LAYOUT_KEY}`); \
                 the file was written by an incompatible version of edit: recompute the delta"
            )))
        }
    }
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| Error::BadSafetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut deltas = Deltas::new();
    for (name, view) in st.tensors() {
        let stored = view
            .load(&Device::Cpu)
            .map_err(|e| Error::BadSafetensors { path: path.to_path_buf(), reason: format!("tensor `{name}`: {e}") })?
            .to_dtype(DType::F32)?;
        if let Some(param) = modules::parameter_name(cfg, &name).filter(|_| !modules::is_linear_name(cfg, &name)) {
            // Another parameter (a bias, a norm): kept as stored; its shape is checked against
            // the checkpoint when the delta is applied.
            if deltas.insert(param, stored).is_some() {
                return Err(Error::Input(format!("{shown}: `{name}` appears twice; the file is corrupt")));
            }
            continue;
        }
        let module = modules::find(cfg, &name).map_err(|e| {
            Error::Input(format!(
                "{shown}: delta tensor `{name}` does not fit this model ({e}); the delta was computed on another model \
                 (base model {}): pass that model with --model",
                meta.base_model.model
            ))
        })?;
        if view.shape() != module.stored_shape() {
            return Err(Error::Input(format!(
                "{shown}: delta tensor `{name}` has shape {:?}, but this model stores `{}` as {:?}; the delta belongs to \
                 a model of a different size (base model {}): pass that model with --model",
                view.shape(),
                module.name,
                module.stored_shape(),
                meta.base_model.model
            )));
        }
        if deltas.insert(module.name.clone(), module.to_out_in(&stored)?).is_some() {
            return Err(Error::Input(format!("{shown}: module `{}` appears twice; the file is corrupt", module.name)));
        }
    }
    Ok((deltas, meta))
}
