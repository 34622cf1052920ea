//! MEMIT's hyperparameters: the shared locate-then-edit fields plus MEMIT's own.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::editing::hparams::locate::{
    check_final_loss_layer, check_number, common_expected, common_starting_point, report, scaled_layer, Common, COMMON_FIELDS,
};
use crate::editing::hparams::MethodConfig;
use crate::editing::registry::Method;
use crate::error::Result;

/// How MEMIT solves for its update (the same solution either way, up to rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// The cheaper of the two forms below for the batch: push-through while there are fewer
    /// edits than key dimensions (its inner system is n×n), else the d_ff×d_ff system by Cholesky.
    #[default]
    Auto,
    /// Solve the n×n system in the keys' span (push-through identity); fast for few edits.
    PushThrough,
    /// The reference's `solve(λC + KKᵀ, K)` on the d_ff×d_ff system (LU, as `torch.linalg.solve`).
    Direct,
}

/// MEMIT hyperparameters, field for field the reference's `hparams/MEMIT/*.json` (plus the
/// fields marked "ours").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemitHparams {
    #[serde(flatten)]
    pub common: Common,
    /// λ, the covariance's weight in the solve.
    pub mom2_update_weight: f64,
    /// In the reference files, unused (as in the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_selection: Option<String>,
    /// In the reference files, ignored by MEMIT (as in the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mom2_adjustment: Option<bool>,
    /// Ours: how many requests' target vectors are optimised together (1 = serial, as the
    /// reference; 0 = automatic, see [`MemitHparams::z_batch`]).
    #[serde(default)]
    pub z_batch_size: usize,
    /// Ours: how the update is solved.
    #[serde(default)]
    pub solver: Solver,
}

impl std::ops::Deref for MemitHparams {
    type Target = Common;
    fn deref(&self) -> &Common {
        &self.common
    }
}

impl std::ops::DerefMut for MemitHparams {
    fn deref_mut(&mut self) -> &mut Common {
        &mut self.common
    }
}

impl MemitHparams {
    /// The z batch size to use on `device`: `z_batch_size`, or when 0, one request at a time on
    /// the CPU (measured: batching only adds padding there, `benches/README.md`) and 32 on a GPU.
    pub fn z_batch(&self, device: &candle_core::Device) -> usize {
        z_batch(self.z_batch_size, device)
    }
}

/// A config's `z_batch_size` on `device`: as given, or when 0 one request at a time on the CPU
/// and 32 on a GPU (MEMIT's and AlphaEdit's).
pub fn z_batch(size: usize, device: &candle_core::Device) -> usize {
    match size {
        0 if device.is_cpu() => 1,
        0 => 32,
        n => n,
    }
}

const OWN_FIELDS: &[&str] = &["mom2_update_weight", "layer_selection", "mom2_adjustment", "z_batch_size", "solver"];

impl MethodConfig for MemitHparams {
    const METHOD: Method = Method::Memit;

    fn fields() -> Vec<&'static str> {
        COMMON_FIELDS.iter().chain(OWN_FIELDS).copied().collect()
    }

    fn expected(field: &str) -> &'static str {
        match field {
            "mom2_update_weight" => "a number",
            "mom2_adjustment" => "true or false",
            "z_batch_size" => "a non-negative integer",
            "solver" => "\"auto\", \"push_through\" or \"direct\"",
            f => common_expected(f).unwrap_or("a string"),
        }
    }

    /// The layers at the relative depth of GPT-J's 3..=8 of 28, 25 steps, clamp 0.75, λ 15000.
    fn starting_point(cfg: &ModelConfig) -> Value {
        let mut v = common_starting_point(cfg);
        let m = v.as_object_mut().expect("object");
        let (first, last) = (scaled_layer(cfg, 3.0, 28.0), scaled_layer(cfg, 8.0, 28.0));
        m.insert("layers".into(), json!((first..=last.max(first)).collect::<Vec<_>>()));
        m.insert("v_num_grad_steps".into(), json!(25));
        m.insert("clamp_norm_factor".into(), json!(0.75));
        m.insert("mom2_update_weight".into(), json!(15000));
        m.insert("mom2_adjustment".into(), json!(true));
        m.insert("layer_selection".into(), json!("all"));
        v
    }

    fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let mut problems = Vec::new();
        self.common.check(cfg, &mut problems)?;
        check_final_loss_layer(self.v_loss_layer, cfg, &mut problems);
        check_number("mom2_update_weight", self.mom2_update_weight, true, &mut problems);
        report("memit", cfg, problems)
    }

    fn missing_hint(field: &str, given: &Map<String, Value>) -> Option<String> {
        (field == "mom2_update_weight").then(|| {
            format!(
                "MEMIT needs `mom2_update_weight` (λ, the covariance's weight; the reference uses 15000-20000){}: --set \
                 mom2_update_weight=15000",
                if given.contains_key("context_template_length_params") { "; this looks like a ROME config" } else { "" }
            )
        })
    }
}
