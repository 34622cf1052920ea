//! Which weights a model is: the identity statistics files, deltas, MEND networks and AlphaEdit
//! states record and are checked against. Below the statistics, editing and patching layers,
//! which all use it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::hub::{ModelFiles, ModelOrigin};

/// What a statistics file must match to be used with a model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// Hub id or local directory.
    pub model: String,
    /// Hub revision and resolved commit, when from the Hub.
    pub revision: Option<String>,
    /// `checkpoint::fingerprint` of the weight files.
    pub weights_fingerprint: String,
    /// For a model written by `edit` (apply, apply-delta, revert): the fingerprint of the
    /// weights it was first edited from, whose statistics still describe it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<String>,
}

impl ModelIdentity {
    pub fn of(files: &ModelFiles) -> Result<Self> {
        let (model, revision) = match &files.origin {
            ModelOrigin::Local { path } => (path.display().to_string(), None),
            ModelOrigin::Hub { repo, revision, commit } => (
                repo.clone(),
                Some(match commit {
                    Some(c) => format!("{revision}@{c}"),
                    None => revision.clone(),
                }),
            ),
        };
        let base_fingerprint = crate::checkpoint::edit_base(&files.weights)?;
        Ok(Self { model, revision, weights_fingerprint: crate::checkpoint::fingerprint(&files.weights)?, base_fingerprint })
    }

    /// The fingerprint an edited copy of this model records as its base.
    pub fn root_fingerprint(&self) -> &str {
        self.base_fingerprint.as_deref().unwrap_or(&self.weights_fingerprint)
    }

    /// Whether statistics computed on `other` describe this model: the same weights, or the
    /// base this model was edited from (the reference, too, keeps using the original model's
    /// statistics across edits).
    pub fn stats_fit(&self, other: &ModelIdentity) -> bool {
        other.weights_fingerprint == self.weights_fingerprint || Some(&other.weights_fingerprint) == self.base_fingerprint.as_ref()
    }

    /// Directory name for this model under the stats dir: the Hub id with `/` → `_` (as the
    /// reference names it), or the local directory's name.
    pub fn slug(&self) -> String {
        let base = match Path::new(&self.model).file_name() {
            Some(name) if Path::new(&self.model).is_dir() => name.to_string_lossy().into_owned(),
            _ => self.model.replace('/', "_"),
        };
        crate::data::sanitize(&base)
    }
}
