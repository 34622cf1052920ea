//! Random-weight checkpoints of real model shapes written to disk, for the benches that run the
//! `edit` binary at real sizes (nothing can be downloaded here). The file is streamed: the bench
//! never holds the weights. Values are small (±0.02, uniform), layer-norm scales 1, biases 0.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A model shape by its Hugging Face name: `gpt2-xl` (48 layers, d 1600), `gpt-j-6b` (28
/// layers, d 4096), or a Llama-style model whose `config.json` is in tests/fixtures/hub-configs
/// (`llama-3.2-1b`, `llama-3-8b`, `qwen2.5-7b`, ...), optionally with fewer layers.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    Gpt2Xl {
        n_layer: usize,
    },
    GptJ {
        n_layer: usize,
    },
    Hub {
        name: &'static str,
        file: &'static str,
        n_layer: usize,
        full: usize,
    },
    /// A real model's MLP key width on a narrow residual stream (d 256): what statistics and their
    /// solves cost at that width, without the rest of the model. `gpt-j-wide` (GPT-J's 16,384-wide
    /// keys) and `llama-3-8b-wide` (Llama 3 8B's 14,336).
    Wide {
        name: &'static str,
        n_layer: usize,
    },
}

/// The residual width of the [`Shape::Wide`] models.
const WIDE_D: usize = 256;

/// The Llama-style shapes the bench knows: (name, hub-configs file, tokenizer in tests/fixtures/tokenizers).
const HUB: &[(&str, &str, &str)] = &[
    ("llama-3.2-1b", "Llama-3.2-1B", "llama-3"),
    ("llama-3-8b", "Meta-Llama-3-8B", "llama-3"),
    ("qwen2.5-7b", "Qwen2.5-7B", "qwen3"),
    ("mistral-7b", "Mistral-7B-v0.1", "mistral"),
    ("qwen3-0.6b", "Qwen3-0.6B", "qwen3"),
    ("gemma-2-2b", "gemma-2-2b", "gemma3"),
    ("gemma-3-1b", "gemma-3-1b-pt", "gemma3"),
];

impl Shape {
    pub fn parse(name: &str, n_layer: Option<usize>) -> Shape {
        match name {
            "gpt2-xl" => Shape::Gpt2Xl { n_layer: n_layer.unwrap_or(48) },
            "gpt-j-6b" | "gptj" => Shape::GptJ { n_layer: n_layer.unwrap_or(28) },
            "gpt-j-wide" => Shape::Wide { name: "gpt-j-wide", n_layer: n_layer.unwrap_or(6) },
            "llama-3-8b-wide" => Shape::Wide { name: "llama-3-8b-wide", n_layer: n_layer.unwrap_or(6) },
            other => {
                let Some(&(name, file, _)) = HUB.iter().find(|(n, _, _)| *n == other) else {
                    let known: Vec<&str> = HUB.iter().map(|(n, _, _)| *n).collect();
                    panic!("unknown shape {other}: gpt2-xl, gpt-j-6b, gpt-j-wide, llama-3-8b-wide, {}", known.join(", "))
                };
                let full = Self::hub_config(file)["num_hidden_layers"].as_u64().unwrap() as usize;
                Shape::Hub { name, file, n_layer: n_layer.unwrap_or(full), full }
            }
        }
    }

    fn hub_config(file: &str) -> serde_json::Value {
        let path = repo_root().join("tests/fixtures/hub-configs").join(format!("{file}.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    pub fn n_layer(self) -> usize {
        match self {
            Shape::Gpt2Xl { n_layer } | Shape::GptJ { n_layer } | Shape::Hub { n_layer, .. } | Shape::Wide { n_layer, .. } => n_layer,
        }
    }

    /// Whether the shape has the real model's depth.
    pub fn full_depth(self) -> bool {
        match self {
            Shape::Gpt2Xl { n_layer } => n_layer == 48,
            Shape::GptJ { n_layer } => n_layer == 28,
            Shape::Hub { n_layer, full, .. } => n_layer == full,
            Shape::Wide { .. } => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shape::Gpt2Xl { .. } => "gpt2-xl",
            Shape::GptJ { .. } => "gpt-j-6b",
            Shape::Hub { name, .. } | Shape::Wide { name, .. } => name,
        }
    }

    /// The parsed config of the shape (at its depth).
    pub fn model_config(self) -> edit::ModelConfig {
        edit::ModelConfig::from_json(&self.config(), Path::new(self.name())).unwrap()
    }

    /// (name, shape, random) in checkpoint order; `random` false means 1 for layer-norm scales and
    /// 0 for everything else (biases).
    fn tensors(self) -> Vec<(String, Vec<usize>, bool)> {
        let mut t: Vec<(String, Vec<usize>, bool)> = Vec::new();
        match self {
            Shape::Gpt2Xl { n_layer } => {
                let (d, f, v, ctx) = (1600usize, 6400usize, 50257usize, 1024usize);
                t.push(("wte.weight".into(), vec![v, d], true));
                t.push(("wpe.weight".into(), vec![ctx, d], true));
                for l in 0..n_layer {
                    for (n, s, random) in [
                        ("ln_1.weight", vec![d], false),
                        ("ln_1.bias", vec![d], false),
                        ("attn.c_attn.weight", vec![d, 3 * d], true),
                        ("attn.c_attn.bias", vec![3 * d], false),
                        ("attn.c_proj.weight", vec![d, d], true),
                        ("attn.c_proj.bias", vec![d], false),
                        ("ln_2.weight", vec![d], false),
                        ("ln_2.bias", vec![d], false),
                        ("mlp.c_fc.weight", vec![d, f], true),
                        ("mlp.c_fc.bias", vec![f], false),
                        ("mlp.c_proj.weight", vec![f, d], true),
                        ("mlp.c_proj.bias", vec![d], false),
                    ] {
                        t.push((format!("h.{l}.{n}"), s, random));
                    }
                }
                t.push(("ln_f.weight".into(), vec![d], false));
                t.push(("ln_f.bias".into(), vec![d], false));
            }
            Shape::GptJ { n_layer } | Shape::Wide { name: "gpt-j-wide", n_layer } => {
                let (d, f, v) = if matches!(self, Shape::GptJ { .. }) { (4096usize, 16384usize, 50400usize) } else { (WIDE_D, 16384, 50400) };
                t.push(("transformer.wte.weight".into(), vec![v, d], true));
                for l in 0..n_layer {
                    for (n, s, random) in [
                        ("ln_1.weight", vec![d], false),
                        ("ln_1.bias", vec![d], false),
                        ("attn.q_proj.weight", vec![d, d], true),
                        ("attn.k_proj.weight", vec![d, d], true),
                        ("attn.v_proj.weight", vec![d, d], true),
                        ("attn.out_proj.weight", vec![d, d], true),
                        ("mlp.fc_in.weight", vec![f, d], true),
                        ("mlp.fc_in.bias", vec![f], false),
                        ("mlp.fc_out.weight", vec![d, f], true),
                        ("mlp.fc_out.bias", vec![d], false),
                    ] {
                        t.push((format!("transformer.h.{l}.{n}"), s, random));
                    }
                }
                t.push(("transformer.ln_f.weight".into(), vec![d], false));
                t.push(("transformer.ln_f.bias".into(), vec![d], false));
                t.push(("lm_head.weight".into(), vec![v, d], true));
                t.push(("lm_head.bias".into(), vec![v], false));
            }
            Shape::Hub { .. } | Shape::Wide { .. } => {
                for (n, s) in super::decoder_parameter_shapes(&self.model_config()) {
                    let random = !n.contains("norm") && !n.ends_with(".bias");
                    t.push((n, s, random));
                }
            }
        }
        t
    }

    fn config(self) -> serde_json::Value {
        match self {
            Shape::Gpt2Xl { n_layer } => serde_json::json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                "n_embd": 1600, "n_head": 25, "n_layer": n_layer, "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024,
                "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}),
            Shape::GptJ { n_layer } => serde_json::json!({"model_type": "gptj", "architectures": ["GPTJForCausalLM"],
                "n_embd": 4096, "n_head": 16, "n_layer": n_layer, "vocab_size": 50400, "n_positions": 2048, "rotary_dim": 64,
                "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": false,
                "bos_token_id": 50256, "eos_token_id": 50256}),
            Shape::Hub { file, n_layer, .. } => {
                let mut c = Self::hub_config(file);
                c["num_hidden_layers"] = n_layer.into();
                c
            }
            Shape::Wide { name: "gpt-j-wide", n_layer } => serde_json::json!({"model_type": "gptj", "architectures": ["GPTJForCausalLM"],
                "n_embd": WIDE_D, "n_inner": 16384, "n_head": 4, "n_layer": n_layer, "vocab_size": 50400, "n_positions": 2048, "rotary_dim": 64,
                "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": false,
                "bos_token_id": 50256, "eos_token_id": 50256}),
            Shape::Wide { n_layer, .. } => {
                let mut c = Self::hub_config("Meta-Llama-3-8B");
                c["num_hidden_layers"] = n_layer.into();
                c["hidden_size"] = WIDE_D.into();
                c["num_attention_heads"] = 4.into();
                c["num_key_value_heads"] = 1.into();
                c
            }
        }
    }

    /// Writes the shape's tokenizer into `dir`: GPT-2's for the GPT shapes, the model's own (from
    /// tests/fixtures/tokenizers) for the others.
    fn write_tokenizer(self, dir: &Path) {
        match self {
            Shape::Hub { .. } | Shape::Wide { name: "llama-3-8b-wide", .. } => {
                use std::io::Read;
                let name = if let Shape::Hub { name, .. } = self { name } else { "llama-3-8b" };
                let (_, _, tok) = HUB.iter().find(|(n, _, _)| *n == name).unwrap();
                let src = repo_root().join("tests/fixtures/tokenizers");
                let mut json = String::new();
                flate2::read::GzDecoder::new(std::fs::File::open(src.join(format!("{tok}.tokenizer.json.gz"))).unwrap()).read_to_string(&mut json).unwrap();
                std::fs::write(dir.join("tokenizer.json"), json).unwrap();
                std::fs::copy(src.join(format!("{tok}.tokenizer_config.json")), dir.join("tokenizer_config.json")).unwrap();
            }
            _ => {
                std::fs::copy(repo_root().join("tests/fixtures/tiny-gpt2/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
            }
        }
    }
}

/// The repository the bench was built from, or (when run elsewhere, e.g. carried to a GPU
/// machine) the current directory, which must then be a checkout of it.
pub fn repo_root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/fixtures").is_dir() {
        built
    } else {
        std::env::current_dir().unwrap()
    }
}

/// Storage dtype of a written checkpoint: `F32`, `F16` or `BF16` (safetensors' names).
fn encode(x: f32, dtype: &str, out: &mut Vec<u8>) {
    let b = x.to_bits();
    match dtype {
        "F32" => out.extend_from_slice(&b.to_le_bytes()),
        // Truncation: the written value is exactly what the file holds, which is all a bench needs.
        "BF16" => out.extend_from_slice(&((b >> 16) as u16).to_le_bytes()),
        "F16" => {
            let sign = ((b >> 16) & 0x8000) as u16;
            let e = ((b >> 23) & 0xff) as i32 - 127 + 15;
            // |x| < 2^-14 (f16 subnormals) is written as 0; the values here never exceed f16's range.
            let h = if e <= 0 { sign } else { sign | ((e as u16) << 10) | ((b >> 13) & 0x3ff) as u16 };
            out.extend_from_slice(&h.to_le_bytes());
        }
        other => panic!("dtype {other}: F32, F16 or BF16"),
    }
}

/// Writes `shape` with `dtype` storage (`f32`, `f16`, `bf16`) into `dir` as one safetensors file
/// plus `config.json` and the GPT-2 tokenizer; returns the file's size in bytes.
pub fn write_random(dir: &Path, shape: Shape, dtype: &str) -> u64 {
    let dtype = dtype.to_uppercase();
    let width = if dtype == "F32" { 4 } else { 2 };
    let tensors = shape.tensors();
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for (name, dims, _) in &tensors {
        let bytes = dims.iter().product::<usize>() * width;
        header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": dims, "data_offsets": [at, at + bytes]}));
        at += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = BufWriter::with_capacity(1 << 22, std::fs::File::create(dir.join("model.safetensors")).unwrap());
    out.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    out.write_all(text.as_bytes()).unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut chunk = Vec::with_capacity(1 << 20);
    for (name, dims, random) in &tensors {
        let ones = (name.contains("ln_") || name.contains("norm")) && name.ends_with("weight");
        let mut left: usize = dims.iter().product();
        while left > 0 {
            chunk.clear();
            let n = left.min(1 << 18);
            for _ in 0..n {
                let x = if *random {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
                } else if ones {
                    1.0
                } else {
                    0.0
                };
                encode(x, &dtype, &mut chunk);
            }
            left -= n;
            out.write_all(&chunk).unwrap();
        }
    }
    out.flush().unwrap();
    std::fs::write(dir.join("config.json"), shape.config().to_string()).unwrap();
    shape.write_tokenizer(dir);
    (8 + text.len() + at) as u64
}

/// Runs `cmd`, returning (wall seconds, peak resident bytes of this child, stdout, stderr); panics
/// with its stderr if it fails. Linux counts in a spawned child's peak the peak of the process
/// that spawned it (the address space it leaves at `exec`), so a bench must keep its own memory
/// small (or do its large work in a child) for the figures to be the command's.
pub fn measured(cmd: &mut std::process::Command) -> (f64, u64, String, String) {
    use std::io::Read;
    use std::process::Stdio;
    let t = std::time::Instant::now();
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its own rusage
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let out = reader.join().unwrap();
    // This child's own peak (wait4), not the largest of all children so far.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed:\n{err}");
    (wall, usage.ru_maxrss as u64 * 1024, out, err)
}
