//! End to end through the real binary on fact-llama (tests/fixtures/fact-llama): a small trained
//! Llama (GQA, bf16 weights, a SentencePiece-style tokenizer that puts `<s>` before every text)
//! that knows fact-gpt2's synthetic world, against the reference code's own results on it
//! (`REFERENCE.md`, `reference-percase.json`: jianghoucheng/AlphaEdit run on this model). The
//! evaluation reproduces the reference evaluator's NLLs and the statistics its key count. Given
//! the context templates the reference sampled (`reference-templates.json`) and its way of building
//! the v*/z prompts (`decoded_target_prefix`), ROME, MEMIT and sequential AlphaEdit reproduce the
//! reference's per-prompt NLLs after the edits; with edit's own defaults ROME and MEMIT reach its
//! ES/PS/NS within 3 points. FT-L and a MEND network trained by `edit mend train` edit it; `edit
//! trace` runs on it.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{edit_bin, fixture_dir, ok, rates};
use serde_json::Value;

fn model() -> PathBuf {
    fixture_dir("fact-llama")
}

/// The reference's statistics of layers 0-2: every text of the corpus, 128 tokens with the `<s>`.
fn stats() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = ok(edit_bin()
            .args(["stats", "--json", "--model"])
            .arg(model())
            .args(["--layers", "0-2", "--samples", "100000", "--text"])
            .arg(model().join("stats-corpus.txt"))
            .arg("--stats-dir")
            .arg(dir.path()));
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        // REFERENCE.md: 361,045 keys per layer (11,783 texts, each with its <s>).
        assert_eq!(v["tokens"], 361_045, "{v}");
        dir
    })
    .path()
}

fn reference(run: &str) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(model().join("reference-percase.json")).unwrap()).unwrap();
    v["runs"][run]["cases"].as_object().unwrap().clone()
}

fn eval(method: &str, args: &[&str]) -> Value {
    let out = ok(edit_bin()
        .args(["eval", "--json", "--method", method, "--model"])
        .arg(model())
        .arg("--dataset")
        .arg(model().join("cases.json"))
        .arg("--stats-dir")
        .arg(stats())
        .args(args));
    let s: Vec<Value> = serde_json::from_str(&out).unwrap();
    s.into_iter().next().unwrap()
}

fn es_ps_ns(s: &Value, prefix: &str) -> [f64; 3] {
    ["rewrite", "paraphrase", "neighborhood"].map(|k| s[format!("{prefix}_{k}_success")][0].as_f64().unwrap())
}

fn within_three(method: &str, got: [f64; 3], run: &str) {
    let want = rates(&reference(run));
    eprintln!("{method} on fact-llama: ES/PS/NS {got:?}, the reference's {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 3.0, "{method}: {got:?} vs the reference's {want:?}");
    }
}

#[test]
fn unedited_scores_are_the_reference_evaluators() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("none");
    ok(edit_bin()
        .args(["eval", "--method", "none", "--limit", "100", "--model"])
        .arg(model())
        .arg("--dataset")
        .arg(model().join("cases.json"))
        .arg("--out")
        .arg(&out));
    let reference = reference("NONE");
    let mut worst = 0f64;
    let mut n = 0;
    for line in std::fs::read_to_string(out.join("cases.jsonl")).unwrap().lines() {
        let c: Value = serde_json::from_str(line).unwrap();
        let want = &reference[&c["case_id"].to_string()];
        for (group, key) in [("rewrite", "rewrite_prompts_probs"), ("paraphrase", "paraphrase_prompts_probs"), ("neighborhood", "neighborhood_prompts_probs")] {
            let (ours, theirs) = (c["post"][key].as_array().unwrap(), want[group].as_array().unwrap());
            assert_eq!(ours.len(), theirs.len());
            for (o, t) in ours.iter().zip(theirs) {
                worst = worst.max((o["target_new"].as_f64().unwrap() - t[0].as_f64().unwrap()).abs());
                worst = worst.max((o["target_true"].as_f64().unwrap() - t[1].as_f64().unwrap()).abs());
                n += 1;
            }
        }
    }
    assert_eq!(n, 1300);
    assert!(worst <= 1e-4, "NLLs differ from the reference evaluator's by up to {worst}");
}

/// `--set` arguments that give a method the reference run's own context templates and its v*/z
/// prompts (`prompt + decode(target[:-1])`).
fn as_the_reference(which: &str) -> Vec<String> {
    let t: Value = serde_json::from_str(&std::fs::read_to_string(model().join("reference-templates.json")).unwrap()).unwrap();
    vec!["--set".into(), format!("context_templates={}", t[which]), "--set".into(), "decoded_target_prefix=true".into()]
}

/// The largest difference between our per-prompt [nll_new, nll_true] (`state`: post or final) and
/// the reference run's, and ES/PS/NS counted from ours.
fn against_the_reference(out: &Path, file: &str, state: &str, run: &str) -> (f64, [f64; 3]) {
    let reference = reference(run);
    let mut worst = 0f64;
    let mut ours = serde_json::Map::new();
    for line in std::fs::read_to_string(out.join(file)).unwrap().lines() {
        let c: Value = serde_json::from_str(line).unwrap();
        let want = &reference[&c["case_id"].to_string()];
        let mut mine = serde_json::Map::new();
        for (group, key) in [("rewrite", "rewrite_prompts_probs"), ("paraphrase", "paraphrase_prompts_probs"), ("neighborhood", "neighborhood_prompts_probs")] {
            let got = c[state][key].as_array().unwrap();
            for (o, t) in got.iter().zip(want[group].as_array().unwrap()) {
                worst = worst.max((o["target_new"].as_f64().unwrap() - t[0].as_f64().unwrap()).abs());
                worst = worst.max((o["target_true"].as_f64().unwrap() - t[1].as_f64().unwrap()).abs());
            }
            mine.insert(group.into(), got.iter().map(|o| serde_json::json!([o["target_new"], o["target_true"]])).collect());
        }
        ours.insert(c["case_id"].to_string(), Value::Object(mine));
    }
    assert_eq!(ours.len(), reference.len(), "{run}: every case the reference scored");
    (worst, rates(&ours))
}

fn reproduces(method: &str, args: &[String], file: &str, state: &str, run: &str, tolerance: f64) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut all: Vec<String> = args.to_vec();
    all.extend(["--out".to_string(), out.to_str().unwrap().to_string()]);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    eval(&method.to_lowercase(), &refs);
    let (worst, got) = against_the_reference(&out, file, state, run);
    let want = rates(&reference(run));
    eprintln!("{method} with the reference's templates: ES/PS/NS {got:?} (the reference's {want:?}); per-prompt NLLs within {worst:.1e}");
    assert!(worst <= tolerance, "{method}: NLLs differ from the reference run's by up to {worst}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1.0, "{method}: {got:?} vs the reference's {want:?}");
    }
}

fn config(method: &str) -> String {
    model().join(format!("hparams/{method}.json")).to_str().unwrap().to_string()
}

/// ROME one edit at a time, weights restored between cases.
#[test]
fn rome_reproduces_the_reference() {
    let mut args: Vec<String> = ["--config".into(), config("ROME"), "--limit".into(), "100".into()].to_vec();
    args.extend(as_the_reference("rome"));
    reproduces("ROME", &args, "cases.jsonl", "post", "ROME", 0.01);
    // With edit's own templates (sampled after the text `<|endoftext|>`, ten pieces with this
    // vocabulary, so that every sampled template is `". {}"`) and prompts.
    let s = eval("rome", &["--config", &config("ROME"), "--limit", "100"]);
    within_three("ROME (edit's defaults)", es_ps_ns(&s, "post"), "ROME");
}

#[test]
fn memit_batch_of_100_reproduces_the_reference() {
    let base = [
        "--config".to_string(),
        config("MEMIT"),
        "--num-edits".into(),
        "100".into(),
        "--limit".into(),
        "100".into(),
        "--max-update-ratio".into(),
        "1000".into(),
    ];
    let mut args = base.to_vec();
    args.extend(as_the_reference("memit"));
    reproduces("MEMIT", &args, "cases.jsonl", "post", "MEMIT100", 0.01);
    let refs: Vec<&str> = base.iter().map(String::as_str).collect();
    within_three("MEMIT (edit's defaults)", es_ps_ns(&eval("memit", &refs), "post"), "MEMIT100");
}

/// Five sequential chunks of 20, every case scored after the last (the f64 solve against the
/// reference's f32 one drifts by ~1e-3 over the chunks).
#[test]
fn sequential_alphaedit_reproduces_the_reference() {
    let mut args: Vec<String> =
        ["--config".into(), config("AlphaEdit"), "--num-edits".into(), "20".into(), "--sequential".into(), "--limit".into(), "100".into()].to_vec();
    args.extend(as_the_reference("memit"));
    reproduces("AlphaEdit", &args, "20-edits-final.jsonl", "final", "AlphaEdit5x20", 0.05);
}

/// FT-L at layer 0 with ε 5e-3 (fact-gpt2's setting, `hparams/FT_constr_eps5e-3.json`) and a MEND
/// network trained for 200 steps on cases 100-499 both edit cases they never saw.
#[test]
fn ft_and_a_trained_mend_network_edit_it() {
    let ft = eval("ft", &["--config", model().join("hparams/FT_constr_eps5e-3.json").to_str().unwrap(), "--limit", "20"]);
    let [es, ps, ns] = es_ps_ns(&ft, "post");
    eprintln!("FT-L on 20 cases: ES/PS/NS {es} {ps} {ns}");
    assert!(es >= 90.0 && ps >= 80.0 && ns >= 80.0, "FT-L: {es} {ps} {ns}");

    let tmp = tempfile::tempdir().unwrap();
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(model().join("cases.json")).unwrap()).unwrap();
    let train = tmp.path().join("train.json");
    std::fs::write(&train, serde_json::to_string(&all[100..]).unwrap()).unwrap();
    let net = tmp.path().join("mend.safetensors");
    ok(edit_bin()
        .args(["mend", "train", "-q", "--locality", "neighbors", "--model"])
        .arg(model())
        .arg("--edits")
        .arg(&train)
        .arg("--config")
        .arg(model().join("hparams/MEND_train.json"))
        .args(["--max-steps", "200", "--set", "val_interval=100", "--out"])
        .arg(&net));
    let mend = eval("mend", &["--mend", net.to_str().unwrap(), "--limit", "20"]);
    let [es, ps, ns] = es_ps_ns(&mend, "post");
    eprintln!("MEND (200 steps) on 20 unseen cases: ES/PS/NS {es} {ps} {ns}");
    assert!(es >= 60.0 && ns >= 80.0, "MEND: {es} {ps} {ns}");
}

#[test]
fn trace_finds_the_subject_behind_the_bos() {
    let tmp = tempfile::tempdir().unwrap();
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(model().join("cases.json")).unwrap()).unwrap();
    let facts = tmp.path().join("facts.json");
    std::fs::write(&facts, serde_json::to_string(&all[..2]).unwrap()).unwrap();
    let out = ok(edit_bin().args(["trace", "-q", "--kind", "hidden", "--samples", "3", "--model"]).arg(model()).arg("--facts").arg(&facts));
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    // "<s> ▁The ▁native ▁language ▁of ▁Al on ▁J av berg ▁is": the subject is tokens 5-9.
    assert_eq!(first["input_ids"][0], 1);
    assert_eq!(first["subject_range"], serde_json::json!([5, 10]));
    assert!(first["high_score"].as_f64().unwrap() > 0.9, "the model knows the fact: {}", first["high_score"]);
    assert!(first["low_score"].as_f64().unwrap() < 0.2, "noise on the subject hides it: {}", first["low_score"]);
}
