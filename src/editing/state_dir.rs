//! A method's memory of earlier edits on disk (`edit apply --state DIR`), for the methods whose
//! edits depend on the ones kept before them (AlphaEdit's kept keys, UltraEdit's normalisation
//! statistics).
//!
//! A state directory holds `state.json` ([`StateFile`]: the method, the method's own settings
//! the state was built with, the base weights' fingerprint, the ids of the deltas kept so far in
//! order, and the step) and the method's tensor files of that step. A save writes the new step's
//! files, then `state.json` naming that step (the commit), then removes the previous step's
//! files: an interrupted save leaves the previous state whole.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::registry::Method;
use super::Deltas;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;

const STATE_FILE: &str = "state.json";

/// The method of a `state.json` that names none: the first state format was AlphaEdit's alone.
fn first_method() -> Method {
    Method::AlphaEdit
}

/// `state.json`: what every method's state records, with the method's own settings (`own`,
/// flattened into the same object).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateFile<E> {
    pub format: u32,
    #[serde(default = "first_method")]
    pub method: Method,
    #[serde(flatten)]
    pub own: E,
    pub base_fingerprint: String,
    /// Ids of the kept deltas (as recorded in the weight files they were applied to).
    pub applied: Vec<String>,
    /// Requests kept so far.
    pub requests: usize,
    /// The step whose files hold the state.
    pub step: usize,
    /// The config the state was started with (for people: edits must use the same settings).
    #[serde(default)]
    pub config: serde_json::Value,
}

/// An error about the state in `dir`.
pub fn bad(method: Method, dir: &Path, why: impl fmt::Display) -> Error {
    Error::Input(format!("the {} state in {}: {why}", method.title(), dir.display()))
}

impl<E: Serialize + DeserializeOwned> StateFile<E> {
    /// A new state of `method`: edits start on `model`'s weights (its base and the deltas
    /// applied to it since, oldest first).
    pub fn new(method: Method, own: E, model: Option<&ModelIdentity>, config: serde_json::Value) -> Self {
        let (base_fingerprint, applied) = model.map(|m| (m.root_fingerprint().to_string(), m.applied.clone())).unwrap_or_default();
        Self { format: 1, method, own, base_fingerprint, applied, requests: 0, step: 0, config }
    }

    /// Reads `dir`'s `state.json`, or `None` when there is none. It must be `method`'s, and
    /// `model` the weights its last kept edit was applied to.
    pub fn read(dir: &Path, method: Method, model: Option<&ModelIdentity>) -> Result<Option<Self>> {
        let path = dir.join(STATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let head: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(method, dir, format!("{STATE_FILE} is not a state file ({e})")))?;
        let owner = head.get("method").map(|m| serde_json::from_value::<Method>(m.clone())).transpose().ok().flatten().unwrap_or_else(first_method);
        if owner != method {
            return Err(bad(
                method,
                dir,
                format!("it holds {}'s state, not {}'s; pass --method {owner}, or start a new --state directory", owner.title(), method.title()),
            ));
        }
        let file: Self = serde_json::from_value(head).map_err(|e| bad(method, dir, format!("{STATE_FILE} is not a state file ({e})")))?;
        if let Some(m) = model {
            if !m.is_root(&file.base_fingerprint) {
                return Err(bad(
                    method,
                    dir,
                    format!(
                        "it belongs to other weights (fingerprint {}, this model's base is {}); start a new --state directory for this model",
                        file.base_fingerprint,
                        m.root_fingerprint()
                    ),
                ));
            }
            if m.applied != file.applied {
                return Err(bad(
                    method,
                    dir,
                    format!(
                        "its edits were applied as deltas {:?}, but this model holds {:?}: pass the model the previous `edit apply --state` wrote (--out), or that `edit apply-delta` made with its delta",
                        file.applied, m.applied
                    ),
                ));
            }
        }
        Ok(Some(file))
    }

    /// Records that the edit `deltas` of `requests` requests was kept.
    pub fn kept(&mut self, deltas: &Deltas, requests: usize) -> Result<()> {
        self.applied.push(super::delta_id(deltas)?);
        self.requests += requests;
        Ok(())
    }

    /// Saves the state to `dir`: `write(dir, step)` writes the new step's files, then
    /// `state.json` commits them, then `files(dir, previous step)` are removed.
    pub fn save(&mut self, dir: &Path, write: impl FnOnce(&Path, usize) -> Result<()>, files: impl Fn(&Path, usize) -> Vec<PathBuf>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (old, step) = (self.step, self.step + 1);
        write(dir, step)?;
        self.step = step;
        let mut json = serde_json::to_vec_pretty(self).expect("the state serialises");
        json.push(b'\n');
        crate::fsutil::write_atomic(&dir.join(STATE_FILE), &json)?;
        for f in files(dir, old) {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }
}

/// Writes `tensors` to `path` through a temporary sibling, so that a reader never sees half a file.
pub fn write_tensors(path: &Path, tensors: &[(String, candle_core::Tensor)]) -> Result<()> {
    let tmp = crate::fsutil::sibling(path, "tmp");
    crate::fsutil::write_safetensors(&tmp, tensors, None)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
