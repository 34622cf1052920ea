//! MEND's building blocks on the tiny fixtures: the gradient factors captured at the hook
//! points give, summed as MEND sums them (Σ x δᵀ), exactly the gradient autograd computes for
//! the weight itself; rows after the last label carry no gradient and are dropped by the
//! hypernetwork.

use crate::common;

use candle_core::{DType, Tensor, Var};
use common::{fixture, rel_diff};
use edit::editing::mend::factors::{edit_batch, edit_factors};
use edit::editing::mend::network::pseudo_gradient;
use edit::editing::requests::parse_requests;
use edit::editing::Deltas;
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
        let (loss, factors) = edit_factors(&*lm.model, &tok, &reqs, &modules).unwrap();
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
            let zero_rows =
                f.delta.abs().unwrap().sum(1).unwrap().eq(0f32).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            let longest = seqs.iter().map(Vec::len).max().unwrap();
            let pads: usize = seqs.iter().map(|s| longest - s.len()).sum();
            assert!(zero_rows as usize >= pads, "{name}: pads carry no gradient");
        }
    }
}

/// A hypernetwork whose layers are the identity (the reference's "id" init) and whose
/// normalisation is mean 0, std 1: its edit is a plain gradient step, lr × ∂L/∂W, for every
/// inner weight; written to a file and read back it gives the same edit; and the executor's
/// step-size order swaps GPT-2's c_fc and c_proj.
#[test]
fn an_identity_hypernetwork_edits_by_the_gradient_and_survives_its_file() {
    use edit::editing::mend::hypernet::{inner_params, write, EditSettings, Hypernetwork, MendMeta};
    use edit::editing::mend::network::RunningStats;
    use std::collections::HashMap;
    let reqs = parse_requests(r#"[{"prompt": "{} was born in", "subject": "Alice Smith", "target_new": "London"}]"#, "test").unwrap();
    let lm = fixture("tiny-gpt2");
    let tok = edit::tokenizer::Tokenizer::from_file(&common::fixture_dir("tiny-gpt2").join("tokenizer.json")).unwrap();
    let cfg = lm.config().clone();
    let names: Vec<String> =
        ["transformer.h.3.mlp.c_proj.weight", "transformer.h.3.mlp.c_fc.weight", "transformer.h.2.mlp.c_proj.weight"].map(String::from).to_vec();
    let inner = inner_params(&cfg, &names).unwrap();
    assert_eq!(inner.iter().map(|p| p.mode).collect::<Vec<_>>(), [0, 0, 1], "modes count within a shape");
    let meta = MendMeta { inner_params: names.clone(), rank: 8, n_hidden: 1, norm: true, base: None, origin: String::new() };
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &candle_core::Device::Cpu);
    let unit = |d: usize| RunningStats {
        mean: Tensor::zeros(d, DType::F32, &candle_core::Device::Cpu).unwrap(),
        s: Tensor::ones(d, DType::F32, &candle_core::Device::Cpu).unwrap(),
        std: Tensor::ones(d, DType::F32, &candle_core::Device::Cpu).unwrap(),
    };
    let mut stats = HashMap::new();
    for p in &inner {
        stats.insert(p.shape_key.clone(), (unit(p.module.in_dim), unit(p.module.out_dim), 10));
    }
    let lrs = vec![1e-2f32, 2e-2, 3e-2];
    let mut net = Hypernetwork::build(&cfg, meta.clone(), vb, &stats, lrs.clone()).unwrap();
    let deltas = net.edit(&*lm.model, &tok, &reqs, EditSettings::authors(1.0)).unwrap();
    let modules: Vec<_> = inner.iter().map(|p| p.module.clone()).collect();
    let (_, factors) = edit_factors(&*lm.model, &tok, &reqs, &modules).unwrap();
    for ((p, f), lr) in inner.iter().zip(&factors).zip(&lrs) {
        // lr × Σ x δᵀ, as [out, in].
        let want = (pseudo_gradient(&f.x, &f.delta).unwrap().t().unwrap() * f64::from(*lr)).unwrap();
        let rel = rel_diff(&deltas[&p.module.name], &want);
        assert!(rel < 1e-5, "{}: {rel}", p.module.name);
    }
    // Through a file: the network's tensors under the reference's names, the statistics, the step sizes.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mend.safetensors");
    let mut tensors: Vec<(String, Tensor)> = vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    for (key, (u, v, k)) in &stats {
        for (n, t) in [("u_mean", &u.mean), ("u_s", &u.s), ("u_std", &u.std), ("v_mean", &v.mean), ("v_s", &v.s), ("v_std", &v.std)] {
            tensors.push((format!("mend.{key}.{n}"), t.clone()));
        }
        tensors.push((format!("mend.{key}.k"), Tensor::new(&[*k as f32], &candle_core::Device::Cpu).unwrap()));
    }
    tensors.push(("edit_lrs".into(), Tensor::new(lrs.as_slice(), &candle_core::Device::Cpu).unwrap()));
    assert!(tensors.iter().any(|(k, _)| k == "mend.(128, 32).mlp.layers.1.mode_scale.weight"), "{:?}", tensors.iter().map(|t| &t.0).collect::<Vec<_>>());
    write(&path, &meta, &tensors).unwrap();
    let mut back = Hypernetwork::read(&path, &cfg, &candle_core::Device::Cpu).unwrap();
    let again = back.edit(&*lm.model, &tok, &reqs, EditSettings::authors(1.0)).unwrap();
    for (k, d) in &deltas {
        assert!(rel_diff(&again[k], d) < 1e-6, "{k}");
    }
    // The executor's order: the model's (c_fc before c_proj in a block, lower layers first).
    let swapped = back.edit(&*lm.model, &tok, &reqs, EditSettings { executor_lr_order: true, ..EditSettings::authors(1.0) }).unwrap();
    // Model order: h.2.c_proj (lrs[0]), h.3.c_fc (lrs[1]), h.3.c_proj (lrs[2]).
    let ratio = |k: &str, a: &Deltas, b: &Deltas| {
        let s = |t: &Tensor| t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        s(&a[k]) / s(&b[k])
    };
    assert!((ratio("transformer.h.3.mlp.c_proj", &swapped, &deltas) - 3.0).abs() < 1e-4);
    assert!((ratio("transformer.h.3.mlp.c_fc", &swapped, &deltas) - 1.0).abs() < 1e-4);
    assert!((ratio("transformer.h.2.mlp.c_proj", &swapped, &deltas) - 1.0 / 3.0).abs() < 1e-4);
}

/// ΔW parity with the reference code (tests/fixtures/mend, made by make_mend_goldens.py with
/// kmeng01/memit's copy of eric-mitchell/mend): a reference-format checkpoint with random
/// hypernetwork weights, imported from its `torch.save` file, edits as the reference does — in
/// the MEND authors' evaluation mode, as the ROME/MEMIT executor (training-mode statistics
/// restarted from the edit and carried to the next one, step sizes in the model's parameter
/// order), and with the executor's chunking keeping only the last chunk's factors.
#[test]
fn reference_checkpoints_edit_as_the_reference_code() {
    use edit::editing::mend::hypernet::write;
    use edit::editing::mend::import::import_checkpoint;
    use edit::editing::mend::Mend;
    use edit::editing::mend::MendHparams;
    use edit::editing::method::{EditInputs, EditMethod};
    let dir = common::fixture_dir("mend");
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap();
    let requests = |k: &str| parse_requests(&info["requests"][k].to_string(), k).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-gpt2", "tiny-gptj"] {
        let mut lm = fixture(name);
        let tok = edit::tokenizer::Tokenizer::from_file(&common::fixture_dir(name).join("tokenizer.json")).unwrap();
        let cfg = lm.config().clone();
        let names: Vec<String> = serde_json::from_value(info["models"][name]["inner_params"].clone()).unwrap();
        assert_eq!(names, edit::editing::mend::hparams::default_inner_params(&cfg), "the default inner weights are the reference's order");
        let imported = import_checkpoint(&dir.join(format!("{name}.pt")), &cfg, &names, None).unwrap();
        assert_eq!((imported.meta.rank, imported.meta.n_hidden), (32, 1));
        let lrs = imported.tensors.iter().find(|(k, _)| k == "edit_lrs").unwrap().1.to_vec1::<f32>().unwrap();
        let want_lrs: Vec<f32> = serde_json::from_value(info["models"][name]["edit_lrs"].clone()).unwrap();
        assert_eq!(lrs, want_lrs);
        let file = tmp.path().join(format!("{name}.safetensors"));
        write(&file, &imported.meta, &imported.tensors).unwrap();
        let goldens = candle_core::safetensors::load(dir.join(format!("{name}-goldens.safetensors")), &candle_core::Device::Cpu).unwrap();
        // The import holds exactly the checkpoint's tensors (`gtn.` renamed), no more.
        let state: Vec<_> = goldens.iter().filter_map(|(k, v)| Some((k.strip_prefix("state.")?, v))).collect();
        assert_eq!(state.len(), imported.tensors.len(), "{name}");
        for (k, want) in state {
            let got = &imported.tensors.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("{name}: {k} not imported")).1;
            assert_eq!(common::max_abs_diff(&got.flatten_all().unwrap(), &want.flatten_all().unwrap()), 0.0, "{name} {k}");
        }
        let check = |label: &str, deltas: &Deltas| {
            let prefix = format!("{label}.");
            assert_ne!(label, "state");
            let mut n = 0;
            for (k, want) in goldens.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                let got = &deltas[k.strip_prefix(&prefix).unwrap()];
                let rel = rel_diff(got, want);
                assert!(rel <= 1e-4, "{name} {k}: relative difference {rel}");
                n += 1;
            }
            assert_eq!(n, names.len(), "{name} {label}");
        };
        let method = |sets: &[(&str, serde_json::Value)]| {
            let mut hp: serde_json::Value = serde_json::json!({"lr_scale": 1.0});
            for (k, v) in sets {
                hp[*k] = v.clone();
            }
            let hp: MendHparams = serde_json::from_value(hp).unwrap();
            Mend::open(hp, Some(&file), &cfg, None).unwrap()
        };
        let run = |m: &Mend, lm: &mut edit::LoadedModel, reqs: &[edit::editing::requests::Request]| {
            let mut stats = Default::default();
            m.edit(&mut *lm.model, EditInputs { tok: &tok, requests: reqs, stats: &mut stats, templates: None }).unwrap().deltas
        };
        check("authors.A", &run(&method(&[]), &mut lm, &requests("A")));
        let t = serde_json::Value::Bool(true);
        let executor = method(&[("executor_norm", t.clone()), ("executor_lr_order", t.clone()), ("executor_last_chunk", t.clone())]);
        let a = run(&executor, &mut lm, &requests("A"));
        check("executor.A", &a);
        edit::editing::apply_deltas(&mut *lm.model, &a, 1.0).unwrap();
        check("executor.B", &run(&executor, &mut lm, &requests("B")));
        edit::editing::apply_deltas(&mut *lm.model, &a, -1.0).unwrap();
        if goldens.keys().any(|k| k.starts_with("chunked.")) {
            let chunked = method(&[
                ("executor_norm", t.clone()),
                ("executor_lr_order", t.clone()),
                ("executor_last_chunk", t.clone()),
                ("max_batch_size", serde_json::json!(2)),
            ]);
            check("chunked.A", &run(&chunked, &mut lm, &requests("A")));
        }
    }
}

/// The commands a user runs: `edit mend import` of the reference checkpoint, then `edit apply
/// --method mend --mend FILE` writes the reference's ΔW as its delta; mistakes are named.
#[test]
fn import_then_apply_from_the_command_line() {
    use common::{edit_bin, outcome};
    let dir = common::fixture_dir("mend");
    let model = common::fixture_dir("tiny-gpt2");
    let tmp = tempfile::tempdir().unwrap();
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap();
    let reqs = tmp.path().join("requests.json");
    std::fs::write(&reqs, info["requests"]["A"].to_string()).unwrap();
    let net = tmp.path().join("mend.safetensors");
    let pt = dir.join("tiny-gpt2.pt");
    let (code, out, err) = outcome(edit_bin().args(["mend", "import"]).arg(&pt).arg("-m").arg(&model).arg("-o").arg(&net).arg("--json"));
    assert_eq!(code, Some(0), "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["inner_params"][0], "transformer.h.1.mlp.c_proj.weight");
    assert_eq!(summary["transforms"], serde_json::json!(["(128, 32)", "(32, 128)"]));
    // Again without --force: refused, the file kept.
    let (code, _, err) = outcome(edit_bin().args(["mend", "import"]).arg(&pt).arg("-m").arg(&model).arg("-o").arg(&net));
    assert_eq!(code, Some(1));
    assert!(err.contains("--force"), "{err}");

    let delta = tmp.path().join("delta.safetensors");
    let (code, out, err) =
        outcome(edit_bin().args(["apply", "--method", "mend", "--mend"]).arg(&net).arg("-m").arg(&model).arg(&reqs).arg("--delta-out").arg(&delta).arg("-q"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().filter(|l| l.contains("one MEND edit of 3 requests")).count(), 3, "{out}");
    let cfg = edit::ModelConfig::from_file(&model.join("config.json")).unwrap();
    let (deltas, meta) = edit::patch::load_delta(&delta, &cfg).unwrap();
    assert_eq!(meta.method, "mend");
    let goldens = candle_core::safetensors::load(dir.join("tiny-gpt2-goldens.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (k, d) in &deltas {
        let rel = rel_diff(d, &goldens[&format!("authors.A.{k}")]);
        assert!(rel <= 1e-4, "{k}: {rel}");
    }
    assert_eq!(deltas.len(), 6);

    // No hypernetwork; the reference checkpoint itself; --mend with another method.
    let base = || {
        let mut c = edit_bin();
        c.arg("apply").arg("-m").arg(&model).arg(&reqs).arg("--delta-out").arg(tmp.path().join("x.safetensors"));
        c
    };
    let (code, _, err) = outcome(base().args(["--method", "mend"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("pass --mend FILE"), "{err}");
    let (code, _, err) = outcome(base().args(["--method", "mend", "--mend"]).arg(&pt));
    assert_eq!(code, Some(1));
    assert!(err.contains("edit mend import"), "{err}");
    let (code, _, err) = outcome(base().args(["--method", "rome", "--mend"]).arg(&net));
    assert_eq!(code, Some(1));
    assert!(err.contains("--method mend"), "{err}");
    // A checkpoint for other shapes is refused at import.
    let (code, _, err) =
        outcome(edit_bin().args(["mend", "import"]).arg(&pt).arg("-m").arg(common::fixture_dir("fact-gpt2")).arg("-o").arg(tmp.path().join("y.safetensors")));
    assert_eq!(code, Some(1));
    assert!(err.contains("belongs to another model"), "{err}");
    assert!(!tmp.path().join("y.safetensors").exists());
}
