//! Reference MEND checkpoints (spec §5.5) into hypernetwork files: the `torch.save` zip archive
//! (its pickle read by candle's reader, no Python), the state dict under `model` (or the file
//! itself when it is a bare state dict), older `gtn.` names renamed to `mend.`, everything but
//! the hypernetwork skipped (the pickled HF config object, the optimiser states). A reference
//! checkpoint names no weights: the inner weights, in the reference's `inner_params` order, are
//! given (the model's default, or `--set inner_params=[...]`), and they fix each shape's modes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use candle_core::pickle::PthTensors;
use candle_core::{DType, Device, Tensor};

use super::hypernet::{inner_params, Hypernetwork, MendMeta};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;

/// A converted checkpoint: its metadata and tensors under our (the reference's current) names.
pub struct Imported {
    pub meta: MendMeta,
    pub tensors: Vec<(String, Tensor)>,
    /// State-dict entries that are not part of the hypernetwork (reported, not kept).
    pub skipped: Vec<String>,
}

/// The statistics buffers of one transform.
const BUFFERS: [&str; 7] = ["u_mean", "v_mean", "u_std", "v_std", "u_s", "v_s", "k"];
/// The tensors of one `LRLinear` layer.
const LAYER: [&str; 5] = ["u", "v", "bias", "mode_scale.weight", "mode_shift.weight"];

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {why}", path.display()))
}

/// Opens the archive's state dict: `model` of a trainer checkpoint, else the file's own dict.
fn open(path: &Path) -> Result<PthTensors> {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).map_err(|e| Error::io(path, e))?;
    if magic != *b"PK\x03\x04" {
        let legacy = magic[0] == 0x80;
        return Err(bad(
            path,
            if legacy {
                "a torch.save file in the legacy (pre-1.6, non-zip) format, which edit cannot read; re-save it once with \
                 `torch.save(torch.load(F), F2)` (any torch ≥ 1.6 writes the zip format)"
            } else {
                "not a torch.save checkpoint (expected a zip archive with a data.pkl)"
            },
        ));
    }
    match PthTensors::new(path, Some("model")) {
        Ok(t) if !t.tensor_infos().is_empty() => Ok(t),
        _ => PthTensors::new(path, None).map_err(|e| bad(path, format!("cannot read the checkpoint's pickle ({e})"))),
    }
}

/// Converts the checkpoint at `path` for the model `cfg`, whose inner weights are `names`.
pub fn import_checkpoint(path: &Path, cfg: &ModelConfig, names: &[String], base: Option<ModelIdentity>) -> Result<Imported> {
    let pth = open(path)?;
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped = Vec::new();
    for name in pth.tensor_infos().keys() {
        let ours = match name.strip_prefix("gtn.") {
            Some(rest) => format!("mend.{rest}"),
            None => name.clone(),
        };
        if ours == "edit_lrs" || ours.starts_with("mend.") {
            found.insert(ours, name.clone());
        } else {
            skipped.push(name.clone());
        }
    }
    skipped.sort();
    if found.is_empty() {
        return Err(bad(path, "no MEND hypernetwork tensors (`edit_lrs`, `mend.…` or `gtn.…`) in the checkpoint"));
    }
    let inner = inner_params(cfg, names)?;
    let get = |ours: &str| -> Result<Tensor> {
        let original = found.get(ours).ok_or_else(|| bad(path, format!("tensor `{ours}` is missing from the checkpoint")))?;
        let t = pth.get(original).map_err(|e| bad(path, format!("cannot read `{original}` ({e})")))?;
        let t = t.ok_or_else(|| bad(path, format!("tensor `{original}` is missing")))?;
        Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    };
    // The transforms the checkpoint has, by shape key, against those the inner weights need.
    let have: BTreeSet<String> = found.keys().filter_map(|k| k.strip_prefix("mend.")?.split_once(").").map(|(s, _)| format!("{s})"))).collect();
    let want: BTreeSet<String> = inner.iter().map(|p| p.shape_key.clone()).collect();
    if have != want {
        return Err(bad(
            path,
            format!(
                "the checkpoint's transforms are for weight shapes {} (x_dim, δ_dim), but the inner weights {names:?} of this \
                 {}-layer {} model have {}; the checkpoint belongs to another model, or set the weights it was trained on with \
                 --set inner_params=[...]",
                have.iter().cloned().collect::<Vec<_>>().join(", "),
                cfg.n_layer,
                cfg.family.name(),
                want.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let edit_lrs = get("edit_lrs")?;
    if edit_lrs.elem_count() != inner.len() {
        return Err(bad(
            path,
            format!(
                "the checkpoint has {} step sizes (`edit_lrs`), but {} inner weights are named; set the {} weights it was \
                 trained on, in its `inner_params` order, with --set inner_params=[...]",
                edit_lrs.elem_count(),
                inner.len(),
                edit_lrs.elem_count()
            ),
        ));
    }
    let mut tensors = vec![("edit_lrs".to_string(), edit_lrs.flatten_all()?)];
    let (mut rank, mut n_layers) = (None, None);
    for key in &want {
        let layers = (0..).take_while(|i| found.contains_key(&format!("mend.{key}.mlp.layers.{i}.u"))).count();
        if layers == 0 || n_layers.is_some_and(|n| n != layers) {
            return Err(bad(path, format!("transform {key}: {layers} IDMLP layers (expected the same number, ≥ 1, in every transform)")));
        }
        n_layers = Some(layers);
        for b in BUFFERS {
            tensors.push((format!("mend.{key}.{b}"), get(&format!("mend.{key}.{b}"))?));
        }
        for i in 0..layers {
            for t in LAYER {
                let name = format!("mend.{key}.mlp.layers.{i}.{t}");
                let value = get(&name)?;
                if t == "u" {
                    let r = value.dims().get(1).copied().unwrap_or(0);
                    if rank.is_some_and(|q| q != r) {
                        return Err(bad(path, format!("`{name}` has rank {r}, another transform {}", rank.unwrap_or(0))));
                    }
                    rank = Some(r);
                }
                tensors.push((name, value));
            }
        }
    }
    let meta = MendMeta {
        inner_params: names.to_vec(),
        rank: rank.unwrap_or(0),
        n_hidden: n_layers.unwrap_or(1) - 1,
        // The shipped config/alg/mend.yaml (`norm: True`); checkpoints do not record it.
        norm: true,
        base,
        origin: format!(
            "imported from {} (sha256 {})",
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            crate::digest::file_sha256(path)?
        ),
    };
    // Every tensor is where the network reads it, with the shape it needs.
    let map = tensors.iter().cloned().collect();
    Hypernetwork::from_tensors(cfg, meta.clone(), map, &Device::Cpu).map_err(|e| bad(path, format!("the hypernetwork does not fit this model: {e}")))?;
    Ok(Imported { meta, tensors, skipped })
}
