//! Requests (formats, validation), subject positions and hyperparameter selection through the
//! library API.

use crate::common;

use std::path::{Path, PathBuf};

use edit::editing::alphaedit::AlphaEditHparams;
use edit::editing::emmet::EmmetHparams;
use edit::editing::ft::FtHparams;
use edit::editing::hparams::{self, resolve, ContextTemplates, MethodConfig, SHIPPED};
use edit::editing::memit::{MemitHparams, Solver};
use edit::editing::mend::MendHparams;
use edit::editing::positions::{check_locatable, subject_last_index};
use edit::editing::registry::Method;
use edit::editing::requests::{parse_requests, read_requests, validate, Request};
use edit::editing::rome::RomeHparams;
use edit::editing::ultraedit::UltraEditHparams;
use edit::tokenizer::Tokenizer;
use edit::{Family, ModelConfig};
use serde_json::{json, Value};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

fn tok() -> Tokenizer {
    Tokenizer::from_file(&fixture("tiny-gpt2/tokenizer.json")).unwrap()
}

fn cfg(v: Value) -> ModelConfig {
    ModelConfig::from_json(&v, Path::new("c")).unwrap()
}

fn gpt2(n_layer: usize, d: usize) -> ModelConfig {
    cfg(json!({"model_type": "gpt2", "n_embd": d, "n_head": 16, "n_layer": n_layer, "vocab_size": 50257, "n_positions": 1024}))
}

fn gptj() -> ModelConfig {
    cfg(json!({"model_type": "gptj", "n_embd": 4096, "n_head": 16, "n_layer": 28, "n_inner": null, "rotary_dim": 64,
               "vocab_size": 50400, "n_positions": 2048}))
}

fn neox20b() -> ModelConfig {
    cfg(json!({"model_type": "gpt_neox", "hidden_size": 6144, "num_attention_heads": 64, "num_hidden_layers": 44,
               "intermediate_size": 24576, "vocab_size": 50432, "max_position_embeddings": 2048, "rotary_pct": 0.25,
               "rotary_emb_base": 10000}))
}

fn tiny() -> ModelConfig {
    ModelConfig::from_file(&fixture("tiny-gpt2/config.json")).unwrap()
}

const REQ: &str = r#"{"prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": {"str": "football"}}"#;

// ---------------------------------------------------------------------------------------------
// Request formats

#[test]
fn reference_list_single_dict_and_plain_strings() {
    let list = format!(
        r#"[{REQ}, {{"prompt": "The mother tongue of {{}} is", "subject": "Danielle Darrieux",
             "target_new": "English", "target_true": {{"str": "French"}}, "case_id": 17, "relation_id": "P103"}}]"#
    );
    let reqs = parse_requests(&list, "list.json").unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].index, reqs[1].index), (0, 1));
    assert_eq!(reqs[0].target_new, "football");
    assert_eq!(reqs[0].target_new_spaced(), " football");
    assert_eq!(reqs[0].filled_prompt(), "LeBron James plays the sport of");
    assert_eq!(reqs[0].case_id, None);
    assert_eq!(reqs[1].target_new, "English");
    assert_eq!(reqs[1].target_true.as_deref(), Some("French"));
    assert_eq!(reqs[1].case_id, Some(json!(17)));
    assert_eq!(
        reqs[1].to_reference_json(),
        json!({"case_id": 17, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
               "target_new": {"str": "English"}, "target_true": {"str": "French"}})
    );

    let single = parse_requests(REQ, "one.json").unwrap();
    assert_eq!(single.len(), 1);
    assert_eq!(single[0].subject, "LeBron James");
    // A target that already starts with a space keeps it, and is stored exactly as given.
    let spaced = parse_requests(r#"{"prompt": "{} is", "subject": "a", "target_new": " b"}"#, "s").unwrap();
    assert_eq!(spaced[0].target_new, " b");
    assert_eq!(spaced[0].target_new_spaced(), " b");
}

#[test]
fn counterfact_records() {
    let text = r#"[{"case_id": 4088, "pararel_idx": 8516,
        "requested_rewrite": {"prompt": "{}, a citizen of", "relation_id": "P27",
            "target_new": {"str": "Belgium", "id": "Q31"}, "target_true": {"str": "Switzerland", "id": "Q39"},
            "subject": "Ferdinand de Saussure"},
        "paraphrase_prompts": ["Blah. Ferdinand de Saussure, who is a citizen of", "x"],
        "neighborhood_prompts": ["Ludwig Hohl, who holds a citizenship from"],
        "attribute_prompts": ["y"], "generation_prompts": ["z"]}]"#;
    let r = parse_requests(text, "cf.json").unwrap().remove(0);
    assert_eq!(r.case_id, Some(json!(4088)));
    assert_eq!(r.prompt, "{}, a citizen of");
    assert_eq!(r.target_new, "Belgium");
    assert_eq!(r.target_true.as_deref(), Some("Switzerland"));
    assert_eq!(r.paraphrase_prompts.len(), 2);
    assert_eq!(r.neighborhood_prompts, vec!["Ludwig Hohl, who holds a citizenship from"]);
    assert_eq!(r.label(), "request 0 (case_id 4088)");
}

#[test]
fn simplified_counterfact_records() {
    let text = r#"{"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English",
        "subject": "Danielle Darrieux", "ground_truth": "French",
        "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
        "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French"}"#;
    let r = parse_requests(text, "s.json").unwrap().remove(0);
    assert_eq!(r.prompt, "The mother tongue of {} is");
    assert_eq!(r.target_true.as_deref(), Some("French"));
    assert_eq!(r.paraphrase_prompts, vec!["Where Danielle Darrieux is from, people speak the language of"]);
    assert_eq!(r.neighborhood_prompts, vec!["Michel Rocard is a native speaker of"]);
}

#[test]
fn json_lines() {
    let text =
        format!("{REQ}\n\n{}\n   \n", r#"{"case_id": 3, "requested_rewrite": {"prompt": "{} is in", "subject": "Rome", "target_new": {"str": "Italy"}}}"#);
    let reqs = parse_requests(&text, "r.jsonl").unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].index, 1);
    assert_eq!(reqs[1].case_id, Some(json!(3)));

    let err = parse_requests(&format!("{REQ}\n{{\"prompt\": \n"), "r.jsonl").unwrap_err().to_string();
    assert!(err.contains("r.jsonl: line 2 (request 1) is not valid JSON"), "{err}");
    let bad_field = format!("{REQ}\n\n{}\n", r#"{"prompt": "{} is", "subject": "x", "target_new": 5}"#);
    let err = parse_requests(&bad_field, "r.jsonl").unwrap_err().to_string();
    assert!(err.contains("line 3 (request 1)") && err.contains("`target_new`"), "{err}");
}

#[test]
fn read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.json");
    std::fs::write(&path, format!("[{REQ}]")).unwrap();
    let reqs = read_requests(&path).unwrap();
    assert_eq!(reqs[0].subject, "LeBron James");
    let err = read_requests(&dir.path().join("missing.json")).unwrap_err().to_string();
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn parse_errors_name_the_request_and_the_field() {
    let cases = [
        ("[]", "empty list"),
        ("", "is empty"),
        ("42", "JSON number"),
        (r#"[{"prompt": "{} is", "target_new": "x"}]"#, "field `subject` is missing"),
        (r#"[{"prompt": "{} is", "subject": "s"}]"#, "field `target_new` is missing"),
        (r#"[{"prompt": "{} is", "subject": "s", "target_new": {"id": "Q1"}}]"#, "`target_new` must be a string or {\"str\""),
        (r#"[{"prompt": 1, "subject": "s", "target_new": "x"}]"#, "`prompt` must be a string"),
        (r#"[1]"#, "expected an object"),
        (r#"[{"requested_rewrite": "x"}]"#, "`requested_rewrite` must be an object"),
        (r#"[{"prompt": "{} is", "subject": "s", "target_new": "x", "paraphrase_prompts": [1]}]"#, "`paraphrase_prompts[0]`"),
        (r#"[{"prompt": "{} is", "subject": "s", "target_new": "x", "case_id": [1]}]"#, "`case_id`"),
    ];
    for (text, want) in cases {
        let err = parse_requests(text, "in.json").unwrap_err().to_string();
        assert!(err.contains("in.json") && err.contains(want), "{text}: {err}");
    }
    let err = parse_requests(&format!("[{REQ}, {REQ}, {{\"prompt\": \"x\"}}]"), "in.json").unwrap_err().to_string();
    assert!(err.contains("request 2"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Request validation

#[test]
fn validation_reports_every_bad_request() {
    let text = r#"[
        {"prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"},
        {"prompt": "{} and {} play", "subject": "X", "target_new": "y", "case_id": 17},
        {"prompt": "The sport of {} is", "subject": "  ", "target_new": "y"},
        {"prompt": "The sport of {} is", "subject": "Z", "target_new": " "},
        {"prompt": "The sport of{} is", "subject": "Z", "target_new": "y"},
        {"prompt": "{}s are people", "subject": "American", "target_new": "y"},
        {"prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux", "target_new": "y"}
    ]"#;
    let reqs = parse_requests(text, "r.json").unwrap();
    let err = validate(&reqs, &tok(), 1024).unwrap_err().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines[0].contains("6 problems"), "{err}");
    assert!(!err.contains("request 0"), "{err}");
    assert!(err.contains("request 1 (case_id 17): prompt \"{} and {} play\" has 2 \"{}\" slots"), "{err}");
    assert!(err.contains("request 2: subject is empty"), "{err}");
    assert!(err.contains("request 3: target_new is empty"), "{err}");
    assert!(err.contains("request 4:") && err.contains("must end with a space"), "{err}");
    assert!(err.contains("request 5:") && err.contains("cannot be located"), "{err}");
    assert!(err.contains("request 6:") && err.contains("(e.g. \"The mother tongue of {} is\")"), "{err}");
    validate(&reqs[..1], &tok(), 1024).unwrap();
}

#[test]
fn validation_checks_the_context_length() {
    let reqs = parse_requests(REQ, "r").unwrap();
    // "LeBron James plays the sport of" = 7 tokens, " football" = 1.
    validate(&reqs, &tok(), 8).unwrap();
    let err = validate(&reqs, &tok(), 7).unwrap_err().to_string();
    assert!(err.contains("8 tokens, more than the model's context of 7"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Subject positions

#[test]
fn subject_positions_match_the_golden_reference_indexes() {
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(fixture("tiny-gpt2/golden.json")).unwrap()).unwrap();
    let tok = tok();
    for p in golden["prompts"].as_array().unwrap() {
        let (template, subject) = (p["template"].as_str().unwrap(), p["subject"].as_str().unwrap());
        let want = p["subject_last_index"].as_u64().unwrap() as usize;
        assert_eq!(subject_last_index(&tok, template, subject).unwrap(), want, "{template}");
        check_locatable(&tok, template, subject).unwrap();
        let ids: Vec<u32> = p["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(p["text"].as_str().unwrap()).unwrap(), ids);
    }
}

// ---------------------------------------------------------------------------------------------
// Hyperparameter selection

fn models() -> Vec<(String, ModelConfig)> {
    let mut out: Vec<(String, ModelConfig)> = vec![
        ("gpt2".into(), gpt2(12, 768)),
        ("gpt2-medium".into(), gpt2(24, 1024)),
        ("gpt2-large".into(), gpt2(36, 1280)),
        ("gpt2-xl".into(), gpt2(48, 1600)),
        ("gpt-j-6b".into(), gptj()),
        ("gpt-neox-20b".into(), neox20b()),
    ];
    // The Hub's config.json of the Llama-style models the shipped configs are for.
    for e in std::fs::read_dir(common::fixture_dir("hub-configs")).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_ascii_lowercase();
        out.push((name, ModelConfig::from_file(&path).unwrap()));
    }
    out
}

/// A shipped file parses as its method, validates on its model, and is what `resolve` picks for
/// that model by size alone (the defaults) or by name (all).
fn check_shipped<H: MethodConfig>(s: &hparams::Shipped, cfg: &edit::ModelConfig) {
    let h: H = serde_json::from_str(s.text).unwrap();
    h.validate(cfg).unwrap_or_else(|e| panic!("{}: {e}", s.path));
    if s.default {
        // Selected by its name, and by size alone (a local directory with an unrelated name): the
        // first default of its method for a model of this family and shape.
        let r = resolve::<H>(cfg, &format!("/models/{}", s.model), None, &[]).unwrap();
        assert_eq!(r.source, s.describe());
        assert_eq!(r.hparams, h);
        let first = SHIPPED
            .iter()
            .find(|o| {
                o.method == s.method
                    && o.default
                    && o.family == cfg.family
                    && o.n_layer == cfg.n_layer
                    && o.d_model == cfg.d_model
                    && o.vocab.is_none_or(|v| v == cfg.vocab_size)
            })
            .unwrap();
        let r = resolve::<H>(cfg, "/models/local-copy", None, &[]).unwrap();
        assert_eq!(r.source, first.describe(), "{}", s.path);
    }
    let r = resolve::<H>(cfg, "x", Some(std::path::Path::new(s.name())), &[]).unwrap();
    assert_eq!(r.source, s.describe());
    assert_eq!(r.hparams, h);
}

#[test]
fn every_shipped_config_loads_and_validates_for_its_model() {
    assert_eq!(SHIPPED.len(), 107);
    let models = models();
    for s in SHIPPED {
        let (_, cfg) = models.iter().find(|(name, _)| name == s.model).unwrap_or_else(|| panic!("no config for {}", s.model)).clone();
        assert_eq!((cfg.family, cfg.n_layer, cfg.d_model), (s.family, s.n_layer, s.d_model), "{}", s.path);
        match s.method {
            Method::Rome => check_shipped::<RomeHparams>(s, &cfg),
            Method::Memit => check_shipped::<MemitHparams>(s, &cfg),
            Method::Ft => check_shipped::<FtHparams>(s, &cfg),
            Method::Mend => check_shipped::<MendHparams>(s, &cfg),
            Method::AlphaEdit => check_shipped::<AlphaEditHparams>(s, &cfg),
            Method::UltraEdit => check_shipped::<UltraEditHparams>(s, &cfg),
            Method::Emmet => check_shipped::<EmmetHparams>(s, &cfg),
        }
        // The file on disk is the one compiled in.
        let on_disk = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(s.path)).unwrap();
        assert_eq!(on_disk, s.text);
    }
}

#[test]
fn selection_by_hub_id() {
    let xl = gpt2(48, 1600);
    for id in ["gpt2-xl", "openai-community/gpt2-xl", "GPT2-XL", "/data/models/gpt2-xl/"] {
        let r = resolve::<MemitHparams>(&xl, id, None, &[]).unwrap();
        assert_eq!(r.source, "configs/memit/gpt2-xl.json (reference)", "{id}");
        assert_eq!(r.hparams.layers, vec![13, 14, 15, 16, 17]);
        assert_eq!(r.hparams.mom2_update_weight, 20000.0);
        assert_eq!(r.json["layers"], json!([13, 14, 15, 16, 17]));
        assert_eq!(r.json["mom2_update_weight"], json!(20000.0));
    }
    let r = resolve::<RomeHparams>(&gptj(), "EleutherAI/gpt-j-6B", None, &[]).unwrap();
    assert_eq!(r.source, "configs/rome/EleutherAI_gpt-j-6B.json (reference)");
    assert_eq!(r.hparams.layers, vec![5]);
    assert!(r.hparams.original_implementation);
    assert!(r.json.get("z_batch_size").is_none());
    let r = resolve::<MemitHparams>(&neox20b(), "EleutherAI/gpt-neox-20b", None, &[]).unwrap();
    assert_eq!(r.source, "configs/memit/EleutherAI_gpt-neox-20b.json (starting point, not reference)");
    assert_eq!(r.hparams.layers, (5..=13).collect::<Vec<_>>());
    assert_eq!(r.hparams.v_loss_layer, 43);
    let r = resolve::<MemitHparams>(&gpt2(12, 768), "gpt2", None, &[]).unwrap();
    assert_eq!(r.source, "configs/memit/gpt2.json (starting point, not reference)");
    assert_eq!(r.hparams.z_batch_size, 0);
    assert_eq!(r.hparams.z_batch(&candle_core::Device::Cpu), 1);
    assert_eq!(r.hparams.solver, Solver::Auto);
    // A name that does not fit the model's shape is not trusted.
    let r = resolve::<RomeHparams>(&tiny(), "gpt2-xl", None, &[]).unwrap();
    assert!(r.source.starts_with("generic"), "{}", r.source);
}

#[test]
fn generic_fallback_for_the_tiny_fixture() {
    let cfg = tiny();
    let r = resolve::<RomeHparams>(&cfg, "tests/fixtures/tiny-gpt2", None, &[]).unwrap();
    assert_eq!(r.source, "generic starting point for a 4-layer gpt2 model");
    assert_eq!(r.hparams.layers, vec![1]);
    assert_eq!(r.hparams.v_loss_layer, 3);
    assert_eq!(r.hparams.rewrite_module_tmp, "transformer.h.{}.mlp.c_proj");
    assert_eq!(r.hparams.context_template_length_params, Some(vec![(5, 10), (10, 10)]));
    assert_eq!(r.hparams.module_for(&cfg, 1).unwrap().name, "transformer.h.1.mlp.c_proj");
    let r = resolve::<MemitHparams>(&cfg, "tests/fixtures/tiny-gpt2", None, &[]).unwrap();
    assert_eq!(r.hparams.layers, vec![0, 1]);
    assert_eq!(r.hparams.mom2_update_weight, 15000.0);
    // Families get their own module names.
    let neox = cfg_neox_small();
    let r = resolve::<MemitHparams>(&neox, "EleutherAI/pythia-160m", None, &[]).unwrap();
    assert_eq!(r.hparams.rewrite_module_tmp, "gpt_neox.layers.{}.mlp.dense_4h_to_h");
    assert_eq!(r.hparams.lm_head_module, "embed_out");
    assert_eq!(r.hparams.layers, vec![1, 2, 3]);
    assert_eq!(r.hparams.v_loss_layer, 11);
    assert_eq!(neox.family, Family::GptNeoX);
}

fn cfg_neox_small() -> ModelConfig {
    cfg(json!({"model_type": "gpt_neox", "hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12,
               "intermediate_size": 3072, "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25}))
}

#[test]
fn set_overrides_merge_in_order() {
    let cfg = gpt2(48, 1600);
    let sets: Vec<String> =
        ["layers=[15,16,17]", "v_lr=0.1", "memit.solver=direct", "v_lr=0.2", "z_batch_size=1", "seed=7"].iter().map(|s| s.to_string()).collect();
    let r = resolve::<MemitHparams>(&cfg, "gpt2-xl", None, &sets).unwrap();
    assert_eq!(r.hparams.layers, vec![15, 16, 17]);
    assert_eq!(r.hparams.v_lr, 0.2);
    assert_eq!(r.hparams.solver, Solver::Direct);
    assert_eq!(r.hparams.z_batch_size, 1);
    assert_eq!(r.hparams.seed, 7);
    assert_eq!(r.json["solver"], json!("direct"));
    assert!(r.source.starts_with("configs/memit/gpt2-xl.json (reference), with --set layers"), "{}", r.source);

    let set = |s: &str| vec![s.to_string()];
    let r = resolve::<RomeHparams>(&cfg, "gpt2-xl", None, &set("rome.original_implementation=false")).unwrap();
    assert!(!r.hparams.original_implementation);
    let r = resolve::<RomeHparams>(&cfg, "gpt2-xl", None, &set(r#"context_templates=["{}", "Yes. {}"]"#)).unwrap();
    assert_eq!(r.hparams.context_templates, Some(ContextTemplates::Flat(vec!["{}".into(), "Yes. {}".into()])));
    let r = resolve::<MemitHparams>(&cfg, "gpt2-xl", None, &set(r#"context_templates=[["{}"], ["A. {}", "B. {}"]]"#)).unwrap();
    assert_eq!(r.hparams.context_templates.as_ref().unwrap().groups().len(), 2);

    fn error<H: MethodConfig>(cfg: &edit::ModelConfig, set: &str) -> String {
        resolve::<H>(cfg, "gpt2-xl", None, &[set.to_string()]).unwrap_err().to_string()
    }
    let err = |s: &str, m: Method| match m {
        Method::Rome => error::<RomeHparams>(&cfg, s),
        Method::Memit => error::<MemitHparams>(&cfg, s),
        Method::Ft => error::<FtHparams>(&cfg, s),
        Method::Mend => error::<MendHparams>(&cfg, s),
        Method::AlphaEdit => error::<AlphaEditHparams>(&cfg, s),
        Method::UltraEdit => error::<UltraEditHparams>(&cfg, s),
        Method::Emmet => error::<EmmetHparams>(&cfg, s),
    };
    let e = err("no_such_field=1", Method::Rome);
    assert!(e.contains("unknown rome hyperparameter `no_such_field`") && e.contains("v_num_grad_steps"), "{e}");
    let e = err("rome.v_lr=1", Method::Memit);
    assert!(e.contains("this run uses memit"), "{e}");
    let e = err("v_lr=fast", Method::Rome);
    assert!(e.contains("`v_lr` is \"fast\", but it must be a number"), "{e}");
    let e = err("solver=cholesky", Method::Memit);
    assert!(e.contains("`solver`") && e.contains("push_through"), "{e}");
    let e = err("layers=[17,18]", Method::Rome);
    assert!(e.contains("ROME edits exactly one layer"), "{e}");
    let e = err("v_loss_layer=40", Method::Memit);
    assert!(e.contains("must be 47"), "{e}");
    let e = err("L2=-1", Method::AlphaEdit);
    assert!(e.contains("`L2`"), "{e}");
    let e = err("solver=push_through", Method::AlphaEdit);
    assert!(e.contains("\"direct\" or \"reduced\""), "{e}");
    let e = err("fact_token=last", Method::Rome);
    assert!(e.contains("not supported"), "{e}");
    let e = err("mom2_update_weight=null", Method::Memit);
    assert!(e.contains("needs `mom2_update_weight`"), "{e}");
    let e = err("layers=[]", Method::Memit);
    assert!(e.contains("`layers` is empty"), "{e}");
    let e = err("layers=[17,13]", Method::Memit);
    assert!(e.contains("ascending"), "{e}");
    let e = err("layers=[48]", Method::Rome);
    assert!(e.contains("has 48 layers"), "{e}");
    let e = err("mom2_dtype=float16", Method::Rome);
    assert!(e.contains("float64"), "{e}");
    let e = err("v_num_grad_steps=0", Method::Rome);
    assert!(e.contains("at least 1"), "{e}");
    let e = err(r#"context_templates=["Yes.{}"]"#, Method::Rome);
    assert!(e.contains("must end with a space"), "{e}");
}

#[test]
fn reference_file_with_easyedit_fields_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ROME-gpt2-xl.json");
    let mut v: Value = serde_json::from_str(include_str!("../../configs/rome/gpt2-xl.json")).unwrap();
    for (k, x) in [
        ("alg_name", json!("ROME")),
        ("model_name", json!("gpt2-xl")),
        ("device", json!(0)),
        ("stats_dir", json!("./data/stats")),
        ("model_parallel", json!(false)),
        ("fp16", json!(false)),
    ] {
        v[k] = x;
    }
    v["mom2_adjustment"] = json!(false);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let r = resolve::<RomeHparams>(&gpt2(48, 1600), "whatever", Some(&path), &[]).unwrap();
    assert_eq!(r.source, path.display().to_string());
    assert!(!r.hparams.mom2_adjustment);
    assert_eq!(r.hparams.layers, vec![17]);
    assert!(r.json.get("alg_name").is_none());
    // The resolved JSON is itself a valid config.
    std::fs::write(&path, r.json.to_string()).unwrap();
    let again = resolve::<RomeHparams>(&gpt2(48, 1600), "x", Some(&path), &[]).unwrap();
    assert_eq!(again.hparams, r.hparams);
}

#[test]
fn config_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, "alg_name: ROME\nlayers: [17]\n").unwrap();
    let e = resolve::<RomeHparams>(&gpt2(48, 1600), "x", Some(&path), &[]).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("not valid JSON") && e.contains("yaml"), "{e}");
    let mut v: Value = serde_json::from_str(include_str!("../../configs/rome/gpt2-xl.json")).unwrap();
    v.as_object_mut().unwrap().remove("v_lr");
    std::fs::write(&path, v.to_string()).unwrap();
    let e = resolve::<RomeHparams>(&gpt2(48, 1600), "x", Some(&path), &[]).unwrap_err().to_string();
    assert!(e.contains("missing field `v_lr`"), "{e}");
    // A ROME config used for MEMIT.
    let rome = dir.path().join("rome.json");
    std::fs::write(&rome, include_str!("../../configs/rome/gpt2-xl.json")).unwrap();
    let e = resolve::<MemitHparams>(&gpt2(48, 1600), "x", Some(&rome), &[]).unwrap_err().to_string();
    assert!(e.contains("mom2_update_weight") && e.contains("looks like a ROME config"), "{e}");
}

#[test]
fn gptj_config_is_rejected_on_a_gpt2_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gptj.json");
    std::fs::write(&path, include_str!("../../configs/memit/EleutherAI_gpt-j-6B.json")).unwrap();
    let e = resolve::<MemitHparams>(&gpt2(48, 1600), "gpt2-xl", Some(&path), &[]).unwrap_err().to_string();
    assert!(e.contains("gptj.json"), "{e}");
    assert!(e.contains("`rewrite_module_tmp`") && e.contains("transformer.h.{}.mlp.c_proj"), "{e}");
    assert!(e.contains("--config") && e.contains("--set"), "{e}");
    assert!(e.contains("`v_loss_layer` is 27") && e.contains("must be 47"), "{e}");
    // A NeoX config on GPT-2 names every template at fault.
    std::fs::write(&path, include_str!("../../configs/rome/EleutherAI_gpt-neox-20b.json")).unwrap();
    let e = resolve::<RomeHparams>(&gpt2(48, 1600), "gpt2-xl", Some(&path), &[]).unwrap_err().to_string();
    for field in ["rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp"] {
        assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
    }
    // module_for refuses a template that names another module.
    let mut h = resolve::<RomeHparams>(&gpt2(48, 1600), "gpt2-xl", None, &[]).unwrap().hparams;
    h.rewrite_module_tmp = "transformer.h.{}.mlp.c_fc".into();
    let e = h.module_for(&gpt2(48, 1600), 17).unwrap_err().to_string();
    assert!(e.contains("transformer.h.17.mlp.c_proj"), "{e}");
}

#[test]
fn method_parsing() {
    assert_eq!("rome".parse::<Method>().unwrap(), Method::Rome);
    assert_eq!("Memit".parse::<Method>().unwrap(), Method::Memit);
    assert_eq!("MEND".parse::<Method>().unwrap(), Method::Mend);
    assert_eq!("AlphaEdit".parse::<Method>().unwrap(), Method::AlphaEdit);
    assert!("alpha".parse::<Method>().is_err());
    assert_eq!(Method::Memit.to_string(), "memit");
    assert!(RomeHparams::fields().contains(&"context_template_length_params"));
    assert!(!MemitHparams::fields().contains(&"context_template_length_params"));
}

#[test]
fn request_serializes_as_the_reference_dict() {
    let r: Request = parse_requests(r#"{"prompt": "{} is", "subject": "a", "target_new": "b", "case_id": "x1"}"#, "s").unwrap().remove(0);
    assert_eq!(serde_json::to_value(&r).unwrap(), r.to_reference_json());
    assert_eq!(r.label(), "request 0 (case_id x1)");
}
