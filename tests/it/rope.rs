//! RoPE inverse frequencies against transformers' own (`tests/fixtures/rope-golden.json`, made by
//! `tests/fixtures/make_tiny_families.py`): every `rope_type` edit reads, each config read
//! through `config.json` parsing as a user's file would be.

use crate::common;

use edit::ModelConfig;
use serde_json::{json, Value};

#[test]
fn inverse_frequencies_match_transformers() {
    let text = std::fs::read_to_string(common::fixture_dir("rope-golden.json")).unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let c = &case["config"];
        let head_dim = c["head_dim"].as_u64().unwrap();
        let config = json!({"model_type": "llama", "hidden_size": head_dim * 4, "num_attention_heads": 4, "head_dim": head_dim,
            "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 100,
            "max_position_embeddings": c["max_position_embeddings"], "rope_parameters": c["rope_parameters"]});
        let cfg = ModelConfig::from_json(&config, std::path::Path::new(name)).unwrap();
        let rot = cfg.rotary.unwrap();
        let seq_len = case.get("seq_len").and_then(Value::as_u64).map_or(cfg.n_ctx, |n| n as usize);
        let got = rot.inv_freq(seq_len);
        let want: Vec<f64> = case["inv_freq"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let rel = (f64::from(*g) - w).abs() / w.abs();
            assert!(rel < 2e-6, "{name}: inv_freq[{i}] = {g}, transformers {w} (relative {rel:e})");
        }
        assert_eq!(case["attention_scaling"].as_f64(), Some(1.0), "{name}: edit applies no attention scaling");
    }
}
