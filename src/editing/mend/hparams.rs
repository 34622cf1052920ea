//! MEND's hyperparameters: the reference's `hparams/MEND/*.json` (kmeng01/memit: `lr_scale`,
//! and the fields that name the published hypernetwork file), plus ours: which weights the
//! hypernetwork edits, and the ROME/MEMIT executor's quirks as options (spec §5.6).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::{Family, ModelConfig};
use crate::editing::hparams::locate::{check_number, report};
use crate::editing::hparams::MethodConfig;
use crate::editing::registry::Method;
use crate::error::Result;

fn one() -> f64 {
    1.0
}

fn chunk_rows() -> usize {
    128
}

/// MEND hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MendHparams {
    /// Multiplies every update (the reference files all say 1.0).
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// The reference's: with `counterfact`, `zsre` and `mini` they name the published
    /// hypernetwork (`mend-10tok-gpt2-xl.pt`); here only for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_toks: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    #[serde(default)]
    pub counterfact: bool,
    #[serde(default)]
    pub zsre: bool,
    #[serde(default)]
    pub mini: bool,
    /// Ours: the weights the hypernetwork edits, by checkpoint name, in the reference's
    /// `inner_params` order [default: the last three layers' MLP matrices, see
    /// [`default_inner_params`]]. A hypernetwork file names its own; this is what `edit mend
    /// import` assigns to a reference checkpoint (which stores no names) and what `edit mend
    /// train` trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_params: Option<Vec<String>>,
    /// Ours: rows per forward/backward of the edit loss (the executor's `max_batch_size`).
    #[serde(default = "chunk_rows")]
    pub max_batch_size: usize,
    /// Ours, the executor's quirk (a): the hypernetwork in training mode, so its trained
    /// normalisation statistics are discarded and restarted from the first edit's rows (and
    /// updated by every later one). Default: evaluation mode, as the MEND authors and EasyEdit.
    #[serde(default)]
    pub executor_norm: bool,
    /// Ours, the executor's quirk (b): step sizes taken in the model's parameter order, which
    /// swaps GPT-2's `c_fc` and `c_proj` ones. Default: each weight its own.
    #[serde(default)]
    pub executor_lr_order: bool,
    /// Ours, the executor's quirk (c): with more rows than `max_batch_size`, its hooks keep only
    /// the last chunk's factors (earlier chunks' requests are not edited). Default: every chunk's.
    #[serde(default)]
    pub executor_last_chunk: bool,
    /// Training (`edit mend train`), the shipped `config/alg/mend.yaml` and `config.yaml`
    /// defaults; see [`MendTraining`].
    #[serde(flatten)]
    pub train: MendTraining,
}

/// How a hypernetwork is trained (spec §5.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MendTraining {
    /// The outer Adam's learning rate (hypernetwork and step sizes).
    pub lr: f64,
    /// The step sizes' own Adam learning rate. In the reference its optimiser steps after the
    /// outer one has cleared the gradients, so it never moves them; that is the default here
    /// too, and `separate_lr_opt` applies it as meant.
    pub lr_lr: f64,
    /// Ours: the step sizes trained by their own Adam at `lr_lr` only (not by the outer one).
    pub separate_lr_opt: bool,
    /// The step sizes' initial value.
    pub edit_lr: f64,
    /// Weights of the edit loss (NLL on edit_outer) and of the locality loss (KL on loc).
    pub cedit: f64,
    pub cloc: f64,
    /// Steps whose gradients are summed (each divided by it) before an optimiser step.
    pub accumulate_bs: usize,
    /// Gradient-norm clip at each optimiser step.
    pub grad_clip: f64,
    /// The low-rank layers' rank (min(rank, x_dim + delta_dim)), hidden layers, normalisation.
    pub rank: usize,
    pub n_hidden: usize,
    pub norm: bool,
    /// Validation every this many steps, over this many held-out examples.
    pub val_interval: usize,
    pub val_steps: usize,
    /// Stop when the validation loss has not improved for this many steps.
    pub early_stop_patience: usize,
    pub max_iters: usize,
    /// Locality texts are cut to this many tokens (and the model's context).
    pub loc_max_tokens: usize,
    pub seed: u64,
}

impl Default for MendTraining {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            lr_lr: 1e-4,
            separate_lr_opt: false,
            edit_lr: 1e-4,
            cedit: 0.1,
            cloc: 1.0,
            accumulate_bs: 10,
            grad_clip: 100.0,
            rank: 1920,
            n_hidden: 1,
            norm: true,
            val_interval: 5000,
            val_steps: 500,
            early_stop_patience: 20000,
            max_iters: 1_000_000,
            loc_max_tokens: 200,
            seed: 0,
        }
    }
}

const FIELDS: &[&str] = &[
    "lr_scale",
    "n_toks",
    "model_name",
    "counterfact",
    "zsre",
    "mini",
    "inner_params",
    "max_batch_size",
    "executor_norm",
    "executor_lr_order",
    "executor_last_chunk",
    "lr",
    "lr_lr",
    "separate_lr_opt",
    "edit_lr",
    "cedit",
    "cloc",
    "accumulate_bs",
    "grad_clip",
    "rank",
    "n_hidden",
    "norm",
    "val_interval",
    "val_steps",
    "early_stop_patience",
    "max_iters",
    "loc_max_tokens",
    "seed",
];

/// The reference's inner weights, by analogy for every model (spec §5.1): the MLP matrices of
/// the last three layers (all of them for shallower models), per layer in the reference's
/// order — GPT-2 `c_proj` then `c_fc`, GPT-J `fc_in` then `fc_out`, NeoX `dense_h_to_4h` then
/// `dense_4h_to_h`; the gated MLPs' three, `gate_proj`, `up_proj`, `down_proj`, as EasyEdit's
/// MEND configs for Llama list them.
pub fn default_inner_params(cfg: &ModelConfig) -> Vec<String> {
    let (blocks, mats): (&str, &[&str]) = match cfg.family {
        Family::Gpt2 => ("transformer.h", &["mlp.c_proj", "mlp.c_fc"]),
        Family::GptJ => ("transformer.h", &["mlp.fc_in", "mlp.fc_out"]),
        Family::GptNeoX => ("gpt_neox.layers", &["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]),
        _ => ("model.layers", &["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    };
    (cfg.n_layer.saturating_sub(3)..cfg.n_layer).flat_map(|l| mats.iter().map(move |m| format!("{blocks}.{l}.{m}.weight"))).collect()
}

impl MendHparams {
    /// The inner weights: the config's, else the model's default.
    pub fn inner_params(&self, cfg: &ModelConfig) -> Vec<String> {
        self.inner_params.clone().unwrap_or_else(|| default_inner_params(cfg))
    }

    /// The reference's file name for the hypernetwork these settings describe
    /// (`mend-{mini-}{n}tok-{counterfact-|zsre-}{gpt2-xl|gpt-j-6b}.pt`), for GPT-2 XL and GPT-J only.
    pub fn published_file(&self) -> Option<String> {
        let name = self.model_name.as_deref()?.to_ascii_lowercase();
        let model = match name.as_str() {
            "gpt2-xl" => "gpt2-xl",
            "eleutherai/gpt-j-6b" | "gpt-j-6b" => "gpt-j-6b",
            _ => return None,
        };
        let data = if self.counterfact {
            "counterfact-"
        } else if self.zsre {
            "zsre-"
        } else {
            ""
        };
        let mini = if self.mini { "mini-" } else { "" };
        Some(format!("mend-{mini}{}tok-{data}{model}.pt", self.n_toks.unwrap_or(10)))
    }
}

impl MethodConfig for MendHparams {
    const METHOD: Method = Method::Mend;

    fn fields() -> Vec<&'static str> {
        FIELDS.to_vec()
    }

    fn expected(field: &str) -> &'static str {
        match field {
            "lr_scale" => "a number",
            "n_toks"
            | "max_batch_size"
            | "accumulate_bs"
            | "rank"
            | "n_hidden"
            | "val_interval"
            | "val_steps"
            | "early_stop_patience"
            | "max_iters"
            | "loc_max_tokens"
            | "seed" => "a non-negative integer",
            "lr" | "lr_lr" | "edit_lr" | "cedit" | "cloc" | "grad_clip" => "a number",
            "inner_params" => "a list of weight names, e.g. [\"transformer.h.47.mlp.c_proj.weight\"]",
            "model_name" => "a string",
            _ => "true or false",
        }
    }

    /// The reference's settings (every file has `lr_scale` 1.0) with the default inner weights.
    fn starting_point(_: &ModelConfig) -> Value {
        json!({"lr_scale": 1.0})
    }

    fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let mut problems = Vec::new();
        check_number("lr_scale", self.lr_scale, false, &mut problems);
        let t = &self.train;
        for (name, v, positive) in [
            ("lr", t.lr, true),
            ("lr_lr", t.lr_lr, false),
            ("edit_lr", t.edit_lr, false),
            ("cedit", t.cedit, false),
            ("cloc", t.cloc, false),
            ("grad_clip", t.grad_clip, true),
        ] {
            check_number(name, v, positive, &mut problems);
        }
        for (name, v) in [("accumulate_bs", t.accumulate_bs), ("rank", t.rank), ("val_interval", t.val_interval), ("loc_max_tokens", t.loc_max_tokens)] {
            if v == 0 {
                problems.push(format!("`{name}` must be at least 1"));
            }
        }
        if self.max_batch_size == 0 {
            problems.push("`max_batch_size` must be at least 1 (the executor's is 128)".into());
        }
        if let Some(names) = &self.inner_params {
            if names.is_empty() {
                problems.push("`inner_params` is empty; name the weights the hypernetwork edits, or unset it for the default".into());
            }
            if let Err(e) = crate::editing::mend::hypernet::inner_params(cfg, names) {
                problems.push(format!("`inner_params`: {e}"));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                problems.push(format!("`inner_params` names {dup} twice"));
            }
        }
        report("mend", cfg, problems)
    }

    fn missing_hint(field: &str, _: &Map<String, Value>) -> Option<String> {
        Some(format!("MEND needs `{field}` ({})", Self::expected(field)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(model_type: &str, n_layer: usize) -> ModelConfig {
        let v = match model_type {
            "gpt2" => json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": n_layer, "vocab_size": 10, "n_positions": 4}),
            "gptj" => json!({"model_type": "gptj", "n_embd": 8, "n_head": 2, "n_layer": n_layer, "vocab_size": 10, "n_positions": 4, "rotary_dim": 2}),
            _ => json!({"model_type": "gpt_neox", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": n_layer,
                        "intermediate_size": 32, "vocab_size": 10, "max_position_embeddings": 4, "rotary_pct": 0.5}),
        };
        ModelConfig::from_json(&v, std::path::Path::new("c")).unwrap()
    }

    #[test]
    fn default_inner_params_are_the_references() {
        // spec §5.1: GPT-2 XL 45-47 c_proj, c_fc; GPT-J 25-27 fc_in, fc_out.
        let xl = default_inner_params(&cfg("gpt2", 48));
        assert_eq!(xl[0], "transformer.h.45.mlp.c_proj.weight");
        assert_eq!(xl[1], "transformer.h.45.mlp.c_fc.weight");
        assert_eq!(xl[5], "transformer.h.47.mlp.c_fc.weight");
        let j = default_inner_params(&cfg("gptj", 28));
        assert_eq!(j[..2], ["transformer.h.25.mlp.fc_in.weight", "transformer.h.25.mlp.fc_out.weight"]);
        let neox = default_inner_params(&cfg("neox", 2));
        assert_eq!(neox.len(), 4);
        assert_eq!(neox[0], "gpt_neox.layers.0.mlp.dense_h_to_4h.weight");
    }

    #[test]
    fn published_file_names() {
        let files = [
            (include_str!("../../../configs/mend/gpt2-xl.json"), "mend-10tok-gpt2-xl.pt"),
            (include_str!("../../../configs/mend/gpt2-xl_CF.json"), "mend-1tok-counterfact-gpt2-xl.pt"),
            (include_str!("../../../configs/mend/gpt2-xl_zsRE.json"), "mend-1tok-zsre-gpt2-xl.pt"),
            (include_str!("../../../configs/mend/EleutherAI_gpt-j-6B.json"), "mend-10tok-gpt-j-6b.pt"),
            (include_str!("../../../configs/mend/EleutherAI_gpt-j-6B_CF.json"), "mend-10tok-counterfact-gpt-j-6b.pt"),
        ];
        for (text, want) in files {
            let h: MendHparams = serde_json::from_str(text).unwrap();
            assert_eq!(h.published_file().as_deref(), Some(want));
        }
    }
}
