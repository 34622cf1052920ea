//! ROME's hyperparameters: the shared locate-then-edit fields plus ROME's own.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::editing::hparams::locate::{common_expected, common_starting_point, report, scaled_layer, Common, COMMON_FIELDS};
use crate::editing::hparams::MethodConfig;
use crate::editing::registry::Method;
use crate::error::Result;

fn default_true() -> bool {
    true
}

/// What ROME's context texts are sampled after (ours; EasyEdit and the reference have no field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplatePrompt {
    /// The reference: the text `<|endoftext|>` as the model's tokenizer encodes it (GPT-2's one
    /// token; with other vocabularies several pieces behind a BOS, which can take up a whole
    /// template's length, so that nothing is sampled and the template is just `". {}"`).
    #[default]
    Endoftext,
    /// The tokenizer's BOS (its end-of-text token where it has none): texts of the intended length
    /// with every vocabulary.
    Bos,
}

/// ROME hyperparameters, field for field the reference's `hparams/ROME/*.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RomeHparams {
    #[serde(flatten)]
    pub common: Common,
    /// Use C⁻¹k (true, the reference) or k/‖k‖ (no statistics needed).
    pub mom2_adjustment: bool,
    /// `[[length, count], ...]` of sampled context prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_template_length_params: Option<Vec<(usize, usize)>>,
    /// Ours (EasyEdit's name): false = the r-ROME fix (the averaged key in both places).
    #[serde(default = "default_true")]
    pub original_implementation: bool,
    /// Ours: what the context texts are sampled after.
    #[serde(default)]
    pub context_template_prompt: TemplatePrompt,
}

impl std::ops::Deref for RomeHparams {
    type Target = Common;
    fn deref(&self) -> &Common {
        &self.common
    }
}

impl std::ops::DerefMut for RomeHparams {
    fn deref_mut(&mut self) -> &mut Common {
        &mut self.common
    }
}

const OWN_FIELDS: &[&str] = &["mom2_adjustment", "context_template_length_params", "original_implementation", "context_template_prompt"];

impl MethodConfig for RomeHparams {
    const METHOD: Method = Method::Rome;

    fn fields() -> Vec<&'static str> {
        COMMON_FIELDS.iter().chain(OWN_FIELDS).copied().collect()
    }

    fn expected(field: &str) -> &'static str {
        match field {
            "mom2_adjustment" | "original_implementation" => "true or false",
            "context_template_length_params" => "a list of [length, count] pairs, e.g. [[5,10],[10,10]]",
            "context_template_prompt" => "\"endoftext\" (the reference) or \"bos\"",
            f => common_expected(f).unwrap_or("a string"),
        }
    }

    /// Layer round(17/48·n) (GPT-2 XL's 17 of 48), 20 steps, clamp 4, the reference templates.
    fn starting_point(cfg: &ModelConfig) -> Value {
        let mut v = common_starting_point(cfg);
        let m = v.as_object_mut().expect("object");
        m.insert("layers".into(), json!([scaled_layer(cfg, 17.0, 48.0)]));
        m.insert("v_num_grad_steps".into(), json!(20));
        m.insert("clamp_norm_factor".into(), json!(4));
        m.insert("mom2_adjustment".into(), json!(true));
        m.insert("context_template_length_params".into(), json!([[5, 10], [10, 10]]));
        v
    }

    fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let mut problems = Vec::new();
        self.common.check(cfg, &mut problems)?;
        let n = cfg.n_layer;
        if self.layers.len() > 1 {
            problems.push(format!(
                "ROME edits exactly one layer, but `layers` is {:?}; use MEMIT for several layers, or e.g. --set layers=[{}]",
                self.layers, self.layers[0]
            ));
        }
        // ROME traces this block but uses the final logits; the reference fails if it does not exist.
        if self.v_loss_layer >= n {
            problems.push(format!(
                "`v_loss_layer` is {}, but this model has {n} layers; the config is probably for a deeper model: pass a \
                 config for this model with --config FILE, or fix the field with --set v_loss_layer={}",
                self.v_loss_layer,
                n - 1
            ));
        }
        if self.context_templates.is_none() {
            match &self.context_template_length_params {
                None => problems.push(
                    "ROME needs `context_template_length_params` (e.g. [[5,10],[10,10]], the reference) or explicit \
                     `context_templates`"
                        .into(),
                ),
                Some(p) if p.iter().any(|&(len, _)| len == 0) => problems.push(format!(
                    "`context_template_length_params` {p:?}: every length must be at least 1 (it counts the <|endoftext|> \
                     start token)"
                )),
                _ => {}
            }
        }
        report("rome", cfg, problems)
    }

    fn missing_hint(field: &str, given: &Map<String, Value>) -> Option<String> {
        (field == "mom2_adjustment" && given.contains_key("mom2_update_weight"))
            .then(|| "ROME needs `mom2_adjustment` (true in the reference); this looks like a MEMIT config".into())
    }
}
