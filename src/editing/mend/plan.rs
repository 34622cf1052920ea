//! What `edit mend train` trains on, read and checked before any weights are: the edit examples
//! (CounterFact/zsRE records, or self-sampled texts), the locality texts, their split into
//! training and validation, and the key a checkpoint must match to be resumed.

use std::path::Path;

use serde_json::json;

use super::data::{locality_sequences, record_examples, sampled_examples, SampledText};
use super::hparams::MendHparams;
use super::train::TrainData;
use crate::config::ModelConfig;
use crate::editing::records::{parse_dataset, ZsreTarget};
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::tokenizer::Tokenizer;

/// Where the texts whose predictions must not move come from.
pub enum LocalitySource {
    /// Each record's own neighbourhood prompts with its true object.
    Neighbors,
    /// Texts, with the name a run is keyed by (`embedded`, or a file's SHA-256) and the one shown.
    Texts { texts: Vec<String>, key: String, shown: String },
}

/// The training run's data and identity.
pub struct TrainingSet {
    pub data: TrainData,
    /// How the edits were read (`self-sampled texts`, the dataset's format).
    pub layout: String,
    edits_digest: String,
    locality_key: String,
    zsre_target: ZsreTarget,
    val_fraction: f64,
}

/// `items` split into (train, held out): the last `fraction` (at least one) held out.
pub fn split<T>(mut items: Vec<T>, fraction: f64, what: &str) -> Result<(Vec<T>, Vec<T>)> {
    let n = items.len();
    let held = ((n as f64 * fraction).ceil() as usize).max(1);
    if n < 2 || held >= n {
        return Err(Error::Input(format!("{what}: {n} item(s) cannot be split into training and validation (--val-fraction {fraction}); give more")));
    }
    let val = items.split_off(n - held);
    Ok((items, val))
}

/// Self-sampled texts (`edit mend sample`'s JSON Lines, with `n_tokens`), or `None` when the
/// text holds something else (records).
pub fn sampled_texts(text: &str, path: &Path) -> Result<Option<Vec<SampledText>>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).peekable();
    let first = lines.peek().and_then(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok());
    if first.is_none_or(|v| v.get("n_tokens").is_none()) {
        return Ok(None);
    }
    let texts = lines
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Input(format!("{} line {}: not a sampled text {{\"text\", \"n_tokens\"}}: {e}", path.display(), i + 1)))
        })
        .collect::<Result<_>>()?;
    Ok(Some(texts))
}

impl TrainingSet {
    /// Reads the edits in `edits` and the locality texts, tokenizes them for this model and
    /// holds out the last `val_fraction` of each for validation.
    pub fn read(
        tok: &Tokenizer,
        cfg: &ModelConfig,
        hp: &MendHparams,
        edits: &Path,
        zsre_target: ZsreTarget,
        locality: LocalitySource,
        val_fraction: f64,
    ) -> Result<Self> {
        let shown = edits.display().to_string();
        let edits_text = std::fs::read_to_string(edits).map_err(|e| Error::Input(format!("cannot read {shown}: {e}")))?;
        let neighbours = matches!(locality, LocalitySource::Neighbors);
        let (examples, layout) = match sampled_texts(&edits_text, edits)? {
            Some(texts) => {
                if neighbours {
                    return Err(Error::Input(format!(
                        "--locality neighbors needs edit records with neighbourhood prompts; {shown} holds sampled texts: give --locality FILE or embedded"
                    )));
                }
                (sampled_examples(tok, &texts)?, "self-sampled texts".to_string())
            }
            None => {
                let dataset =
                    parse_dataset(&edits_text, &shown, Some(zsre_target)).map_err(|e| e.context(format!("cannot read the edit records in {shown}")))?;
                dataset.check(tok, cfg.n_ctx, &shown)?;
                (record_examples(tok, &dataset.records, neighbours)?, dataset.format.describe().to_string())
            }
        };
        if let Some(long) = examples.iter().position(|e| e.inner.ids.len() > cfg.n_ctx) {
            return Err(Error::Input(format!("{shown}: edit {long} has more tokens than the model's context ({})", cfg.n_ctx)));
        }
        let (train, val) = split(examples, val_fraction, &shown)?;
        let (loc_train, loc_val, locality_key) = match locality {
            LocalitySource::Neighbors => (Vec::new(), Vec::new(), "neighbors".to_string()),
            LocalitySource::Texts { texts, key, shown } => {
                let loc = locality_sequences(tok, &texts, hp.train.loc_max_tokens.min(cfg.n_ctx))?;
                let (t, v) = split(loc, val_fraction, &format!("--locality {shown}"))?;
                (t, v, key)
            }
        };
        let edits_digest = {
            use sha2::Digest;
            crate::checkpoint::hex(&sha2::Sha256::digest(edits_text.as_bytes()))
        };
        Ok(Self { data: TrainData { train, val, loc_train, loc_val }, layout, edits_digest, locality_key, zsre_target, val_fraction })
    }

    /// What a checkpoint must match to be resumed: the model, the config, the inner weights, the
    /// data and its split.
    pub fn checkpoint_key(&self, identity: &ModelIdentity, hp: &MendHparams, inner_params: &[String]) -> String {
        use sha2::Digest;
        let key = json!({
            "weights": identity.weights_fingerprint,
            "config": serde_json::to_value(hp).expect("the config serialises"),
            "inner_params": inner_params,
            "edits": self.edits_digest,
            "zsre_target": self.zsre_target.name(),
            "locality": self.locality_key,
            "val_fraction": self.val_fraction,
        });
        crate::checkpoint::hex(&sha2::Sha256::digest(key.to_string().as_bytes()))
    }
}
