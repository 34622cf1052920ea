//! The fine-tuning objectives against Hugging Face transformers (`tests/fixtures/ft/`, written by
//! `make_ft_goldens.py`): the loss values and their gradients w.r.t. an MLP down-projection's
//! weight and bias, which become trainable through the model's named parameters.

mod common;

use candle_core::{Device, Var};
use common::{fixture, fixture_dir, rel_diff};
use edit::editing::ft_loss::{ft_loss, Objective};

#[test]
fn prompt_last_and_target_new_losses_and_gradients_match_transformers() {
    for name in ["tiny-gpt2", "tiny-gptj", "tiny-neox"] {
        let dir = fixture_dir("ft");
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let golden = candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu).unwrap();
        let module = meta["module"].as_str().unwrap();
        let requests = meta["requests"].as_array().unwrap();
        let texts: Vec<String> = requests.iter().map(|r| r["prompt"].as_str().unwrap().replacen("{}", r["subject"].as_str().unwrap(), 1)).collect();
        let targets: Vec<String> = requests.iter().map(|r| format!(" {}", r["target_new"].as_str().unwrap())).collect();
        for (key, objective) in [("prompt_last", Objective::PromptLast), ("target_new", Objective::TargetNew)] {
            let mut lm = fixture(name);
            // The module's weight and bias, as the reference selects them, made trainable.
            let params = lm.model.parameters_matching(module).unwrap();
            assert_eq!(params.len(), 2, "{name}: weight and bias of {module}");
            let vars: Vec<(String, Var)> = params.into_iter().map(|(n, t)| (n, Var::from_tensor(&t).unwrap())).collect();
            for (n, v) in &vars {
                lm.model.set_parameter(n, v.as_tensor()).unwrap();
            }
            let tok = lm.tokenizer().unwrap();
            let (unk, pad) = (tok.token_id("<|endoftext|>"), lm.pad_id());
            let loss = ft_loss(&*lm.model, tok, &texts, &targets, objective, pad, unk).unwrap();
            let got: f32 = loss.to_scalar().unwrap();
            let want = meta["losses"][key].as_f64().unwrap();
            assert!((f64::from(got) - want).abs() <= 1e-4 * want.abs(), "{name} {key}: loss {got} vs {want}");
            let grads = loss.backward().unwrap();
            for (n, v) in &vars {
                let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name} {key}: no gradient for {n}"));
                let rel = rel_diff(g, &golden[&format!("{key}.{n}")]);
                assert!(rel <= 1e-3, "{name} {key}: gradient of {n} off by {rel}");
            }
        }
    }
}
