//! EMMET's hyperparameters (zjunlp/EasyEdit `hparams/EMMET/*.yaml`, `EMMETHyperParams`): MEMIT's
//! fields plus the equality-constrained solve's two regularisers.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::ModelConfig;
use crate::editing::hparams::locate::{check_final_loss_layer, check_number, common_expected, report, Common, COMMON_FIELDS};
use crate::editing::hparams::MethodConfig;
use crate::editing::memit::MemitHparams;
use crate::editing::registry::Method;
use crate::error::Result;

fn tenth() -> f64 {
    0.1
}

/// EMMET hyperparameters, field for field EasyEdit's files (plus the field marked "ours").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmmetHparams {
    #[serde(flatten)]
    pub common: Common,
    /// The covariance's weight, as MEMIT's λ: C' = mom2_update_weight·C (+ update_norm_lambda·I).
    pub mom2_update_weight: f64,
    /// Added to the edits' n×n system Kᵀ C'⁻¹ K against ill-conditioning (EasyEdit: 0.1).
    #[serde(default = "tenth")]
    pub emmet_lambda: f64,
    /// Added to C' as a multiple of the identity (EasyEdit: 0).
    #[serde(default)]
    pub update_norm_lambda: f64,
    /// In the reference files, unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_selection: Option<String>,
    /// In the reference files, unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mom2_adjustment: Option<bool>,
    /// Ours: z vectors optimised together (as MEMIT's).
    #[serde(default)]
    pub z_batch_size: usize,
}

impl std::ops::Deref for EmmetHparams {
    type Target = Common;
    fn deref(&self) -> &Common {
        &self.common
    }
}

impl EmmetHparams {
    /// The z batch size on `device`, as MEMIT's.
    pub fn z_batch(&self, device: &candle_core::Device) -> usize {
        crate::editing::memit::hparams::z_batch(self.z_batch_size, device)
    }
}

const OWN_FIELDS: &[&str] = &["mom2_update_weight", "emmet_lambda", "update_norm_lambda", "layer_selection", "mom2_adjustment", "z_batch_size"];

impl MethodConfig for EmmetHparams {
    const METHOD: Method = Method::Emmet;

    fn fields() -> Vec<&'static str> {
        COMMON_FIELDS.iter().chain(OWN_FIELDS).copied().collect()
    }

    fn expected(field: &str) -> &'static str {
        match field {
            "mom2_update_weight" | "emmet_lambda" | "update_norm_lambda" => "a number",
            "mom2_adjustment" => "true or false",
            "z_batch_size" => "a non-negative integer",
            f => common_expected(f).unwrap_or("a string"),
        }
    }

    /// MEMIT's starting point with EasyEdit's EMMET regularisers.
    fn starting_point(cfg: &ModelConfig) -> Value {
        let mut v = MemitHparams::starting_point(cfg);
        let m = v.as_object_mut().expect("object");
        m.insert("emmet_lambda".into(), json!(0.1));
        m.insert("update_norm_lambda".into(), json!(0));
        v
    }

    fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let mut problems = Vec::new();
        self.common.check(cfg, &mut problems)?;
        check_final_loss_layer(self.v_loss_layer, cfg, &mut problems);
        check_number("mom2_update_weight", self.mom2_update_weight, true, &mut problems);
        check_number("emmet_lambda", self.emmet_lambda, false, &mut problems);
        check_number("update_norm_lambda", self.update_norm_lambda, false, &mut problems);
        report("emmet", cfg, problems)
    }

    fn missing_hint(field: &str, _: &Map<String, Value>) -> Option<String> {
        (field == "mom2_update_weight")
            .then(|| "EMMET needs `mom2_update_weight` (the covariance's weight; EasyEdit's files use 10000-100000): --set mom2_update_weight=10000".into())
    }
}
