//! The fine-tuning objectives against Hugging Face transformers (`tests/fixtures/ft/`, written by
//! `make_ft_goldens.py`): the loss values and their gradients w.r.t. an MLP down-projection's
//! weight and bias, which become trainable through the model's named parameters.

use crate::common;

use candle_core::{Device, Var};
use common::{fixture, fixture_dir, rel_diff};
use edit::editing::ft::loss::{ft_loss, Objective};

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
            let unk = tok.token_id("<|endoftext|>");
            let loss = ft_loss(&*lm.model, tok, &texts, &targets, objective, unk).unwrap();
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

mod fact {
    use super::common::{fixture, fixture_dir};
    use candle_core::{DType, Tensor};
    use edit::editing::ft::loss::Objective;
    use edit::editing::ft::{fine_tune, FtParams};
    use edit::editing::requests::{read_requests, Request};
    use edit::eval::{case_success, score_pairs, CaseSuccess};
    use edit::LoadedModel;

    /// `hparams/FT_constr*.json` of the fixture (the reference's FT-L files), batch size 64 (M's default).
    fn params(eps: Option<f64>) -> FtParams {
        FtParams {
            layers: vec![0],
            rewrite_module_tmp: "transformer.h.{}.mlp.c_proj".into(),
            num_steps: 25,
            lr: 5e-4,
            weight_decay: 0.0,
            norm_constraint: eps,
            batch_size: 64,
            objective: Objective::PromptLast,
        }
    }

    /// The fixture's tokenizer on its own (the loaded model's is borrowed with the model).
    fn tokenizer() -> edit::tokenizer::Tokenizer {
        edit::tokenizer::Tokenizer::from_file(&fixture_dir("fact-gpt2").join("tokenizer.json")).unwrap()
    }

    fn cases(n: usize) -> Vec<Request> {
        let mut all = read_requests(&fixture_dir("fact-gpt2").join("cases.json")).unwrap();
        all.truncate(n);
        all
    }

    fn score(lm: &LoadedModel, r: &Request) -> CaseSuccess {
        let tok = lm.tokenizer().unwrap();
        let tt = r.target_true.clone().unwrap();
        let s = |p: &[String]| score_pairs(&*lm.model, tok, p, &r.target_new, &tt).unwrap();
        case_success(&s(&[r.filled_prompt()]), &s(&r.paraphrase_prompts), &s(&r.neighborhood_prompts))
    }

    fn add(lm: &mut LoadedModel, deltas: &std::collections::BTreeMap<String, Tensor>, sign: f64) {
        for (n, d) in deltas {
            let cur = lm.model.parameters_matching(n).unwrap().into_iter().find(|(m, _)| m == n).unwrap().1;
            lm.model.set_parameter(n, &(cur + d.affine(sign, 0.0).unwrap()).unwrap()).unwrap();
        }
    }

    /// One edit at a time, weights restored between cases, as REFERENCE.md was run.
    fn run(eps: Option<f64>, n: usize) -> (f64, f64, f64, f64) {
        let started = std::time::Instant::now();
        let mut lm = fixture("fact-gpt2");
        let tok = tokenizer();
        let mut sums = (0.0, 0.0, 0.0);
        let mut max_delta = 0f64;
        for r in cases(n) {
            let out = fine_tune(&mut *lm.model, &tok, std::slice::from_ref(&r), &params(eps)).unwrap();
            for d in out.deltas.values() {
                max_delta = max_delta.max(f64::from(d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()));
            }
            add(&mut lm, &out.deltas, 1.0);
            let s = score(&lm, &r);
            add(&mut lm, &out.deltas, -1.0);
            sums = (sums.0 + s.rewrite, sums.1 + s.paraphrase, sums.2 + s.neighborhood);
        }
        let k = 100.0 / n as f64;
        eprintln!("{n} edits (and their scoring) in {:.1?}", started.elapsed());
        (sums.0 * k, sums.1 * k, sums.2 * k, max_delta)
    }

    fn n_cases(default: usize) -> usize {
        std::env::var("EDIT_FACT_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
    }

    #[test]
    fn ft_l_meets_the_reference_scores_and_keeps_its_bound() {
        let n = n_cases(20);
        // REFERENCE.md, FT-L ε = 5e-3, 500 cases: ES 100.0, PS 98.5, NS 93.9.
        let (es, ps, ns, max_delta) = run(Some(5e-3), n);
        eprintln!("FT-L ε=5e-3, {n} cases: ES {es:.1} PS {ps:.1} NS {ns:.1}, max |Δ| {max_delta:.3e}");
        assert!(es >= 99.0 && ps >= 90.0 && ns >= 85.0, "ES {es} PS {ps} NS {ns}");
        assert!(max_delta <= 5e-3 * (1.0 + 1e-5), "the L∞ bound holds: {max_delta}");
        // ε = 5e-4 barely moves the model (reference: ES 0.2, PS 0.0, NS 100.0).
        let n2 = if n >= 100 { n } else { 10 };
        let (es, ps, ns, max_delta) = run(Some(5e-4), n2);
        eprintln!("FT-L ε=5e-4, {n2} cases: ES {es:.1} PS {ps:.1} NS {ns:.1}, max |Δ| {max_delta:.3e}");
        assert!(es <= 10.0 && ns >= 95.0, "ES {es} PS {ps} NS {ns}");
        assert!(max_delta <= 5e-4 * (1.0 + 1e-5) && max_delta > 4e-4, "{max_delta}");
    }

    #[test]
    fn a_batch_weight_decay_and_the_untouched_model() {
        let mut lm = fixture("fact-gpt2");
        let pad = lm.pad_id();
        let probe = |lm: &LoadedModel| -> Vec<f32> {
            let ids = lm.tokenizer().unwrap().encode("The native language of Alon Javberg is").unwrap();
            let b = edit::Batch::from_sequences(&[ids], pad, lm.model.device()).unwrap();
            let l = lm.model.forward(&b, &edit::TraceSpec::logits(edit::Logits::Last), &[]).unwrap().logits.unwrap();
            l.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let before = probe(&lm);
        let reqs = cases(10);
        let tok = tokenizer();
        let mut p = params(None);
        p.num_steps = 5;
        let plain = fine_tune(&mut *lm.model, &tok, &reqs, &p).unwrap();
        assert_eq!(probe(&lm), before, "the model is restored exactly");
        assert_eq!(plain.deltas.keys().collect::<Vec<_>>(), ["transformer.h.0.mlp.c_proj.bias", "transformer.h.0.mlp.c_proj.weight"]);
        assert!(plain.epochs.last().unwrap().loss < plain.epochs[0].loss, "the batch's loss falls: {:?}", plain.epochs);
        p.weight_decay = 0.5;
        let decayed = fine_tune(&mut *lm.model, &tok, &reqs, &p).unwrap();
        let w = "transformer.h.0.mlp.c_proj.weight";
        let diff = (&plain.deltas[w] - &decayed.deltas[w]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff > 1e-6, "weight decay changes the result");
        // A pattern that matches nothing is bad input.
        p.rewrite_module_tmp = "transformer.h.{}.mlp.nope".into();
        assert!(fine_tune(&mut *lm.model, &tok, &reqs, &p).unwrap_err().to_string().contains("matches no parameter"));
    }
}
