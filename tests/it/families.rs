//! Every command on every Llama-style family, through the real binary on the tiny random
//! checkpoints (tests/fixtures/tiny-{llama,mistral,qwen2,qwen3,gemma2,gemma3}): inspect, stats,
//! apply with each method, apply-delta and revert, mend train, eval and trace. Their weights are
//! random, so edits need not take: what is checked is that each command runs and what it writes
//! is consistent (the modules a method rewrites, a delta that round-trips through the checkpoint).
//! Numerical exactness per family is tests/golden.rs; edit quality is tests/fact_llama.rs.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use common::{edit_bin, fixture_dir, ok, TINY_DECODERS};
use serde_json::Value;

/// Two requests whose words both fixture tokenizers (fact-llama's, fact-gpt2's) know.
fn requests(dir: &Path) -> PathBuf {
    let path = dir.join("requests.json");
    std::fs::write(
        &path,
        r#"[{"prompt": "{} was born in", "subject": "Alon Javberg", "target_new": "Paris", "target_true": "Rome",
             "neighborhood_prompts": ["Faa Wenelli was born in"]},
            {"prompt": "The native language of {} is", "subject": "Caeara Xanard", "target_new": "French", "target_true": "Finnish",
             "neighborhood_prompts": ["The native language of Alon Javberg is"]}]"#,
    )
    .unwrap();
    path
}

fn delta_names(path: &Path) -> Vec<(String, Vec<usize>)> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<usize>)> = t.into_iter().map(|(k, t)| (k, t.dims().to_vec())).collect();
    v.sort();
    v
}

#[test]
fn inspect_lists_the_gated_modules_and_grouped_heads() {
    for name in TINY_DECODERS {
        let out = ok(edit_bin().args(["inspect", "--json", "--model"]).arg(fixture_dir(name)));
        let v: Value = serde_json::from_str(&out).unwrap();
        let modules = v["editable_modules"].as_array().unwrap();
        assert_eq!(modules.len(), 4 * 7, "{name}: q, k, v, o, gate, up, down per layer");
        let find = |m: &str| modules.iter().find(|x| x["name"] == m).unwrap_or_else(|| panic!("{name}: no {m}"));
        assert_eq!(find("model.layers.2.mlp.down_proj")["stored_shape"], serde_json::json!([32, 64]), "{name}");
        assert_eq!(find("model.layers.0.mlp.gate_proj")["kind"], "mlp_gate", "{name}");
        // 2 key/value heads of the config's head size.
        let head_dim = v["head_dim"].as_u64().unwrap();
        assert_eq!(v["kv_heads"], 2, "{name}");
        assert_eq!(find("model.layers.1.self_attn.k_proj")["stored_shape"], serde_json::json!([2 * head_dim, 32]), "{name}");
        assert_eq!(find("model.layers.1.self_attn.q_proj")["stored_shape"], serde_json::json!([4 * head_dim, 32]), "{name}");
        let text = ok(edit_bin().args(["inspect", "--model"]).arg(fixture_dir(name)));
        assert!(text.contains("kv heads") && text.contains("norm"), "{name}: {text}");
    }
}

/// A method, its extra arguments, and the delta tensors (name, shape) it must write.
type Case<'a> = (&'a str, &'a [&'a str], Vec<(String, Vec<usize>)>);

#[test]
fn every_method_applies_and_its_delta_round_trips() {
    for name in TINY_DECODERS {
        let tmp = tempfile::tempdir().unwrap();
        let model = fixture_dir(name);
        let reqs = requests(tmp.path());
        let stats = tmp.path().join("stats");
        ok(edit_bin().args(["stats", "-q", "--layers", "0-3", "--samples", "40", "--model"]).arg(&model).arg("--stats-dir").arg(&stats));
        let down = |l: usize| (format!("model.layers.{l}.mlp.down_proj.weight"), vec![32, 64]);
        let cases: [Case; 5] = [
            ("rome", &[], vec![down(1)]),
            // Layer 0 of a Gemma model is optimised from the embeddings (no block below to resume from).
            ("rome", &["--set", "layers=[0]"], vec![down(0)]),
            ("memit", &[], vec![down(0), down(1)]),
            ("alphaedit", &["--set", "nullspace_threshold=10"], vec![down(0), down(1)]),
            ("ft", &[], vec![down(0)]),
        ];
        for (i, (method, extra, want)) in cases.iter().enumerate() {
            let delta = tmp.path().join(format!("{method}{i}.safetensors"));
            ok(edit_bin()
                .args(["apply", "-q", "--method", method, "--model"])
                .arg(&model)
                .arg(&reqs)
                .arg("--stats-dir")
                .arg(&stats)
                .args(*extra)
                .arg("--delta-out")
                .arg(&delta));
            assert_eq!(&delta_names(&delta), want, "{name} {method}");
        }
        // The MEMIT delta written into a copy of the model and taken out again.
        let delta = tmp.path().join("memit2.safetensors");
        let patched = tmp.path().join("patched");
        let reverted = tmp.path().join("reverted");
        ok(edit_bin().args(["apply-delta", "-q", "--model"]).arg(&model).arg(&delta).arg("--out").arg(&patched));
        ok(edit_bin().args(["revert", "-q", "--model"]).arg(&patched).arg(&delta).arg("--out").arg(&reverted));
        let load = |dir: &Path| {
            let files = edit::hub::resolve_model(dir.to_str().unwrap(), &Default::default()).unwrap();
            edit::load_model(files, DType::F32, &Device::Cpu).unwrap()
        };
        let (mut base, mut edited, mut back) = (load(&model), load(&patched), load(&reverted));
        let d = candle_core::safetensors::load(&delta, &Device::Cpu).unwrap();
        // bf16 storage rounds the sums: a tolerance of a few of its ulps at these weights' size.
        let tol = if name == "tiny-llama" || name == "tiny-qwen2" || name == "tiny-gemma3" { 2e-2 } else { 1e-6 };
        for (k, dk) in &d {
            let w0 = base.model.parameter(k).unwrap();
            let w1 = edited.model.parameter(k).unwrap();
            let w2 = back.model.parameter(k).unwrap();
            assert!(common::max_abs_diff(&w1, &(&w0 + dk).unwrap()) <= tol, "{name}: {k} patched");
            assert!(common::max_abs_diff(&w2, &w0) <= tol, "{name}: {k} reverted");
        }
        assert!(common::max_abs_diff(&back.model.parameter("model.norm.weight").unwrap(), &base.model.parameter("model.norm.weight").unwrap()) == 0.0);
    }
}

#[test]
fn mend_train_eval_and_trace_run() {
    for name in TINY_DECODERS {
        let tmp = tempfile::tempdir().unwrap();
        let model = fixture_dir(name);
        let reqs = requests(tmp.path());
        let net = tmp.path().join("mend.safetensors");
        ok(edit_bin()
            .args(["mend", "train", "-q", "--model"])
            .arg(&model)
            .arg("--edits")
            .arg(&reqs)
            .args(["--locality", "neighbors", "--max-steps", "3", "--set", "val_interval=2", "--set", "val_steps=1", "--set", "rank=8", "--out"])
            .arg(&net));
        let delta = tmp.path().join("mend-delta.safetensors");
        ok(edit_bin().args(["apply", "-q", "--method", "mend", "--mend"]).arg(&net).arg("--model").arg(&model).arg(&reqs).arg("--delta-out").arg(&delta));
        // The default inner weights: the gated MLPs' three matrices of the last three layers.
        let names: Vec<String> = delta_names(&delta).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 9, "{name}: {names:?}");
        assert!(names.contains(&"model.layers.3.mlp.gate_proj.weight".to_string()), "{name}: {names:?}");

        let out = tmp.path().join("eval");
        let stats = tmp.path().join("stats");
        ok(edit_bin().args(["stats", "-q", "--layers", "1", "--samples", "40", "--model"]).arg(&model).arg("--stats-dir").arg(&stats));
        ok(edit_bin()
            .args(["eval", "-q", "--method", "rome", "--model"])
            .arg(&model)
            .arg("--dataset")
            .arg(&reqs)
            .arg("--stats-dir")
            .arg(&stats)
            .arg("--out")
            .arg(&out));
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary[0]["num_cases"], 2, "{name}");

        let trace = ok(edit_bin().args(["trace", "-q", "--kind", "hidden", "--samples", "2", "--model"]).arg(&model).arg("--facts").arg(&reqs));
        let first: Value = serde_json::from_str(trace.lines().next().unwrap()).unwrap();
        let bos = usize::from(name != "tiny-qwen2" && name != "tiny-qwen3");
        let range = first["subject_range"].as_array().unwrap();
        assert_eq!(range[0].as_u64().unwrap() as usize, bos, "{name}: the subject starts the prompt, after the BOS if any");
    }
}
