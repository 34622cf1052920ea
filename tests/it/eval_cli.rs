//! `edit eval` end to end through the real binary on `tests/fixtures/fact-gpt2`, against the
//! reference evaluator's per-prompt NLLs on the same model (`reference-percase.json`, from the
//! shared fixture), a hand-computed zsRE case, and its own invariants: a sequential run really
//! accumulates (its chunk-2 scores are those of the model with chunks 1 and 2 applied by
//! `edit apply-delta`), a resumed run writes what an uninterrupted one does, a failed edit is
//! recorded and the run goes on, bad records stop it before any work.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::IndexOp;
use common::{edit_bin, fixture_dir, ok, outcome, rates};
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixture_dir("fact-gpt2")
}

fn cases() -> PathBuf {
    model_dir().join("cases.json")
}

fn eval(method: &str, dataset: &Path) -> std::process::Command {
    let mut c = edit_bin();
    c.arg("eval").args(["--method", method, "--model"]).arg(model_dir()).arg("--dataset").arg(dataset);
    c
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn reference(run: &str) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(model_dir().join("reference-percase.json")).unwrap()).unwrap();
    v["runs"][run].as_object().unwrap().clone()
}

const GROUPS: [(&str, &str); 3] =
    [("rewrite", "rewrite_prompts_probs"), ("paraphrase", "paraphrase_prompts_probs"), ("neighborhood", "neighborhood_prompts_probs")];

#[test]
fn method_none_reproduces_the_reference_nlls_and_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("none");
    let stdout = ok(eval("none", &cases()).args(["--limit", "100", "--json", "--out"]).arg(&out));
    let reference = reference("NONE");
    let mut worst = 0f64;
    let written = lines(&out.join("cases.jsonl"));
    assert_eq!(written.len(), 100);
    for c in &written {
        let want = &reference[&c["case_id"].to_string()];
        for (group, key) in GROUPS {
            let (ours, theirs) = (c["pre"][key].as_array().unwrap(), want[group].as_array().unwrap());
            assert_eq!(ours.len(), theirs.len(), "case {} {group}", c["case_id"]);
            for (o, t) in ours.iter().zip(theirs) {
                worst = worst.max((o["target_new"].as_f64().unwrap() - t[0].as_f64().unwrap()).abs());
                worst = worst.max((o["target_true"].as_f64().unwrap() - t[1].as_f64().unwrap()).abs());
            }
        }
        assert_eq!(c["pre"], c["post"], "--method none: post is the model as it is");
        assert_eq!(c["num_edits"], 1);
    }
    assert!(worst <= 1e-4, "NLLs differ from the reference evaluator's by up to {worst}");
    // The summary's rates are the reference's, counted from its own NLLs.
    let first100: serde_json::Map<String, Value> = reference.into_iter().filter(|(k, _)| k.parse::<u64>().unwrap() < 100).collect();
    let want = rates(&first100);
    let summary: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary.len(), 1);
    let s = &summary[0];
    for (key, w) in ["post_rewrite_success", "post_paraphrase_success", "post_neighborhood_success"].iter().zip(want) {
        assert!((s[key][0].as_f64().unwrap() - w).abs() < 0.006, "{key}: {} vs {w}", s[key]);
    }
    assert_eq!(s["num_cases"], 100);
    assert_eq!(s["method"], "none");
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk[0]["post_rewrite_success"], s["post_rewrite_success"]);
}

#[test]
fn memit_tuned_on_a_batch_of_100_scores_as_the_reference() {
    // The reference's statistics: every text of the corpus.
    let stats = common::shared_fact_gpt2_stats();
    let stdout = ok(eval("memit", &cases())
        .arg("--config")
        .arg(model_dir().join("hparams/MEMIT_tuned.json"))
        .args(["--num-edits", "100", "--limit", "100", "--max-update-ratio", "100", "--json", "--stats-dir"])
        .arg(stats));
    let s: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let want = rates(&reference("MEMITt_100"));
    let got = ["post_rewrite_success", "post_paraphrase_success", "post_neighborhood_success"].map(|k| s[0][k][0].as_f64().unwrap());
    eprintln!("MEMIT_tuned, one batch of 100: ES/PS/NS {got:?}, the reference's {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 3.0, "{got:?} vs the reference's {want:?}");
    }
    assert_eq!(s[0]["num_failed"], 0);
    assert!(s[0]["pre_rewrite_success"][0].as_f64().unwrap() < 1.0, "pre is the unedited model");
}

#[test]
fn zsre_token_accuracy_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture_dir("zsre").join("zsre-5.json");
    let out = tmp.path().join("z");
    let stdout = ok(eval("none", &data).arg("--out").arg(&out));
    assert!(stdout.contains("Efficacy") && stdout.contains("Specificity"), "{stdout}");
    let written = lines(&out.join("cases.jsonl"));
    assert_eq!(written.len(), 5);
    // Record 0 by hand: src "What is the product made by UniFirst?", target " uniform".
    let lm = common::fixture("fact-gpt2");
    let tok = lm.tokenizer().unwrap();
    let target = tok.encode(" uniform").unwrap();
    let argmax_after = |text: &str| -> u32 {
        let ids = tok.encode(text).unwrap();
        let b = edit::Batch::from_sequences(&[ids], lm.pad_id(), lm.model.device()).unwrap();
        let l = lm.model.forward(&b, &edit::TraceSpec::logits(edit::Logits::Last), &[]).unwrap().logits.unwrap();
        l.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0]
    };
    let mut want = Vec::new();
    for i in 0..target.len() {
        let text = format!("What is the product made by UniFirst?{}", tok.decode(&target[..i]).unwrap());
        want.push(Value::Bool(argmax_after(&text) == target[i]));
    }
    let c = &written[0];
    assert_eq!(c["requested_rewrite"]["target_new"]["str"], "uniform");
    assert_eq!(c["requested_rewrite"]["prompt"], "What is the product made by {}?");
    assert_eq!(c["post"]["rewrite_prompts_correct"], Value::Array(want));
    assert!(c["post"].get("rewrite_prompts_probs").is_none(), "zsRE has no probability tests");
    // The neighbourhood prompt is scored against the NQ answer's tokens, one per token.
    let ans = tok.encode(" Walter Sobchak").unwrap();
    assert_eq!(c["post"]["neighborhood_prompts_correct"].as_array().unwrap().len(), ans.len());
    let loc = "nq question: john goodman's character in the big lebowski?";
    let first = argmax_after(loc) == tok.encode(&tok.decode(&ans[..1]).unwrap()).unwrap()[0];
    assert_eq!(c["post"]["neighborhood_prompts_correct"][0], first);
    // EasyEdit's mapping takes `alt` as the new target.
    let alt = tmp.path().join("alt");
    ok(eval("none", &data).args(["--zsre-target", "alt", "--out"]).arg(&alt));
    assert_eq!(lines(&alt.join("cases.jsonl"))[0]["requested_rewrite"]["target_new"]["str"], "unmanned aircraft");
}

/// The records' per-prompt NLLs, by case id (the `time` of a record is not compared).
fn nlls(c: &Value, state: &str) -> Vec<f64> {
    GROUPS
        .iter()
        .flat_map(|(_, k)| c[state][k].as_array().unwrap().iter().flat_map(|p| [p["target_new"].as_f64().unwrap(), p["target_true"].as_f64().unwrap()]))
        .collect()
}

fn without_time(v: &[Value]) -> Vec<Value> {
    v.iter()
        .map(|c| {
            let mut c = c.clone();
            c.as_object_mut().unwrap().remove("time");
            c
        })
        .collect()
}

#[test]
fn sequential_runs_accumulate_and_resume_to_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ft = model_dir().join("hparams/FT_constr_eps5e-3.json");
    let run = |out: &Path| -> String {
        ok(eval("ft", &cases()).arg("--config").arg(&ft).args(["--set", "num_steps=5", "--num-edits", "2", "--limit", "6", "--sequential", "--out"]).arg(out))
    };
    let out = tmp.path().join("seq");
    let table = run(&out);
    assert!(table.contains("final"), "{table}");
    let all = lines(&out.join("cases.jsonl"));
    assert_eq!(all.len(), 6);
    let deltas: Vec<PathBuf> = (0..3).map(|k| out.join(format!("deltas/2-edits-chunk-{k:05}.safetensors"))).collect();
    assert!(deltas.iter().all(|d| d.is_file()));

    // The model after chunk 2 (records 2, 3) is the base with chunks 1 and 2 applied.
    let m1 = tmp.path().join("m1");
    let m2 = tmp.path().join("m2");
    ok(edit_bin().arg("apply-delta").arg("--model").arg(model_dir()).arg(&deltas[0]).arg("--out").arg(&m1));
    ok(edit_bin().arg("apply-delta").arg("--model").arg(&m1).arg(&deltas[1]).arg("--out").arg(&m2));
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(cases()).unwrap()).unwrap();
    let chunk2 = tmp.path().join("chunk2.json");
    std::fs::write(&chunk2, serde_json::to_string(&records[2..4]).unwrap()).unwrap();
    let by_hand = tmp.path().join("by-hand");
    let mut cmd = edit_bin();
    ok(cmd.arg("eval").args(["--method", "none", "--model"]).arg(&m2).arg("--dataset").arg(&chunk2).arg("--out").arg(&by_hand));
    for (seq, hand) in all[2..4].iter().zip(lines(&by_hand.join("cases.jsonl"))) {
        assert_eq!(seq["case_id"], hand["case_id"]);
        for (a, b) in nlls(seq, "post").iter().zip(nlls(&hand, "post")) {
            assert!((a - b).abs() <= 1e-4, "case {}: {a} vs {b}", seq["case_id"]);
        }
        assert_ne!(nlls(seq, "post"), nlls(seq, "pre"), "the edits changed the model");
    }
    // Chunk 1's records are scored again on the final model (retention).
    let finals = lines(&out.join("2-edits-final.jsonl"));
    assert_eq!(finals.len(), 6);
    assert_ne!(finals[0]["final"], all[0]["post"]);

    // Killed after 3 records, mid-way through writing the 4th: a rerun continues to the same files.
    let resumed = tmp.path().join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    std::fs::copy(out.join("run.json"), resumed.join("run.json")).unwrap();
    let text = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    let kept: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(resumed.join("cases.jsonl"), format!("{}\n{{\"case_id\": 3, \"requ", kept.join("\n"))).unwrap();
    std::fs::create_dir_all(resumed.join("deltas")).unwrap();
    for k in 0..2 {
        for ext in ["safetensors", "json"] {
            let name = format!("deltas/2-edits-chunk-{k:05}.{ext}");
            std::fs::copy(out.join(&name), resumed.join(&name)).unwrap();
        }
    }
    run(&resumed);
    assert_eq!(without_time(&lines(&resumed.join("cases.jsonl"))), without_time(&all));
    assert_eq!(lines(&resumed.join("2-edits-final.jsonl")), finals);
    let (a, b): (Value, Value) = (
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap(),
        serde_json::from_str(&std::fs::read_to_string(resumed.join("summary.json")).unwrap()).unwrap(),
    );
    assert_eq!(a[0]["post_rewrite_success"], b[0]["post_rewrite_success"]);
    assert_eq!(a[0]["final_rewrite_success"], b[0]["final_rewrite_success"]);

    // Another run in the same directory is refused, naming what differs.
    let (code, _, stderr) = outcome(eval("ft", &cases()).arg("--config").arg(&ft).args(["--num-edits", "3", "--limit", "6", "--out"]).arg(&out));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("holds another evaluation") && stderr.contains("num_edits") && stderr.contains("--force"), "{stderr}");
}

#[test]
fn a_failed_edit_is_recorded_and_the_run_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let ft = model_dir().join("hparams/FT_constr_eps5e-3.json");
    let out = tmp.path().join("nan");
    let stdout = ok(eval("ft", &cases())
        .arg("--config")
        .arg(&ft)
        .args(["--set", "lr=3e38", "--set", "norm_constraint=false", "--limit", "2", "--json", "--out"])
        .arg(&out));
    let s: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s[0]["num_failed"], 2);
    assert_eq!(s[0]["num_cases"], 2);
    for c in lines(&out.join("cases.jsonl")) {
        assert!(c["error"].as_str().unwrap().contains("loss became NaN"), "{c}");
        assert!(c.get("post").is_none() && c.get("pre").is_some());
    }
}

#[test]
fn bad_records_stop_the_run_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.json");
    std::fs::write(
        &data,
        r#"[{"prompt": "{} plays", "subject": "A B", "target_new": "x", "target_true": "y"},
            {"prompt": "no slot here", "subject": "C D", "target_new": "x", "target_true": "y"},
            {"prompt": "{} speaks", "subject": "E F", "target_new": "x"}]"#,
    )
    .unwrap();
    // The records are refused the same way whether or not they are to be edited.
    for method in ["rome", "none"] {
        let out = tmp.path().join(format!("out-{method}"));
        let (code, _, stderr) = outcome(eval(method, &data).arg("--out").arg(&out));
        assert_eq!(code, Some(1), "{method}: {stderr}");
        assert!(stderr.contains("bad.json") && stderr.contains("record 2: no target_true"), "{method}: {stderr}");
        assert!(stderr.contains("request 1") && stderr.contains("slots"), "{method}: every bad record is listed: {stderr}");
        assert!(!out.exists(), "{method}: nothing written");
    }
}

#[test]
fn shards_merge_into_what_a_single_run_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let ft = model_dir().join("hparams/FT_constr_eps5e-3.json");
    let run = |out: &Path, shard: Option<&str>| {
        let mut c = eval("ft", &cases());
        c.arg("--config").arg(&ft).args(["--set", "num_steps=3", "--num-edits", "2,3", "--limit", "7", "--out"]).arg(out);
        if let Some(s) = shard {
            c.args(["--shard", s]);
        }
        ok(&mut c);
    };
    let single = tmp.path().join("single");
    run(&single, None);
    let shards: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("shard{i}"))).collect();
    for (i, s) in shards.iter().enumerate() {
        run(s, Some(&format!("{i}/3")));
    }
    // Shard 1 of 3 with 2 edits per chunk holds chunk 1 (records 2, 3) only.
    let ids: Vec<u64> = lines(&shards[1].join("cases.jsonl")).iter().filter(|c| c["num_edits"] == 2).map(|c| c["case_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [2, 3]);
    let merged = tmp.path().join("merged");
    let mut cmd = edit_bin();
    cmd.args(["eval", "merge"]).args(&shards).arg("--out").arg(&merged);
    let table = ok(&mut cmd);
    assert!(table.contains("num_edits"), "{table}");
    assert_eq!(without_time(&lines(&merged.join("cases.jsonl"))), without_time(&lines(&single.join("cases.jsonl"))));
    let read = |d: &Path, f: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(d.join(f)).unwrap()).unwrap() };
    let (a, b) = (read(&single, "summary.json"), read(&merged, "summary.json"));
    for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
        for (k, v) in x.as_object().unwrap() {
            if k != "time" && k != "seconds" {
                assert_eq!(&y[k], v, "{k}");
            }
        }
    }
    assert_eq!(read(&single, "run.json"), read(&merged, "run.json"));
    // A missing shard is named.
    let mut cmd = edit_bin();
    let (code, _, stderr) = outcome(cmd.args(["eval", "merge"]).args(&shards[..2]).arg("--out").arg(tmp.path().join("m2")));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("2/3") && stderr.contains("missing"), "{stderr}");
}

#[test]
fn a_scaling_plot_is_drawn_as_svg() {
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("curve.svg");
    ok(eval("none", &cases()).args(["--limit", "12", "--num-edits", "1,4,12", "--plot"]).arg(&svg));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..100.min(text.len())]);
    for label in ["ES", "PS", "NS", "Score", "edits per batch"] {
        assert!(text.contains(&format!("\n{label}\n")), "{label} missing from the plot");
    }
    assert!(text.matches("<circle").count() >= 12, "3 points for each of 4 curves");
    // PNG, with the labels drawn in the embedded font.
    let png = tmp.path().join("curve.png");
    ok(eval("none", &cases()).args(["--limit", "12", "--num-edits", "1,4,12", "--plot"]).arg(&png));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 10_000, "a drawn picture, {} bytes", bytes.len());
    // Another format is refused before any work.
    let (code, _, stderr) = outcome(eval("none", &cases()).args(["--plot"]).arg(tmp.path().join("curve.jpg")));
    assert_eq!(code, Some(1));
    assert!(stderr.contains(".svg or .png"), "{stderr}");
    assert!(!tmp.path().join("curve.jpg").exists());
}

#[test]
fn the_generation_test_is_seeded_and_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &Path, seed: &str| -> Vec<Value> {
        ok(eval("none", &cases()).args(["--limit", "4", "--generation", "--generation-interval", "2", "--seed", seed, "--out"]).arg(out));
        lines(&out.join("cases.jsonl"))
    };
    let a = run(&tmp.path().join("a"), "0");
    let b = run(&tmp.path().join("b"), "0");
    let c = run(&tmp.path().join("c"), "1");
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(cases()).unwrap()).unwrap();
    let lm = common::fixture("fact-gpt2");
    let tok = lm.tokenizer().unwrap();
    for (i, case) in a.iter().enumerate() {
        let post = &case["post"];
        if i % 2 == 1 {
            assert!(post.get("text").is_none(), "case {i}: not a multiple of the interval");
            continue;
        }
        let texts = post["text"].as_array().unwrap();
        let prompts = records[i]["generation_prompts"].as_array().unwrap();
        assert_eq!(texts.len(), prompts.len());
        for (t, p) in texts.iter().zip(prompts) {
            let (t, p) = (t.as_str().unwrap(), p.as_str().unwrap());
            assert!(t.starts_with(p), "{t:?} continues {p:?}");
            assert!(tok.encode(t).unwrap().len() <= 101, "100 tokens in all (re-tokenizing may merge a few)");
        }
        let ge = post["ngram_entropy"].as_f64().unwrap();
        assert!(ge > 1.0 && ge < 10.0, "{ge}");
        assert_eq!(post, &b[i]["post"], "the same seed draws the same texts");
        assert_ne!(post["text"], c[i]["post"]["text"], "another seed draws other texts");
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("a/summary.json")).unwrap()).unwrap();
    let mean = (a[0]["post"]["ngram_entropy"].as_f64().unwrap() + a[2]["post"]["ngram_entropy"].as_f64().unwrap()) / 2.0;
    let reported = summary[0]["post_ngram_entropy"][0].as_f64().unwrap();
    assert!((reported - (mean * 100.0 * 100.0).round_ties_even() / 100.0).abs() < 1e-9, "×100 as the reference: {reported} vs {mean}");
    // zsRE has no generation test.
    let (code, _, stderr) = outcome(eval("none", &fixture_dir("zsre").join("zsre-5.json")).arg("--generation"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("generation"), "{stderr}");
}

#[test]
fn consistency_and_essence_from_attribute_snippets() {
    let tmp = tempfile::tempdir().unwrap();
    let snippets = tmp.path().join("attribute_snippets.json");
    let own = "Alon Javberg speaks Finnish at home and writes in Finnish.";
    std::fs::write(
        &snippets,
        serde_json::json!([{"relation_id": "P103", "target_id": "P103:Finnish", "samples": [
            {"name": "Alon Javberg", "text": own},
            {"name": "Vera Castreberg", "text": "Vera Castreberg grew up speaking Finnish."}
        ]}])
        .to_string(),
    )
    .unwrap();
    let out = tmp.path().join("g");
    let stdout = ok(eval("none", &cases()).args(["--limit", "1", "--generation", "--snippets"]).arg(&snippets).arg("--out").arg(&out));
    assert!(stdout.contains("RS") && stdout.contains("GE"), "{stdout}");
    let post = &lines(&out.join("cases.jsonl"))[0]["post"];
    let rs = post["reference_score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rs), "{rs}");
    assert_eq!(post["essence_text"], serde_json::json!([own]));
    // The essence perplexity by hand: exp(-(1/N) Σ_{i≥1} log p(x_i | x_<i)) over the subject's snippet.
    let lm = common::fixture("fact-gpt2");
    let tok = lm.tokenizer().unwrap();
    let ids = tok.encode(own).unwrap();
    let b = edit::Batch::from_sequences(std::slice::from_ref(&ids), lm.pad_id(), lm.model.device()).unwrap();
    let logits = lm.model.forward(&b, &edit::TraceSpec::logits(edit::Logits::All), &[]).unwrap().logits.unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.i(0).unwrap(), 1).unwrap().to_vec2::<f32>().unwrap();
    let sum: f64 = (1..ids.len()).map(|i| f64::from(lp[i - 1][ids[i] as usize])).sum();
    let want = (-sum / ids.len() as f64).exp();
    let got = post["essence_score"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
    // Not ×100 in the summary, as the reference.
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!((summary[0]["post_essence_score"][0].as_f64().unwrap() - got).abs() < 1e-9);
    assert!((summary[0]["post_reference_score"][0].as_f64().unwrap() - (rs * 10000.0).round_ties_even() / 100.0).abs() < 1e-9);

    // The reference's idf.npy / tfidf_vocab.json; a vocabulary that does not fit them is refused.
    let tfidf = tmp.path().join("tfidf");
    std::fs::create_dir_all(&tfidf).unwrap();
    candle_core::Tensor::new(&[1.0f64, 2.0, 3.0], &candle_core::Device::Cpu).unwrap().write_npy(tfidf.join("idf.npy")).unwrap();
    std::fs::write(tfidf.join("tfidf_vocab.json"), r#"{"finnish": 0, "speaks": 1, "home": 2}"#).unwrap();
    ok(eval("none", &cases()).args(["--limit", "1", "--generation", "--snippets"]).arg(&snippets).arg("--tfidf").arg(&tfidf));
    std::fs::write(tfidf.join("tfidf_vocab.json"), r#"{"finnish": 7}"#).unwrap();
    let (code, _, stderr) = outcome(eval("none", &cases()).args(["--limit", "1", "--generation", "--snippets"]).arg(&snippets).arg("--tfidf").arg(&tfidf));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("do not belong together"), "{stderr}");
}

#[test]
fn attribute_prompts_are_scored_as_rs_evaluator_does() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("attr");
    ok(eval("none", &cases()).args(["--limit", "2", "--attribute-prompts", "--out"]).arg(&out));
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(cases()).unwrap()).unwrap();
    let lm = common::fixture("fact-gpt2");
    let tok = lm.tokenizer().unwrap();
    for (c, r) in lines(&out.join("cases.jsonl")).iter().zip(&records) {
        let got = c["post"]["attribute_prompts_probs"].as_array().unwrap();
        let prompts: Vec<String> = r["attribute_prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
        assert_eq!(got.len(), prompts.len());
        // The single-record scorer the method tests use, one prompt at a time.
        let rr = &r["requested_rewrite"];
        let want =
            edit::eval::score_pairs(&*lm.model, tok, &prompts, rr["target_new"]["str"].as_str().unwrap(), rr["target_true"]["str"].as_str().unwrap()).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g["target_new"].as_f64().unwrap() - w.new).abs() < 1e-4 && (g["target_true"].as_f64().unwrap() - w.true_).abs() < 1e-4);
        }
        assert!(c["post"].get("attribute_prompts_correct").is_none());
    }
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(!summary.contains("attribute"), "not summarised, as the reference");
}

#[test]
fn force_replaces_only_an_evaluation_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let precious = tmp.path().join("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("thesis.tex"), "years of work").unwrap();
    let (code, _, stderr) = outcome(eval("none", &cases()).args(["--limit", "1", "--force", "--out"]).arg(&precious));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not an evaluation directory"), "{stderr}");
    assert!(precious.join("thesis.tex").is_file());
    // An evaluation directory is replaced.
    let out = tmp.path().join("e");
    ok(eval("none", &cases()).args(["--limit", "1", "--out"]).arg(&out));
    ok(eval("none", &cases()).args(["--limit", "2", "--force", "--out"]).arg(&out));
    assert_eq!(lines(&out.join("cases.jsonl")).len(), 2);
}
