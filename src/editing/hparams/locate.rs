//! What ROME and MEMIT configs share: the reference's locate-then-edit fields (layers, the
//! target-vector optimisation, module templates, statistics), context templates, and their
//! checks against the model.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{down_template, family_modules, module_templates};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::models::modules::{find, layers_name, mlp_down, EditableModule, ModuleKind};
use crate::stats::ensure::StatsNeed;
use crate::stats::Precision;

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

/// How the target-vector optimisation backpropagates through the blocks above the edited layer
/// (ours; the gradient is the same either way, up to rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradCheckpoint {
    /// Per block when the whole graph would be large against the weights (see
    /// `editing::optimize`), else the whole graph.
    #[default]
    Auto,
    /// One block at a time: each step runs one more forward without a graph, and the graph
    /// held at once is one block's.
    Blocks,
    /// The whole graph of the blocks above the layer at once (fastest, most memory).
    Off,
}

/// The fields ROME and MEMIT share, field for field the reference's hparams JSON (plus
/// `context_templates` and `seed`, ours). Each method's type flattens this in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Common {
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
    pub rewrite_module_tmp: String,
    pub layer_module_tmp: String,
    pub mlp_module_tmp: String,
    pub attn_module_tmp: String,
    pub ln_f_module: String,
    pub lm_head_module: String,
    pub mom2_dataset: String,
    pub mom2_n_samples: crate::stats::Samples,
    pub mom2_dtype: String,
    /// Ours: fixed context templates (each with one `{}`); when present, none are sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_templates: Option<ContextTemplates>,
    /// Ours: seed of the context-template sampling.
    #[serde(default)]
    pub seed: u64,
    /// Ours: how the optimisation's gradient is taken (memory against one more forward).
    #[serde(default)]
    pub grad_checkpoint: GradCheckpoint,
    /// Ours: build the v*/z prompts as the reference does, the text `prompt + decode(target[:-1])`
    /// re-tokenized (a SentencePiece decoder drops the space before the target's second piece),
    /// instead of the prompt's tokens followed by the target's.
    #[serde(default)]
    pub decoded_target_prefix: bool,
}

/// Every field name of [`Common`].
pub(crate) const COMMON_FIELDS: &[&str] = &[
    "layers",
    "fact_token",
    "v_num_grad_steps",
    "v_lr",
    "v_loss_layer",
    "v_weight_decay",
    "clamp_norm_factor",
    "kl_factor",
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
    "seed",
    "grad_checkpoint",
    "decoded_target_prefix",
];

/// What a [`Common`] field holds, for error messages; `None` for fields it does not have.
pub(crate) fn common_expected(field: &str) -> Option<&'static str> {
    Some(match field {
        "layers" => "a list of layer numbers, e.g. [17] or [3,4,5]",
        "fact_token" => "\"subject_last\"",
        "v_num_grad_steps" | "v_loss_layer" | "seed" => "a non-negative integer",
        "mom2_n_samples" => "a number of texts, or \"auto\" (collect until the statistics converge)",
        "context_templates" => "a list of templates such as [\"{}\", \"Yes. {}\"], or a list of such lists",
        "v_lr" | "v_weight_decay" | "clamp_norm_factor" | "kl_factor" => "a number",
        "grad_checkpoint" => "\"auto\", \"blocks\" or \"off\"",
        "decoded_target_prefix" => "true or false",
        f if COMMON_FIELDS.contains(&f) => "a string",
        _ => return None,
    })
}

impl Common {
    /// The module this config rewrites at `layer` (`rewrite_module_tmp` with the layer filled in).
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

    /// The statistics this config asks for: `mom2_*` at its layers.
    pub fn stats_need(&self) -> StatsNeed {
        StatsNeed {
            layers: self.layers.clone(),
            dataset: self.mom2_dataset.clone(),
            samples: self.mom2_n_samples,
            precision: if self.mom2_dtype == "float64" { Precision::F64 } else { Precision::F32 },
        }
    }

    /// Problems with the shared fields on this model, one line each, pushed onto `problems`.
    pub(crate) fn check(&self, cfg: &ModelConfig, problems: &mut Vec<String>) -> Result<()> {
        let n = cfg.n_layer;
        let family = cfg.family.name();
        let fix = "pass a config for this model with --config FILE, or fix the field with --set";

        if self.layers.is_empty() {
            problems.push("`layers` is empty; list the layer(s) to edit, e.g. --set layers=[17]".into());
        }
        if self.layers.windows(2).any(|w| w[0] >= w[1]) {
            problems.push(format!("`layers` {:?} must be ascending without repeats (MEMIT edits them in order)", self.layers));
        }
        if let Some(&bad) = self.layers.iter().find(|&&l| l >= n) {
            problems.push(format!("`layers` contains {bad}, but this model has {n} layers (0-{}); the config is probably for a deeper model: {fix}", n - 1));
        }

        // Module names.
        let expected_rewrite = down_template(cfg);
        let blocks = layers_name(cfg.family);
        if self.rewrite_module_tmp.matches("{}").count() != 1 {
            problems
                .push(format!("`rewrite_module_tmp` {:?} must contain one \"{{}}\" for the layer number, e.g. {expected_rewrite:?}", self.rewrite_module_tmp));
        } else if let Some(&l) = self.layers.iter().find(|&&l| l < n) {
            let name = self.rewrite_module_tmp.replace("{}", &l.to_string());
            let want = mlp_down(cfg, l)?.name;
            if name != want {
                problems.push(format!(
                    "`rewrite_module_tmp` is {:?}, which names {name}, but this {family} model's MLP down-projection is \
                     {want} (expected {expected_rewrite:?}); the config is probably for another model family: {fix} \
                     rewrite_module_tmp={expected_rewrite}",
                    self.rewrite_module_tmp
                ));
            }
        }
        for (field, value, want) in
            [("layer_module_tmp", &self.layer_module_tmp, format!("{blocks}.{{}}")), ("mlp_module_tmp", &self.mlp_module_tmp, format!("{blocks}.{{}}.mlp"))]
        {
            if *value != want {
                problems.push(format!(
                    "`{field}` is {value:?}, but this {family} model's is {want:?}; the config is probably for another model \
                     family: {fix} {field}={want}"
                ));
            }
        }
        // Not used by the computation (the models give logits directly); a mismatch only warns.
        let (attn, ln_f, head) = family_modules(cfg.family);
        for (field, value, want) in
            [("attn_module_tmp", &self.attn_module_tmp, attn), ("ln_f_module", &self.ln_f_module, ln_f), ("lm_head_module", &self.lm_head_module, head)]
        {
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
        for (field, value, positive) in [
            ("v_lr", self.v_lr, true),
            ("clamp_norm_factor", self.clamp_norm_factor, true),
            ("v_weight_decay", self.v_weight_decay, false),
            ("kl_factor", self.kl_factor, false),
        ] {
            check_number(field, value, positive, problems);
        }
        if self.mom2_n_samples == crate::stats::Samples::Count(0) {
            problems.push("`mom2_n_samples` must be at least 1 (the reference uses 100000)".into());
        }
        if self.mom2_dtype != "float32" && self.mom2_dtype != "float64" {
            problems.push(format!("`mom2_dtype` {:?} is not supported; use \"float32\" (the reference) or \"float64\"", self.mom2_dtype));
        }
        if let Some(t) = &self.context_templates {
            check_templates(t, problems);
        }
        Ok(())
    }
}

/// A finite number, > 0 when `positive`, else ≥ 0.
pub(crate) fn check_number(field: &str, value: f64, positive: bool, problems: &mut Vec<String>) {
    if !value.is_finite() || value < 0.0 || (positive && value == 0.0) {
        let what = if positive { "greater than 0" } else { "0 or more" };
        problems.push(format!("`{field}` is {value}; it must be a finite number {what}"));
    }
}

/// MEMIT-style methods read the target's loss at the final layer only.
pub(crate) fn check_final_loss_layer(v_loss_layer: usize, cfg: &ModelConfig, problems: &mut Vec<String>) {
    let last = cfg.n_layer - 1;
    if v_loss_layer != last {
        problems.push(format!(
            "`v_loss_layer` is {v_loss_layer}, but only the final layer's logits are supported, so it must be {last} (this model's last layer): --set v_loss_layer={last}"
        ));
    }
}

/// The problems as one error, or Ok.
pub(crate) fn report(method: &str, cfg: &ModelConfig, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Input(format!("the {method} hyperparameters do not fit this {} model ({} layers):\n{}", cfg.family.name(), cfg.n_layer, problems.join("\n"))))
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
            problems.push(format!("context template {tmpl:?} has {slots} \"{{}}\"; it must have exactly one, where the prompt goes"));
        } else if !tmpl.ends_with("{}") {
            problems.push(format!("context template {tmpl:?} must end with \"{{}}\": the prompt goes last and the target follows it"));
        } else if tmpl != "{}" && !tmpl.ends_with(" {}") {
            problems.push(format!(
                "context template {tmpl:?}: the text before \"{{}}\" must end with a space (e.g. \"Yes. {{}}\"), because the \
                 subject position rule needs a space before the prompt"
            ));
        }
    }
}

/// The shared part of a generic starting point: the GPT-J reference values, the family's
/// module names, the loss at the last layer.
pub(crate) fn common_starting_point(cfg: &ModelConfig) -> Value {
    let mut m = module_templates(cfg);
    for (k, v) in [
        ("fact_token", json!("subject_last")),
        ("v_lr", json!(0.5)),
        ("v_loss_layer", json!(cfg.n_layer - 1)),
        ("v_weight_decay", json!(0.5)),
        ("kl_factor", json!(0.0625)),
        ("mom2_dataset", json!("wikipedia")),
        ("mom2_n_samples", json!(100000)),
        ("mom2_dtype", json!("float32")),
    ] {
        m.insert(k.into(), v);
    }
    Value::Object(m)
}

/// `l` of a reference model `of` layers deep, moved to this model's depth.
pub(crate) fn scaled_layer(cfg: &ModelConfig, l: f64, of: f64) -> usize {
    ((l * cfg.n_layer as f64 / of).round() as usize).min(cfg.n_layer - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked() {
        let mut problems = Vec::new();
        check_templates(&ContextTemplates::Groups(vec![vec!["{}".into()], vec!["Yes. {}".into()]]), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(ContextTemplates::Groups(vec![vec!["{}".into()], vec!["Yes. {}".into()]]).flat(), vec!["{}", "Yes. {}"]);
        for bad in ["Yes.{}", "{} {}", "none", "{} after"] {
            let mut problems = Vec::new();
            check_templates(&ContextTemplates::Flat(vec!["{}".into(), bad.into()]), &mut problems);
            assert!(problems.iter().any(|p| p.contains(&format!("{bad:?}"))), "{problems:?}");
        }
    }
}
