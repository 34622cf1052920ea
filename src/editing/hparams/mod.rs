//! Method hyperparameters: one type per method in the reference's own JSON format (ROME and
//! MEMIT share their locate-then-edit fields, [`locate::Common`]), the configs shipped in the
//! binary, how one is chosen for a model, `--set` overrides, and checks against the model.
//!
//! Selection ([`resolve`]): `--config FILE` (or the name of a shipped config, `ft/gpt2-xl_attn`)
//! if given; else the shipped default for the model, matched by its Hub name (`gpt2-xl`,
//! `EleutherAI/gpt-j-6B`, ...) or by family and size; else a generic starting point computed from
//! the model. Then `--set key=value` overrides, in order. The shipped files live in `configs/`
//! and are compiled in (`include_str!`): the binary does not need that folder.

pub mod locate;
mod shipped;

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

pub use locate::{Common, ContextTemplates, GradCheckpoint};
pub use shipped::{named, shipped_for, Shipped, SHIPPED};

use super::registry::Method;
use crate::config::{Family, ModelConfig};
use crate::error::{Error, Result};

/// A method's hyperparameter type: its fields, a starting point for any model, and its checks.
pub trait MethodConfig: Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq {
    const METHOD: Method;

    /// Every field a config may carry (the tests check it against the type's serialisation).
    fn fields() -> Vec<&'static str>;

    /// What `field` holds, for error messages.
    fn expected(field: &str) -> &'static str;

    /// A config for a model no shipped file fits (every required field present).
    fn starting_point(cfg: &ModelConfig) -> Value;

    /// Checks the config against the model; reports every problem, one per line.
    fn validate(&self, cfg: &ModelConfig) -> Result<()>;

    /// The message for a required `field` missing from the config as `given`.
    fn missing_hint(_field: &str, _given: &Map<String, Value>) -> Option<String> {
        None
    }
}

/// A config chosen for a model, with overrides applied and checked.
#[derive(Clone, Debug)]
pub struct ResolvedHparams<H> {
    pub hparams: H,
    /// The final config (every field the method reads, defaults filled in).
    pub json: Value,
    /// Where it came from: `configs/memit/gpt2-xl.json (reference)`, a file path, or
    /// `generic starting point for a 6-layer gpt2 model`; overrides are appended.
    pub source: String,
}

/// Chooses `H`'s hyperparameters for this model (see the module documentation), applies
/// `--set key=value` overrides in order, and validates the result against the model.
pub fn resolve<H: MethodConfig>(cfg: &ModelConfig, model_id: &str, config: Option<&Path>, sets: &[String]) -> Result<ResolvedHparams<H>> {
    let method = H::METHOD;
    // A --config that is no file may name a shipped config.
    let by_name = config.filter(|p| !p.exists()).and_then(|p| named(method, &p.to_string_lossy()));
    let (value, mut source) = match (config, by_name) {
        (_, Some(s)) => (serde_json::from_str(s.text).expect("shipped configs are valid JSON"), s.describe()),
        (Some(path), None) => (read_config_file(path, method)?, path.display().to_string()),
        (None, None) => match shipped_for(method, cfg, model_id) {
            Some(s) => (serde_json::from_str(s.text).expect("shipped configs are valid JSON"), s.describe()),
            None => (H::starting_point(cfg), format!("generic starting point for a {}-layer {} model", cfg.n_layer, cfg.family.name())),
        },
    };
    let Value::Object(given) = value else {
        return Err(Error::Input(format!("{source}: a config must be a JSON object of hyperparameters")));
    };
    let mut obj = given.clone();
    drop_unknown::<H>(&mut obj, &source);
    let mut overridden = Vec::new();
    for set in sets {
        let (key, value) = parse_set::<H>(set)?;
        obj.insert(key.clone(), value);
        overridden.push(key);
    }
    if !overridden.is_empty() {
        source = format!("{source}, with --set {}", overridden.join(", "));
    }
    // `null` reads as "not given", so that `--set field=null` unsets an optional field.
    obj.retain(|_, v| !v.is_null());
    let hparams: H = deserialize(&obj, &given, cfg, &source)?;
    hparams.validate(cfg).map_err(|e| Error::Input(format!("{source}: {e}")))?;
    let json = serde_json::to_value(&hparams).expect("hparams serialize");
    Ok(ResolvedHparams { hparams, json, source })
}

fn read_config_file(path: &Path, method: Method) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Input(format!(
                "--config {}: no such file, and not the name of a shipped {method} config ({})",
                path.display(),
                shipped::names(method).join(", ")
            ))
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: format!(
            "not valid JSON ({e}); hyperparameters use the reference's JSON format (EasyEdit's .yaml files must be \
             converted to JSON)"
        ),
    })
}

/// Removes (with a warning) fields this method does not know, e.g. EasyEdit's `alg_name`, `device`.
fn drop_unknown<H: MethodConfig>(obj: &mut Map<String, Value>, source: &str) {
    let method = H::METHOD;
    if let Some(alg) = obj.get("alg_name").and_then(Value::as_str) {
        if !alg.eq_ignore_ascii_case(method.name()) {
            tracing::warn!("{source} says alg_name {alg:?}, but it is used for {}", method.name());
        }
    }
    let fields = H::fields();
    let unknown: Vec<String> = obj.keys().filter(|k| !fields.contains(&k.as_str())).cloned().collect();
    if !unknown.is_empty() {
        tracing::warn!("{source}: ignoring fields {} does not use: {}", method.name(), unknown.join(", "));
        obj.retain(|k, _| fields.contains(&k.as_str()));
    }
}

/// Parses one `--set key=value` (value as JSON, else as a string; a method name as a prefix,
/// `rome.v_lr`, must be this run's method).
pub fn parse_set<H: MethodConfig>(set: &str) -> Result<(String, Value)> {
    let method = H::METHOD;
    let Some((key, raw)) = set.split_once('=') else {
        return Err(Error::Input(format!("--set {set:?} has no `=`; write --set KEY=VALUE, e.g. --set v_lr=0.1 or --set layers=[3,4,5]")));
    };
    let key = key.trim();
    let key = match key.split_once('.') {
        Some((prefix, rest)) if Method::ALL.iter().any(|m| prefix.eq_ignore_ascii_case(m.name())) => {
            if !prefix.eq_ignore_ascii_case(method.name()) {
                return Err(Error::Input(format!(
                    "--set {set:?} is for {}, but this run uses {}; drop the `{prefix}.` prefix or the option",
                    prefix.to_ascii_lowercase(),
                    method.name()
                )));
            }
            rest
        }
        _ => key,
    };
    let fields = H::fields();
    if !fields.contains(&key) {
        let near = fields.iter().min_by_key(|f| distance(f, key)).filter(|f| distance(f, key) <= 3);
        let hint = near.map(|f| format!("did you mean `{f}`? ")).unwrap_or_default();
        return Err(Error::Input(format!("--set {set:?}: unknown {} hyperparameter `{key}`; {hint}valid names: {}", method.name(), fields.join(", "))));
    }
    let mut value = serde_json::from_str::<Value>(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()));
    if key == "layers" {
        value = layers_value(value);
    }
    Ok((key.to_string(), value))
}

/// `layers` conveniences: `17` → `[17]`, `"3-8"` → `[3..=8]`, `"3,5,7"` → `[3,5,7]`.
fn layers_value(v: Value) -> Value {
    match &v {
        Value::Number(_) => Value::Array(vec![v]),
        Value::String(s) => {
            let s = s.trim();
            if let Some((a, b)) = s.split_once('-') {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    return json!((a..=b).collect::<Vec<_>>());
                }
            }
            let parts: std::result::Result<Vec<usize>, _> = s.split(',').map(|p| p.trim().parse()).collect();
            parts.map(|p| json!(p)).unwrap_or(v)
        }
        _ => v,
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Deserializes the merged config; on an error, names the field at fault: a required field
/// missing (one the starting point cannot do without), or a value of the wrong type.
fn deserialize<H: MethodConfig>(obj: &Map<String, Value>, given: &Map<String, Value>, cfg: &ModelConfig, source: &str) -> Result<H> {
    let err = match serde_json::from_value::<H>(Value::Object(obj.clone())) {
        Ok(h) => return Ok(h),
        Err(e) => e,
    };
    let Value::Object(base) = H::starting_point(cfg) else { unreachable!("starting points are objects") };
    for key in base.keys().filter(|k| !obj.contains_key(*k)) {
        let mut probe = base.clone();
        probe.remove(key);
        if serde_json::from_value::<H>(Value::Object(probe)).is_err() {
            let why = H::missing_hint(key, given)
                .unwrap_or_else(|| format!("missing field `{key}` ({}); every reference field must be present (see configs/README.md)", H::expected(key)));
            return Err(Error::Input(format!("{source}: {why}")));
        }
    }
    // Put each field in turn into a known-good config: the one that fails is the culprit.
    for (key, value) in obj {
        let mut probe = base.clone();
        probe.insert(key.clone(), value.clone());
        if serde_json::from_value::<H>(Value::Object(probe)).is_err() {
            let mut shown = value.to_string();
            if shown.chars().count() > 80 {
                shown = format!("{}...", shown.chars().take(80).collect::<String>());
            }
            return Err(Error::Input(format!("{source}: `{key}` is {shown}, but it must be {}", H::expected(key))));
        }
    }
    Err(Error::Input(format!("{source}: {err}; every reference field must be present (see configs/README.md)")))
}

/// The reference's template of this family's MLP down-projection: `transformer.h.{}.mlp.c_proj`.
pub(crate) fn down_template(cfg: &ModelConfig) -> String {
    crate::models::modules::mlp_down(cfg, 0).map(|m| m.name.replacen(".0.", ".{}.", 1)).unwrap_or_default()
}

/// The module-template fields of the reference files, with this family's names
/// (`rewrite_module_tmp` the MLP down-projection).
pub(crate) fn module_templates(cfg: &ModelConfig) -> Map<String, Value> {
    let blocks = crate::models::modules::layers_name(cfg.family);
    let (attn, ln_f, head) = family_modules(cfg.family);
    let v = json!({
        "rewrite_module_tmp": down_template(cfg),
        "layer_module_tmp": format!("{blocks}.{{}}"),
        "mlp_module_tmp": format!("{blocks}.{{}}.mlp"),
        "attn_module_tmp": attn,
        "ln_f_module": ln_f,
        "lm_head_module": head,
    });
    let Value::Object(m) = v else { unreachable!("an object") };
    m
}

/// Attention / final-norm / head names of a family (spec §2.6).
fn family_modules(family: Family) -> (&'static str, &'static str, &'static str) {
    match family {
        Family::Gpt2 => ("transformer.h.{}.attn", "transformer.ln_f", "transformer.wte"),
        Family::GptJ => ("transformer.h.{}.attn", "transformer.ln_f", "lm_head"),
        Family::GptNeoX => ("gpt_neox.layers.{}.attention", "gpt_neox.final_layer_norm", "embed_out"),
        _ => ("model.layers.{}.self_attn", "model.norm", "lm_head"),
    }
}

#[cfg(test)]
mod tests;
