//! Shared bench helpers: a counting allocator for peak memory, random models of realistic
//! shape built in memory (no weights can be downloaded here), and timing.
#![allow(dead_code)]

pub mod checkpoint;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use edit::checkpoint::WeightSource;
use edit::config::ModelConfig;
use edit::CausalLm;

pub struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = CURRENT.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

/// Resets the peak to the current level and returns that baseline.
pub fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// Peak bytes above `baseline` since the last reset.
pub fn peak_since(baseline: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(baseline)
}

pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Best and median wall time of `reps` runs of `f`, in seconds.
pub fn time<F: FnMut()>(reps: usize, mut f: F) -> (f64, f64) {
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    (ts[0], ts[ts.len() / 2])
}

/// The config of a realistic model of `family` at GPT-2-medium / Pythia-410m width.
pub fn medium_config(family: &str, n_layer: usize) -> ModelConfig {
    let v = match family {
        "gpt2" => serde_json::json!({"model_type": "gpt2", "n_embd": 1024, "n_head": 16, "n_layer": n_layer,
            "vocab_size": 50257, "n_positions": 1024}),
        "gptj" => serde_json::json!({"model_type": "gptj", "n_embd": 1024, "n_head": 16, "n_layer": n_layer,
            "vocab_size": 50400, "n_positions": 2048, "rotary_dim": 16}),
        "gpt_neox" => serde_json::json!({"model_type": "gpt_neox", "hidden_size": 1024, "num_attention_heads": 16,
            "num_hidden_layers": n_layer, "intermediate_size": 4096, "vocab_size": 50304,
            "max_position_embeddings": 2048, "rotary_pct": 0.25}),
        _ => panic!("unknown family {family}"),
    };
    ModelConfig::from_json(&v, std::path::Path::new("bench")).unwrap()
}

/// A GPT-2 config at GPT-2 XL width (d 1600, 25 heads, d_ff 6400) with `n_layer` layers.
pub fn xl_width_gpt2(n_layer: usize) -> ModelConfig {
    let v = serde_json::json!({"model_type": "gpt2", "n_embd": 1600, "n_head": 25, "n_layer": n_layer, "vocab_size": 50257, "n_positions": 1024});
    ModelConfig::from_json(&v, std::path::Path::new("bench")).unwrap()
}

/// A few everyday edit requests (the GPT-2 tokenizer knows their words).
pub fn sample_requests() -> Vec<edit::editing::requests::Request> {
    let v = serde_json::json!([
        {"prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"},
        {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
        {"prompt": "{} was born in the city of", "subject": "Alice Smith", "target_new": "Paris"},
        {"prompt": "The capital of {} is", "subject": "France", "target_new": "Lyon"},
    ]);
    edit::editing::requests::parse_requests(&v.to_string(), "bench").unwrap()
}

/// Every parameter a Llama-style config names, with its stored shape (linear weights `[out, in]`;
/// no `lm_head` when the head is tied).
pub fn decoder_parameter_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for n in edit::models::modules::parameter_names(cfg) {
        let bare = n.strip_suffix(".weight").or_else(|| n.strip_suffix(".bias")).unwrap_or(&n);
        let shape = if let Ok(m) = edit::models::modules::find(cfg, bare) {
            if n.ends_with(".bias") {
                vec![m.out_dim]
            } else {
                m.stored_shape().to_vec()
            }
        } else if n == "model.embed_tokens.weight" || n == "lm_head.weight" {
            if n == "lm_head.weight" && cfg.tie_word_embeddings {
                continue;
            }
            vec![cfg.vocab_size, cfg.d_model]
        } else if n.contains("q_norm") || n.contains("k_norm") {
            vec![cfg.head_dim]
        } else {
            vec![cfg.d_model]
        };
        out.push((n, shape));
    }
    out
}

/// Random weights for every tensor the family's loader asks for, with the checkpoint's names.
pub fn random_weights(cfg: &ModelConfig, trainable: bool) -> WeightSource {
    let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |n: String, s: &[usize]| shapes.push((n, s.to_vec()));
    match cfg.family {
        edit::Family::Gpt2 => {
            add("transformer.wte.weight".into(), &[v, d]);
            add("transformer.wpe.weight".into(), &[cfg.n_ctx, d]);
            add("transformer.ln_f.weight".into(), &[d]);
            add("transformer.ln_f.bias".into(), &[d]);
            for i in 0..cfg.n_layer {
                let p = format!("transformer.h.{i}");
                for ln in ["ln_1", "ln_2"] {
                    add(format!("{p}.{ln}.weight"), &[d]);
                    add(format!("{p}.{ln}.bias"), &[d]);
                }
                for (m, i_, o) in [("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, f), ("mlp.c_proj", f, d)] {
                    add(format!("{p}.{m}.weight"), &[i_, o]);
                    add(format!("{p}.{m}.bias"), &[o]);
                }
            }
        }
        edit::Family::GptJ => {
            add("transformer.wte.weight".into(), &[v, d]);
            add("transformer.ln_f.weight".into(), &[d]);
            add("transformer.ln_f.bias".into(), &[d]);
            add("lm_head.weight".into(), &[v, d]);
            add("lm_head.bias".into(), &[v]);
            for i in 0..cfg.n_layer {
                let p = format!("transformer.h.{i}");
                add(format!("{p}.ln_1.weight"), &[d]);
                add(format!("{p}.ln_1.bias"), &[d]);
                for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    add(format!("{p}.attn.{m}.weight"), &[d, d]);
                }
                add(format!("{p}.mlp.fc_in.weight"), &[f, d]);
                add(format!("{p}.mlp.fc_in.bias"), &[f]);
                add(format!("{p}.mlp.fc_out.weight"), &[d, f]);
                add(format!("{p}.mlp.fc_out.bias"), &[d]);
            }
        }
        edit::Family::GptNeoX => {
            add("gpt_neox.embed_in.weight".into(), &[v, d]);
            add("gpt_neox.final_layer_norm.weight".into(), &[d]);
            add("gpt_neox.final_layer_norm.bias".into(), &[d]);
            add("embed_out.weight".into(), &[v, d]);
            for i in 0..cfg.n_layer {
                let p = format!("gpt_neox.layers.{i}");
                for ln in ["input_layernorm", "post_attention_layernorm"] {
                    add(format!("{p}.{ln}.weight"), &[d]);
                    add(format!("{p}.{ln}.bias"), &[d]);
                }
                for (m, i_, o) in [("attention.query_key_value", d, 3 * d), ("attention.dense", d, d), ("mlp.dense_h_to_4h", d, f), ("mlp.dense_4h_to_h", f, d)]
                {
                    add(format!("{p}.{m}.weight"), &[o, i_]);
                    add(format!("{p}.{m}.bias"), &[o]);
                }
            }
        }
        _ => {
            for (n, s) in decoder_parameter_shapes(cfg) {
                add(n, &s);
            }
        }
    }
    let dev = Device::Cpu;
    let map: HashMap<String, Tensor> = shapes
        .into_iter()
        .map(|(n, s)| {
            let t = if n.contains("ln") || n.contains("layernorm") || n.contains("norm.") {
                if n.ends_with("weight") {
                    Tensor::ones(s.as_slice(), DType::F32, &dev)
                } else {
                    Tensor::zeros(s.as_slice(), DType::F32, &dev)
                }
            } else {
                Tensor::randn(0f32, 0.02, s.as_slice(), &dev)
            }
            .unwrap();
            // A Var-backed weight makes candle's own matmul (and its weight gradient) run.
            let t = if trainable && t.rank() == 2 { Var::from_tensor(&t).unwrap().as_tensor().clone() } else { t };
            (n, t)
        })
        .collect();
    WeightSource::Memory(map)
}

pub fn build(cfg: &ModelConfig, trainable: bool) -> Box<dyn CausalLm> {
    let src = random_weights(cfg, trainable);
    edit::model::build_model(cfg, &src, DType::F32, &Device::Cpu).unwrap()
}

pub fn random_batch(vocab: usize, b: usize, t: usize, seed: u64) -> edit::Batch {
    let mut s = seed;
    let seqs: Vec<Vec<u32>> = (0..b)
        .map(|_| {
            (0..t)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect();
    edit::Batch::from_sequences(&seqs, 0, &Device::Cpu).unwrap()
}
