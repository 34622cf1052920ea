//! AlphaEdit's hyperparameters (jianghoucheng/AlphaEdit `hparams/AlphaEdit/*.json`): MEMIT's
//! fields plus the null space's threshold and the solve's regulariser.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::editing::hparams::locate::{check_final_loss_layer, check_number, common_expected, report, Common, COMMON_FIELDS};
use crate::editing::hparams::MethodConfig;
use crate::editing::memit::MemitHparams;
use crate::editing::registry::Method;
use crate::error::Result;

/// How the projected update is solved (the same solution either way, up to rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlphaSolver {
    /// The reference's `solve(P(KKᵀ + K_pK_pᵀ) + L2·I, P K Rᵀ)`: the d_ff×d_ff system by LU.
    #[default]
    Direct,
    /// The same solution in the null space's basis U (P = U Uᵀ): the r×r symmetric positive
    /// definite system `(Uᵀ(KKᵀ + K_pK_pᵀ)U + L2·I) Y = Uᵀ K Rᵀ`, X = U Y, by Cholesky; cheaper
    /// when the null space is small.
    Reduced,
}

/// AlphaEdit hyperparameters, field for field the reference's files (plus the fields marked
/// "ours").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlphaEditHparams {
    #[serde(flatten)]
    pub common: Common,
    /// The preserved knowledge's null space: the eigenvectors of C = E[kkᵀ] whose eigenvalues
    /// are below this (the reference: 2e-2).
    pub nullspace_threshold: f64,
    /// The solve's regulariser (the reference: 10).
    #[serde(rename = "L2")]
    pub l2: f64,
    /// In the reference files, unused by AlphaEdit (MEMIT's λ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mom2_update_weight: Option<f64>,
    /// In the reference files, unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_selection: Option<String>,
    /// In the reference files, unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mom2_adjustment: Option<bool>,
    /// Ours: z vectors optimised together (as MEMIT's).
    #[serde(default)]
    pub z_batch_size: usize,
    /// Ours: how the update is solved.
    #[serde(default)]
    pub solver: AlphaSolver,
}

impl std::ops::Deref for AlphaEditHparams {
    type Target = Common;
    fn deref(&self) -> &Common {
        &self.common
    }
}

impl AlphaEditHparams {
    /// The z batch size on `device`, as MEMIT's.
    pub fn z_batch(&self, device: &candle_core::Device) -> usize {
        crate::editing::memit::hparams::z_batch(self.z_batch_size, device)
    }
}

const OWN_FIELDS: &[&str] = &["nullspace_threshold", "L2", "mom2_update_weight", "layer_selection", "mom2_adjustment", "z_batch_size", "solver"];

impl MethodConfig for AlphaEditHparams {
    const METHOD: Method = Method::AlphaEdit;

    fn fields() -> Vec<&'static str> {
        COMMON_FIELDS.iter().chain(OWN_FIELDS).copied().collect()
    }

    fn expected(field: &str) -> &'static str {
        match field {
            "nullspace_threshold" | "L2" | "mom2_update_weight" => "a number",
            "mom2_adjustment" => "true or false",
            "z_batch_size" => "a non-negative integer",
            "solver" => "\"direct\" or \"reduced\"",
            f => common_expected(f).unwrap_or("a string"),
        }
    }

    /// MEMIT's starting point (the relative depth of GPT-J's layers 3-8) with the reference's
    /// threshold and regulariser.
    fn starting_point(cfg: &ModelConfig) -> Value {
        let mut v = MemitHparams::starting_point(cfg);
        let m = v.as_object_mut().expect("object");
        m.insert("nullspace_threshold".into(), json!(2e-2));
        m.insert("L2".into(), json!(10));
        v
    }

    fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let mut problems = Vec::new();
        self.common.check(cfg, &mut problems)?;
        check_final_loss_layer(self.v_loss_layer, cfg, &mut problems);
        check_number("nullspace_threshold", self.nullspace_threshold, true, &mut problems);
        check_number("L2", self.l2, true, &mut problems);
        report("alphaedit", cfg, problems)
    }

    fn missing_hint(field: &str, given: &Map<String, Value>) -> Option<String> {
        let memit = given.contains_key("mom2_update_weight");
        match field {
            "nullspace_threshold" => Some(format!(
                "AlphaEdit needs `nullspace_threshold` (the eigenvalues of C below it span the preserved knowledge's null space; the reference uses 0.02){}: --set nullspace_threshold=0.02",
                if memit { "; this looks like a MEMIT config" } else { "" }
            )),
            "L2" => Some("AlphaEdit needs `L2` (the solve's regulariser; the reference uses 10): --set L2=10".into()),
            _ => None,
        }
    }
}
