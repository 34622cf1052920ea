//! Which weights a model is: the identity statistics files, deltas, MEND networks and AlphaEdit
//! states record and are checked against. Below the statistics, editing and patching layers,
//! which all use it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::hub::{ModelFiles, ModelOrigin};

/// What a statistics file must match to be used with a model. Two identities are equal when
/// what files record of them is (the sampled fingerprint and the applied deltas, never recorded
/// with it, are left out).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
    /// The sampled fingerprint earlier versions recorded for these weights
    /// (`checkpoint::sampled_fingerprint`): what lets files recorded then still be recognised.
    /// Not written anywhere.
    #[serde(skip)]
    pub sampled_fingerprint: Option<String>,
    /// The ids of the deltas `edit` applied to these weights since their base, oldest first
    /// (`checkpoint::edit_applied`). Read from the weight files, not recorded with the identity.
    #[serde(skip)]
    pub applied: Vec<String>,
}

impl PartialEq for ModelIdentity {
    fn eq(&self, other: &Self) -> bool {
        (&self.model, &self.revision, &self.weights_fingerprint, &self.base_fingerprint)
            == (&other.model, &other.revision, &other.weights_fingerprint, &other.base_fingerprint)
    }
}

impl Eq for ModelIdentity {}

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
        let (base_fingerprint, applied) = crate::checkpoint::edit_records(&files.weights)?;
        Ok(Self {
            model,
            revision,
            weights_fingerprint: crate::checkpoint::fingerprint(&files.weights)?,
            base_fingerprint,
            sampled_fingerprint: Some(crate::checkpoint::sampled_fingerprint(&files.weights)?),
            applied,
        })
    }

    /// The fingerprint an edited copy of this model records as its base.
    pub fn root_fingerprint(&self) -> &str {
        self.base_fingerprint.as_deref().unwrap_or(&self.weights_fingerprint)
    }

    /// Whether a fingerprint some file recorded names these weights. One recorded before weights
    /// were hashed in full is compared with these weights' sampled fingerprint, so statistics
    /// (days of compute at GPT-2 XL size), states and deltas from then stay usable on the
    /// weights they were made on.
    pub fn is_weights(&self, recorded: &str) -> bool {
        recorded == self.weights_fingerprint || (crate::checkpoint::is_sampled_fingerprint(recorded) && self.sampled_fingerprint.as_deref() == Some(recorded))
    }

    /// Whether a fingerprint some file recorded names the weights this model was first edited
    /// from (itself, when it is not an edited copy).
    pub fn is_root(&self, recorded: &str) -> bool {
        match &self.base_fingerprint {
            Some(base) => base == recorded,
            None => self.is_weights(recorded),
        }
    }

    /// Whether statistics computed on `other` describe this model: the same weights, or the
    /// base this model was edited from (the reference, too, keeps using the original model's
    /// statistics across edits).
    pub fn stats_fit(&self, other: &ModelIdentity) -> bool {
        self.is_weights(&other.weights_fingerprint) || Some(&other.weights_fingerprint) == self.base_fingerprint.as_ref()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(base: Option<&str>) -> ModelIdentity {
        ModelIdentity {
            model: "m".into(),
            revision: None,
            weights_fingerprint: "a".repeat(64),
            base_fingerprint: base.map(str::to_string),
            sampled_fingerprint: Some("0123456789abcdef".into()),
            applied: vec![],
        }
    }

    #[test]
    fn fingerprints_recorded_before_full_hashing_are_recognised_by_the_sampled_one() {
        let id = identity(None);
        assert!(id.is_weights(&"a".repeat(64)));
        assert!(id.is_weights("0123456789abcdef"));
        assert!(!id.is_weights("fedcba9876543210"));
        assert!(!id.is_weights(&"b".repeat(64)));
        assert!(id.is_root("0123456789abcdef"));
        // An edited copy's root is its recorded base, whatever its own weights' fingerprints.
        let edited = identity(Some(&"c".repeat(64)));
        assert!(edited.is_root(&"c".repeat(64)));
        assert!(!edited.is_root("0123456789abcdef"));
        let on_base = ModelIdentity { weights_fingerprint: "c".repeat(64), sampled_fingerprint: None, ..identity(None) };
        assert!(edited.stats_fit(&on_base));
        assert!(edited.stats_fit(&identity(None)));
        let legacy_stats = ModelIdentity { weights_fingerprint: "0123456789abcdef".into(), sampled_fingerprint: None, ..identity(None) };
        assert!(identity(None).stats_fit(&legacy_stats));
    }
}
