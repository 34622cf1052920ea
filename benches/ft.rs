//! Fine-tuning: FT-L edit latency on the fact-gpt2 fixture (beside the reference code's
//! 0.37 s per edit on this model, REFERENCE.md), and the peak memory of one FT-W step on a whole
//! block of a random GPT-2 model at GPT-2 XL width (d 1600, d_ff 6400), against the size of the
//! tuned tensors and of all weights: gradients exist only for the tuned block.
//!
//! `cargo bench --bench ft` (EDIT_BENCH_FT_LAYERS sets the random model's depth, default 4).

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use edit::editing::ft::loss::Objective;
use edit::editing::ft::{fine_tune, tuned_parameters, FtParams};
use edit::editing::requests::read_requests;

#[global_allocator]
static ALLOC: Counting = Counting;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// An FT config in the reference's JSON format (the fields the loop reads).
fn ft_params(path: &Path) -> FtParams {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    FtParams {
        layers: v["layers"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as usize).collect(),
        rewrite_module_tmp: v["rewrite_module_tmp"].as_str().unwrap().into(),
        num_steps: v["num_steps"].as_u64().unwrap() as usize,
        lr: v["lr"].as_f64().unwrap(),
        weight_decay: v["weight_decay"].as_f64().unwrap_or(0.0),
        norm_constraint: v["norm_constraint"].as_f64(),
        batch_size: 64,
        objective: Objective::PromptLast,
    }
}

fn main() {
    println!("| what | value |");
    println!("|---|---|");

    // FT-L on fact-gpt2, one edit at a time.
    let dir = fixture("fact-gpt2");
    let files = edit::hub::resolve_model(dir.to_str().unwrap(), &edit::hub::HubOptions::default()).unwrap();
    let mut lm = edit::load_model(files, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let tok = edit::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let cases = read_requests(&dir.join("cases.json")).unwrap();
    let params = ft_params(&dir.join("hparams/FT_constr_eps5e-3.json"));
    let n = 20;
    let t = Instant::now();
    let mut epochs = 0;
    for case in &cases[..n] {
        epochs += fine_tune(&mut *lm.model, &tok, std::slice::from_ref(case), &params).unwrap().epochs.len();
    }
    let per_edit = t.elapsed().as_secs_f64() / n as f64;
    println!("| FT-L ε 5e-3, one edit (mean of {n}, {:.1} epochs each) | {per_edit:.3} s |", epochs as f64 / n as f64);
    println!("| reference code on this model (REFERENCE.md) | 0.37 s |");
    println!("| ratio reference / ours | {:.2}× |", 0.37 / per_edit);
    drop(lm);

    // One FT-W step on a whole block of a GPT-2 XL-width random model.
    let n_layer: usize = std::env::var("EDIT_BENCH_FT_LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let cfg = xl_width_gpt2(n_layer);
    let mut model = build(&cfg, false);
    let tok = edit::tokenizer::Tokenizer::from_file(&fixture("tiny-gpt2").join("tokenizer.json")).unwrap();
    let reqs = sample_requests();
    // FT-W on GPT-J tunes `transformer.h.{}`: the whole block; here block 1 of the GPT-2 model.
    let ftw = FtParams {
        layers: vec![1],
        rewrite_module_tmp: "transformer.h.{}.".into(),
        num_steps: 1,
        lr: 5e-4,
        weight_decay: 0.5,
        norm_constraint: None,
        batch_size: 64,
        objective: Objective::PromptLast,
    };
    let bytes = |ts: &[(String, candle_core::Tensor)]| ts.iter().map(|(_, t)| t.elem_count() * 4).sum::<usize>();
    let tuned = bytes(&tuned_parameters(&mut *model, &ftw).unwrap());
    let all = bytes(&model.parameters_matching("").unwrap());
    let base = reset_peak();
    let t = Instant::now();
    let out = fine_tune(&mut *model, &tok, &reqs, &ftw).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_since(base);
    println!("| FT-W step, whole block 1 of a {n_layer}-layer GPT-2 at XL width: tuned tensors | {} in {:.1} MiB |", out.deltas.len(), mib(tuned));
    println!("| all weights of that model | {:.1} MiB |", mib(all));
    println!(
        "| peak memory above the loaded model during one step (incl. the returned deltas) | {:.1} MiB ({:.2}× the tuned tensors; {:.2} s) |",
        mib(peak),
        peak as f64 / tuned as f64,
        secs
    );
    // The same step tuning one bias only: what the forward/backward itself costs, whatever is tuned.
    let one_bias = FtParams { rewrite_module_tmp: "transformer.h.{}.mlp.c_proj.bias".into(), ..ftw.clone() };
    let base = reset_peak();
    fine_tune(&mut *model, &tok, &reqs, &one_bias).unwrap();
    println!("| the same step tuning only block 1's `mlp.c_proj.bias` (6 KiB) | {:.1} MiB peak |", mib(peak_since(base)));
}
