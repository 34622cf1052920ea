//! Every model family against golden tensors computed by Hugging Face transformers (an
//! independent implementation) on the bundled tiny checkpoints.

use crate::common;

use candle_core::{DType, Device, Tensor, Var};
use common::{fixture, golden, max_abs_diff, rel_diff, Golden, TINY};
use edit::models::{backprop_per_block, first_positions, shift_positions, ResumeCache};
use edit::{Batch, Intervention, Logits, Site, TraceSpec};

const FAMILIES: [&str; 9] = TINY;

fn golden_batch(g: &Golden) -> Batch {
    let ids: Vec<u32> = g.tensor("input_ids").to_dtype(DType::U32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mask: Vec<u8> = g.tensor("attention_mask").to_dtype(DType::U8).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    Batch::from_ids_and_mask(&ids, &mask, g.prompts().len(), &Device::Cpu).unwrap()
}

/// Keeps only the real (unpadded) positions of a `[b, t, ...]` tensor, one tensor per row.
fn real_rows(t: &Tensor, lengths: &[usize]) -> Vec<Tensor> {
    lengths.iter().enumerate().map(|(r, &n)| t.get(r).unwrap().narrow(0, 0, n).unwrap()).collect()
}

fn all_layers_spec(n_layer: usize, differentiable: bool) -> TraceSpec {
    TraceSpec {
        keys: (0..n_layer).collect(),
        mlp_out: (0..n_layer).collect(),
        block_out: (0..n_layer).collect(),
        logits: Logits::All,
        differentiable,
        ..TraceSpec::default()
    }
}

#[test]
fn activations_and_logits_match_transformers() {
    for name in FAMILIES {
        for differentiable in [false, true] {
            let lm = fixture(name);
            let g = golden(name);
            let batch = golden_batch(&g);
            let n_layer = lm.config().n_layer;
            let trace = lm.model.forward(&batch, &all_layers_spec(n_layer, differentiable), &[]).unwrap();
            for l in 0..n_layer {
                for (what, got) in [("key", &trace.keys[&l]), ("mlp_out", &trace.mlp_out[&l]), ("block_out", &trace.block_out[&l])] {
                    let want = g.tensor(&format!("{what}.{l}"));
                    for (r, (a, b)) in real_rows(got, batch.lengths()).iter().zip(real_rows(&want, batch.lengths())).enumerate() {
                        let d = max_abs_diff(a, &b);
                        assert!(d <= 1e-4, "{name} {what}.{l} row {r}: max abs diff {d} (differentiable={differentiable})");
                    }
                }
            }
            let logits = trace.logits.unwrap();
            // Last-token logits.
            let want_last = g.tensor("last_logits");
            for (r, &n) in batch.lengths().iter().enumerate() {
                let got = logits.get(r).unwrap().get(n - 1).unwrap();
                let d = max_abs_diff(&got, &want_last.get(r).unwrap());
                assert!(d <= 1e-4, "{name} last_logits row {r}: {d}");
            }
            // Teacher-forced next-token log-probs.
            let logp = candle_nn::ops::log_softmax(&logits, 2).unwrap();
            let ids: Vec<Vec<u32>> = batch.input_ids().to_vec2().unwrap();
            let want: Vec<Vec<f32>> = g.tensor("next_token_logprob").to_vec2().unwrap();
            for (r, &n) in batch.lengths().iter().enumerate() {
                for p in 0..n - 1 {
                    let got: f32 = logp.get(r).unwrap().get(p).unwrap().get(ids[r][p + 1] as usize).unwrap().to_scalar().unwrap();
                    assert!((got - want[r][p]).abs() <= 1e-4, "{name} logprob row {r} pos {p}: {got} vs {}", want[r][p]);
                }
            }
        }
    }
}

#[test]
fn last_logits_option_matches_full_logits() {
    for name in FAMILIES {
        let lm = fixture(name);
        let g = golden(name);
        let batch = golden_batch(&g);
        let last = lm.model.forward(&batch, &TraceSpec::logits(Logits::Last), &[]).unwrap().logits.unwrap();
        let d = max_abs_diff(&last, &g.tensor("last_logits"));
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

#[test]
fn padded_batch_equals_each_prompt_alone() {
    for name in FAMILIES {
        let lm = fixture(name);
        let g = golden(name);
        let batch = golden_batch(&g);
        let n_layer = lm.config().n_layer;
        let spec = all_layers_spec(n_layer, false);
        let together = lm.model.forward(&batch, &spec, &[]).unwrap();
        for (r, p) in g.prompts().iter().enumerate() {
            let alone = Batch::from_sequences(std::slice::from_ref(&p.input_ids), 0, &Device::Cpu).unwrap();
            let single = lm.model.forward(&alone, &spec, &[]).unwrap();
            let n = p.input_ids.len();
            for l in 0..n_layer {
                let a = together.block_out[&l].get(r).unwrap().narrow(0, 0, n).unwrap();
                let b = single.block_out[&l].get(0).unwrap();
                assert!(max_abs_diff(&a, &b) <= 1e-5, "{name} block_out.{l} row {r}");
                let a = together.keys[&l].get(r).unwrap().narrow(0, 0, n).unwrap();
                let b = single.keys[&l].get(0).unwrap();
                assert!(max_abs_diff(&a, &b) <= 1e-5, "{name} key.{l} row {r}");
            }
            let a = together.logits.as_ref().unwrap().get(r).unwrap().narrow(0, 0, n).unwrap();
            let b = single.logits.unwrap().get(0).unwrap();
            assert!(max_abs_diff(&a, &b) <= 1e-5, "{name} logits row {r}");
        }
    }
}

/// The target's ids as they follow prompt 0, by the tokenizer's rule, checked against the
/// goldens' own where they record them (and the prompt's ids against the model input).
fn golden_target(lm: &edit::LoadedModel, p: &common::GoldenPrompt) -> Vec<u32> {
    let tok = lm.tokenizer().unwrap();
    assert_eq!(tok.encode_input(&p.text).unwrap(), p.input_ids, "{}: the model input", p.text);
    let target = tok.continuation(&p.text, &p.target).unwrap();
    if let Some(want) = &p.target_ids {
        assert_eq!(&target, want, "{}: the target's ids", p.text);
    }
    target
}

/// How [`intervention_grad`] runs its forward.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// One forward from the embeddings.
    Whole,
    /// The layers up to the intervention once without it, then a forward continuing from the
    /// saved block output with the vector added there (for `MlpOut` too: it joins the residual
    /// stream unchanged), as the v*/z optimisations do after their first step.
    Resumed,
    /// As `Resumed`, computing only the positions from the intervention's on, over the cached
    /// keys and values of the earlier ones.
    ResumedSuffix,
    /// As `ResumedSuffix`, backpropagating one block at a time (`backprop_per_block`).
    PerBlock,
}

/// The golden gradient: d(mean target NLL)/d(vector added at `site` of `layer`, prompt 0's
/// subject-last token), on prompt 0 followed by all target tokens but the last.
fn intervention_grad(name: &str, key: &str, site: Site, run: Run) {
    let lm = fixture(name);
    let g = golden(name);
    let info = g.gradient(key);
    let p0 = &g.prompts()[0];
    let target = golden_target(&lm, p0);
    let mut ids = p0.input_ids.clone();
    ids.extend_from_slice(&target[..target.len() - 1]);
    let mut batch = Batch::from_sequences(&[ids], 0, &Device::Cpu).unwrap();
    let d = lm.config().d_model;
    let delta = Var::zeros(d, DType::F32, &Device::Cpu).unwrap();
    let n_prompt = p0.input_ids.len();
    let mut read: Vec<(usize, usize)> = (0..target.len()).map(|j| (0, n_prompt - 1 + j)).collect();
    let mut at = vec![(0, info.position)];
    let mut spec = TraceSpec::logits(Logits::At(read.clone()));
    let mut site = site;
    // Gemma norms the MLP output before the residual sum: a vector added there is resumed from
    // the block below, still at the MLP output.
    let resume_at_mlp = site == Site::MlpOut && !lm.config().mlp_out_joins_residual();
    let after = if resume_at_mlp { info.layer - 1 } else { info.layer };
    if run != Run::Whole {
        let mut first = TraceSpec { stop_after: (run == Run::Resumed).then_some(info.layer), ..Default::default() };
        ResumeCache::request(&mut first, after, lm.config().n_layer);
        let cache = ResumeCache::from_trace(&lm.model.forward(&batch, &first, &[]).unwrap(), after).unwrap();
        let offsets = if run == Run::Resumed { vec![0] } else { first_positions(&batch, &[at.as_slice(), read.as_slice()].concat()) };
        assert!(run != Run::PerBlock || lm.config().n_layer - after > 2, "{name}: the test must cross two blocks");
        assert!(run == Run::Resumed || offsets[0] > 0, "{name}: the test must skip some positions");
        let (short, mut resume) = cache.resume(&batch, &[0], &offsets).unwrap();
        if run == Run::Resumed {
            resume.prefix = None;
        }
        read = shift_positions(&read, &offsets);
        at = shift_positions(&at, &offsets);
        spec = TraceSpec { logits: Logits::At(read.clone()), resume: Some(resume), ..Default::default() };
        batch = short;
        if !resume_at_mlp {
            site = Site::BlockOut;
        }
    }
    let iv = Intervention { layer: info.layer, site, positions: at, deltas: delta.as_tensor().clone() };
    let loss_of = |t: &edit::models::Trace| -> edit::Result<Tensor> {
        let logp = candle_nn::ops::log_softmax(t.logits.as_ref().unwrap(), 1)?;
        let terms: Vec<Tensor> = target.iter().enumerate().map(|(j, &tid)| logp.get(j).unwrap().get(tid as usize).unwrap()).collect();
        Ok((Tensor::stack(&terms, 0)?.mean_all()? * -1.0)?)
    };
    let grads = if run == Run::PerBlock {
        // The block outputs from a forward without a graph, then the blocks one at a time.
        let mut record = spec.clone();
        record.block_out.extend(after + 1..lm.config().n_layer - 1);
        let plain = Intervention { deltas: delta.as_tensor().detach(), ..iv.clone() };
        let recorded = lm.model.forward(&batch, &record, &[plain]).unwrap();
        let loss_value: f32 = loss_of(&recorded).unwrap().to_scalar().unwrap();
        assert!((loss_value as f64 - info.loss_value).abs() <= 1e-4 * info.loss_value.abs().max(1.0), "{name} {key}: loss {loss_value} vs {}", info.loss_value);
        let resume = spec.resume.as_ref().unwrap();
        backprop_per_block(&*lm.model, &batch, resume, &spec.logits, &[iv], &recorded.block_out, &loss_of).unwrap()
    } else {
        let loss = loss_of(&lm.model.forward(&batch, &spec, &[iv]).unwrap()).unwrap();
        let loss_value: f32 = loss.to_scalar().unwrap();
        assert!((loss_value as f64 - info.loss_value).abs() <= 1e-4 * info.loss_value.abs().max(1.0), "{name} {key}: loss {loss_value} vs {}", info.loss_value);
        loss.backward().unwrap()
    };
    let got = grads.get(delta.as_tensor()).expect("gradient must reach the intervention vector");
    let want = g.tensor(key);
    let rel = rel_diff(got, &want);
    assert!(rel <= 1e-3, "{name} {key}: relative error {rel}");
}

#[test]
fn mlp_out_intervention_gradients_match_transformers() {
    for name in FAMILIES {
        intervention_grad(name, "grad_mlp_out.1", Site::MlpOut, Run::Whole);
    }
}

#[test]
fn resumed_forward_gives_the_same_loss_and_gradients() {
    for name in FAMILIES {
        for run in [Run::Resumed, Run::ResumedSuffix] {
            intervention_grad(name, "grad_mlp_out.1", Site::MlpOut, run);
            intervention_grad(name, "grad_block_out.2", Site::BlockOut, run);
        }
    }
}

#[test]
fn per_block_backpropagation_gives_transformers_gradients() {
    for name in FAMILIES {
        intervention_grad(name, "grad_mlp_out.1", Site::MlpOut, Run::PerBlock);
    }
}

/// Rows resumed after layer 0 from different offsets (padding too): every later block output and
/// next-token log-prob at the recomputed positions is transformers' at the original position.
#[test]
fn resumed_suffix_forward_matches_transformers_at_its_positions() {
    for name in FAMILIES {
        for differentiable in [false, true] {
            let lm = fixture(name);
            let g = golden(name);
            let batch = golden_batch(&g);
            let n_layer = lm.config().n_layer;
            let mut first = TraceSpec::default();
            ResumeCache::request(&mut first, 0, n_layer);
            let cache = ResumeCache::from_trace(&lm.model.forward(&batch, &first, &[]).unwrap(), 0).unwrap();
            let offsets: Vec<usize> = batch.lengths().iter().enumerate().map(|(r, &n)| (r + 1).min(n - 1)).collect();
            let rows: Vec<usize> = (0..batch.batch_size()).collect();
            let (short, resume) = cache.resume(&batch, &rows, &offsets).unwrap();
            let spec = TraceSpec { block_out: (1..n_layer).collect(), logits: Logits::All, differentiable, resume: Some(resume), ..Default::default() };
            let trace = lm.model.forward(&short, &spec, &[]).unwrap();
            for l in 1..n_layer {
                let want = g.tensor(&format!("block_out.{l}"));
                for (r, (&o, &n)) in offsets.iter().zip(batch.lengths()).enumerate() {
                    let got = trace.block_out[&l].get(r).unwrap().narrow(0, 0, n - o).unwrap();
                    let d = max_abs_diff(&got, &want.get(r).unwrap().narrow(0, o, n - o).unwrap());
                    assert!(d <= 1e-4, "{name} block_out.{l} row {r} from {o}: {d} (differentiable={differentiable})");
                }
            }
            let logp = candle_nn::ops::log_softmax(&trace.logits.unwrap(), 2).unwrap();
            let ids: Vec<Vec<u32>> = batch.input_ids().to_vec2().unwrap();
            let want: Vec<Vec<f32>> = g.tensor("next_token_logprob").to_vec2().unwrap();
            for (r, (&o, &n)) in offsets.iter().zip(batch.lengths()).enumerate() {
                for p in o..n - 1 {
                    let got: f32 = logp.get(r).unwrap().get(p - o).unwrap().get(ids[r][p + 1] as usize).unwrap().to_scalar().unwrap();
                    assert!((got - want[r][p]).abs() <= 1e-4, "{name} logprob row {r} pos {p}: {got} vs {}", want[r][p]);
                }
            }
        }
    }
}

#[test]
fn resumed_forward_refuses_points_below_its_start() {
    let lm = fixture("tiny-gpt2");
    let batch = Batch::from_sequences(&[vec![1, 2, 3]], 0, &Device::Cpu).unwrap();
    let below = lm.model.forward(&batch, &TraceSpec { block_out: [1].into(), stop_after: Some(1), ..Default::default() }, &[]).unwrap();
    let resume = Some(edit::models::Resume { after: 1, hidden: below.block_out[&1].clone(), prefix: None });
    let delta = Tensor::zeros(lm.config().d_model, DType::F32, &Device::Cpu).unwrap();
    let at = |layer, site| Intervention { layer, site, positions: vec![(0, 1)], deltas: delta.clone() };
    let spec = TraceSpec { resume: resume.clone(), logits: Logits::Last, ..Default::default() };
    assert!(lm.model.forward(&batch, &spec, &[at(1, Site::BlockOut)]).is_ok());
    assert!(lm.model.forward(&batch, &spec, &[at(1, Site::MlpOut)]).is_err());
    assert!(lm.model.forward(&batch, &spec, &[at(0, Site::BlockOut)]).is_err());
    let keys = TraceSpec { keys: [1].into(), ..spec };
    assert!(lm.model.forward(&batch, &keys, &[]).is_err());
}

#[test]
fn block_out_intervention_gradients_match_transformers() {
    for name in FAMILIES {
        intervention_grad(name, "grad_block_out.2", Site::BlockOut, Run::Whole);
    }
}

#[test]
fn interventions_shift_activations_exactly() {
    // Adding v at (row, pos) of a layer's block output must show up unchanged in that trace.
    let lm = fixture("tiny-gpt2");
    let g = golden("tiny-gpt2");
    let batch = golden_batch(&g);
    let spec = TraceSpec { block_out: [1].into(), mlp_out: [1].into(), ..Default::default() };
    let base = lm.model.forward(&batch, &spec, &[]).unwrap();
    let v = Tensor::arange(0f32, 32.0, &Device::Cpu).unwrap();
    let per = Tensor::stack(&[v.clone(), (v.clone() * 2.0).unwrap()], 0).unwrap();
    let iv = Intervention { layer: 1, site: Site::BlockOut, positions: vec![(0, 3), (2, 1)], deltas: per };
    let edited = lm.model.forward(&batch, &spec, &[iv]).unwrap();
    let diff = (&edited.block_out[&1] - &base.block_out[&1]).unwrap();
    assert!(max_abs_diff(&diff.get(0).unwrap().get(3).unwrap(), &v) < 1e-4);
    assert!(max_abs_diff(&diff.get(2).unwrap().get(1).unwrap(), &(v * 2.0).unwrap()) < 1e-4);
    // Interventions switch to the differentiable kernels, which round differently from the
    // fused ones: "unchanged" means equal to float rounding.
    assert!(diff.get(1).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
    // The MLP output of the same layer is upstream of the block output: untouched.
    assert!(max_abs_diff(&edited.mlp_out[&1], &base.mlp_out[&1]) < 1e-5);
}

#[test]
fn stop_after_layer_skips_the_rest() {
    let lm = fixture("tiny-neox");
    let g = golden("tiny-neox");
    let batch = golden_batch(&g);
    let spec = TraceSpec { keys: [0, 1].into(), stop_after: Some(1), logits: Logits::All, ..Default::default() };
    let trace = lm.model.forward(&batch, &spec, &[]).unwrap();
    assert!(trace.logits.is_none());
    assert_eq!(trace.keys.len(), 2);
    let want = g.tensor("key.1");
    for (a, b) in real_rows(&trace.keys[&1], batch.lengths()).iter().zip(real_rows(&want, batch.lengths())) {
        assert!(max_abs_diff(a, &b) <= 1e-4);
    }
}

#[test]
fn half_precision_compute_stays_close() {
    for name in FAMILIES {
        for dtype in [DType::F16, DType::BF16] {
            let lm = common::fixture_with_dtype(name, dtype);
            let g = golden(name);
            let batch = golden_batch(&g);
            let last = lm.model.forward(&batch, &TraceSpec::logits(Logits::Last), &[]).unwrap().logits.unwrap();
            let rel = rel_diff(&last.to_dtype(DType::F32).unwrap(), &g.tensor("last_logits"));
            assert!(rel < 0.05, "{name} {dtype:?}: relative error {rel}");
        }
    }
}

/// MEND's view of a linear module through the general hook points: its input x (recorded at
/// `LinearIn`) and the gradient of the loss w.r.t. its output y (a zero `Var` added at
/// `LinearOut`). For the MLP down-projection y is the MLP output, so ∂L/∂y at the subject's
/// last token must equal transformers' gradient there, and x must equal the golden keys.
#[test]
fn linear_hook_points_give_inputs_and_output_gradients_as_transformers() {
    use edit::models::{ForwardOpts, HookPoint, Hooks, ModuleKind};
    struct Capture {
        layer: usize,
        x: Option<Tensor>,
        dy: Var,
    }
    impl Hooks for Capture {
        fn wants(&self, p: HookPoint) -> bool {
            matches!(p, HookPoint::LinearIn(l, ModuleKind::MlpDown) | HookPoint::LinearOut(l, ModuleKind::MlpDown) if l == self.layer)
        }
        fn at(&mut self, p: HookPoint, h: Tensor) -> edit::Result<Tensor> {
            Ok(match p {
                HookPoint::LinearIn(..) => {
                    self.x = Some(h.clone());
                    h
                }
                _ => (h + self.dy.as_tensor())?,
            })
        }
    }
    for name in FAMILIES {
        let lm = fixture(name);
        let g = golden(name);
        let info = g.gradient("grad_mlp_out.1");
        let p0 = &g.prompts()[0];
        let target = golden_target(&lm, p0);
        let mut ids = p0.input_ids.clone();
        ids.extend_from_slice(&target[..target.len() - 1]);
        let batch = Batch::from_sequences(std::slice::from_ref(&ids), 0, &Device::Cpu).unwrap();
        let d = lm.config().d_model;
        let mut hooks = Capture { layer: info.layer, x: None, dy: Var::zeros((1, ids.len(), d), DType::F32, &Device::Cpu).unwrap() };
        let opts = ForwardOpts { logits: Logits::All, differentiable: true, ..ForwardOpts::default() };
        let logits = lm.model.forward_hooked(&batch, &opts, &mut hooks).unwrap().unwrap();
        let logp = candle_nn::ops::log_softmax(&logits.get(0).unwrap(), 1).unwrap();
        let n_prompt = p0.input_ids.len();
        let terms: Vec<Tensor> = target.iter().enumerate().map(|(j, &t)| logp.get(n_prompt - 1 + j).unwrap().get(t as usize).unwrap()).collect();
        let loss = (Tensor::stack(&terms, 0).unwrap().mean_all().unwrap() * -1.0).unwrap();
        let grads = loss.backward().unwrap();
        let dy = grads.get(hooks.dy.as_tensor()).expect("the gradient reaches the linear output");
        let rel = rel_diff(&dy.get(0).unwrap().get(info.position).unwrap(), &g.tensor("grad_mlp_out.1"));
        assert!(rel <= 1e-3, "{name}: ∂L/∂y relative error {rel}");
        // The prompt is a prefix: its keys are the golden ones (causal attention).
        let x = hooks.x.expect("the input was recorded").get(0).unwrap().narrow(0, 0, n_prompt).unwrap();
        let want = g.tensor(&format!("key.{}", info.layer)).get(0).unwrap().narrow(0, 0, n_prompt).unwrap();
        assert!(max_abs_diff(&x, &want) <= 1e-4, "{name}: x differs from the golden key");
    }
}

/// Every parameter the model exposes by name is the checkpoint tensor of that name (the
/// reference's `named_parameters()` names, read back from the files), and every checkpoint
/// tensor is exposed once; replacing one by name changes the forward pass.
#[test]
fn parameters_are_named_and_valued_as_in_the_checkpoint() {
    use std::collections::{BTreeSet, HashMap};
    for name in FAMILIES.iter().chain(&["fact-gpt2"]) {
        let name: &str = name;
        let mut lm = fixture(name);
        let cfg = lm.config().clone();
        let mut stored: HashMap<String, Tensor> = HashMap::new();
        for f in &lm.files.weights {
            stored.extend(candle_core::safetensors::load(f, &Device::Cpu).unwrap());
        }
        let ckpt = edit::checkpoint::Checkpoint::open_files(lm.files.weights.clone()).unwrap();
        let mut seen = BTreeSet::new();
        let all = lm.model.parameters_matching("").unwrap();
        for (n, t) in &all {
            let key = ckpt.resolve(n, cfg.family.prefix()).unwrap_or_else(|| panic!("{name}: `{n}` is not in the checkpoint")).to_string();
            let want = stored[&key].to_dtype(DType::F32).unwrap();
            assert_eq!(max_abs_diff(t, &want), 0.0, "{name}: `{n}` differs from the checkpoint");
            assert!(seen.insert(key), "{name}: `{n}` listed twice");
        }
        assert_eq!(seen.len(), stored.len(), "{name}: every checkpoint tensor is a parameter");
        // The reference's selection rule: a module's weight and bias (the gated MLPs have none).
        let down = edit::models::modules::mlp_down(&cfg, 1).unwrap().name;
        let picked: Vec<String> = lm.model.parameters_matching(&down).unwrap().into_iter().map(|(n, _)| n).collect();
        let want: Vec<String> = if cfg.family.is_decoder() { vec![format!("{down}.weight")] } else { vec![format!("{down}.weight"), format!("{down}.bias")] };
        assert_eq!(picked, want, "{name}");
        // Setting a bias (a norm's weight) by name reaches the forward pass.
        let bias = if cfg.family.is_decoder() { "model.layers.1.input_layernorm.weight".to_string() } else { format!("{down}.bias") };
        let before = lm
            .model
            .forward(&Batch::from_sequences(&[vec![1, 2, 3]], 0, &Device::Cpu).unwrap(), &TraceSpec::logits(Logits::Last), &[])
            .unwrap()
            .logits
            .unwrap();
        let b = all.iter().find(|(n, _)| *n == bias).unwrap().1.clone();
        // (A constant shift would vanish in the next LayerNorm: scale it instead.)
        lm.model.set_parameter(&bias, &b.affine(3.0, 0.5).unwrap()).unwrap();
        let after = lm
            .model
            .forward(&Batch::from_sequences(&[vec![1, 2, 3]], 0, &Device::Cpu).unwrap(), &TraceSpec::logits(Logits::Last), &[])
            .unwrap()
            .logits
            .unwrap();
        assert!(max_abs_diff(&before, &after) > 1e-3, "{name}: the new bias is used");
        assert!(lm.model.set_parameter("transformer.h.0.nope", &before).is_err());
    }
}
