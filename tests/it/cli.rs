//! Drives the real `edit` binary in temporary directories.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{edit_bin, fixture_dir, golden};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn predict_json_matches_golden_logits() {
    for name in common::TINY {
        let g = golden(name);
        let prompts: Vec<String> = g.prompts().iter().map(|p| p.text.clone()).collect();
        let out = run(edit_bin().args(["predict", "--json", "-k", "3", "--model"]).arg(fixture_dir(name)).args(&prompts));
        assert!(out.status.success(), "{}", stderr(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), prompts.len());
        let want = candle_nn::ops::log_softmax(&g.tensor("last_logits"), 1).unwrap().to_vec2::<f32>().unwrap();
        for (r, line) in lines.iter().enumerate() {
            assert_eq!(line["prompt"], prompts[r]);
            let ids: Vec<u32> = line["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(ids, g.prompts()[r].input_ids, "{name} tokenization of prompt {r}");
            let top = line["top"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            let mut order: Vec<usize> = (0..want[r].len()).collect();
            order.sort_by(|a, b| want[r][*b].total_cmp(&want[r][*a]));
            for (i, c) in top.iter().enumerate() {
                let id = c["id"].as_u64().unwrap() as usize;
                assert_eq!(id, order[i], "{name} prompt {r} rank {i}");
                let lp = c["logprob"].as_f64().unwrap() as f32;
                assert!((lp - want[r][id]).abs() < 1e-4, "{name} prompt {r}: {lp} vs {}", want[r][id]);
                assert!(c["token"].is_string());
            }
        }
    }
}

#[test]
fn predict_table_is_readable() {
    let out = run(edit_bin().args(["predict", "-k", "2", "--model"]).arg(fixture_dir("tiny-gpt2")).arg("Paris is the capital of"));
    assert!(out.status.success(), "{}", stderr(&out));
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("\"Paris is the capital of\" (5 tokens)"), "{s}");
    assert!(s.contains("rank") && s.contains("logprob"));
}

#[test]
fn inspect_lists_editable_modules() {
    let out = run(edit_bin().args(["inspect", "--json", "--model"]).arg(fixture_dir("tiny-neox")));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["family"], "gpt_neox");
    assert_eq!(v["layers"], 4);
    assert_eq!(v["storage_dtype"], "f16");
    assert_eq!(v["rotary"]["dims"], 4);
    assert_eq!(v["rotary"]["style"], "half_split");
    let names: Vec<&str> = v["editable_modules"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"gpt_neox.layers.3.mlp.dense_4h_to_h"));

    let out = run(edit_bin().args(["inspect", "--model"]).arg(fixture_dir("tiny-gpt2")));
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("transformer.h.2.mlp.c_proj") && s.contains("in_out") && !s.contains("InOut"), "{s}");
    let out = run(edit_bin().args(["inspect", "--json", "--model"]).arg(fixture_dir("tiny-gptj")));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["weight_files"], 2);
    assert_eq!(v["rotary"]["style"], "interleaved");
}

#[test]
fn help_explains_every_command() {
    for args in [vec!["--help"], vec!["predict", "--help"], vec!["inspect", "--help"]] {
        let out = run(edit_bin().args(&args));
        assert!(out.status.success());
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(s.contains("Usage:"), "{s}");
    }
    let s = String::from_utf8(run(edit_bin().args(["predict", "--help"])).stdout).unwrap();
    assert!(s.contains("--offline") && s.contains("--top-k") && s.contains("--dtype"));
}

// ---- loading errors: each names the problem and fails with a non-zero exit --------------

fn expect_failure(args: &[&str], model: &Path, needles: &[&str]) {
    let mut cmd = edit_bin();
    cmd.args(args).arg("--model").arg(model);
    if args[0] == "predict" {
        cmd.arg("hello");
    }
    let out = run(&mut cmd);
    assert!(!out.status.success(), "expected failure");
    let err = stderr(&out);
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

fn temp_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&fixture_dir(name), &dir);
    (tmp, dir)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn unsupported_architecture_is_named() {
    let (_t, dir) = temp_copy("tiny-gpt2");
    edit_config(&dir, |v| v["model_type"] = "mamba".into());
    expect_failure(&["predict"], &dir, &["unsupported architecture `mamba`", "gpt2", "llama", "gemma3_text"]);
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = temp_copy("tiny-gpt2");
    // Claim one layer more than the checkpoint holds.
    edit_config(&dir, |v| v["n_layer"] = 5.into());
    expect_failure(&["predict"], &dir, &["transformer.h.4.ln_1.weight", "missing"]);
    expect_failure(&["inspect"], &dir, &["transformer.h.4", "missing"]);
}

#[test]
fn wrong_shape_is_named() {
    let (_t, dir) = temp_copy("tiny-neox");
    edit_config(&dir, |v| v["intermediate_size"] = 64.into());
    expect_failure(&["predict"], &dir, &["gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "[128, 32]", "[64, 32]"]);
}

#[test]
fn truncated_file_is_named() {
    let (_t, dir) = temp_copy("tiny-gptj");
    let shard = dir.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(&["predict"], &dir, &["model-00002-of-00002.safetensors", "truncated"]);
}

#[test]
fn missing_shard_and_missing_weights_are_named() {
    let (_t, dir) = temp_copy("tiny-gptj");
    std::fs::remove_file(dir.join("model-00001-of-00002.safetensors")).unwrap();
    expect_failure(&["predict"], &dir, &["model-00001-of-00002.safetensors"]);
    let (_t2, dir2) = temp_copy("tiny-gpt2");
    std::fs::remove_file(dir2.join("model.safetensors")).unwrap();
    expect_failure(&["predict"], &dir2, &["no weights", "model.safetensors"]);
}

#[test]
fn missing_directory_and_config_are_named() {
    expect_failure(&["predict"], Path::new("./no/such/model"), &["does not exist"]);
    let (_t, dir) = temp_copy("tiny-gpt2");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    expect_failure(&["predict"], &dir, &["config.json"]);
}

// ---- Hugging Face cache, offline ------------------------------------------------------

/// Lays out `name` as the Hub cache would hold repo `org/repo` at revision main.
fn fake_hub_cache(root: &Path, repo: &str, name: &str, skip: &[&str]) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let e = e.unwrap();
        let fname = e.file_name().to_string_lossy().into_owned();
        if fname.starts_with("golden") || skip.contains(&fname.as_str()) {
            continue;
        }
        std::fs::copy(e.path(), snap.join(&fname)).unwrap();
    }
}

#[test]
fn offline_hub_id_resolves_from_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hf").join("hub");
    fake_hub_cache(&hub, "EleutherAI/gpt-j-tiny", "tiny-gptj", &[]);
    // HF_HOME/hub is the standard location; HF_HUB_OFFLINE=1 selects the cache-only mode.
    let out = run(edit_bin().env_remove("HF_HUB_CACHE").env("HF_HOME", tmp.path().join("hf")).env("HF_HUB_OFFLINE", "1").args([
        "predict",
        "--json",
        "-k",
        "1",
        "--model",
        "EleutherAI/gpt-j-tiny",
        "Paris is the capital of",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input_ids"].as_array().unwrap().len(), 5);

    let out = run(edit_bin().env("HF_HUB_CACHE", &hub).args(["inspect", "--json", "--offline", "--model", "EleutherAI/gpt-j-tiny"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["origin"]["kind"], "hub");
    assert_eq!(v["origin"]["commit"], "0123456789abcdef0123456789abcdef01234567");
}

#[test]
fn offline_missing_file_says_which_and_how() {
    let tmp = tempfile::tempdir().unwrap();
    fake_hub_cache(tmp.path(), "org/tiny", "tiny-gptj", &["model-00002-of-00002.safetensors"]);
    let out = run(edit_bin().env("HF_HUB_CACHE", tmp.path()).args(["predict", "--offline", "--model", "org/tiny", "hi"]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("model-00002-of-00002.safetensors") && err.contains("huggingface-cli download org/tiny"), "{err}");

    let out = run(edit_bin().env("HF_HUB_CACHE", tmp.path()).args(["predict", "--offline", "--model", "org/absent", "hi"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("config.json"), "{}", stderr(&out));
}

/// What is broken, how the config is changed, and what the error must name.
type ConfigCase = (&'static str, fn(&mut serde_json::Value), &'static [&'static str]);

/// A Llama-style config that disagrees with its weights names the tensor and both shapes; an
/// unknown RoPE type is refused before any weight is read; a missing shard is named; nothing is
/// written.
#[test]
fn decoder_configs_that_disagree_with_their_weights_are_named() {
    let cases: [ConfigCase; 4] = [
        ("kv heads", |v| v["num_key_value_heads"] = 4.into(), &["model.layers.0.self_attn.k_proj.weight", "[16, 32]", "[32, 32]"]),
        ("head_dim", |v| v["head_dim"] = 16.into(), &["model.layers.0.self_attn.q_proj.weight", "[32, 32]", "[64, 32]"]),
        ("intermediate size", |v| v["intermediate_size"] = 96.into(), &["model.layers.0.mlp.gate_proj.weight", "[64, 32]", "[96, 32]"]),
        ("heads", |v| v["num_attention_heads"] = 2.into(), &["model.layers.0.self_attn.q_proj.weight", "[32, 32]", "[16, 32]"]),
    ];
    for (what, change, needles) in cases {
        let (_t, dir) = temp_copy("tiny-mistral");
        edit_config(&dir, change);
        for args in [&["predict"][..], &["inspect"][..]] {
            let mut cmd = edit_bin();
            cmd.args(args).arg("--model").arg(&dir);
            if args[0] == "predict" {
                cmd.arg("hello");
            }
            let out = run(&mut cmd);
            assert!(!out.status.success(), "{what}: {args:?} should fail");
            let err = stderr(&out);
            assert!(needles.iter().all(|n| err.contains(n)), "{what} {args:?}: {err}");
        }
    }
    let (_t, dir) = temp_copy("tiny-llama");
    edit_config(&dir, |v| v["rope_parameters"]["rope_type"] = "yarn".into());
    expect_failure(&["predict"], &dir, &["rope type `yarn` is not supported", "llama3"]);
    let (_t, dir) = temp_copy("tiny-mistral");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    expect_failure(&["predict"], &dir, &["model-00002-of-00002.safetensors"]);
    let out_dir = dir.parent().unwrap().join("edited");
    let mut cmd = edit_bin();
    cmd.args(["apply", "--method", "ft", "--model"]).arg(&dir).arg("-").arg("--out").arg(&out_dir);
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    assert!(!out_dir.exists(), "nothing is written");
}

/// From the Hub cache, `tokenizer_config.json` is read beside `tokenizer.json`: a Llama tokenizer
/// whose `tokenizer.json` puts no BOS before a text still gets one from `add_bos_token`, as
/// transformers' Llama tokenizer does.
#[test]
fn hub_tokenizer_config_decides_the_bos() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    fake_hub_cache(&hub, "org/tiny-llama", "tiny-llama", &[]);
    let snap = hub.join("models--org--tiny-llama/snapshots/0123456789abcdef0123456789abcdef01234567");
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(snap.join("tokenizer.json")).unwrap()).unwrap();
    tok["post_processor"] = serde_json::Value::Null;
    std::fs::write(snap.join("tokenizer.json"), tok.to_string()).unwrap();
    let predict = |hub: &Path| {
        let out = run(edit_bin().env("HF_HUB_CACHE", hub).args(["predict", "--json", "--offline", "--model", "org/tiny-llama", "Paris is"]));
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(predict(&hub)[0], 1, "add_bos_token in tokenizer_config.json puts <s> first");
    std::fs::remove_file(snap.join("tokenizer_config.json")).unwrap();
    assert_ne!(predict(&hub)[0], 1, "without it, the tokenizer.json alone decides");
}

/// `edit apply --out` from a Hub id writes the companions `apply-delta` writes: the cached
/// tokenizer and generation configs are copied, and the missing ones go through the same
/// best-effort fetch (offline here, so it says it is not fetching them).
#[test]
fn apply_out_from_the_hub_carries_the_companion_files() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    fake_hub_cache(&hub, "org/tiny-llama", "tiny-llama", &[]);
    let reqs = tmp.path().join("r.json");
    std::fs::write(&reqs, r#"[{"prompt": "{} is located in", "subject": "Paris", "target_new": {"str": " Rome"}}]"#).unwrap();
    let out_dir = tmp.path().join("out");
    let out = run(edit_bin()
        .env("HF_HUB_CACHE", &hub)
        .args(["apply", "-v", "--offline", "--method", "ft", "--model", "org/tiny-llama"])
        .arg(&reqs)
        .arg("--out")
        .arg(&out_dir));
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"] {
        assert!(out_dir.join(f).is_file(), "{f} missing from the written model");
    }
    assert!(stderr(&out).contains("offline: not fetching special_tokens_map.json"), "{}", stderr(&out));
}
