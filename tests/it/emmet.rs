//! EMMET against the reference code (zjunlp/EasyEdit, run by
//! `tests/fixtures/emmet/make_emmet_goldens.py`): three requests edited together at layers 1
//! and 2 of tiny-gpt2 and tiny-llama, with the fixtures' golden second moments as statistics
//! and fixed context templates; tiny-llama with `update_norm_lambda` 0.5.

use std::collections::BTreeMap;

use crate::common;

use candle_core::{DType, Device};
use common::{fixture, fixture_dir, golden, rel_diff};
use edit::editing::emmet::{Emmet, EmmetHparams};
use edit::editing::hparams::MethodConfig;
use edit::editing::method::{EditInputs, EditMethod};
use edit::editing::requests::parse_values;
use edit::linalg::{to_mat, LayerStats};
use edit::tokenizer::Tokenizer;
use serde_json::Value;

fn run(name: &str) {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir("emmet").join("goldens.json")).unwrap()).unwrap();
    let mut hp = g["hparams"][name].clone();
    hp["context_templates"] = g["context_templates"].clone();
    // The reference's rewriting prompts (a difference only where a SentencePiece decoder drops a
    // space: tiny-llama's " ice hockey" is "▁", "ice", "▁hockey").
    hp["decoded_target_prefix"] = true.into();
    let hp: EmmetHparams = serde_json::from_value(hp).unwrap();
    let mut lm = fixture(name);
    hp.validate(lm.model.config()).unwrap();
    let tok = Tokenizer::from_file(&fixture_dir(name).join("tokenizer.json")).unwrap();
    let requests = parse_values(g["requests"].as_array().unwrap(), "goldens").unwrap();
    // C as the reference holds it: Σkkᵀ / count, rounded to float32.
    let fx = golden(name);
    let count = f64::from(fx.tensor("mom2_count").to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0] as f32);
    let mut stats = BTreeMap::new();
    for &l in &hp.layers {
        let c = (fx.tensor(&format!("mom2_sum.{l}")).to_dtype(DType::F64).unwrap() / count).unwrap().to_dtype(DType::F32).unwrap();
        stats.insert(l, LayerStats::from_matrix(to_mat(&c).unwrap(), "C"));
    }
    let want = candle_core::safetensors::load(fixture_dir("emmet").join(format!("{name}-goldens.safetensors")), &Device::Cpu).unwrap();
    let method = Emmet { hp };
    let templates = method.context_templates(&*lm.model, &tok, 0).unwrap();
    let out = method.edit(&mut *lm.model, EditInputs { tok: &tok, requests: &requests, stats: &mut stats, templates: templates.as_ref() }).unwrap();
    assert_eq!(out.deltas.len(), 2);
    for (module, delta) in &out.deltas {
        let rel = rel_diff(delta, &want[&format!("delta.{module}")]);
        assert!(rel <= 1e-4, "{name} {module}: ΔW relative difference {rel}");
    }
}

#[test]
fn the_batched_update_matches_easyedit_on_gpt2() {
    run("tiny-gpt2");
}

#[test]
fn the_batched_update_matches_easyedit_on_llama() {
    run("tiny-llama");
}
