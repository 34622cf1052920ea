//! MEND's building blocks on the tiny fixtures: the gradient factors captured at the hook
//! points give, summed as MEND sums them (Σ x δᵀ), exactly the gradient autograd computes for
//! the weight itself; rows after the last label carry no gradient and are dropped by the
//! hypernetwork.

mod common;

use candle_core::{DType, Tensor, Var};
use common::{fixture, rel_diff};
use edit::editing::mend::factors::{edit_batch, edit_factors};
use edit::editing::mend::network::pseudo_gradient;
use edit::editing::requests::parse_requests;
use edit::models::modules::{module, ModuleKind};
use edit::models::{Batch, ForwardOpts, Logits, NoHooks};

#[test]
fn factors_sum_to_the_weight_gradient() {
    let reqs = parse_requests(
        r#"[{"prompt": "{} was born in", "subject": "Alice Smith", "target_new": "the city of London"},
            {"prompt": "The mother tongue of {} is", "subject": "Bob", "target_new": "French"}]"#,
        "test",
    )
    .unwrap();
    for name in ["tiny-gpt2", "tiny-gptj", "tiny-neox"] {
        let mut lm = fixture(name);
        let tok = edit::tokenizer::Tokenizer::from_file(&common::fixture_dir(name).join("tokenizer.json")).unwrap();
        let pad = lm.pad_id();
        let cfg = lm.config().clone();
        let modules = vec![module(&cfg, 2, ModuleKind::MlpDown).unwrap(), module(&cfg, 2, ModuleKind::MlpUp).unwrap()];
        let (loss, factors) = edit_factors(&*lm.model, &tok, &reqs, &modules, pad).unwrap();
        assert!(loss.is_finite() && loss > 0.0);

        // Autograd on the weights themselves, the same loss written out here.
        let (seqs, labels) = edit_batch(&tok, &reqs).unwrap();
        let mut vars = Vec::new();
        for m in &modules {
            let w = lm.model.parameter(&format!("{}.weight", m.name)).unwrap();
            let v = Var::from_tensor(&w.to_dtype(DType::F32).unwrap()).unwrap();
            lm.model.set_parameter(&format!("{}.weight", m.name), v.as_tensor()).unwrap();
            vars.push(v);
        }
        let batch = Batch::from_sequences(&seqs, pad, lm.model.device()).unwrap();
        let opts = ForwardOpts { logits: Logits::All, differentiable: true, ..ForwardOpts::default() };
        let logits = lm.model.forward_hooked(&batch, &opts, &mut NoHooks).unwrap().unwrap();
        let mut terms = Vec::new();
        for (row, (ids, range)) in seqs.iter().zip(&labels).enumerate() {
            let lp = candle_nn::ops::log_softmax(&logits.get(row).unwrap(), 1).unwrap();
            for p in range.clone() {
                terms.push(lp.get(p - 1).unwrap().get(ids[p] as usize).unwrap());
            }
        }
        let reference = (Tensor::stack(&terms, 0).unwrap().mean_all().unwrap() * -1.0).unwrap();
        assert!((f64::from(reference.to_scalar::<f32>().unwrap()) - loss).abs() < 1e-5, "{name}: the same loss");
        let grads = reference.backward().unwrap();
        for ((m, f), v) in modules.iter().zip(&factors).zip(&vars) {
            // Σ x δᵀ is [in, out]; the stored weight is [in, out] (Conv1D) or [out, in].
            let g = pseudo_gradient(&f.x, &f.delta).unwrap();
            let g = match m.layout {
                edit::models::modules::WeightLayout::InOut => g,
                edit::models::modules::WeightLayout::OutIn => g.t().unwrap().contiguous().unwrap(),
            };
            let want = grads.get(v.as_tensor()).unwrap();
            let rel = rel_diff(&g, want);
            assert!(rel <= 1e-4, "{name} {}: Σ x δᵀ vs ∂L/∂W relative difference {rel}", m.name);
            // Rows after a sequence's last label (and pads) have no gradient.
            let zero_rows = f.delta.abs().unwrap().sum(1).unwrap().eq(0f32).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            let longest = seqs.iter().map(Vec::len).max().unwrap();
            let pads: usize = seqs.iter().map(|s| longest - s.len()).sum();
            assert!(zero_rows as usize >= pads, "{name}: pads carry no gradient");
        }
    }
}
