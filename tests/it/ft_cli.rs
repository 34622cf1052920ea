//! `edit apply --method ft` end to end through the real binary on `tests/fixtures/fact-gpt2`:
//! FT-L writes every tuned tensor (weight and bias) within its L∞ bound, the delta names them as
//! the checkpoint does and reverts them; many requests are one fine-tuning run; a whole block is
//! carried by the delta; bad configs and a diverging run fail with nothing written.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{edit_bin, fixture_dir, max_abs_diff, outcome};
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixture_dir("fact-gpt2")
}

/// The reference's FT-L file with ε = 5e-3 (REFERENCE.md: ES 100 on this model).
fn ft_l() -> PathBuf {
    model_dir().join("hparams").join("FT_constr_eps5e-3.json")
}

fn write_requests(dir: &Path, n: usize) -> PathBuf {
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(model_dir().join("cases.json")).unwrap()).unwrap();
    let path = dir.join("requests.json");
    std::fs::write(&path, serde_json::to_string(&all[..n]).unwrap()).unwrap();
    path
}

fn ft(requests: &Path) -> std::process::Command {
    let mut c = edit_bin();
    c.arg("apply").arg(requests).args(["--method", "ft", "--model"]).arg(model_dir());
    c
}

/// A safetensors file's tensors, by name without the `transformer.` prefix (this checkpoint's
/// names lack it; the reference's names have it).
fn tensors(path: &Path) -> HashMap<String, Tensor> {
    let all = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    all.into_iter().map(|(n, t)| (n.trim_start_matches("transformer.").to_string(), t)).collect()
}

fn f32s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

const WEIGHT: &str = "h.0.mlp.c_proj.weight";
const BIAS: &str = "h.0.mlp.c_proj.bias";

#[test]
fn ft_l_writes_weight_and_bias_within_the_bound_and_reverts() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_requests(tmp.path(), 1);
    let (out, delta) = (tmp.path().join("patched"), tmp.path().join("delta.safetensors"));
    let (code, stdout, stderr) = outcome(ft(&req).arg("--config").arg(ft_l()).arg("--out").arg(&out).arg("--delta-out").arg(&delta).args(["--json", "-v"]));
    assert_eq!(code, Some(0), "{stderr}");
    // -v names the config and every tuned tensor with its shape.
    assert!(stderr.contains("FT_constr_eps5e-3.json"), "{stderr}");
    assert!(stderr.contains("fine-tuning 2 tensor(s)") && stderr.contains(&format!("transformer.{WEIGHT} [512, 128]")), "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["check"]["took"], true, "{}", lines[0]);
    assert_eq!(lines[0]["chunk"], 0);
    let summary = &lines[1];
    assert_eq!(summary["method"], "ft");
    assert!(summary.get("templates").is_none(), "fine-tuning samples no templates: {summary}");
    assert!(summary.get("statistics").is_none_or(Value::is_null), "and reads no statistics: {summary}");
    let modules: Vec<&str> = summary["modules"].as_array().unwrap().iter().map(|m| m["module"].as_str().unwrap()).collect();
    assert_eq!(modules, ["transformer.h.0.mlp.c_proj", "transformer.h.0.mlp.c_proj.bias"]);

    // The patched model: both tensors moved, by at most ε per element; nothing else changed.
    let base = tensors(&model_dir().join("model.safetensors"));
    let edited = tensors(&out.join("model.safetensors"));
    assert_eq!(base.len(), edited.len());
    for (name, t) in &base {
        let d = max_abs_diff(&f32s(t), &f32s(&edited[name]));
        if name == WEIGHT || name == BIAS {
            assert!(d > 1e-3 && d <= 5e-3 * (1.0 + 1e-4), "{name}: max |Δ| {d}");
        } else {
            assert_eq!(d, 0.0, "{name} changed");
        }
    }
    // The delta carries exactly the tuned tensors, named and laid out as in the checkpoint.
    let d = tensors(&delta);
    let mut keys: Vec<&String> = d.keys().collect();
    keys.sort();
    assert_eq!(keys, [BIAS, WEIGHT]);
    for name in [WEIGHT, BIAS] {
        assert_eq!(d[name].dims(), base[name].dims(), "{name}");
        let applied = (f32s(&base[name]) + f32s(&d[name])).unwrap();
        assert!(max_abs_diff(&applied, &f32s(&edited[name])) <= 1e-6, "{name}: base + delta is the patched tensor");
    }
    // Revert restores the original.
    let back = tmp.path().join("reverted");
    let (code, _, stderr) = outcome(edit_bin().arg("revert").arg("--model").arg(&out).arg(&delta).arg("--out").arg(&back));
    assert_eq!(code, Some(0), "{stderr}");
    let reverted = tensors(&back.join("model.safetensors"));
    for (name, t) in &base {
        assert!(max_abs_diff(&f32s(t), &f32s(&reverted[name])) <= 1e-6, "{name} not restored");
    }
}

#[test]
fn ten_requests_are_one_fine_tuning_run() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_requests(tmp.path(), 10);
    let delta = tmp.path().join("delta.safetensors");
    let (code, stdout, stderr) = outcome(ft(&req).arg("--config").arg(ft_l()).args(["--set", "num_steps=5", "--json", "--delta-out"]).arg(&delta));
    assert_eq!(code, Some(0), "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 11);
    let runs: Vec<(i64, i64)> = lines[..10].iter().map(|l| (l["chunk"].as_i64().unwrap(), l["steps"].as_i64().unwrap())).collect();
    assert!(runs.iter().all(|&r| r == runs[0]) && runs[0].0 == 0, "one chunk, one run: {runs:?}");
    let losses: Vec<f64> = lines[0]["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(losses.len() <= 5 && losses.last() < losses.first(), "the batch's loss falls: {losses:?}");
    assert_eq!(lines[10]["requests"], 10);
    assert!(delta.is_file());
}

#[test]
fn the_default_config_and_a_whole_block() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_requests(tmp.path(), 2);
    // No --config: a generic FT-L starting point for this 6-layer GPT-2 (exit 0 even if it does not take).
    let delta = tmp.path().join("d0.safetensors");
    let (code, stdout, stderr) = outcome(ft(&req).args(["--json", "--delta-out"]).arg(&delta));
    assert_eq!(code, Some(0), "{stderr}");
    let summary = json_lines(&stdout).pop().unwrap();
    assert_eq!(summary["config_source"], "generic starting point for a 6-layer gpt2 model");
    for (_, t) in tensors(&delta) {
        let m = f32s(&t).abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(m <= 5e-4 * (1.0 + 1e-4), "the starting point's ε 5e-4 holds: {m}");
    }

    // The whole of block 1 (`transformer.h.1.`: the trailing dot keeps out blocks 10-19), unconstrained.
    let (out, delta) = (tmp.path().join("patched"), tmp.path().join("block.safetensors"));
    let sets = ["rewrite_module_tmp=transformer.h.{}.", "layers=[1]", "norm_constraint=false", "num_steps=2", "lr=1e-3"];
    let mut cmd = ft(&req);
    cmd.arg("--config").arg(ft_l());
    for s in sets {
        cmd.args(["--set", s]);
    }
    let (code, _, stderr) = outcome(cmd.arg("--out").arg(&out).arg("--delta-out").arg(&delta));
    assert_eq!(code, Some(0), "{stderr}");
    let d = tensors(&delta);
    let mut keys: Vec<String> = d.keys().cloned().collect();
    keys.sort();
    let leaves = [
        "attn.c_attn.bias",
        "attn.c_attn.weight",
        "attn.c_proj.bias",
        "attn.c_proj.weight",
        "ln_1.bias",
        "ln_1.weight",
        "ln_2.bias",
        "ln_2.weight",
        "mlp.c_fc.bias",
        "mlp.c_fc.weight",
        "mlp.c_proj.bias",
        "mlp.c_proj.weight",
    ];
    assert_eq!(keys, leaves.map(|l| format!("h.1.{l}")));
    // apply-delta of that file onto the base gives the patched model.
    let applied = tmp.path().join("applied");
    let (code, _, stderr) = outcome(edit_bin().arg("apply-delta").arg("--model").arg(model_dir()).arg(&delta).arg("--out").arg(&applied));
    assert_eq!(code, Some(0), "{stderr}");
    let (a, b) = (tensors(&applied.join("model.safetensors")), tensors(&out.join("model.safetensors")));
    for (name, t) in &a {
        assert!(max_abs_diff(&f32s(t), &f32s(&b[name])) <= 1e-6, "{name}");
    }
}

#[test]
fn bad_ft_configs_fail_before_loading_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_requests(tmp.path(), 1);
    let delta = tmp.path().join("delta.safetensors");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--set", "rewrite_module_tmp=transformer.h.{}.mlp.nope"], &["`rewrite_module_tmp`", "matches no parameter"]),
        (&["--set", "norm_constraint=-1"], &["`norm_constraint` is -1", "greater than 0"]),
        (&["--set", "norm_constraint=wide"], &["`norm_constraint` is \"wide\"", "a number ε"]),
        (&["--set", "num_steps=0"], &["`num_steps` must be at least 1"]),
        (&["--set", "layers=[6]"], &["`layers` contains 6", "6 layers"]),
        (&["--set", "v_lr=0.1"], &["unknown ft hyperparameter `v_lr`"]),
        (&["--config", "ft/gpt2-xl_nope"], &["no such file", "shipped ft config", "ft/gpt2-xl_attn"]),
        // A shipped config for a deeper model is refused by its layers.
        (&["--config", "ft/gpt2-xl_attn"], &["`layers` contains 33"]),
    ];
    for (args, wanted) in cases {
        let mut cmd = ft(&req);
        if !args.contains(&"--config") {
            cmd.arg("--config").arg(ft_l());
        }
        let (code, _, stderr) = outcome(cmd.args(*args).arg("--delta-out").arg(&delta));
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        for w in *wanted {
            assert!(stderr.contains(w), "{args:?}: wanted {w:?} in {stderr}");
        }
    }
    assert_eq!(names(tmp.path()), ["requests.json"], "nothing written");
}

#[test]
fn a_diverging_fine_tune_is_refused_with_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_requests(tmp.path(), 1);
    let out = tmp.path().join("patched");
    let (code, _, stderr) = outcome(ft(&req).arg("--config").arg(ft_l()).args(["--set", "lr=3e38", "--set", "norm_constraint=false", "--out"]).arg(&out));
    assert_eq!(code, Some(1), "{stderr}");
    // The first step takes the weights to ±3e38; the next loss is NaN.
    assert!(stderr.contains("the fine-tuning loss became NaN at epoch 1") && stderr.contains("nothing was written"), "{stderr}");
    assert_eq!(names(tmp.path()), ["requests.json"], "nothing written");
}

#[test]
fn ft_m_is_chosen_by_config_and_recorded_in_the_delta() {
    let tmp = tempfile::tempdir().unwrap();
    // A target of several tokens, where the two objectives differ.
    let req = tmp.path().join("r.json");
    std::fs::write(&req, r#"{"prompt": "The native language of {} is", "subject": "Alon Javberg", "target_new": "Finnish and Swedish"}"#).unwrap();
    let first_loss = |objective: &str| -> (f64, Value) {
        let delta = tmp.path().join(format!("{objective}.safetensors"));
        let set = format!("objective_optimization={objective}");
        let (code, stdout, stderr) =
            outcome(ft(&req).arg("--config").arg(ft_l()).args(["--set", &set, "--set", "num_steps=1", "--json", "--delta-out"]).arg(&delta));
        assert_eq!(code, Some(0), "{stderr}");
        let loss = json_lines(&stdout)[0]["losses"][0].as_f64().unwrap();
        let meta = edit::checkpoint::file_metadata(&delta).unwrap();
        let recorded: Value = serde_json::from_str(&meta["edit.delta"]).unwrap();
        (loss, recorded["config"].clone())
    };
    let (last, cfg_last) = first_loss("prompt_last");
    let (forced, cfg_forced) = first_loss("target_new");
    assert_eq!(cfg_last["objective_optimization"], "prompt_last");
    assert_eq!(cfg_forced["objective_optimization"], "target_new");
    assert!((last - forced).abs() > 1e-3, "the objectives score differently: {last} vs {forced}");
}
