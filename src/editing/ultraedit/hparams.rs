//! UltraEdit's hyperparameters: the reference's `config/editor/ultraedit.yaml` (`lr`, `token`),
//! its model files' `edit_modules`, its datasets' `batch_size` (requests per forward/backward),
//! plus ours: the ridge term and the form of the solve.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::editing::hparams::locate::{check_number, report, scaled_layer};
use crate::editing::hparams::MethodConfig;
use crate::editing::registry::Method;
use crate::error::Result;
use crate::models::modules::{self, EditableModule, ModuleKind};

/// Which positions' keys and output gradients a turn caches (the reference's `editor.token`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// The positions that predict an answer token: the prompt's last token and the answer's
    /// tokens but the last (the reference's `ans`, used by every published run).
    #[default]
    Ans,
    /// Every position of the input (the reference's other choice, its attention mask).
    All,
}

/// How the ridge regression is solved (the same solution either way, up to rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UltraSolver {
    /// Push-through while a turn has fewer cached rows than the module's input width, else direct.
    #[default]
    Auto,
    /// The reference's `solve(KᵀK + λI, KᵀV)` on the in×in system.
    Direct,
    /// `Kᵀ (KKᵀ + λI)⁻¹ V`: the rows×rows system.
    PushThrough,
}

fn one() -> f64 {
    1.0
}

fn ten() -> usize {
    10
}

fn published_lr() -> f64 {
    1e-6
}

/// UltraEdit hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UltraEditHparams {
    /// The edited linear modules, by the reference's names (`model.layers.29.mlp.down_proj`), in
    /// the reference's order (its normalisers are updated module by module in this order).
    pub edit_modules: Vec<String>,
    /// The step size: each cached row's value is −lr·‖k̂‖²·ĝ (the reference's 1e-6).
    #[serde(default = "published_lr")]
    pub lr: f64,
    /// Requests per forward/backward (the reference datasets' `batch_size`, 10); each
    /// sub-batch's loss is its own mean.
    #[serde(default = "ten")]
    pub batch_size: usize,
    #[serde(default)]
    pub token: Positions,
    /// Ours: λ in (KᵀK + λI), the reference's fixed identity (1).
    #[serde(default = "one")]
    pub ridge: f64,
    /// Ours: how the ridge regression is solved.
    #[serde(default)]
    pub solver: UltraSolver,
    /// Ours: sub-batches per forward/backward (the same gradients: each sub-batch's loss is
    /// still its own mean). 1 as the reference; more reads the weights once for several, which
    /// pays on a GPU, while on a CPU the padding to the longest sequence and the larger graph
    /// cost more than they save.
    #[serde(default = "one_pass")]
    pub sub_batches_per_pass: usize,
}

fn one_pass() -> usize {
    1
}

const FIELDS: &[&str] = &["edit_modules", "lr", "batch_size", "token", "ridge", "solver", "sub_batches_per_pass"];

impl UltraEditHparams {
    /// The edited modules of this model, in config order.
    pub fn modules(&self, cfg: &ModelConfig) -> Result<Vec<EditableModule>> {
        self.edit_modules.iter().map(|n| modules::find(cfg, n)).collect()
    }
}

impl MethodConfig for UltraEditHparams {
    const METHOD: Method = Method::UltraEdit;

    fn fields() -> Vec<&'static str> {
        FIELDS.to_vec()
    }

    fn expected(field: &str) -> &'static str {
        match field {
            "edit_modules" => "a list of linear module names, e.g. [\"model.layers.29.mlp.down_proj\"]",
            "lr" | "ridge" => "a number",
            "batch_size" | "sub_batches_per_pass" => "a positive integer",
            "token" => "\"ans\" or \"all\"",
            "solver" => "\"auto\", \"direct\" or \"push_through\"",
            _ => "a string",
        }
    }

    /// The published modules at this model's relative depth: for gated MLPs Llama 3 8B's
    /// (`gate_proj` of layers 11-15 and `up_proj` of 18-24 of 32), else GPT-J's MLP
    /// down-projections of layers 18-26 of 28.
    fn starting_point(cfg: &ModelConfig) -> Value {
        let last = cfg.n_layer.saturating_sub(1);
        let range = |a: f64, b: f64, of: f64| {
            let (lo, hi) = (scaled_layer(cfg, a, of).min(last), scaled_layer(cfg, b, of).min(last));
            lo..=hi.max(lo)
        };
        let name = |l: usize, kind: ModuleKind| modules::module(cfg, l, kind).map(|m| m.name).unwrap_or_default();
        let names: Vec<String> = if modules::module(cfg, 0, ModuleKind::MlpGate).is_ok() {
            let gate = range(11.0, 15.0, 32.0).map(|l| name(l, ModuleKind::MlpGate));
            let up = range(18.0, 24.0, 32.0).map(|l| name(l, ModuleKind::MlpUp));
            gate.chain(up).collect()
        } else {
            range(18.0, 26.0, 28.0).map(|l| name(l, ModuleKind::MlpDown)).collect()
        };
        json!({"edit_modules": names, "lr": 1e-6, "batch_size": 10, "token": "ans"})
    }

    fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let mut problems = Vec::new();
        check_number("lr", self.lr, false, &mut problems);
        check_number("ridge", self.ridge, true, &mut problems);
        if self.batch_size == 0 {
            problems.push("`batch_size` must be at least 1 (the reference's is 10)".into());
        }
        if self.sub_batches_per_pass == 0 {
            problems.push("`sub_batches_per_pass` must be at least 1".into());
        }
        if self.edit_modules.is_empty() {
            problems.push("`edit_modules` is empty; name the linear modules to edit".into());
        }
        let mut seen = std::collections::HashSet::new();
        for n in &self.edit_modules {
            match modules::find(cfg, n) {
                Ok(m) if !seen.insert(m.name.clone()) => problems.push(format!("`edit_modules` names {} twice", m.name)),
                Ok(_) => {}
                Err(e) => problems.push(format!("`edit_modules`: {e}")),
            }
        }
        report("ultraedit", cfg, problems)
    }

    fn missing_hint(field: &str, _: &Map<String, Value>) -> Option<String> {
        Some(format!("UltraEdit needs `{field}` ({})", Self::expected(field)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> ModelConfig {
        ModelConfig::from_json(&v, std::path::Path::new("c")).unwrap()
    }

    #[test]
    fn starting_points_are_the_published_modules_at_the_same_depth() {
        let gptj = cfg(json!({"model_type": "gptj", "n_embd": 8, "n_head": 2, "n_layer": 28, "vocab_size": 10, "n_positions": 4, "rotary_dim": 2}));
        let h: UltraEditHparams = serde_json::from_value(UltraEditHparams::starting_point(&gptj)).unwrap();
        let want: Vec<String> = (18..=26).map(|l| format!("transformer.h.{l}.mlp.fc_out")).collect();
        assert_eq!(h.edit_modules, want);
        assert_eq!((h.lr, h.batch_size, h.token, h.ridge), (1e-6, 10, Positions::Ans, 1.0));
        let llama = cfg(json!({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 32,
                               "intermediate_size": 16, "vocab_size": 10, "max_position_embeddings": 4}));
        let h: UltraEditHparams = serde_json::from_value(UltraEditHparams::starting_point(&llama)).unwrap();
        assert_eq!(h.edit_modules.first().map(String::as_str), Some("model.layers.11.mlp.gate_proj"));
        assert_eq!(h.edit_modules.last().map(String::as_str), Some("model.layers.24.mlp.up_proj"));
        assert_eq!(h.edit_modules.len(), 12);
        let small = cfg(json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 6, "vocab_size": 10, "n_positions": 4}));
        let h: UltraEditHparams = serde_json::from_value(UltraEditHparams::starting_point(&small)).unwrap();
        assert_eq!(h.edit_modules, ["transformer.h.4.mlp.c_proj", "transformer.h.5.mlp.c_proj"]);
        h.validate(&small).unwrap();
        let mut bad = h.clone();
        bad.edit_modules.push("transformer.h.9.mlp.c_proj".into());
        bad.edit_modules.push("transformer.h.4.mlp.c_proj".into());
        let e = bad.validate(&small).unwrap_err().to_string();
        assert!(e.contains("layer 9 does not exist") && e.contains("twice"), "{e}");
    }
}
