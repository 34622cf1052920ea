//! Forward throughput per family, and the cost of back-propagating to an intervention vector
//! with the frozen-weight matmul vs candle's stock matmul backward (which also computes and
//! stores every weight's gradient). Random models at GPT-2-medium / Pythia-410m shape.
//!
//! Then the attention of a no-grad forward (statistics collection) at GPT-2 XL's head shape:
//! the blocked causal kernel (`models::causal_attention`) against the general masked softmax.
//!
//! `cargo bench --bench forward` (set EDIT_BENCH_LAYERS to change the depth, default 24).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use edit::{Intervention, Logits, Site, TraceSpec};

#[global_allocator]
static ALLOC: Counting = Counting;

fn nll_loss(logits: &Tensor, targets: &[u32]) -> Tensor {
    let logp = candle_nn::ops::log_softmax(logits, 1).unwrap();
    let idx = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), &Device::Cpu).unwrap();
    (logp.gather(&idx, 1).unwrap().mean_all().unwrap() * -1.0).unwrap()
}

fn main() {
    let n_layer: usize = std::env::var("EDIT_BENCH_LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let (b, t) = (4, 64);
    println!("random models, {n_layer} layers, d_model 1024, d_ff 4096; batch {b} x {t} tokens; f32 CPU, {} threads", candle_core::utils::get_num_threads());
    println!();
    println!("| family | forward tok/s (best) | forward tok/s (median) | backward to δ, frozen op | backward, stock matmul | time ratio | peak extra MiB, frozen | peak extra MiB, stock | memory ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for family in ["gpt2", "gptj", "gpt_neox"] {
        let cfg = medium_config(family, n_layer);
        let batch = random_batch(cfg.vocab_size, b, t, 7);
        let spec = TraceSpec::logits(Logits::Last);
        let (fwd, frozen_bwd, frozen_mem) = {
            let model = build(&cfg, false);
            let _ = model.forward(&batch, &spec, &[]).unwrap(); // warm-up
            let (best, med) = time(3, || {
                model.forward(&batch, &spec, &[]).unwrap();
            });
            let (bt, mem) = backward(&*model, &batch, &cfg);
            ((best, med), bt, mem)
        };
        let (stock_bwd, stock_mem) = {
            let model = build(&cfg, true);
            backward(&*model, &batch, &cfg)
        };
        let toks = (b * t) as f64;
        println!(
            "| {family} | {:.0} | {:.0} | {:.3} s | {:.3} s | {:.2}x | {:.0} | {:.0} | {:.1}x |",
            toks / fwd.0,
            toks / fwd.1,
            frozen_bwd,
            stock_bwd,
            stock_bwd / frozen_bwd,
            mib(frozen_mem),
            mib(stock_mem),
            stock_mem as f64 / frozen_mem as f64
        );
    }
    attention();
}

/// One layer's attention as `edit stats` runs it at GPT-2 XL's shape (25 heads of 64): three
/// full 1024-token rows (Wikipedia articles), and 35 rows of 87 tokens (WikiText paragraphs),
/// the batches `width × rows ≤ 3 × 1024` makes of each.
fn attention() {
    use edit::models::{causal_attention, layers};
    println!();
    println!("| attention, no grad, 25 heads × 64 | blocked causal kernel | general (scores, bias, softmax) | ratio |");
    println!("|---|---|---|---|");
    for (b, t) in [(3, 1024), (35, 87)] {
        let (h, hd) = (25, 64);
        let rows: Vec<Vec<u32>> = (0..b).map(|_| vec![1; t]).collect();
        let batch = edit::Batch::from_sequences(&rows, 0, &Device::Cpu).unwrap();
        let bias = batch.attention_bias().unwrap();
        let split = || layers::split_heads(&Tensor::randn(0f32, 1.0, (b, t, h * hd), &Device::Cpu).unwrap(), h).unwrap();
        let (q, k, v) = (split(), split(), split());
        let scale = 1.0 / (hd as f64).sqrt();
        let (blocked, _) = time(3, || drop(causal_attention::attention(&q, &k, &v, batch.lengths(), scale, None).unwrap()));
        let (general, _) = time(3, || drop(layers::attention(&q, &k, &v, &bias, scale, None, false).unwrap()));
        println!("| {b} rows × {t} tokens | {:.1} ms | {:.1} ms | {:.2}× |", blocked * 1e3, general * 1e3, general / blocked);
    }
}

/// Forward with a zero δ at the middle layer's MLP output, NLL on the last tokens, backward.
/// Returns the best time of 3 and the peak extra memory of one run.
fn backward(model: &dyn edit::CausalLm, batch: &edit::Batch, cfg: &edit::ModelConfig) -> (f64, usize) {
    let delta = Var::zeros(cfg.d_model, DType::F32, &Device::Cpu).unwrap();
    let positions: Vec<(usize, usize)> = (0..batch.batch_size()).map(|r| (r, batch.seq_len() / 2)).collect();
    let targets: Vec<u32> = (0..batch.batch_size() as u32).map(|i| 100 + i).collect();
    let step = || {
        let iv = Intervention { layer: cfg.n_layer / 2, site: Site::MlpOut, positions: positions.clone(), deltas: delta.as_tensor().clone() };
        let trace = model.forward(batch, &TraceSpec::logits(Logits::Last), &[iv]).unwrap();
        let grads = nll_loss(&trace.logits.unwrap(), &targets).backward().unwrap();
        assert!(grads.get(delta.as_tensor()).is_some());
        grads
    };
    let base = reset_peak();
    drop(step());
    let peak = peak_since(base);
    let (best, _) = time(3, || drop(step()));
    (best, peak)
}
