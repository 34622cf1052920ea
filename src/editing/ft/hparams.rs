//! The fine-tuning baselines' hyperparameters (FT, FT-L, FT-W, FT-M, AttnEdit): the
//! reference's `hparams/FT/*.json` format (kmeng01/memit), EasyEdit's `objective_optimization`,
//! and the fields marked "ours".

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::loss::Objective;
use super::FtParams;
use crate::config::ModelConfig;
use crate::editing::hparams::locate::{check_number, report};
use crate::editing::hparams::{down_template, module_templates, MethodConfig};
use crate::editing::registry::Method;
use crate::error::Result;
use crate::models::modules::{layers_name, parameter_names};

fn default_batch_size() -> usize {
    64
}

/// FT hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FtHparams {
    /// Layers put into `rewrite_module_tmp`'s `{}`.
    pub layers: Vec<usize>,
    /// Epochs over the requests.
    pub num_steps: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Adam's (coupled, L2) weight decay; the reference files also write `false` for 0.
    #[serde(default, deserialize_with = "number_or_false")]
    pub weight_decay: f64,
    /// FT-L's L∞ radius ε around the original values; `false` (or absent in EasyEdit's files)
    /// for none.
    #[serde(deserialize_with = "optional_number", serialize_with = "number_else_false")]
    pub norm_constraint: Option<f64>,
    /// Every parameter whose checkpoint name contains this, with a layer in place of `{}`, is
    /// tuned (the reference's substring rule: a module's weight and bias; a whole block for
    /// `transformer.h.{}`).
    pub rewrite_module_tmp: String,
    /// Requests per optimisation step (the reference's default 64).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// FT-W: weight decay n_edits^a · e^b for `[a, b]`, replacing `weight_decay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wd_power_law: Option<(f64, f64)>,
    /// Ours: reproduce the reference's check `isinstance(wd_power_law, tuple)`, which a list
    /// read from JSON never passes, so the power law is ignored and `weight_decay` used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wd_power_law_tuple_check: bool,
    /// EasyEdit's: `prompt_last` (the reference, FT-L) or `target_new` (FT-M).
    #[serde(default = "prompt_last")]
    pub objective_optimization: Objective,
    /// In the reference files, unused (as in the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_module_tmp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_module_tmp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_module_tmp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ln_f_module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_head_module: Option<String>,
}

fn prompt_last() -> Objective {
    Objective::PromptLast
}

/// A number, or `false` for 0 (Python's `weight_decay=False`).
fn number_or_false<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64().ok_or_else(|| serde::de::Error::custom("not a number")),
        Value::Bool(false) => Ok(0.0),
        other => Err(serde::de::Error::custom(format!("expected a number or false, found {other}"))),
    }
}

/// A number, or `false` / `null` for none.
fn optional_number<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64().map(Some).ok_or_else(|| serde::de::Error::custom("not a number")),
        Value::Bool(false) | Value::Null => Ok(None),
        other => Err(serde::de::Error::custom(format!("expected a number or false, found {other}"))),
    }
}

fn number_else_false<S: Serializer>(v: &Option<f64>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(x) => s.serialize_f64(*x),
        None => s.serialize_bool(false),
    }
}

const FIELDS: &[&str] = &[
    "layers",
    "num_steps",
    "lr",
    "weight_decay",
    "norm_constraint",
    "rewrite_module_tmp",
    "batch_size",
    "wd_power_law",
    "wd_power_law_tuple_check",
    "objective_optimization",
    "kl_factor",
    "layer_module_tmp",
    "mlp_module_tmp",
    "attn_module_tmp",
    "ln_f_module",
    "lm_head_module",
];

impl FtHparams {
    /// The patterns the layers give (`rewrite_module_tmp` with each layer filled in).
    pub fn patterns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in &self.layers {
            let p = self.rewrite_module_tmp.replace("{}", &l.to_string());
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Adam's weight decay for a run of `n_edits` requests: FT-W's power law when set (unless
    /// the reference's tuple check is reproduced), else `weight_decay`.
    pub fn weight_decay_for(&self, n_edits: usize) -> f64 {
        match self.wd_power_law {
            Some((a, b)) if !self.wd_power_law_tuple_check => (n_edits as f64).powf(a) * b.exp(),
            _ => self.weight_decay,
        }
    }

    /// What one fine-tuning run of `n_edits` requests does.
    pub fn params(&self, n_edits: usize) -> FtParams {
        FtParams {
            layers: self.layers.clone(),
            rewrite_module_tmp: self.rewrite_module_tmp.clone(),
            num_steps: self.num_steps,
            lr: self.lr,
            weight_decay: self.weight_decay_for(n_edits),
            norm_constraint: self.norm_constraint,
            batch_size: self.batch_size,
            objective: self.objective_optimization,
        }
    }

    /// The checkpoint names of the parameters this config tunes on `cfg` (the reference's
    /// substring rule over every parameter).
    pub fn tuned_names(&self, cfg: &ModelConfig) -> Vec<String> {
        let patterns = self.patterns();
        parameter_names(cfg).into_iter().filter(|n| patterns.iter().any(|p| n.contains(p.as_str()))).collect()
    }
}

impl MethodConfig for FtHparams {
    const METHOD: Method = Method::Ft;

    fn fields() -> Vec<&'static str> {
        FIELDS.to_vec()
    }

    fn expected(field: &str) -> &'static str {
        match field {
            "layers" => "a list of layer numbers, e.g. [0]",
            "num_steps" | "batch_size" => "a non-negative integer",
            "lr" | "kl_factor" => "a number",
            "weight_decay" => "a number (or false for 0)",
            "norm_constraint" => "a number ε (FT-L's L∞ radius) or false (no constraint)",
            "wd_power_law" => "a pair [a, b] (weight decay n_edits^a · e^b)",
            "wd_power_law_tuple_check" => "true or false",
            "objective_optimization" => "\"prompt_last\" (FT-L) or \"target_new\" (FT-M)",
            _ => "a string",
        }
    }

    /// FT-L on the first block's MLP down-projection, as the reference's GPT-2 and GPT-J FT-L
    /// files: layer 0, 25 epochs, Adam lr 5e-4, ε 5e-4 (GPT-2 XL's).
    fn starting_point(cfg: &ModelConfig) -> Value {
        let mut m = module_templates(cfg);
        for (k, v) in [
            ("layers", json!([0])),
            ("num_steps", json!(25)),
            ("lr", json!(5e-4)),
            ("weight_decay", json!(0)),
            ("kl_factor", json!(0)),
            ("norm_constraint", json!(5e-4)),
        ] {
            m.insert(k.into(), v);
        }
        Value::Object(m)
    }

    fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let mut problems = Vec::new();
        let n = cfg.n_layer;
        if self.layers.is_empty() {
            problems.push("`layers` is empty; list the layer(s) whose parameters are tuned, e.g. --set layers=[0]".into());
        }
        if let Some(&bad) = self.layers.iter().find(|&&l| l >= n) {
            problems.push(format!("`layers` contains {bad}, but this model has {n} layers (0-{}); the config is probably for a deeper model", n - 1));
        }
        if self.rewrite_module_tmp.matches("{}").count() > 1 {
            problems.push(format!("`rewrite_module_tmp` {:?} may contain at most one \"{{}}\"", self.rewrite_module_tmp));
        }
        let example = down_template(cfg);
        let tuned = self.tuned_names(cfg);
        if tuned.is_empty() && !self.layers.is_empty() {
            problems.push(format!(
                "`rewrite_module_tmp` {:?} with layers {:?} matches no parameter of this {} model; tuned are the parameters \
                 whose name contains it, e.g. {example:?} (a module's weight and bias) or \"{}.{{}}.\" (a whole block); \
                 `edit inspect` lists the modules",
                self.rewrite_module_tmp,
                self.layers,
                cfg.family.name(),
                layers_name(cfg.family)
            ));
        }
        // The substring rule also catches deeper blocks: `transformer.h.2` is in `transformer.h.20.…`.
        let blocks = format!("{}.", layers_name(cfg.family));
        let mut extra: Vec<usize> =
            tuned.iter().filter_map(|t| t.strip_prefix(&blocks)?.split('.').next()?.parse::<usize>().ok()).filter(|l| !self.layers.contains(l)).collect();
        extra.dedup();
        if !extra.is_empty() && self.rewrite_module_tmp.contains("{}") {
            tracing::warn!(
                "`rewrite_module_tmp` {:?} also selects parameters of layer(s) {extra:?} (the reference's substring rule: \
                 \"{blocks}2\" is contained in \"{blocks}20.…\"); they are tuned too, as the reference does. End the template \
                 with a dot (e.g. \"{blocks}{{}}.\") to tune only the listed layers",
                self.rewrite_module_tmp
            );
        }
        if self.num_steps == 0 {
            problems.push("`num_steps` must be at least 1 (the reference uses 25)".into());
        }
        if self.batch_size == 0 {
            problems.push("`batch_size` must be at least 1 (the reference's default is 64)".into());
        }
        check_number("lr", self.lr, true, &mut problems);
        check_number("weight_decay", self.weight_decay, false, &mut problems);
        if let Some(eps) = self.norm_constraint {
            if !(eps.is_finite() && eps > 0.0) {
                problems.push(format!(
                    "`norm_constraint` is {eps}; it must be a finite number greater than 0 (FT-L's L∞ radius, e.g. 5e-4), \
                     or false for no constraint"
                ));
            }
        }
        if let Some((a, b)) = self.wd_power_law {
            if !(a.is_finite() && b.is_finite()) {
                problems.push(format!("`wd_power_law` [{a}, {b}] must be two finite numbers"));
            }
        }
        report("ft", cfg, problems)
    }

    fn missing_hint(field: &str, given: &Map<String, Value>) -> Option<String> {
        let foreign = given.contains_key("v_lr") || given.contains_key("v_num_grad_steps");
        let tail = if foreign { "; this looks like a ROME or MEMIT config" } else { "" };
        Some(format!("fine-tuning needs `{field}` ({}){tail}", Self::expected(field)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wd_file() -> FtHparams {
        serde_json::from_str(include_str!("../../../configs/ft/EleutherAI_gpt-j-6B_wd.json")).unwrap()
    }

    #[test]
    fn ft_w_power_law_and_the_reference_tuple_check() {
        let h = wd_file();
        // `"weight_decay": false` is 0; `"norm_constraint": false` is no constraint.
        assert_eq!((h.weight_decay, h.norm_constraint), (0.0, None));
        assert_eq!(h.wd_power_law, Some((-0.87028798, 0.15589562)));
        // n^a · e^b, by hand: 10^-0.87028798 · e^0.15589562 = 0.157549..., 10000 edits: 3.8597e-4.
        for (n, want) in [(1, 1.1687042073778575), (10, 0.1575493542698794), (10000, 0.0003859692335752952)] {
            let got = h.weight_decay_for(n);
            assert!((got - want).abs() <= 1e-12 * want, "{n}: {got} vs {want}");
        }
        assert_eq!(h.params(10).weight_decay, h.weight_decay_for(10));
        // The reference's check: a JSON list is not a tuple, so the decay stays `weight_decay`.
        let quirk = FtHparams { wd_power_law_tuple_check: true, ..h };
        assert_eq!(quirk.weight_decay_for(10000), 0.0);
        // Round trip in the reference format.
        let back: FtHparams = serde_json::from_value(serde_json::to_value(&quirk).unwrap()).unwrap();
        assert_eq!(back, quirk);
        assert_eq!(serde_json::to_value(&quirk).unwrap()["norm_constraint"], json!(false));
    }

    #[test]
    fn the_substring_rule_selects_as_the_reference() {
        let cfg = ModelConfig::from_json(
            &json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 24, "vocab_size": 10, "n_positions": 4}),
            std::path::Path::new("c"),
        )
        .unwrap();
        let mut h = wd_file();
        h.rewrite_module_tmp = "transformer.h.{}".into();
        h.layers = vec![2];
        let tuned = h.tuned_names(&cfg);
        // Block 2 and, by substring, blocks 20-23: 5 blocks of 12 parameters.
        assert_eq!(tuned.len(), 5 * 12);
        assert!(tuned.iter().any(|n| n.starts_with("transformer.h.21.")));
        h.rewrite_module_tmp = "transformer.h.{}.".into();
        assert_eq!(h.tuned_names(&cfg).len(), 12);
        h.rewrite_module_tmp = "transformer.h.{}.attn.c_attn".into();
        assert_eq!(h.tuned_names(&cfg), ["transformer.h.2.attn.c_attn.weight", "transformer.h.2.attn.c_attn.bias"]);
    }
}
