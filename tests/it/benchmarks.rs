//! The benchmark layouts EasyEdit's and UltraEdit's users report (EasyEdit's zsRE with
//! portability, KnowEdit, MQuAKE, WikiBigEdit), read from hand-made samples in their published
//! layouts (`tests/fixtures/benchmarks/`, about fact-gpt2's synthetic world) and scored against
//! predictions computed by hand.

use std::path::PathBuf;

use crate::common;

use common::{edit_bin, fixture, fixture_dir, ok, outcome};
use edit::editing::records::{read_dataset, DatasetFormat, ProbeKind, ZsreTarget};
use serde_json::Value;

fn sample(name: &str) -> PathBuf {
    fixture_dir("benchmarks").join(format!("{name}-sample.json"))
}

fn fact_gpt2() -> PathBuf {
    fixture_dir("fact-gpt2")
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn summary(out: &std::path::Path) -> Value {
    let s: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    s[0].clone()
}

#[test]
fn each_layout_is_read_as_published() {
    // EasyEdit's zsRE: `alt` is the new target by default, `answers` on request; the portability
    // question and the locality question (as is, scored against the unedited model) are groups.
    let d = read_dataset(&sample("zsre-easyedit"), None).unwrap();
    assert_eq!((d.format, d.zsre_target, d.records.len()), (DatasetFormat::ZsreEasyEdit, Some(ZsreTarget::Alt), 3));
    let r = &d.records[0];
    assert_eq!((r.request.prompt.as_str(), r.request.target_new.as_str()), ("What is the product made by {}?", "unmanned aircraft"));
    let names: Vec<&str> = r.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["portability_one_hop", "locality_neighborhood"]);
    assert_eq!(r.groups[0].probes[0].answer, "aircraft");
    assert_eq!((r.groups[1].kind, r.groups[1].probes[0].prompt.as_str()), (ProbeKind::Unchanged, "nq question: john goodman's character in the big lebowski"));
    assert_eq!(r.zsre_locality.as_ref().unwrap().0, "nq question: john goodman's character in the big lebowski?", "the reference's locality keeps its \"?\"");
    let d = read_dataset(&sample("zsre-easyedit"), Some(ZsreTarget::Answer)).unwrap();
    assert_eq!(d.records[0].request.target_new, "uniform");

    // KnowEdit: nested ground truths give their first alias; an empty answer drops its probe and
    // a group left empty; locality groups are scored against the unedited model.
    let d = read_dataset(&sample("knowedit"), None).unwrap();
    assert_eq!((d.format, d.records.len()), (DatasetFormat::KnowEdit, 2));
    let r = &d.records[0];
    assert_eq!((r.request.prompt.as_str(), r.request.subject.as_str()), ("{} was born in", "Yarith Alis Holley"));
    assert_eq!((r.request.target_new.as_str(), r.request.target_true.as_deref()), ("Tokyo", Some("Istanbul")));
    assert_eq!(r.request.paraphrase_prompts, ["The birthplace of Yarith Alis Holley is"]);
    let group = |name: &str| r.groups.iter().find(|g| g.name == name);
    let answers = |name: &str| group(name).unwrap().probes.iter().map(|p| p.answer.clone()).collect::<Vec<_>>();
    assert_eq!(answers("portability_Reasoning"), ["Japanese", "Japan"]);
    assert_eq!(answers("portability_Subject_Aliasing"), ["Tokyo"]);
    assert!(group("portability_Logical_Generalization").is_none(), "its only answer is empty");
    assert_eq!(answers("locality_Relation_Specificity"), ["Greek", "farmer"]);
    assert_eq!(answers("locality_Forgetfulness"), ["football"]);
    assert!(r.groups.iter().all(|g| (g.kind == ProbeKind::Unchanged) == g.name.starts_with("locality_")));
    let d = read_dataset(&sample("knowedit-wikibio"), None).unwrap();
    assert_eq!(d.format, DatasetFormat::KnowEdit);
    let r = &d.records[0].request;
    assert_eq!((r.prompt.as_str(), r.subject.as_str()), ("{} is a farmer born in London who", "Lino Morsson"));
    assert_eq!(r.target_new, " speaks German and plays volleyball on weekends.");

    // MQuAKE: every fact of a case is an edit; the multi-hop questions with the new answer's aliases.
    let d = read_dataset(&sample("mquake"), None).unwrap();
    assert_eq!((d.format, d.records.len()), (DatasetFormat::Mquake, 2));
    let r = &d.records[0];
    assert_eq!(r.case_id, 7);
    let edits: Vec<(&str, &str, &str)> = r.edits().map(|q| (q.subject.as_str(), q.target_new.as_str(), q.target_true.as_deref().unwrap())).collect();
    assert_eq!(edits, [("Yarith Alis Holley", "Tokyo", "Istanbul"), ("Faara Ravello", "dentist", "pharmacist")]);
    assert_eq!(r.extra_edits[0].paraphrase_prompts, ["What is Faara Ravello's occupation?"]);
    let g = &r.groups[0];
    assert_eq!((g.name.as_str(), g.exact, g.probes.len()), ("multihop", true, 3));
    assert_eq!((g.probes[0].answer.as_str(), g.probes[0].aliases.clone()), ("Tokyo", vec!["Tokyo City".to_string(), "Tokio".to_string()]));
    assert_eq!((d.records[1].case_id, d.records[1].extra_edits.len()), (9, 0));

    // WikiBigEdit: personas against `ans`, the multi-hop question against `mhop_ans` where there is one.
    let d = read_dataset(&sample("wikibigedit"), None).unwrap();
    assert_eq!(d.format, DatasetFormat::WikiBigEdit);
    let names = |i: usize| d.records[i].groups.iter().map(|g| (g.name.clone(), g.probes[0].answer.clone())).collect::<Vec<_>>();
    assert_eq!(names(0), [("personas".to_string(), "chess".to_string()), ("mhop".to_string(), "chess".to_string())]);
    assert_eq!(names(1), [("personas".to_string(), "pharmacist".to_string())], "mhop is null");
    assert_eq!(d.records[1].zsre_locality.as_ref().unwrap(), &("Verith Quelak plays the sport of".to_string(), " chess".to_string()));
}

/// Every group's reads against the argmax computed by hand, one forward per answer prefix; the
/// summary's per-group means and EasyEdit's per-case portability mean counted by hand.
#[test]
fn groups_are_scored_against_predictions_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("k");
    let data = sample("knowedit");
    let stdout =
        ok(edit_bin().args(["eval", "--method", "none", "-q", "--limit", "1", "--model"]).arg(fact_gpt2()).arg("--dataset").arg(&data).arg("--out").arg(&out));
    assert!(stdout.contains("portability") && stdout.contains("locality"), "{stdout}");
    let case = &lines(&out.join("cases.jsonl"))[0];
    let lm = fixture("fact-gpt2");
    let raw: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&data).unwrap()).unwrap();
    let probe = |family: &str, key: &str, j: usize| -> (String, String) {
        let p = &raw[0][family][key][j];
        let mut a = &p["ground_truth"];
        while let Some(first) = a.get(0) {
            a = first;
        }
        (p["prompt"].as_str().unwrap().to_string(), a.as_str().unwrap().to_string())
    };
    let frac = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64 / v.len() as f64;
    let mut portability = Vec::new();
    for (key, n) in [("Reasoning", 2), ("Subject_Aliasing", 1)] {
        let mut per_probe = Vec::new();
        for j in 0..n {
            let (prompt, answer) = probe("portability", key, j);
            let hand: Vec<bool> = common::argmax_by_hand(&lm, &prompt, &answer).iter().map(|(p, t)| p == t).collect();
            let got: Vec<bool> =
                case["pre"]["groups"][format!("portability_{key}")][j]["correct"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect();
            assert_eq!(got, hand, "{key} {j}");
            per_probe.push(frac(&hand));
        }
        portability.push(per_probe.iter().sum::<f64>() / n as f64);
    }
    for (key, n) in [("Relation_Specificity", 2), ("Forgetfulness", 1)] {
        for j in 0..n {
            let (prompt, answer) = probe("locality", key, j);
            let hand: Vec<Value> = common::argmax_by_hand(&lm, &prompt, &answer).iter().map(|(p, _)| Value::from(*p)).collect();
            assert_eq!(case["pre"]["groups"][format!("locality_{key}")][j]["predicted"], Value::Array(hand), "{key} {j}");
        }
    }
    let s = summary(&out);
    let by_hand = portability.iter().sum::<f64>() / portability.len() as f64 * 100.0;
    assert!((s["pre_portability_acc"][0].as_f64().unwrap() - by_hand).abs() < 0.01, "{} vs {by_hand}", s["pre_portability_acc"]);
    // Nothing edited: every prediction is unchanged.
    assert_eq!(s["post_locality_acc"][0], 100.0);
    assert_eq!(s["dataset_format"], "knowedit");
}

/// An MQuAKE case edits all its facts in one edit: MEMIT on fact-gpt2 with the reference's
/// statistics; the second fact's answer becomes the argmax, as an edit of the two facts as plain
/// requests makes it. EasyEdit's locality is then post against pre, per token.
#[test]
fn mquake_edits_every_fact_and_locality_compares_with_the_unedited_model() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = common::shared_fact_gpt2_stats();
    let run = |data: &std::path::Path, out: &std::path::Path| {
        ok(edit_bin()
            .args(["eval", "--method", "memit", "-q", "--num-edits", "1", "--config"])
            .arg(fact_gpt2().join("hparams/MEMIT_tuned.json"))
            .arg("--stats-dir")
            .arg(stats)
            .arg("--model")
            .arg(fact_gpt2())
            .arg("--dataset")
            .arg(data)
            .arg("--out")
            .arg(out))
    };
    let out = tmp.path().join("mq");
    let stdout = run(&sample("mquake"), &out);
    assert!(stdout.contains("multihop") && stdout.contains("multihop_exact"), "{stdout}");
    let cases = lines(&out.join("cases.jsonl"));
    assert_eq!(cases[0]["requested_rewrite"].as_array().unwrap().len(), 2);
    // One answer token per fact: Tokyo, then dentist.
    assert_eq!(cases[0]["pre"]["rewrite_prompts_correct"], serde_json::json!([false, false]));
    let post = cases[0]["post"]["rewrite_prompts_correct"].as_array().unwrap();
    assert_eq!((post.len(), &post[1]), (2, &Value::Bool(true)), "the case's second fact was edited with its first");
    assert_eq!(cases[0]["post"]["groups"]["multihop"].as_array().unwrap().len(), 3);

    // Both facts as one chunk of plain requests: the same MEMIT edit, so the same verdicts.
    let requests = tmp.path().join("r.json");
    std::fs::write(
        &requests,
        r#"[{"prompt": "{} was born in", "subject": "Yarith Alis Holley", "target_new": "Tokyo", "target_true": "Istanbul"},
            {"prompt": "{} works as a", "subject": "Faara Ravello", "target_new": "dentist", "target_true": "pharmacist"}]"#,
    )
    .unwrap();
    let edited = tmp.path().join("edited");
    ok(edit_bin()
        .args(["apply", "-q", "--method", "memit", "--config"])
        .arg(fact_gpt2().join("hparams/MEMIT_tuned.json"))
        .arg("--stats-dir")
        .arg(stats)
        .arg("--model")
        .arg(fact_gpt2())
        .arg(&requests)
        .arg("--out")
        .arg(&edited));
    let files = edit::hub::resolve_model(edited.to_str().unwrap(), &edit::hub::HubOptions::default()).unwrap();
    let edited_lm = edit::load_model(files, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    for (i, (prompt, answer)) in [("Yarith Alis Holley was born in", "Tokyo"), ("Faara Ravello works as a", "dentist")].into_iter().enumerate() {
        let hand = common::argmax_by_hand(&edited_lm, prompt, answer);
        assert_eq!(post[i], Value::Bool(hand[0].0 == hand[0].1), "{prompt}");
    }

    // EasyEdit's zsRE edited: locality per probe is the share of positions whose prediction is unchanged.
    let out = tmp.path().join("z");
    run(&sample("zsre-easyedit"), &out);
    let mut per_case = Vec::new();
    for c in lines(&out.join("cases.jsonl")) {
        let (pre, post) = (&c["pre"]["groups"]["locality_neighborhood"][0]["predicted"], &c["post"]["groups"]["locality_neighborhood"][0]["predicted"]);
        let (pre, post) = (pre.as_array().unwrap(), post.as_array().unwrap());
        assert_eq!(pre.len(), post.len());
        per_case.push(pre.iter().zip(post).filter(|(a, b)| a == b).count() as f64 / pre.len() as f64 * 100.0);
    }
    let s = summary(&out);
    let mean = per_case.iter().sum::<f64>() / per_case.len() as f64;
    assert!((s["post_locality_acc"][0].as_f64().unwrap() - mean).abs() < 0.01, "{} vs {mean}", s["post_locality_acc"]);
    let run: Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!((&run["zsre_target"], &run["dataset_format"]), (&Value::from("alt"), &Value::from("zsre_easyedit")));
}

#[test]
fn bad_records_are_named_with_their_field() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    let refused = |text: &str| -> String {
        std::fs::write(&bad, text).unwrap();
        read_dataset(&bad, None).err().expect("refused").to_string()
    };
    let e = refused(r#"[{"subject": "A", "prompt": "A is", "target_new": "x", "locality": {}}, {"subject": "B", "target_new": "y", "locality": {}}]"#);
    assert!(e.contains("record 1") && e.contains("`prompt` (or `text`)"), "{e}");
    let e = refused(r#"[{"subject": "A", "prompt": "A is", "target_new": "x", "locality": {"Forgetfulness": [{"ground_truth": "y"}]}}]"#);
    assert!(e.contains("record 0") && e.contains("locality.Forgetfulness[0]") && e.contains("prompt"), "{e}");
    let e = refused(
        r#"[{"requested_rewrite": [{"prompt": "A is", "subject": "A", "target_new": {"str": "x"}, "target_true": {"str": "y"}}], "questions": ["Q?"], "new_answer": "x"}]"#,
    );
    assert!(e.contains("record 0") && e.contains("requested_rewrite[0]") && e.contains("{}"), "{e}");
    let e = refused(
        r#"[{"requested_rewrite": [{"prompt": "{} is", "subject": "A", "target_new": {"str": "x"}, "target_true": {"str": "y"}}], "new_answer": "x"}]"#,
    );
    assert!(e.contains("questions"), "{e}");
    let e = refused(r#"[{"update": "U", "rephrase": "R", "ans": "a", "personas": "P", "loc": "L", "loc_ans": "b", "mhop": "M", "mhop_ans": null}]"#);
    assert!(e.contains("record 0") && e.contains("mhop_ans"), "{e}");
    let e = refused(
        r#"[{"src": "What is A?", "subject": "A", "alt": "x", "answers": ["y"], "rephrase": "R", "loc": "nq question: q", "loc_ans": "z", "portability": {"New Question": "Q"}}]"#,
    );
    assert!(e.contains("portability") && e.contains("New Answer"), "{e}");
    let e = refused(r#"[{"question": "Q?", "answer": "A"}]"#);
    assert!(e.contains("KnowEdit (`subject`") && e.contains("MQuAKE (`requested_rewrite` as a list") && e.contains("WikiBigEdit (`update`"), "{e}");

    // From the command line: exit 1, and nothing written where the results would go.
    std::fs::write(&bad, r#"[{"subject": "B", "target_new": "y", "locality": {}}]"#).unwrap();
    let out = tmp.path().join("out");
    let (code, _, err) =
        outcome(edit_bin().args(["eval", "--method", "none", "-q", "--model"]).arg(fact_gpt2()).arg("--dataset").arg(&bad).arg("--out").arg(&out));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("record 0"), "{err}");
    assert!(!out.exists(), "nothing written");
}

/// `--stream` reads the file a chunk at a time and writes what a whole read writes: the same
/// per-case lines, final scores and summary (UltraEdit in sequence, so the edits build on each
/// other and the final pass reads the file again); JSON Lines as well as a JSON list.
#[test]
fn streamed_runs_write_what_whole_runs_write() {
    let tmp = tempfile::tempdir().unwrap();
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(sample("knowedit")).unwrap()).unwrap();
    let jsonl = tmp.path().join("knowedit.jsonl");
    std::fs::write(&jsonl, records.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let run = |data: &std::path::Path, out: &std::path::Path, extra: &[&str]| {
        let mut c = edit_bin();
        c.args(["eval", "--method", "ultraedit", "-q", "--sequential", "--json", "--set", "lr=0.01", "--config"])
            .arg(fact_gpt2().join("hparams/UltraEdit.json"))
            .arg("--model")
            .arg(fact_gpt2())
            .arg("--dataset")
            .arg(data)
            .arg("--out")
            .arg(out)
            .args(extra);
        outcome(&mut c)
    };
    let without_time = |v: &mut Value| {
        for k in ["time", "seconds"] {
            v.as_object_mut().unwrap().remove(k);
        }
    };
    let whole = tmp.path().join("whole");
    let (code, stdout, err) = run(&sample("knowedit"), &whole, &[]);
    assert_eq!(code, Some(0), "{err}");
    let mut want: Value = serde_json::from_str(&stdout).unwrap();
    without_time(&mut want[0]);
    for data in [sample("knowedit"), jsonl] {
        let out = tmp.path().join("streamed");
        let (code, stdout, err) = run(&data, &out, &["--stream", "--force"]);
        assert_eq!(code, Some(0), "{err}");
        let mut got: Value = serde_json::from_str(&stdout).unwrap();
        without_time(&mut got[0]);
        assert_eq!(got[0].as_object().unwrap().keys().collect::<Vec<_>>(), want[0].as_object().unwrap().keys().collect::<Vec<_>>());
        for (k, v) in want[0].as_object().unwrap() {
            if k != "dataset" {
                assert_eq!(&got[0][k], v, "{k}");
            }
        }
        assert!(got[0]["final_locality_acc"].is_array());
        let (mut a, mut b) = (lines(&whole.join("cases.jsonl")), lines(&out.join("cases.jsonl")));
        a.iter_mut().chain(b.iter_mut()).for_each(without_time);
        assert_eq!(a, b);
        assert_eq!(lines(&whole.join("1-edits-final.jsonl")), lines(&out.join("1-edits-final.jsonl")));
        assert_eq!(std::fs::read_to_string(whole.join("order.json")).unwrap(), std::fs::read_to_string(out.join("order.json")).unwrap());
        // A streamed run is not resumable: the same command again is refused.
        let (code, _, err) = run(&data, &out, &["--stream"]);
        assert_eq!(code, Some(1));
        assert!(err.contains("cannot be resumed") && err.contains("--force"), "{err}");
    }
    let (code, _, err) = run(&sample("knowedit"), &tmp.path().join("two"), &["--stream", "--num-edits", "1,2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("one --num-edits value"), "{err}");

    // Every bad record is named by the checking pass, before any edit: nothing is written.
    let bad = tmp.path().join("bad.jsonl");
    let mut text = std::fs::read_to_string(tmp.path().join("knowedit.jsonl")).unwrap();
    text.push_str("{\"subject\": \"C\", \"target_new\": \"x\", \"locality\": {}}\n");
    std::fs::write(&bad, text).unwrap();
    let out = tmp.path().join("bad-out");
    let (code, _, err) = run(&bad, &out, &["--stream"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("record 2") && err.contains("prompt"), "{err}");
    assert!(!out.exists());
}
