//! ROME / MEMIT hyperparameters: the reference's hparams JSON format, the configs shipped in the
//! binary, how one is chosen for a model, `--set` overrides, and checks against the model.
//!
//! Selection ([`resolve`]): `--config FILE` if given; else a shipped file matched by the model's
//! Hub name (`gpt2-xl`, `EleutherAI/gpt-j-6B`, ...) or by family and size; else a generic
//! starting point computed from the model's depth. Then `--set key=value` overrides, in order.
//! The shipped files live in `configs/` and are compiled in (`include_str!`): the binary does not
//! need that folder.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::{Family, ModelConfig};
use crate::error::{Error, Result};
use crate::models::modules::{find, layers_name, mlp_down, EditableModule, ModuleKind};

/// The editing method a config is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Rome,
    Memit,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rome => "rome",
            Method::Memit => "memit",
        }
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
        match s.trim().to_ascii_lowercase().as_str() {
            "rome" => Ok(Method::Rome),
            "memit" => Ok(Method::Memit),
            _ => Err(Error::Input(format!("unknown editing method `{s}`; use rome or memit"))),
        }
    }
}

/// How MEMIT solves for its update (the same solution either way, up to rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// Solve the n×n system in the keys' span (push-through identity); fast for few edits.
    #[default]
    PushThrough,
    /// The reference's `solve(λC + KKᵀ, K)` on the d_ff×d_ff system.
    Direct,
}

/// Explicit context templates (our extension): either one flat list, or groups as MEMIT uses
/// them (the key is the mean of the group means). How a flat list is grouped for MEMIT is
/// decided by `editing::templates::from_config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ContextTemplates {
    Flat(Vec<String>),
    Groups(Vec<Vec<String>>),
}

impl ContextTemplates {
    /// All templates in order (ROME averages over all of them).
    pub fn flat(&self) -> Vec<String> {
        match self {
            ContextTemplates::Flat(t) => t.clone(),
            ContextTemplates::Groups(g) => g.concat(),
        }
    }

    /// The groups as written; a flat list is returned as one group.
    pub fn groups(&self) -> Vec<Vec<String>> {
        match self {
            ContextTemplates::Flat(t) => vec![t.clone()],
            ContextTemplates::Groups(g) => g.clone(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// 0 = automatic: see [`Hparams::z_batch`].
fn default_z_batch_size() -> usize {
    0
}

/// ROME / MEMIT hyperparameters, field for field the reference's hparams JSON (plus the fields
/// marked "ours"). Method-specific fields are optional.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hparams {
    /// Layers whose MLP down-projection is rewritten (ROME: one; MEMIT: ascending).
    pub layers: Vec<usize>,
    /// Which token's key/value is edited; only `subject_last` is supported.
    pub fact_token: String,
    pub v_num_grad_steps: usize,
    pub v_lr: f64,
    /// Layer whose output gives the loss's logits (MEMIT: the last layer).
    pub v_loss_layer: usize,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    /// ROME: use C⁻¹k (true) or k/‖k‖; ignored by MEMIT (as in the reference).
    pub mom2_adjustment: bool,
    /// MEMIT's λ (weight of the covariance in the solve); required for MEMIT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mom2_update_weight: Option<f64>,
    /// ROME: `[[length, count], ...]` of sampled context prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_template_length_params: Option<Vec<(usize, usize)>>,
    /// MEMIT: present in the reference files, unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_selection: Option<String>,
    pub rewrite_module_tmp: String,
    pub layer_module_tmp: String,
    pub mlp_module_tmp: String,
    pub attn_module_tmp: String,
    pub ln_f_module: String,
    pub lm_head_module: String,
    pub mom2_dataset: String,
    pub mom2_n_samples: usize,
    pub mom2_dtype: String,
    /// Ours: fixed context templates (each with one `{}`); when present, none are sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_templates: Option<ContextTemplates>,
    /// Ours (EasyEdit's name): false = the r-ROME fix (the averaged key in both places).
    #[serde(default = "default_true")]
    pub original_implementation: bool,
    /// Ours, MEMIT: how many requests' target vectors are optimised together (1 = serial, as
    /// the reference; 0 = automatic, see [`Hparams::z_batch`]).
    #[serde(default = "default_z_batch_size")]
    pub z_batch_size: usize,
    /// Ours, MEMIT: how the update is solved.
    #[serde(default)]
    pub solver: Solver,
    /// Ours: seed of the context-template sampling.
    #[serde(default)]
    pub seed: u64,
}

/// Every field name a config may carry.
pub const FIELDS: &[&str] = &[
    "layers",
    "fact_token",
    "v_num_grad_steps",
    "v_lr",
    "v_loss_layer",
    "v_weight_decay",
    "clamp_norm_factor",
    "kl_factor",
    "mom2_adjustment",
    "mom2_update_weight",
    "context_template_length_params",
    "layer_selection",
    "rewrite_module_tmp",
    "layer_module_tmp",
    "mlp_module_tmp",
    "attn_module_tmp",
    "ln_f_module",
    "lm_head_module",
    "mom2_dataset",
    "mom2_n_samples",
    "mom2_dtype",
    "context_templates",
    "original_implementation",
    "z_batch_size",
    "solver",
    "seed",
];

/// What each field holds, for error messages.
fn expected(field: &str) -> &'static str {
    match field {
        "layers" => "a list of layer numbers, e.g. [17] or [3,4,5]",
        "fact_token" => "\"subject_last\"",
        "v_num_grad_steps" | "mom2_n_samples" | "z_batch_size" | "v_loss_layer" | "seed" => "a non-negative integer",
        "mom2_adjustment" | "original_implementation" => "true or false",
        "context_template_length_params" => "a list of [length, count] pairs, e.g. [[5,10],[10,10]]",
        "context_templates" => "a list of templates such as [\"{}\", \"Yes. {}\"], or a list of such lists",
        "solver" => "\"push_through\" or \"direct\"",
        "v_lr" | "v_weight_decay" | "clamp_norm_factor" | "kl_factor" | "mom2_update_weight" => "a number",
        _ => "a string",
    }
}

impl Hparams {
    /// The module this config rewrites at `layer` (`rewrite_module_tmp` with the layer filled in).
    /// The z batch size to use on `device`: `z_batch_size`, or when 0, one request at a time on
    /// the CPU (measured: batching only adds padding there, `benches/README.md`) and 32 on a GPU.
    pub fn z_batch(&self, device: &candle_core::Device) -> usize {
        match self.z_batch_size {
            0 if device.is_cpu() => 1,
            0 => 32,
            n => n,
        }
    }

    pub fn module_for(&self, cfg: &ModelConfig, layer: usize) -> Result<EditableModule> {
        let name = self.rewrite_module_tmp.replace("{}", &layer.to_string());
        let m = find(cfg, &name)?;
        if m.kind != ModuleKind::MlpDown {
            return Err(Error::Input(format!(
                "`rewrite_module_tmp` names {name}, which is not the MLP down-projection ({}); ROME and MEMIT \
                 rewrite only that module",
                mlp_down(cfg, layer)?.name
            )));
        }
        Ok(m)
    }

    /// The config as JSON, with only the fields `method` reads or the reference file carries.
    pub fn to_json(&self, method: Method) -> Value {
        let mut v = serde_json::to_value(self).expect("hparams serialize");
        if let Value::Object(m) = &mut v {
            match method {
                Method::Rome => {
                    m.remove("z_batch_size");
                    m.remove("solver");
                }
                Method::Memit => {
                    m.remove("original_implementation");
                }
            }
        }
        v
    }

    /// Checks the config against the method and the model; reports every problem, one per line.
    pub fn validate(&self, method: Method, cfg: &ModelConfig) -> Result<()> {
        let mut problems: Vec<String> = Vec::new();
        let n = cfg.n_layer;
        let family = cfg.family.name();
        let fix = "pass a config for this model with --config FILE, or fix the field with --set";

        // Layers.
        if self.layers.is_empty() {
            problems.push("`layers` is empty; list the layer(s) to edit, e.g. --set layers=[17]".into());
        }
        if self.layers.windows(2).any(|w| w[0] >= w[1]) {
            problems.push(format!(
                "`layers` {:?} must be ascending without repeats (MEMIT edits them in order)",
                self.layers
            ));
        }
        if let Some(&bad) = self.layers.iter().find(|&&l| l >= n) {
            problems.push(format!(
                "`layers` contains {bad}, but this model has {n} layers (0-{}); the config is probably for a \
                 deeper model: {fix}",
                n - 1
            ));
        }
        if method == Method::Rome && self.layers.len() > 1 {
            problems.push(format!(
                "ROME edits exactly one layer, but `layers` is {:?}; use MEMIT for several layers, or e.g. \
                 --set layers=[{}]",
                self.layers, self.layers[0]
            ));
        }

        // Module names.
        let expected_rewrite = mlp_down(cfg, 0)?.name.replacen(".0.", ".{}.", 1);
        let blocks = layers_name(cfg.family);
        if self.rewrite_module_tmp.matches("{}").count() != 1 {
            problems.push(format!(
                "`rewrite_module_tmp` {:?} must contain one \"{{}}\" for the layer number, e.g. {expected_rewrite:?}",
                self.rewrite_module_tmp
            ));
        } else if let Some(&l) = self.layers.iter().find(|&&l| l < n) {
            let name = self.rewrite_module_tmp.replace("{}", &l.to_string());
            let want = mlp_down(cfg, l)?.name;
            if name != want {
                problems.push(format!(
                    "`rewrite_module_tmp` is {:?}, which names {name}, but this {family} model's MLP \
                     down-projection is {want} (expected {expected_rewrite:?}); the config is probably for another \
                     model family: {fix} rewrite_module_tmp={expected_rewrite}",
                    self.rewrite_module_tmp
                ));
            }
        }
        for (field, value, want) in [
            ("layer_module_tmp", &self.layer_module_tmp, format!("{blocks}.{{}}")),
            ("mlp_module_tmp", &self.mlp_module_tmp, format!("{blocks}.{{}}.mlp")),
        ] {
            if *value != want {
                problems.push(format!(
                    "`{field}` is {value:?}, but this {family} model's is {want:?}; the config is probably for \
                     another model family: {fix} {field}={want}"
                ));
            }
        }
        // Not used by the computation (the models give logits directly); a mismatch only warns.
        let (attn, ln_f, head) = family_modules(cfg.family);
        for (field, value, want) in [
            ("attn_module_tmp", &self.attn_module_tmp, attn),
            ("ln_f_module", &self.ln_f_module, ln_f),
            ("lm_head_module", &self.lm_head_module, head),
        ] {
            if value != want {
                tracing::warn!("`{field}` is {value:?}, but this {family} model's is {want:?} (the field is not used)");
            }
        }

        if self.fact_token != "subject_last" {
            problems.push(format!(
                "`fact_token` {:?} is not supported; only \"subject_last\" (what every reference config uses) is: \
                 --set fact_token=subject_last",
                self.fact_token
            ));
        }
        if self.v_num_grad_steps == 0 {
            problems.push("`v_num_grad_steps` must be at least 1 (the reference uses 20-25)".into());
        }
        match method {
            Method::Memit if self.v_loss_layer != n - 1 => problems.push(format!(
                "`v_loss_layer` is {}, but only the final layer's logits are supported, so it must be {} (this \
                 model's last layer): --set v_loss_layer={}",
                self.v_loss_layer,
                n - 1,
                n - 1
            )),
            // ROME traces this block but uses the final logits; the reference fails if it does not exist.
            Method::Rome if self.v_loss_layer >= n => problems.push(format!(
                "`v_loss_layer` is {}, but this model has {n} layers; the config is probably for a deeper model: \
                 {fix} v_loss_layer={}",
                self.v_loss_layer,
                n - 1
            )),
            _ => {}
        }
        for (field, value, positive) in [
            ("v_lr", self.v_lr, true),
            ("clamp_norm_factor", self.clamp_norm_factor, true),
            ("v_weight_decay", self.v_weight_decay, false),
            ("kl_factor", self.kl_factor, false),
        ] {
            if !value.is_finite() || value < 0.0 || (positive && value == 0.0) {
                let what = if positive { "greater than 0" } else { "0 or more" };
                problems.push(format!("`{field}` is {value}; it must be a finite number {what}"));
            }
        }
        if method == Method::Memit {
            match self.mom2_update_weight {
                None => {
                    problems.push(format!(
                    "MEMIT needs `mom2_update_weight` (λ, the covariance's weight; the reference uses 15000-20000){}: \
                     --set mom2_update_weight=15000",
                    if self.context_template_length_params.is_some() { "; this looks like a ROME config" } else { "" }
                ))
                }
                Some(w) if !(w.is_finite() && w > 0.0) => problems.push(format!(
                    "`mom2_update_weight` is {w}; it must be a finite number greater than 0"
                )),
                _ => {}
            }
        }
        if self.mom2_n_samples == 0 {
            problems.push("`mom2_n_samples` must be at least 1 (the reference uses 100000)".into());
        }
        if method == Method::Rome && self.context_templates.is_none() {
            match &self.context_template_length_params {
                None => problems.push(
                    "ROME needs `context_template_length_params` (e.g. [[5,10],[10,10]], the reference) or explicit \
                     `context_templates`"
                        .into(),
                ),
                Some(p) if p.iter().any(|&(len, _)| len == 0) => problems.push(format!(
                    "`context_template_length_params` {p:?}: every length must be at least 1 (it counts the \
                     <|endoftext|> start token)"
                )),
                _ => {}
            }
        }
        if self.mom2_dtype != "float32" && self.mom2_dtype != "float64" {
            problems.push(format!(
                "`mom2_dtype` {:?} is not supported; use \"float32\" (the reference) or \"float64\"",
                self.mom2_dtype
            ));
        }
        if let Some(t) = &self.context_templates {
            check_templates(t, &mut problems);
        }

        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Input(format!(
            "the {} hyperparameters do not fit this {family} model ({n} layers):\n{}",
            method.name(),
            problems.join("\n")
        )))
    }
}

fn check_templates(t: &ContextTemplates, problems: &mut Vec<String>) {
    let groups = t.groups();
    if groups.iter().all(|g| g.is_empty()) {
        problems.push("`context_templates` is empty; give at least \"{}\" (the bare prompt)".into());
    }
    if matches!(t, ContextTemplates::Groups(_)) && groups.iter().any(|g| g.is_empty()) {
        problems.push("`context_templates` has an empty group; remove it".into());
    }
    for tmpl in groups.iter().flatten() {
        let slots = tmpl.matches("{}").count();
        if slots != 1 {
            problems.push(format!(
                "context template {tmpl:?} has {slots} \"{{}}\"; it must have exactly one, where the prompt goes"
            ));
        } else if !tmpl.ends_with("{}") {
            problems.push(format!(
                "context template {tmpl:?} must end with \"{{}}\": the prompt goes last and the target follows it"
            ));
        } else if tmpl != "{}" && !tmpl.ends_with(" {}") {
            problems.push(format!(
                "context template {tmpl:?}: the text before \"{{}}\" must end with a space (e.g. \"Yes. {{}}\"), \
                 because the subject position rule needs a space before the prompt"
            ));
        }
    }
}

/// Attention / final-norm / head names of a family (spec §2.6).
fn family_modules(family: Family) -> (&'static str, &'static str, &'static str) {
    match family {
        Family::Gpt2 => ("transformer.h.{}.attn", "transformer.ln_f", "transformer.wte"),
        Family::GptJ => ("transformer.h.{}.attn", "transformer.ln_f", "lm_head"),
        Family::GptNeoX => ("gpt_neox.layers.{}.attention", "gpt_neox.final_layer_norm", "embed_out"),
    }
}

/// A config file compiled into the binary.
pub struct Shipped {
    pub method: Method,
    /// Path in the repository, e.g. `configs/memit/gpt2-xl.json`.
    pub path: &'static str,
    /// Hub model name (last path component, lower case) it is for.
    pub model: &'static str,
    pub family: Family,
    pub n_layer: usize,
    pub d_model: usize,
    /// The reference's own values (true), or a starting point of ours (false).
    pub reference: bool,
    pub text: &'static str,
}

macro_rules! shipped {
    ($method:ident, $file:literal, $model:literal, $family:ident, $n:literal, $d:literal, $reference:literal) => {
        Shipped {
            method: Method::$method,
            path: concat!("configs/", $file),
            model: $model,
            family: Family::$family,
            n_layer: $n,
            d_model: $d,
            reference: $reference,
            text: include_str!(concat!("../../configs/", $file)),
        }
    };
}

/// Every config file shipped in `configs/`.
pub static SHIPPED: &[Shipped] = &[
    shipped!(Rome, "rome/gpt2.json", "gpt2", Gpt2, 12, 768, false),
    shipped!(Rome, "rome/gpt2-medium.json", "gpt2-medium", Gpt2, 24, 1024, true),
    shipped!(Rome, "rome/gpt2-large.json", "gpt2-large", Gpt2, 36, 1280, true),
    shipped!(Rome, "rome/gpt2-xl.json", "gpt2-xl", Gpt2, 48, 1600, true),
    shipped!(Rome, "rome/EleutherAI_gpt-j-6B.json", "gpt-j-6b", GptJ, 28, 4096, true),
    shipped!(
        Rome,
        "rome/EleutherAI_gpt-neox-20b.json",
        "gpt-neox-20b",
        GptNeoX,
        44,
        6144,
        true
    ),
    shipped!(Memit, "memit/gpt2.json", "gpt2", Gpt2, 12, 768, false),
    shipped!(Memit, "memit/gpt2-medium.json", "gpt2-medium", Gpt2, 24, 1024, false),
    shipped!(Memit, "memit/gpt2-large.json", "gpt2-large", Gpt2, 36, 1280, false),
    shipped!(Memit, "memit/gpt2-xl.json", "gpt2-xl", Gpt2, 48, 1600, true),
    shipped!(
        Memit,
        "memit/EleutherAI_gpt-j-6B.json",
        "gpt-j-6b",
        GptJ,
        28,
        4096,
        true
    ),
    shipped!(
        Memit,
        "memit/EleutherAI_gpt-neox-20b.json",
        "gpt-neox-20b",
        GptNeoX,
        44,
        6144,
        false
    ),
];

impl Shipped {
    /// `configs/memit/gpt2-xl.json (reference)` / `(starting point, not reference)`.
    pub fn describe(&self) -> String {
        let kind = if self.reference {
            "reference"
        } else {
            "starting point, not reference"
        };
        format!("{} ({kind})", self.path)
    }

    fn fits(&self, cfg: &ModelConfig) -> bool {
        self.family == cfg.family && self.n_layer == cfg.n_layer && self.d_model == cfg.d_model
    }
}

/// The Hub model name of a model id or path: its last path component, lower case.
fn hub_name(model_id: &str) -> String {
    let trimmed = model_id.trim().trim_end_matches(['/', '\\']);
    trimmed
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(trimmed)
        .to_ascii_lowercase()
}

/// The shipped config for this model: by Hub name, else by family and size.
pub fn shipped_for(method: Method, cfg: &ModelConfig, model_id: &str) -> Option<&'static Shipped> {
    let name = hub_name(model_id);
    let candidates = || SHIPPED.iter().filter(move |s| s.method == method);
    if let Some(s) = candidates().find(|s| s.model == name) {
        if s.family == cfg.family && s.n_layer == cfg.n_layer {
            return Some(s);
        }
        tracing::warn!(
            "the model is named {name} but is a {}-layer {} model, not a {}-layer {}; not using {}",
            cfg.n_layer,
            cfg.family.name(),
            s.n_layer,
            s.family.name(),
            s.path
        );
    }
    candidates().find(|s| s.fits(cfg))
}

/// A generic starting point from the model's depth: ROME edits layer round(17/48·n); MEMIT the
/// layers at the relative depth of GPT-J's 3..=8 of 28; the loss at the last layer; the other
/// values as the GPT-J reference configs; module names of the family.
pub fn starting_point(method: Method, cfg: &ModelConfig) -> Value {
    let n = cfg.n_layer;
    let scale = |l: f64, of: f64| ((l * n as f64 / of).round() as usize).min(n - 1);
    let blocks = layers_name(cfg.family);
    let down = mlp_down(cfg, 0)
        .map(|m| m.name.replacen(".0.", ".{}.", 1))
        .unwrap_or_default();
    let (attn, ln_f, head) = family_modules(cfg.family);
    let mut v = json!({
        "fact_token": "subject_last",
        "v_lr": 0.5,
        "v_loss_layer": n - 1,
        "v_weight_decay": 0.5,
        "kl_factor": 0.0625,
        "mom2_adjustment": true,
        "rewrite_module_tmp": down,
        "layer_module_tmp": format!("{blocks}.{{}}"),
        "mlp_module_tmp": format!("{blocks}.{{}}.mlp"),
        "attn_module_tmp": attn,
        "ln_f_module": ln_f,
        "lm_head_module": head,
        "mom2_dataset": "wikipedia",
        "mom2_n_samples": 100000,
        "mom2_dtype": "float32",
    });
    let m = v.as_object_mut().expect("object");
    match method {
        Method::Rome => {
            m.insert("layers".into(), json!([scale(17.0, 48.0)]));
            m.insert("v_num_grad_steps".into(), json!(20));
            m.insert("clamp_norm_factor".into(), json!(4));
            m.insert("context_template_length_params".into(), json!([[5, 10], [10, 10]]));
        }
        Method::Memit => {
            let (first, last) = (scale(3.0, 28.0), scale(8.0, 28.0));
            m.insert("layers".into(), json!((first..=last.max(first)).collect::<Vec<_>>()));
            m.insert("v_num_grad_steps".into(), json!(25));
            m.insert("clamp_norm_factor".into(), json!(0.75));
            m.insert("mom2_update_weight".into(), json!(15000));
            m.insert("layer_selection".into(), json!("all"));
        }
    }
    v
}

/// A config chosen for a model, with overrides applied and checked.
#[derive(Clone, Debug)]
pub struct ResolvedHparams {
    pub hparams: Hparams,
    /// The final config (all fields the method reads, defaults filled in).
    pub json: Value,
    /// Where it came from: `configs/memit/gpt2-xl.json (reference)`, a file path, or
    /// `generic starting point for a 6-layer gpt2 model`; overrides are appended.
    pub source: String,
}

/// Chooses the hyperparameters for `method` on this model (see the module documentation),
/// applies `--set key=value` overrides in order, and validates the result against the model.
pub fn resolve(
    method: Method,
    cfg: &ModelConfig,
    model_id: &str,
    config_file: Option<&Path>,
    sets: &[String],
) -> Result<ResolvedHparams> {
    let (value, mut source) = match config_file {
        Some(path) => (read_config_file(path)?, path.display().to_string()),
        None => match shipped_for(method, cfg, model_id) {
            Some(s) => {
                let v = serde_json::from_str(s.text).expect("shipped configs are valid JSON");
                (v, s.describe())
            }
            None => (
                starting_point(method, cfg),
                format!(
                    "generic starting point for a {}-layer {} model",
                    cfg.n_layer,
                    cfg.family.name()
                ),
            ),
        },
    };
    let Value::Object(mut obj) = value else {
        return Err(Error::Input(format!(
            "{source}: a config must be a JSON object of hyperparameters"
        )));
    };
    drop_unknown(&mut obj, method, &source);
    let mut overridden = Vec::new();
    for set in sets {
        let (key, value) = parse_set(method, set)?;
        obj.insert(key.clone(), value);
        overridden.push(key);
    }
    if !overridden.is_empty() {
        source = format!("{source}, with --set {}", overridden.join(", "));
    }
    let hparams = deserialize(&obj, method, cfg, &source)?;
    hparams
        .validate(method, cfg)
        .map_err(|e| Error::Input(format!("{source}: {e}")))?;
    let json = hparams.to_json(method);
    Ok(ResolvedHparams { hparams, json, source })
}

fn read_config_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: format!(
            "not valid JSON ({e}); hyperparameters use the reference's JSON format (EasyEdit's .yaml files must be \
             converted to JSON)"
        ),
    })
}

/// Removes (with a warning) fields this tool does not know, e.g. EasyEdit's `alg_name`, `device`.
fn drop_unknown(obj: &mut Map<String, Value>, method: Method, source: &str) {
    if let Some(alg) = obj.get("alg_name").and_then(Value::as_str) {
        if !alg.eq_ignore_ascii_case(method.name()) {
            tracing::warn!("{source} says alg_name {alg:?}, but it is used for {}", method.name());
        }
    }
    let unknown: Vec<String> = obj.keys().filter(|k| !FIELDS.contains(&k.as_str())).cloned().collect();
    if !unknown.is_empty() {
        tracing::warn!("{source}: ignoring fields edit does not use: {}", unknown.join(", "));
        obj.retain(|k, _| FIELDS.contains(&k.as_str()));
    }
}

/// Parses one `--set key=value` (value as JSON, else as a string; `rome.` / `memit.` prefixes).
pub fn parse_set(method: Method, set: &str) -> Result<(String, Value)> {
    let Some((key, raw)) = set.split_once('=') else {
        return Err(Error::Input(format!(
            "--set {set:?} has no `=`; write --set KEY=VALUE, e.g. --set v_lr=0.1 or --set layers=[3,4,5]"
        )));
    };
    let key = key.trim();
    let key = match key.split_once('.') {
        Some((prefix, rest)) if prefix.eq_ignore_ascii_case("rome") || prefix.eq_ignore_ascii_case("memit") => {
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
    if !FIELDS.contains(&key) {
        let near = FIELDS
            .iter()
            .min_by_key(|f| distance(f, key))
            .filter(|f| distance(f, key) <= 3);
        let hint = near.map(|f| format!("did you mean `{f}`? ")).unwrap_or_default();
        return Err(Error::Input(format!(
            "--set {set:?}: unknown hyperparameter `{key}`; {hint}valid names: {}",
            FIELDS.join(", ")
        )));
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

/// Deserializes the merged config; on a type error, finds and names the field at fault.
fn deserialize(obj: &Map<String, Value>, method: Method, cfg: &ModelConfig, source: &str) -> Result<Hparams> {
    let err = match serde_json::from_value::<Hparams>(Value::Object(obj.clone())) {
        Ok(h) => return Ok(h),
        Err(e) => e,
    };
    // Put each field in turn into a known-good config: the one that fails is the culprit.
    let base = starting_point(method, cfg);
    for (key, value) in obj {
        let mut probe = base.clone();
        probe[key.as_str()] = value.clone();
        if serde_json::from_value::<Hparams>(probe).is_err() {
            let mut shown = value.to_string();
            if shown.chars().count() > 80 {
                shown = format!("{}...", shown.chars().take(80).collect::<String>());
            }
            return Err(Error::Input(format!(
                "{source}: `{key}` is {shown}, but it must be {}",
                expected(key)
            )));
        }
    }
    Err(Error::Input(format!(
        "{source}: {err}; every reference field must be present (see configs/README.md)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2(n_layer: usize, d: usize) -> ModelConfig {
        ModelConfig::from_json(
            &json!({"model_type": "gpt2", "n_embd": d, "n_head": 4, "n_layer": n_layer, "vocab_size": 50257,
                    "n_positions": 1024}),
            Path::new("c"),
        )
        .unwrap()
    }

    #[test]
    fn method_names() {
        assert_eq!("MEMIT".parse::<Method>().unwrap(), Method::Memit);
        assert_eq!(Method::Rome.name(), "rome");
        assert!("ft"
            .parse::<Method>()
            .unwrap_err()
            .to_string()
            .contains("rome or memit"));
    }

    #[test]
    fn every_shipped_file_parses_and_matches_its_table_row() {
        for s in SHIPPED {
            let v: Value = serde_json::from_str(s.text).unwrap();
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert!(
                keys.iter().all(|k| FIELDS.contains(&k.as_str())),
                "{}: {keys:?}",
                s.path
            );
            let h: Hparams = serde_json::from_value(v).unwrap();
            assert!(h.rewrite_module_tmp.starts_with(layers_name(s.family)), "{}", s.path);
            assert_eq!(h.v_loss_layer, s.n_layer - 1, "{}", s.path);
        }
    }

    #[test]
    fn generic_starting_points() {
        let tiny = gpt2(4, 32);
        let rome: Hparams = serde_json::from_value(starting_point(Method::Rome, &tiny)).unwrap();
        assert_eq!(rome.layers, vec![1]);
        assert_eq!(rome.v_loss_layer, 3);
        rome.validate(Method::Rome, &tiny).unwrap();
        let memit: Hparams = serde_json::from_value(starting_point(Method::Memit, &tiny)).unwrap();
        assert_eq!(memit.layers, vec![0, 1]);
        memit.validate(Method::Memit, &tiny).unwrap();
        // GPT-J depth reproduces the reference layers.
        let gptj = ModelConfig::from_json(
            &json!({"model_type": "gptj", "n_embd": 64, "n_head": 4, "n_layer": 28, "vocab_size": 10, "n_positions": 8}),
            Path::new("c"),
        )
        .unwrap();
        let memit: Hparams = serde_json::from_value(starting_point(Method::Memit, &gptj)).unwrap();
        assert_eq!(memit.layers, vec![3, 4, 5, 6, 7, 8]);
        let one = gpt2(1, 32);
        for m in [Method::Rome, Method::Memit] {
            let h: Hparams = serde_json::from_value(starting_point(m, &one)).unwrap();
            assert_eq!(h.layers, vec![0]);
            h.validate(m, &one).unwrap();
        }
    }

    #[test]
    fn set_values() {
        assert_eq!(
            parse_set(Method::Memit, "layers=[3,4]").unwrap(),
            ("layers".into(), json!([3, 4]))
        );
        assert_eq!(
            parse_set(Method::Memit, "memit.layers=3-5").unwrap().1,
            json!([3, 4, 5])
        );
        assert_eq!(parse_set(Method::Rome, "layers=17").unwrap().1, json!([17]));
        assert_eq!(parse_set(Method::Rome, "layers=1,2").unwrap().1, json!([1, 2]));
        assert_eq!(parse_set(Method::Memit, "solver=direct").unwrap().1, json!("direct"));
        assert_eq!(parse_set(Method::Memit, "v_lr=0.1").unwrap().1, json!(0.1));
        assert!(parse_set(Method::Rome, "memit.v_lr=0.1")
            .unwrap_err()
            .to_string()
            .contains("this run uses rome"));
        let err = parse_set(Method::Rome, "v_lrr=1").unwrap_err().to_string();
        assert!(
            err.contains("did you mean `v_lr`") && err.contains("clamp_norm_factor"),
            "{err}"
        );
        assert!(parse_set(Method::Rome, "v_lr")
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn templates_are_checked() {
        let tiny = gpt2(4, 32);
        let mut h: Hparams = serde_json::from_value(starting_point(Method::Memit, &tiny)).unwrap();
        h.context_templates = Some(ContextTemplates::Groups(vec![
            vec!["{}".into()],
            vec!["Yes. {}".into()],
        ]));
        h.validate(Method::Memit, &tiny).unwrap();
        assert_eq!(h.context_templates.as_ref().unwrap().flat(), vec!["{}", "Yes. {}"]);
        for bad in ["Yes.{}", "{} {}", "none", "{} after"] {
            h.context_templates = Some(ContextTemplates::Flat(vec!["{}".into(), bad.into()]));
            let err = h.validate(Method::Memit, &tiny).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
