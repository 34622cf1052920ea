//! Causal tracing against the reference: `fact-gpt2/trace-golden.json` holds what kmeng01/rome's
//! `calculate_hidden_flow` returned on this model (scripts/golden_trace.py, torch on the CPU),
//! for hidden/MLP/attention traces of six facts and variants (window, samples, replacing noise,
//! no noise, no expectation, a wrong expectation). Plus the identities that hold exactly:
//! restoring every token of any one layer gives the clean probability; with no noise every
//! score is the clean one.

use crate::common;

use serde_json::Value;

use edit::trace::{self, Fact, Kind, TraceOptions};

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture_dir("fact-gpt2").join("trace-golden.json")).unwrap()).unwrap()
}

fn kind(name: &str) -> Kind {
    match name {
        "" => Kind::Hidden,
        k => k.parse().unwrap(),
    }
}

#[test]
fn traces_match_the_reference_code() {
    let lm = common::fixture("fact-gpt2");
    let tok = lm.tokenizer().unwrap();
    let g = golden();
    let runs = g["runs"].as_array().unwrap();
    // The s3 rule's scale: the std of the six subjects' embeddings.
    let subjects: Vec<&str> = runs[..18].iter().step_by(3).map(|r| r["subject"].as_str().unwrap()).collect();
    let std = trace::embedding_std(&*lm.model, tok, &subjects).unwrap();
    let want = g["subjects_embedding_std"].as_f64().unwrap();
    assert!((std - want).abs() < 1e-6 * want, "embedding std {std} vs the reference's {want}");

    let mut worst: f64 = 0.0;
    for (i, r) in runs.iter().enumerate() {
        let fact = Fact {
            id: Some(r["case_id"].clone()),
            prompt: r["prompt"].as_str().unwrap().into(),
            subject: r["subject"].as_str().unwrap().into(),
            expect: r["expect"].as_str().map(String::from),
        };
        let opts = TraceOptions {
            samples: r["samples"].as_u64().unwrap() as usize,
            window: r["window_arg"].as_u64().unwrap() as usize,
            noise_level: r["noise"].as_f64().unwrap(),
            replace: r["replace"].as_bool().unwrap(),
            ..TraceOptions::default()
        };
        let k = kind(r["kind_arg"].as_str().unwrap());
        let p = trace::prepare(&*lm.model, tok, &fact, &opts, &[k]).unwrap();
        let t = trace::trace_kind(&*lm.model, &p, k, &opts).unwrap();
        let ctx = format!("run {i} ({} {:?})", fact.prompt, k);
        assert_eq!(t.correct_prediction, r["correct_prediction"].as_bool().unwrap(), "{ctx}");
        if !t.correct_prediction {
            assert!(t.scores.is_empty(), "{ctx}: a fact the model does not predict is not traced");
            continue;
        }
        assert_eq!(t.answer, r["answer"].as_str().unwrap(), "{ctx}");
        assert_eq!(t.kind, r["kind"].as_str().unwrap(), "{ctx}");
        let tokens: Vec<&str> = r["input_tokens"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(t.input_tokens, tokens, "{ctx}");
        let range = r["subject_range"].as_array().unwrap();
        assert_eq!(t.subject_range, (range[0].as_u64().unwrap() as usize, range[1].as_u64().unwrap() as usize), "{ctx}");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5;
        let high = r["high_score"].as_f64().unwrap();
        let low = r["low_score"].as_f64().unwrap();
        assert!(close(t.high_score, high), "{ctx}: high {} vs {high}", t.high_score);
        assert!(close(t.low_score.unwrap(), low), "{ctx}: low {:?} vs {low}", t.low_score);
        let scores = r["scores"].as_array().unwrap();
        assert_eq!(t.scores.len(), scores.len(), "{ctx}");
        for (tok_i, (ours, theirs)) in t.scores.iter().zip(scores).enumerate() {
            for (l, (a, b)) in ours.iter().zip(theirs.as_array().unwrap()).enumerate() {
                let b = b.as_f64().unwrap();
                worst = worst.max((a - b).abs());
                assert!(close(*a, b), "{ctx}: score at token {tok_i}, layer {l}: {a} vs the reference's {b}");
            }
        }
    }
    eprintln!("largest difference from the reference's scores: {worst:.2e}");
}

#[test]
fn restoring_a_whole_layer_gives_the_clean_probability_and_no_noise_changes_nothing() {
    let lm = common::fixture("fact-gpt2");
    let tok = lm.tokenizer().unwrap();
    let fact = Fact { id: None, prompt: "The native language of Alon Javberg is".into(), subject: "Alon Javberg".into(), expect: None };
    let opts = TraceOptions { noise_level: 0.5, ..TraceOptions::default() };
    let n_layer = lm.config().n_layer;
    let p = trace::prepare(&*lm.model, tok, &fact, &opts, &Kind::ALL).unwrap();
    assert!(p.low_score() < 0.5 * p.high_score(), "the noise should hide the fact: {} vs {}", p.low_score(), p.high_score());
    let t = p.n_tokens();
    // Every token of one block output restored: the rest of the run is the clean one. (MLP or
    // attention outputs restored everywhere are not: the noise stays in the residual stream.)
    for l in 0..n_layer {
        let places: Vec<(usize, usize)> = (0..t).map(|tok| (tok, l)).collect();
        let got = trace::restored_probability(&*lm.model, &p, Kind::Hidden, &places, &opts).unwrap();
        assert!((got - p.high_score()).abs() < 1e-6, "layer {l}: {got} vs clean {}", p.high_score());
    }
    // The batched trace agrees with single restorations.
    let hidden = trace::trace_kind(&*lm.model, &p, Kind::Hidden, &opts).unwrap();
    for (tok_i, l) in [(0, 0), (p.subject_range().1 - 1, 2), (t - 1, n_layer - 1)] {
        let single = trace::restored_probability(&*lm.model, &p, Kind::Hidden, &[(tok_i, l)], &opts).unwrap();
        assert!((hidden.scores[tok_i][l] - single).abs() < 1e-6, "({tok_i}, {l}): {} vs {single}", hidden.scores[tok_i][l]);
    }
    // The last layer's state at the last token decides the prediction alone.
    assert!((hidden.scores[t - 1][n_layer - 1] - p.high_score()).abs() < 1e-6);

    let quiet = TraceOptions { noise_level: 0.0, ..TraceOptions::default() };
    let p = trace::prepare(&*lm.model, tok, &fact, &quiet, &Kind::ALL).unwrap();
    assert!((p.low_score() - p.high_score()).abs() < 1e-6);
    for kind in Kind::ALL {
        let tr = trace::trace_kind(&*lm.model, &p, kind, &quiet).unwrap();
        for row in &tr.scores {
            for &s in row {
                assert!((s - p.high_score()).abs() < 1e-6, "{kind:?}: {s} vs clean {}", p.high_score());
            }
        }
    }
}

/// `edit trace` as a user runs it: a file of facts, JSON lines on stdout in the reference's
/// fields, heatmaps and the average-effect plot, the summary with the suggested layer.
#[test]
fn the_command_traces_a_file_of_facts() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(common::fixture_dir("fact-gpt2").join("cases.json")).unwrap()).unwrap();
    let mut facts: Vec<Value> = cases[..3].to_vec();
    // A fact the model does not predict: reported, not traced.
    facts[2]["requested_rewrite"]["target_true"]["str"] = "Atlantis".into();
    let file = dir.path().join("facts.json");
    std::fs::write(&file, serde_json::to_string(&facts).unwrap()).unwrap();
    let plots = dir.path().join("plots");
    let summary = dir.path().join("out/summary.json");
    let (code, stdout, stderr) = common::outcome(
        common::edit_bin()
            .args(["trace", "--model"])
            .arg(common::fixture_dir("fact-gpt2"))
            .arg("--facts")
            .arg(&file)
            .args(["--kind", "hidden,mlp", "--window", "2", "--noise", "s3"])
            .arg("--plot")
            .arg(&plots)
            .arg("--summary")
            .arg(&summary),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], facts[i / 2]["case_id"]);
        assert_eq!(l["kind"], if i % 2 == 0 { "" } else { "mlp" });
        if i < 4 {
            assert_eq!(l["correct_prediction"], true);
            let scores = l["scores"].as_array().unwrap();
            assert_eq!(scores.len(), l["input_tokens"].as_array().unwrap().len());
            assert_eq!(scores[0].as_array().unwrap().len(), 6);
            for key in ["low_score", "high_score", "input_ids", "subject_range", "answer", "window"] {
                assert!(!l[key].is_null(), "{key} in {l}");
            }
        } else {
            assert_eq!(l["correct_prediction"], false);
            assert!(l.get("scores").is_none());
        }
    }
    let png = |name: &str| std::fs::read(plots.join(name)).unwrap()[..8] == *b"\x89PNG\r\n\x1a\n";
    assert!(png("French_0.png") && png("French_0_mlp.png") && png("average_indirect_effect.png"));
    assert!(!plots.join("French_2.png").exists());
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!((s["facts"].as_u64(), s["traced"].as_u64()), (Some(3), Some(2)));
    assert_eq!(s["kinds"]["mlp"]["average_indirect_effect"]["last_subject"].as_array().unwrap().len(), 6);
    let layer = s["suggested_layer"].as_u64().unwrap();
    assert!(stderr.contains(&format!("--set layers=[{layer}]")), "{stderr}");
    assert!(s["noise"]["level"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let model = common::fixture_dir("fact-gpt2");
    let run = |args: &[&str]| common::outcome(common::edit_bin().args(["trace", "--model"]).arg(&model).args(args));
    let (code, _, err) = run(&["--prompt", "The native language of Alon Javberg is", "--subject", "Alon Javberg", "--noise", "loud"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--noise loud") && err.contains("s<k>"), "{err}");
    let (code, out, err) = run(&["--prompt", "The native language of Alon Javberg is", "--subject", "Bob"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty() && err.contains("\"Bob\" is not in the prompt"), "{err}");
    let (code, _, err) = run(&["--prompt", "The native language of Alon Javberg is"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(&["--facts", "/nonexistent/facts.json"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/facts.json"), "{err}");
}
