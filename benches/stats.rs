//! Statistics collection: tokens/s for 1 layer, for 6 layers in one pass, and for the same
//! 6 layers as six single-layer passes (what the reference does). Random GPT-2-medium-shaped
//! model, texts from the embedded WikiText-2 sample.
//!
//! `cargo bench --bench stats` (EDIT_BENCH_TEXTS sets the number of texts, default 64).

mod common;

use std::time::Instant;

use common::*;
use edit::stats::collect::{collect, Accumulator, CollectPlan, NoProgress};
use edit::stats::Precision;

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let n_texts: usize = std::env::var("EDIT_BENCH_TEXTS").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let cfg = medium_config("gpt2", 24);
    let model = build(&cfg, false);
    let tok_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2/tokenizer.json");
    let tok = edit::tokenizer::Tokenizer::from_file(&tok_path).unwrap();
    let texts: Vec<String> = edit::data::EMBEDDED_WIKITEXT.lines().filter(|l| l.len() > 200).take(n_texts).map(str::to_string).collect();
    let max_len = 256;
    let plan = |layers: Vec<usize>| CollectPlan { layers, precision: Precision::F32, batch_tokens: 4 * max_len, max_len };
    let run = |layers: Vec<usize>| {
        let acc = Accumulator::new(&layers, cfg.d_ff, Precision::F32, &candle_core::Device::Cpu).unwrap();
        let t = Instant::now();
        let acc = collect(&*model, &tok, &texts, &plan(layers), acc, &mut NoProgress).unwrap();
        (t.elapsed().as_secs_f64(), acc.count)
    };
    println!(
        "random GPT-2-medium-shaped model (24 layers, d_model 1024, d_ff 4096), {} texts truncated to {max_len} tokens, f32 sums, {} threads",
        texts.len(),
        candle_core::utils::get_num_threads()
    );
    println!();
    println!("| job | layers | forward passes | wall s | tokens | tokens/s | cost vs one 6-layer pass |");
    println!("|---|---|---|---|---|---|---|");
    let (t1, n) = run(vec![8]);
    let (t6, _) = run((3..=8).collect());
    let mut t_serial = 0.0;
    for l in 3..=8 {
        t_serial += run(vec![l]).0;
    }
    println!("| single layer | 8 | 1 | {t1:.2} | {n} | {:.0} | {:.2}x |", n as f64 / t1, t1 / t6);
    println!("| one pass | 3-8 | 1 | {t6:.2} | {n} | {:.0} | 1.00x |", n as f64 / t6);
    println!("| six single-layer passes (reference) | 3-8 | 6 | {t_serial:.2} | {} | {:.0} | {:.2}x |", 6 * n, 6.0 * n as f64 / t_serial, t_serial / t6);
}
