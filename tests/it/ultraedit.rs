//! UltraEdit against the reference code (XiaojieGu/UltraEdit, run by
//! `tests/fixtures/ultraedit/make_ultraedit_goldens.py`): two sequential turns of six edits in
//! sub-batches of three on tiny-gpt2 (Conv1D down-projections) and tiny-llama (gate and up
//! projections sharing one normaliser); each turn's ΔW and the running statistics after it.

use std::collections::BTreeMap;

use crate::common;

use candle_core::{Device, Tensor};
use common::{fixture, fixture_dir, rel_diff};
use edit::editing::method::{EditInputs, EditMethod};
use edit::editing::requests::parse_values;
use edit::editing::ultraedit::{Positions, UltraEdit, UltraEditHparams, UltraSolver};
use edit::editing::Snapshot;
use edit::tokenizer::Tokenizer;
use serde_json::{json, Value};

fn goldens() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir("ultraedit").join("goldens.json")).unwrap()).unwrap()
}

/// The reference's zsRE records as requests: the whole question is the prompt.
fn turn_requests(turn: &Value) -> Vec<edit::editing::requests::Request> {
    let items: Vec<Value> = turn.as_array().unwrap().iter().map(|r| json!({"prompt": "{}", "subject": r["src"], "target_new": r["ans"]})).collect();
    parse_values(&items, "goldens").unwrap()
}

fn run(name: &str, solver: UltraSolver, sub_batches_per_pass: usize) {
    let g = goldens();
    let modules: Vec<String> = serde_json::from_value(g["models"][name]["modules"].clone()).unwrap();
    let hp = UltraEditHparams {
        edit_modules: modules.clone(),
        lr: g["lr"].as_f64().unwrap(),
        batch_size: g["batch_size"].as_u64().unwrap() as usize,
        token: Positions::Ans,
        ridge: 1.0,
        solver,
        sub_batches_per_pass,
    };
    let want = candle_core::safetensors::load(fixture_dir("ultraedit").join(format!("{name}-goldens.safetensors")), &Device::Cpu).unwrap();
    let mut lm = fixture(name);
    let tok = Tokenizer::from_file(&fixture_dir(name).join("tokenizer.json")).unwrap();
    let method = UltraEdit::open(hp, None, None).unwrap();
    for (t, turn) in g["turns"].as_array().unwrap().iter().enumerate() {
        let requests = turn_requests(turn);
        let mut stats = BTreeMap::new();
        let out = method.edit(&mut *lm.model, EditInputs { tok: &tok, requests: &requests, stats: &mut stats, templates: None }).unwrap();
        for m in &modules {
            let rel = rel_diff(&out.deltas[m], &want[&format!("turn{t}.{m}")]);
            assert!(rel <= 1e-4, "{name} ({solver:?}) turn {t} {m}: ΔW relative difference {rel}");
        }
        // The edit stays; its statistics are kept for the next turn.
        Snapshot::new().apply(&mut *lm.model, &out.deltas).unwrap();
        method.keep(&out.deltas).unwrap();
        for ((i, o), norm) in method.kept_statistics() {
            let key = format!("norm{t}.{i}x{o}");
            assert_eq!(f64::from(want[&format!("{key}.n")].to_vec1::<f32>().unwrap()[0]), norm.n, "{name} {key}: rows");
            for (field, ours) in [("mean", &norm.mean), ("var", &norm.var), ("std", &norm.std)] {
                let ours = Tensor::from_vec(ours.iter().map(|&v| v as f32).collect::<Vec<_>>(), ours.len(), &Device::Cpu).unwrap();
                let rel = rel_diff(&ours, &want[&format!("{key}.{field}")]);
                assert!(rel <= 1e-4, "{name} {key}.{field}: relative difference {rel}");
            }
        }
    }
}

#[test]
fn two_turns_match_the_reference_on_gpt2() {
    run("tiny-gpt2", UltraSolver::Auto, 1);
}

#[test]
fn two_turns_match_the_reference_on_llama() {
    run("tiny-llama", UltraSolver::Auto, 1);
}

#[test]
fn both_solves_and_shared_passes_give_the_references_update() {
    run("tiny-gpt2", UltraSolver::Direct, 1);
    run("tiny-llama", UltraSolver::PushThrough, 1);
    // Both sub-batches of a turn in one forward/backward: the same gradients.
    run("tiny-gpt2", UltraSolver::Auto, 2);
    run("tiny-llama", UltraSolver::Auto, 2);
}

fn fact_gpt2() -> std::path::PathBuf {
    fixture_dir("fact-gpt2")
}

fn case_requests(dir: &std::path::Path, name: &str, range: std::ops::Range<usize>) -> std::path::PathBuf {
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(fact_gpt2().join("cases.json")).unwrap()).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string(&cases[range]).unwrap()).unwrap();
    path
}

/// `edit apply --state` across processes is `edit eval --sequential` in one: the second call's
/// delta is the sequential evaluation's second chunk's, because the statistics carried over.
#[test]
fn apply_with_a_state_continues_the_sequence_an_evaluation_runs() {
    use common::{edit_bin, ok, outcome};
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let apply = |model: &std::path::Path, reqs: &std::path::Path, out: &str| {
        let mut c = edit_bin();
        c.args(["apply", "--method", "ultraedit", "--set", "lr=1e-3", "--model"]).arg(model).arg(reqs);
        c.arg("--out").arg(tmp.path().join(out)).arg("--delta-out").arg(tmp.path().join(format!("{out}.safetensors")));
        c
    };
    let (a, b) = (case_requests(tmp.path(), "a.json", 0..10), case_requests(tmp.path(), "b.json", 10..20));
    ok(apply(&fact_gpt2(), &a, "m1").arg("--state").arg(&state));
    ok(apply(&tmp.path().join("m1"), &b, "m2").arg("--state").arg(&state));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).unwrap()).unwrap();
    assert_eq!((s["method"].as_str(), s["requests"].as_u64(), s["applied"].as_array().unwrap().len()), (Some("ultraedit"), Some(20), 2));
    // Without the state, the second call starts its statistics afresh: another edit.
    ok(&mut apply(&tmp.path().join("m1"), &b, "m2-alone"));

    let run = tmp.path().join("run");
    ok(edit_bin()
        .args(["eval", "--method", "ultraedit", "--set", "lr=1e-3", "--num-edits", "10", "--limit", "20", "--sequential", "-q", "--model"])
        .arg(fact_gpt2())
        .arg("--dataset")
        .arg(fact_gpt2().join("cases.json"))
        .arg("--out")
        .arg(&run));
    let read = |p: std::path::PathBuf| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let key = "transformer.h.4.mlp.c_proj.weight";
    let chunk = read(run.join("deltas").join("10-edits-chunk-00001.safetensors"));
    let (with, alone) = (read(tmp.path().join("m2.safetensors")), read(tmp.path().join("m2-alone.safetensors")));
    let same = rel_diff(&with[key], &chunk[key]);
    assert!(same <= 1e-5, "the state's second call vs the evaluation's second chunk: {same}");
    let other = rel_diff(&alone[key], &chunk[key]);
    assert!(other > 1e-3, "fresh statistics give another edit ({other})");

    // A model the state does not describe, and the state with AlphaEdit: refused, nothing written.
    let (code, _, err) = outcome(apply(&fact_gpt2(), &b, "m3").arg("--state").arg(&state));
    assert_eq!(code, Some(1));
    assert!(err.contains("holds []") && err.contains("--out"), "{err}");
    assert!(!tmp.path().join("m3").exists(), "nothing written");
    let (code, _, err) = outcome(
        edit_bin()
            .args(["apply", "--method", "alphaedit", "--model"])
            .arg(tmp.path().join("m2"))
            .arg(&b)
            .arg("--state")
            .arg(&state)
            .arg("--delta-out")
            .arg(tmp.path().join("x.safetensors")),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("UltraEdit's state, not AlphaEdit's") && err.contains("--method ultraedit"), "{err}");
}

/// Starting a pass above the blocks below the edited modules (as UltraEdit does) gives every
/// family the same keys, gradients and losses as the whole forward/backward.
#[test]
fn resuming_below_the_edited_modules_changes_nothing_in_any_family() {
    use edit::editing::factors::{factors_and_losses, hidden_before};
    use edit::models::modules::{module, ModuleKind};
    let reqs = turn_requests(&goldens()["turns"][0]);
    for name in common::TINY {
        let lm = fixture(name);
        let tok = Tokenizer::from_file(&fixture_dir(name).join("tokenizer.json")).unwrap();
        let cfg = lm.model.config().clone();
        let modules = vec![module(&cfg, 2, ModuleKind::MlpDown).unwrap(), module(&cfg, 3, ModuleKind::MlpUp).unwrap()];
        let seqs: Vec<Vec<u32>> = reqs.iter().map(|r| edit::editing::ultraedit::request_tokens(&tok, r).unwrap().0).collect();
        let labels: Vec<std::ops::Range<usize>> =
            reqs.iter().zip(&seqs).map(|(r, s)| edit::editing::ultraedit::request_tokens(&tok, r).unwrap().1..s.len()).collect();
        let whole = factors_and_losses(&*lm.model, &seqs, &labels, &modules, None, None).unwrap();
        let below = hidden_before(&*lm.model, &seqs, 2).unwrap();
        assert!(below.is_some());
        let resumed = factors_and_losses(&*lm.model, &seqs, &labels, &modules, below, None).unwrap();
        assert!((whole.0 - resumed.0).abs() < 1e-5, "{name}: loss {} vs {}", whole.0, resumed.0);
        for (a, b) in whole.2.iter().zip(&resumed.2) {
            assert!((a - b).abs() < 1e-5, "{name}: per-request losses {a} vs {b}");
        }
        for (m, (a, b)) in modules.iter().zip(whole.1.iter().zip(&resumed.1)) {
            for (what, x, y) in [("keys", &a.x, &b.x), ("gradients", &a.delta, &b.delta)] {
                let rel = rel_diff(y, x);
                assert!(rel <= 1e-5, "{name} {}: {what} differ by {rel}", m.name);
            }
        }
    }
}

/// UltraEdit's own question-answer layouts are detected, named and scored by token accuracy:
/// each answer token teacher-forced after the question, the locality question against
/// `loc_ans` (UltraEdit's `succ_ratios`: per record the share of its tokens predicted).
#[test]
fn ultraedit_layouts_are_read_and_scored_token_by_token() {
    use common::{edit_bin, ok, outcome};
    use edit::editing::records::{read_dataset, DatasetFormat, ZsreTarget};
    let bench = fixture_dir("ultraedit").join("ultraeditbench-sample.json");
    let zsre = fixture_dir("ultraedit").join("zsre-ultraedit-sample.json");
    let d = read_dataset(&bench, Some(ZsreTarget::Answer)).unwrap();
    assert_eq!((d.format, d.records.len()), (DatasetFormat::UltraEditBench, 3));
    let d = read_dataset(&zsre, Some(ZsreTarget::Answer)).unwrap();
    assert_eq!(d.format, DatasetFormat::ZsreUltraEdit);
    assert_eq!(d.records[0].request.target_new, "unmanned aircraft", "zsRE's new answer is `ans`");
    assert_eq!(d.records[0].zsre_locality.as_ref().unwrap().0, "nq question: john goodman's character in the big lebowski?");

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    ok(edit_bin().args(["eval", "--method", "none", "-q", "--model"]).arg(fact_gpt2()).arg("--dataset").arg(&bench).arg("--out").arg(&out));
    let first: Value = serde_json::from_str(std::fs::read_to_string(out.join("cases.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    // By hand: the argmax after the question and each earlier answer token.
    let lm = fixture("fact-gpt2");
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&bench).unwrap()).unwrap();
    let by_hand =
        |prompt: &str, answer: &str| -> Vec<Value> { common::argmax_by_hand(&lm, prompt, answer).into_iter().map(|(p, t)| Value::Bool(p == t)).collect() };
    let r = &records[0];
    let s = |k: &str| r[k].as_str().unwrap();
    assert_eq!(first["pre"]["rewrite_prompts_correct"], Value::Array(by_hand(s("prompt"), s("ans"))));
    assert_eq!(first["pre"]["paraphrase_prompts_correct"], Value::Array(by_hand(s("rephrase_prompt"), s("ans"))));
    assert_eq!(first["pre"]["neighborhood_prompts_correct"], Value::Array(by_hand(s("loc"), s("loc_ans"))));
    // The model knows these facts: its answers are right before any edit.
    assert_eq!(first["pre"]["rewrite_prompts_correct"][0], true);

    // A record missing a field is named with the field; an unknown layout names the known ones.
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"[{"prompt": "Q?", "rephrase_prompt": "Q2?", "ans": "A", "loc": "L?", "loc_ans": "B"}, {"prompt": "Q?", "rephrase_prompt": "Q2?", "ans": "A", "loc_ans": "B"}]"#).unwrap();
    let e = read_dataset(&bad, Some(ZsreTarget::Answer)).err().unwrap().to_string();
    assert!(e.contains("record 1") && e.contains("loc"), "{e}");
    let (code, _, err) = outcome(edit_bin().args(["eval", "--method", "none", "-q", "--model"]).arg(fact_gpt2()).arg("--dataset").arg(&bad));
    assert_eq!(code, Some(1), "{err}");
    std::fs::write(&bad, r#"[{"question": "Q?", "answer": "A"}]"#).unwrap();
    let e = read_dataset(&bad, Some(ZsreTarget::Answer)).err().unwrap().to_string();
    assert!(e.contains("answer, question") && e.contains("UltraEditBench (`prompt`, `rephrase_prompt`"), "{e}");
}
