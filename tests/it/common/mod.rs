//! Shared helpers for integration tests: fixture paths, golden tensors, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use edit::hub::{resolve_model, HubOptions};
use edit::LoadedModel;

/// Every tiny random-weight checkpoint with transformers goldens: the GPT families, then the
/// Llama-style ones (see tests/fixtures/README.md for the quirk each reproduces).
pub const TINY: [&str; 9] = ["tiny-gpt2", "tiny-gptj", "tiny-neox", "tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-gemma2", "tiny-gemma3"];

/// The Llama-style tiny checkpoints.
pub const TINY_DECODERS: [&str; 6] = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-gemma2", "tiny-gemma3"];

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

pub fn fixture_with_dtype(name: &str, dtype: DType) -> LoadedModel {
    let dir = fixture_dir(name);
    let files = resolve_model(dir.to_str().unwrap(), &HubOptions::default()).unwrap();
    edit::load_model(files, dtype, &Device::Cpu).unwrap()
}

pub fn fixture(name: &str) -> LoadedModel {
    fixture_with_dtype(name, DType::F32)
}

pub struct GoldenPrompt {
    pub text: String,
    pub subject: String,
    pub target: String,
    pub input_ids: Vec<u32>,
    pub subject_last_index: usize,
    /// The target's ids as they follow the prompt (the Llama-style fixtures record them).
    pub target_ids: Option<Vec<u32>>,
}

pub struct GradientInfo {
    pub layer: usize,
    pub position: usize,
    pub loss_value: f64,
}

pub struct Golden {
    tensors: HashMap<String, Tensor>,
    meta: serde_json::Value,
    prompts: Vec<GoldenPrompt>,
}

impl Golden {
    pub fn tensor(&self, name: &str) -> Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing")).clone()
    }
    pub fn prompts(&self) -> &[GoldenPrompt] {
        &self.prompts
    }
    pub fn gradient(&self, key: &str) -> GradientInfo {
        let g = &self.meta["gradients"][key];
        GradientInfo {
            layer: g["layer"].as_u64().unwrap() as usize,
            position: g["position"].as_u64().unwrap() as usize,
            loss_value: g["loss_value"].as_f64().unwrap(),
        }
    }
}

pub fn golden(name: &str) -> Golden {
    let dir = fixture_dir(name);
    let tensors = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let prompts = meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| GoldenPrompt {
            text: p["text"].as_str().unwrap().into(),
            subject: p["subject"].as_str().unwrap().into(),
            target: p["target"].as_str().unwrap().into(),
            input_ids: p["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            subject_last_index: p["subject_last_index"].as_u64().unwrap() as usize,
            target_ids: p.get("target_ids").and_then(|t| t.as_array()).map(|a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect()),
        })
        .collect();
    Golden { tensors, meta, prompts }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let num: f32 = (a - &b).unwrap().sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar().unwrap();
    let den: f32 = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar().unwrap();
    num / den
}

/// The `edit` binary with an environment that never leaks a developer's settings into a test
/// and never reaches the network.
pub fn edit_bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_edit"));
    c.env_remove("HF_HUB_OFFLINE")
        .env_remove("RUST_LOG")
        .env_remove("EDIT_STATS_DIR")
        .env("HF_HOME", "/nonexistent-hf-home")
        .env("HF_HUB_CACHE", "/nonexistent-hf-cache");
    c
}

/// Output of a finished command: (exit code, stdout, stderr).
pub fn outcome(cmd: &mut std::process::Command) -> (Option<i32>, String, String) {
    let o = cmd.output().expect("the edit binary runs");
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Runs `cmd`, asserts that it succeeded (its stderr as the message) and returns its stdout.
pub fn ok(cmd: &mut std::process::Command) -> String {
    let (code, stdout, stderr) = outcome(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    stdout
}

/// The reference's statistics of fact-gpt2's layers 0-2 ([`fact_gpt2_stats`]), computed once per
/// test run and shared by every test that reads them (read-only but for the null-space caches
/// AlphaEdit writes beside them, by rename).
pub fn shared_fact_gpt2_stats() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        fact_gpt2_stats(dir.path());
        dir
    })
    .path()
}

/// `edit stats` of fact-gpt2's layers 0-2 over every text of its corpus (the reference's
/// statistics for this model), into `dir`.
pub fn fact_gpt2_stats(dir: &std::path::Path) {
    let model = fixture_dir("fact-gpt2");
    let (code, _, stderr) = outcome(
        edit_bin()
            .args(["stats", "--model"])
            .arg(&model)
            .args(["--layers", "0-2", "--samples", "100000", "--text"])
            .arg(model.join("stats-corpus.txt"))
            .arg("--stats-dir")
            .arg(dir),
    );
    assert_eq!(code, Some(0), "edit stats failed: {stderr}");
}

/// ES / PS / NS in %, counted straight from per-prompt [nll_new, nll_true] pairs.
pub fn rates(cases: &serde_json::Map<String, serde_json::Value>) -> [f64; 3] {
    let rate = |key: &str, new_wins: bool| {
        let per_case = cases.values().map(|c| {
            let p = c[key].as_array().unwrap();
            p.iter().filter(|x| (x[1].as_f64() > x[0].as_f64()) == new_wins).count() as f64 / p.len() as f64
        });
        per_case.sum::<f64>() / cases.len() as f64 * 100.0
    };
    [rate("rewrite", true), rate("paraphrase", true), rate("neighborhood", false)]
}

/// Per token of `" " + answer` after `prompt` (the tokens as they follow it), the model's argmax
/// after the prompt and the answer's earlier tokens, each from its own forward of that prefix
/// alone (teacher forcing by hand, no batching or padding), with the token expected there.
pub fn argmax_by_hand(lm: &LoadedModel, prompt: &str, answer: &str) -> Vec<(u32, u32)> {
    let tok = lm.tokenizer.as_ref().unwrap();
    let ids = tok.encode_input(prompt).unwrap();
    let ans = tok.continuation(prompt, &format!(" {answer}")).unwrap();
    (0..ans.len())
        .map(|i| {
            let text: Vec<u32> = ids.iter().chain(&ans[..i]).copied().collect();
            let b = edit::Batch::from_sequences(&[text], lm.pad_id(), lm.model.device()).unwrap();
            let l = lm.model.forward(&b, &edit::TraceSpec::logits(edit::Logits::Last), &[]).unwrap().logits.unwrap();
            (l.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0], ans[i])
        })
        .collect()
}
