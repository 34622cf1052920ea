//! The editing methods: the one place that lists them ([`Method`]) and makes each from its
//! config ([`prepare`]). A method lives in its own folder (`editing/<method>/`, with its
//! hyperparameter type in `hparams.rs`) and implements [`EditMethod`]; adding one means a
//! folder, a variant here and its arm in [`prepare`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::alphaedit::{AlphaEdit, AlphaEditHparams};
use super::emmet::{Emmet, EmmetHparams};
use super::ft::{Ft, FtHparams};
use super::hparams::{resolve, MethodConfig, ResolvedHparams};
use super::memit::{Memit, MemitHparams};
use super::mend::{Mend, MendHparams};
use super::method::{EditMethod, MethodSource, PreparedMethod};
use super::rome::{Rome, RomeHparams};
use super::ultraedit::{UltraEdit, UltraEditHparams};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// An editing method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Rome,
    Memit,
    /// The fine-tuning baselines (FT, FT-L, FT-W, FT-M), chosen by config.
    Ft,
    /// MEND: a trained hypernetwork maps the edit's gradient to the update.
    Mend,
    /// AlphaEdit: MEMIT's update projected onto the null space of the preserved knowledge's
    /// keys, keeping earlier edits' keys too.
    AlphaEdit,
    /// UltraEdit: a closed-form ridge update from one forward/backward per sub-batch, its
    /// normalisation statistics carried across turns.
    UltraEdit,
    /// EMMET: MEMIT's targets and statistics with an equality-constrained batched solve.
    Emmet,
}

impl Method {
    pub const ALL: [Method; 7] = [Method::Rome, Method::Memit, Method::Ft, Method::Mend, Method::AlphaEdit, Method::UltraEdit, Method::Emmet];

    pub fn name(self) -> &'static str {
        match self {
            Method::Rome => "rome",
            Method::Memit => "memit",
            Method::Ft => "ft",
            Method::Mend => "mend",
            Method::AlphaEdit => "alphaedit",
            Method::UltraEdit => "ultraedit",
            Method::Emmet => "emmet",
        }
    }

    /// The method's name as its authors write it (ROME, AlphaEdit), for messages.
    pub fn title(self) -> &'static str {
        match self {
            Method::Rome => "ROME",
            Method::Memit => "MEMIT",
            Method::Ft => "FT",
            Method::Mend => "MEND",
            Method::AlphaEdit => "AlphaEdit",
            Method::UltraEdit => "UltraEdit",
            Method::Emmet => "EMMET",
        }
    }

    /// Whether `--state DIR` keeps this method's memory of earlier edits.
    pub fn keeps_state(self) -> bool {
        matches!(self, Method::AlphaEdit | Method::UltraEdit)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Method::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            let (last, rest) = names.split_last().expect("there are methods");
            Error::Input(format!("unknown editing method `{s}`; use {} or {last}", rest.join(", ")))
        })
    }
}

/// Resolves `method`'s config for this model (`--config` file or shipped name, `--set`
/// overrides; see [`resolve`]) and pairs it with the method's implementation.
pub fn prepare(method: Method, cfg: &ModelConfig, model_id: &str, src: MethodSource) -> Result<PreparedMethod> {
    fn with<H: MethodConfig, M: EditMethod + 'static>(r: ResolvedHparams<H>, make: impl FnOnce(H) -> M) -> PreparedMethod {
        PreparedMethod { method: Box::new(make(r.hparams)), json: r.json, source: r.source }
    }
    let (config, sets) = (src.config, src.sets);
    if src.hypernetwork.is_some() && method != Method::Mend {
        return Err(Error::Input(format!("--mend names a MEND hypernetwork, but the method is {method}; drop --mend or use --method mend")));
    }
    if src.state.is_some() && !method.keeps_state() {
        return Err(Error::Input(format!(
            "--state keeps AlphaEdit's or UltraEdit's memory of earlier edits, but the method is {method}; drop --state or use --method alphaedit or ultraedit"
        )));
    }
    Ok(match method {
        Method::Rome => with(resolve::<RomeHparams>(cfg, model_id, config, sets)?, |hp| Rome { hp }),
        Method::Memit => with(resolve::<MemitHparams>(cfg, model_id, config, sets)?, |hp| Memit { hp }),
        Method::Ft => with(resolve::<FtHparams>(cfg, model_id, config, sets)?, |hp| Ft { hp }),
        Method::AlphaEdit => {
            let r = resolve::<AlphaEditHparams>(cfg, model_id, config, sets)?;
            let m = AlphaEdit::open(r.hparams, src.state, src.identity)?;
            PreparedMethod { method: Box::new(m), json: r.json, source: r.source }
        }
        Method::UltraEdit => {
            let r = resolve::<UltraEditHparams>(cfg, model_id, config, sets)?;
            let m = UltraEdit::open(r.hparams, src.state, src.identity)?;
            PreparedMethod { method: Box::new(m), json: r.json, source: r.source }
        }
        Method::Emmet => with(resolve::<EmmetHparams>(cfg, model_id, config, sets)?, |hp| Emmet { hp }),
        Method::Mend => {
            let r = resolve::<MendHparams>(cfg, model_id, config, sets)?;
            let mend = Mend::open(r.hparams, src.hypernetwork, cfg, src.identity)?;
            PreparedMethod { json: mend.recorded_config(r.json), method: Box::new(mend), source: r.source }
        }
    })
}
