//! AlphaEdit through the binary on fact-gpt2 (`hparams/AlphaEdit.json`: MEMIT_tuned's settings
//! with the null-space threshold and regulariser): sequential editing keeps more of the earlier
//! edits and more neighbourhood knowledge than MEMIT with the same settings; `edit apply
//! --state` edits batch after batch and refuses a model its state does not describe.

use crate::common;

use std::path::{Path, PathBuf};

use common::{edit_bin, fixture_dir, ok, outcome};
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixture_dir("fact-gpt2")
}

/// The reference's statistics of layers 0-2 (every text of the corpus), once per test run.
fn stats() -> &'static Path {
    common::shared_fact_gpt2_stats()
}

fn config(method: &str) -> PathBuf {
    model_dir().join(if method == "memit" { "hparams/MEMIT_tuned.json" } else { "hparams/AlphaEdit.json" })
}

#[test]
fn sequential_alphaedit_keeps_earlier_edits_and_neighbours_better_than_memit() {
    let run = |method: &str| -> Value {
        let stdout = ok(edit_bin()
            .args(["eval", "--method", method, "--model"])
            .arg(model_dir())
            .arg("--dataset")
            .arg(model_dir().join("cases.json"))
            .arg("--config")
            .arg(config(method))
            .args(["--num-edits", "25", "--limit", "100", "--sequential", "--max-update-ratio", "100", "--json", "--stats-dir"])
            .arg(stats()));
        let s: Vec<Value> = serde_json::from_str(&stdout).unwrap();
        s[0].clone()
    };
    let (memit, alpha) = (run("memit"), run("alphaedit"));
    let get = |s: &Value, k: &str| s[k][0].as_f64().unwrap_or(f64::NAN);
    let row = |s: &Value, prefix: &str| ["rewrite_success", "paraphrase_success", "neighborhood_success", "score"].map(|k| get(s, &format!("{prefix}_{k}")));
    let (m_final, a_final) = (row(&memit, "final"), row(&alpha, "final"));
    eprintln!("100 cases, 4 sequential chunks of 25; ES / PS / NS / score right after each chunk and on the final model:");
    eprintln!("  memit      {:?}  final {m_final:?}", row(&memit, "post"));
    eprintln!("  alphaedit  {:?}  final {a_final:?}", row(&alpha, "post"));
    assert!(a_final[2] > m_final[2] + 5.0, "neighbourhood kept: AlphaEdit {} vs MEMIT {}", a_final[2], m_final[2]);
    assert!(a_final[3] > m_final[3], "final score: AlphaEdit {} vs MEMIT {}", a_final[3], m_final[3]);
    assert!(a_final[0] >= 60.0, "AlphaEdit's earlier edits still hold: {a_final:?}");
}

fn requests(dir: &Path, name: &str, range: std::ops::Range<usize>) -> PathBuf {
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(model_dir().join("cases.json")).unwrap()).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string(&cases[range]).unwrap()).unwrap();
    path
}

fn state_file(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap()
}

#[test]
fn apply_with_a_state_edits_batch_after_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let apply = |model: &Path, reqs: &Path, out: &str| {
        let mut c = edit_bin();
        c.args(["apply", "--method", "alphaedit", "--model"]).arg(model).arg(reqs).arg("--config").arg(config("alphaedit"));
        c.arg("--stats-dir").arg(stats()).args(["--max-update-ratio", "100", "--out"]).arg(tmp.path().join(out));
        c.arg("--delta-out").arg(tmp.path().join(format!("{out}.safetensors")));
        c
    };
    let (a, b) = (requests(tmp.path(), "a.json", 0..5), requests(tmp.path(), "b.json", 5..10));
    ok(apply(&model_dir(), &a, "m1").arg("--state").arg(&state));
    let s = state_file(&state);
    assert_eq!((s["requests"].as_u64(), s["applied"].as_array().unwrap().len()), (Some(5), 1));
    // The null spaces are cached beside the statistics they come from.
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| if e.path().is_dir() { count(&e.path()) } else { usize::from(e.file_name().to_string_lossy().contains(".nullspace-")) })
            .sum()
    }
    let cached = count(stats());
    assert!(cached >= 3, "one null-space cache per layer, found {cached}");

    // The second batch on the model the first wrote: its keys now count.
    ok(apply(&tmp.path().join("m1"), &b, "m2").arg("--state").arg(&state));
    let s = state_file(&state);
    assert_eq!((s["requests"].as_u64(), s["applied"].as_array().unwrap().len()), (Some(10), 2));
    // Without the state, the same batch on the same model is another (unprotected) edit.
    ok(&mut apply(&tmp.path().join("m1"), &b, "m2-alone"));
    let read = |name: &str| candle_core::safetensors::load(tmp.path().join(name), &candle_core::Device::Cpu).unwrap();
    let (with, alone) = (read("m2.safetensors"), read("m2-alone.safetensors"));
    let key = "transformer.h.0.mlp.c_proj.weight";
    let diff = (&with[key] - &alone[key]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff > 1e-4, "the kept keys change the update ({diff})");

    // A model the state does not describe, and the state with another method: refused.
    let (code, _, err) = outcome(apply(&model_dir(), &b, "m3").arg("--state").arg(&state));
    assert_eq!(code, Some(1));
    assert!(err.contains("holds []") && err.contains("--out"), "{err}");
    assert!(!tmp.path().join("m3").exists(), "nothing written");
    let (code, _, err) = outcome(
        edit_bin()
            .args(["apply", "--method", "memit", "--model"])
            .arg(model_dir())
            .arg(&b)
            .arg("--state")
            .arg(&state)
            .arg("--delta-out")
            .arg(tmp.path().join("x.safetensors")),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("--state") && err.contains("alphaedit"), "{err}");
}
