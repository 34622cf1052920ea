//! MEND behind the common method interface: a hypernetwork file (`--mend FILE`) and the config
//! ([`MendHparams`]); all requests of one call are one MEND batch (spec §5.6).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::factors::request_losses;
use super::hypernet::{inner_params, read_meta, EditSettings, Hypernetwork, MendMeta};
use super::network::NormMode;
use super::MendHparams;
use crate::config::ModelConfig;
use crate::editing::method::{one_step_outcomes, EditInputs, EditMethod, EditOutcome, ModuleUpdate, UpdateSize};
use crate::editing::registry::Method;
use crate::editing::{frobenius_norm, Snapshot};
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::models::CausalLm;

/// MEND with its config and hypernetwork (read at the first edit, on the model's device).
pub struct Mend {
    pub hp: MendHparams,
    pub file: PathBuf,
    pub meta: MendMeta,
    net: RefCell<Option<Hypernetwork>>,
}

/// What to say when no hypernetwork was given: where the reference's is, and the commands.
pub fn missing_hypernetwork(hp: &MendHparams) -> Error {
    let published = match hp.published_file() {
        Some(f) => format!(
            "the reference's for this model is {f} (https://memit.baulab.info/data/weights/{f}); convert it once with \
             `edit mend import {f} --model MODEL --out {}.safetensors`, or ",
            f.trim_end_matches(".pt")
        ),
        None => String::new(),
    };
    Error::Input(format!(
        "MEND edits with a trained hypernetwork: pass --mend FILE (a file written by `edit mend import` or `edit mend train`); \
         {published}train one with `edit mend train`"
    ))
}

impl Mend {
    /// Checks the hypernetwork file against the model and the config, without reading its
    /// tensors: its inner weights must exist on this model with the shapes it was built for.
    pub fn open(hp: MendHparams, file: Option<&Path>, cfg: &ModelConfig, identity: Option<&ModelIdentity>) -> Result<Self> {
        let file = file.ok_or_else(|| missing_hypernetwork(&hp))?;
        let meta = read_meta(file)?;
        inner_params(cfg, &meta.inner_params)
            .map_err(|e| Error::Input(format!("{}: the hypernetwork does not fit this model: {e}; it was made for {}", file.display(), made_for(&meta))))?;
        if let Some(names) = &hp.inner_params {
            if *names != meta.inner_params {
                return Err(Error::Input(format!(
                    "the config's `inner_params` {names:?} differ from those the hypernetwork {} was trained for ({:?}); \
                     unset `inner_params` (a hypernetwork edits the weights it was made for)",
                    file.display(),
                    meta.inner_params
                )));
            }
        }
        if let (Some(base), Some(id)) = (&meta.base, identity) {
            if !id.is_root(base.root_fingerprint()) {
                tracing::warn!(
                    "{} was made for {} (weights {}), not these weights ({}); its edits may be poor",
                    file.display(),
                    base.model,
                    base.weights_fingerprint,
                    id.root_fingerprint()
                );
            }
        }
        Ok(Self { hp, file: file.to_path_buf(), meta, net: RefCell::new(None) })
    }

    /// The config as delta files and evaluation runs record it: with the hypernetwork edited
    /// with (its file and origin).
    pub fn recorded_config(&self, mut json: serde_json::Value) -> serde_json::Value {
        if let serde_json::Value::Object(m) = &mut json {
            m.insert("hypernetwork".into(), serde_json::json!({"file": self.file.display().to_string(), "origin": self.meta.origin}));
        }
        json
    }

    fn settings(&self) -> EditSettings {
        EditSettings {
            lr_scale: self.hp.lr_scale,
            norm: if self.hp.executor_norm { NormMode::Running } else { NormMode::Frozen },
            executor_lr_order: self.hp.executor_lr_order,
            chunk: self.hp.max_batch_size,
            last_chunk_only: self.hp.executor_last_chunk,
        }
    }
}

fn made_for(meta: &MendMeta) -> String {
    match &meta.base {
        Some(b) => b.model.clone(),
        None => format!("a model with {}", meta.inner_params.first().map(String::as_str).unwrap_or("no inner weights")),
    }
}

impl EditMethod for Mend {
    fn method(&self) -> Method {
        Method::Mend
    }

    fn edit(&self, model: &mut dyn CausalLm, inputs: EditInputs) -> Result<EditOutcome> {
        let mut slot = self.net.borrow_mut();
        if slot.is_none() {
            let mut net = Hypernetwork::read(&self.file, model.config(), model.device())?;
            if self.hp.executor_norm {
                // The executor's transforms are built fresh: the file's statistics are never used.
                net.restart_norm();
            }
            *slot = Some(net);
        }
        let net = slot.as_mut().expect("loaded above");
        let (tok, requests) = (inputs.tok, inputs.requests);
        let before = request_losses(&*model, tok, requests)?;
        let deltas = net.edit(&*model, tok, requests, self.settings())?;
        let mut snapshot = Snapshot::new();
        snapshot.apply(model, &deltas)?;
        let after = request_losses(&*model, tok, requests);
        snapshot.restore(model)?;
        let after = after?;
        let mut modules = Vec::new();
        let mut sizes = Vec::new();
        for (name, d) in &deltas {
            let weight_norm = frobenius_norm(&model.weight(name)?)?;
            let update_norm = frobenius_norm(d)?;
            modules.push(ModuleUpdate { module: name.clone(), update_norm, weight_norm, solver: None });
            sizes.push(UpdateSize {
                what: name.clone(),
                update_norm,
                weight_norm,
                detail: String::new(),
                hint: format!("Lower `lr_scale`, or check that {} was made for this model ({})", self.file.display(), made_for(&self.meta)),
            });
        }
        let n = requests.len();
        let tail = if n == 1 { "one MEND edit".to_string() } else { format!("one MEND edit of {n} requests") };
        let outcomes = one_step_outcomes(requests, &before, &after, &tail);
        Ok(EditOutcome { deltas, requests: outcomes, modules, sizes })
    }
}
