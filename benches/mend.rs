//! MEND: edit latency on the fact-gpt2 fixture and on a random GPT-2 model at GPT-2 XL width
//! (d 1600, d_ff 6400; the hypernetwork on its last three layers' MLPs, as the reference's:
//! D = 8000, rank 1920, 123 M parameters), beside the seed's anchor (MEND edits 10,000 facts in
//! 98 s on GPT-J, ~10 ms per edit, on a GPU); and training steps per second on fact-gpt2.
//! Latency does not depend on the hypernetwork's values, so fresh (identity-initialised) ones
//! are timed.
//!
//! `cargo bench --bench mend` (EDIT_BENCH_MEND_LAYERS sets the random model's depth, default 4).

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use edit::editing::mend::data::record_examples;
use edit::editing::mend::hypernet::{write, EditSettings, Hypernetwork};
use edit::editing::mend::train::{TrainData, Trainer};
use edit::editing::mend::MendHparams;
use edit::editing::records::read_dataset;
use edit::editing::requests::{read_requests, Request};

#[global_allocator]
static ALLOC: Counting = Counting;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Seconds per edit of `reqs` in batches of `batch`, through a hypernetwork file.
fn per_edit(net: &mut Hypernetwork, model: &dyn edit::CausalLm, tok: &edit::tokenizer::Tokenizer, reqs: &[Request], batch: usize) -> f64 {
    let t = Instant::now();
    for chunk in reqs.chunks(batch) {
        net.edit(model, tok, chunk, EditSettings::authors(1.0)).unwrap();
    }
    t.elapsed().as_secs_f64() / reqs.len() as f64
}

fn main() {
    println!("| what | value |");
    println!("|---|---|");
    let tmp = tempfile::tempdir().unwrap();

    // fact-gpt2: training steps, then edits with the result.
    let dir = fixture("fact-gpt2");
    let files = edit::hub::resolve_model(dir.to_str().unwrap(), &edit::hub::HubOptions::default()).unwrap();
    let lm = edit::load_model(files, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let tok = edit::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let hp: MendHparams = serde_json::from_str(&std::fs::read_to_string(dir.join("hparams/MEND_train.json")).unwrap()).unwrap();
    let names = hp.inner_params(lm.config());
    let records = read_dataset(&dir.join("cases.json"), None).unwrap().records;
    let mut examples = record_examples(&tok, &records, true).unwrap();
    let val = examples.split_off(450);
    let data = TrainData { train: examples, val, loc_train: Vec::new(), loc_val: Vec::new() };
    let mut trainer = Trainer::new(&*lm.model, &names, hp.train.clone()).unwrap();
    let steps = 100;
    let t = Instant::now();
    for _ in 0..steps {
        trainer.step(&data).unwrap();
    }
    let rate = steps as f64 / t.elapsed().as_secs_f64();
    println!("| fact-gpt2 training (`MEND_train.json`: layers 0-2, D 640, accumulate 1) | {rate:.1} steps/s |");
    let (meta, tensors) = trainer.result(None, "bench".into()).unwrap();
    let path = tmp.path().join("fact.safetensors");
    write(&path, &meta, &tensors).unwrap();
    let mut net = Hypernetwork::read(&path, lm.config(), &candle_core::Device::Cpu).unwrap();
    let cases = read_requests(&dir.join("cases.json")).unwrap();
    let one = per_edit(&mut net, &*lm.model, &tok, &cases[..50], 1);
    let ten = per_edit(&mut net, &*lm.model, &tok, &cases[..100], 10);
    println!("| fact-gpt2 edit, one at a time (mean of 50) | {:.1} ms |", 1e3 * one);
    println!("| fact-gpt2 edit, in batches of 10 (per edit, mean of 100) | {:.1} ms |", 1e3 * ten);
    drop(lm);

    // A random GPT-2 at XL width: the hypernetwork's size is the reference's for GPT-2 XL.
    let n_layer: usize = std::env::var("EDIT_BENCH_MEND_LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let cfg = xl_width_gpt2(n_layer);
    let model = build(&cfg, false);
    let names = edit::editing::mend::hparams::default_inner_params(&cfg);
    let t = Instant::now();
    let fresh = Trainer::new(&*model, &names, edit::editing::mend::hparams::MendTraining::default()).unwrap();
    let (meta, tensors) = fresh.result(None, "bench".into()).unwrap();
    let params: usize = tensors.iter().filter(|(k, _)| k.contains(".mlp.") || k == "edit_lrs").map(|(_, t)| t.elem_count()).sum();
    drop(fresh);
    let path = tmp.path().join("xl.safetensors");
    write(&path, &meta, &tensors).unwrap();
    drop(tensors);
    let mut net = Hypernetwork::read(&path, &cfg, &candle_core::Device::Cpu).unwrap();
    println!(
        "| hypernetwork at GPT-2 XL width (6 inner weights, rank 1920) | {:.1} M parameters, built and read in {:.1} s |",
        params as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let xl_tok = edit::tokenizer::Tokenizer::from_file(&fixture("tiny-gpt2").join("tokenizer.json")).unwrap();
    let reqs: Vec<Request> = sample_requests().into_iter().cycle().take(20).collect();
    per_edit(&mut net, &*model, &xl_tok, &reqs[..2], 1);
    let base = reset_peak();
    let one = per_edit(&mut net, &*model, &xl_tok, &reqs, 1);
    let peak = peak_since(base);
    let ten = per_edit(&mut net, &*model, &xl_tok, &reqs, 10);
    println!(
        "| {n_layer}-layer GPT-2 at XL width, edit one at a time (mean of 20) | {:.0} ms (peak {:.0} MiB above the loaded model and network) |",
        1e3 * one,
        mib(peak)
    );
    println!("| the same, in batches of 10 (per edit) | {:.0} ms |", 1e3 * ten);
    println!("| the reference's anchor: GPT-J, 10,000 edits in 98 s on a GPU | ~10 ms per edit |");
}
