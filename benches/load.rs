//! Loading a checkpoint of real size: a random-weight GPT-2 of GPT-2 XL shape (48 layers, d 1600,
//! 1.56 B parameters, 6.2 GB f32; EDIT_BENCH_LOAD_LAYERS for fewer layers) is written to a
//! temporary directory as one safetensors file (streamed: the bench never holds the weights),
//! then `edit predict` runs on it twice (the second from the page cache is reported): its load
//! time, wall time and peak resident memory against the weights' size. With `EDIT_BENCH_TORCH=1`
//! and transformers installed, the same prediction by transformers is measured beside it.
//!
//! `cargo bench --bench load`.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Streams a GPT-2 checkpoint of `n_layer` layers at XL width with small random values.
fn write_checkpoint(dir: &Path, n_layer: usize) -> u64 {
    let (d, f, v, ctx) = (1600usize, 6400usize, 50257usize, 1024usize);
    let mut tensors: Vec<(String, Vec<usize>, bool)> = vec![("wte.weight".into(), vec![v, d], true), ("wpe.weight".into(), vec![ctx, d], true)];
    for l in 0..n_layer {
        let p = format!("h.{l}.");
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
            tensors.push((format!("{p}{n}"), s, random));
        }
    }
    tensors.push(("ln_f.weight".into(), vec![d], false));
    tensors.push(("ln_f.bias".into(), vec![d], false));
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for (name, shape, _) in &tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + bytes]}));
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
    for (name, shape, random) in &tensors {
        let n: usize = shape.iter().product();
        let ones = name.contains("ln_") && name.ends_with("weight");
        let mut left = n;
        while left > 0 {
            chunk.clear();
            for _ in 0..left.min(1 << 18) {
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
                chunk.extend_from_slice(&x.to_le_bytes());
            }
            left -= chunk.len() / 4;
            out.write_all(&chunk).unwrap();
        }
    }
    out.flush().unwrap();
    let cfg = serde_json::json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": d, "n_head": 25,
        "n_layer": n_layer, "vocab_size": v, "n_positions": ctx, "n_ctx": ctx, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    (8 + text.len() + at) as u64
}

/// Runs `cmd`, returning (wall seconds, peak resident bytes of this child, stderr).
fn measured(cmd: &mut Command) -> (f64, u64, String) {
    use std::io::Read;
    let t = Instant::now();
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its own rusage
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    // This child's own peak (wait4), not the largest of all children so far.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{err}");
    (wall, usage.ru_maxrss as u64 * 1024, err)
}

fn main() {
    let n_layer: usize = std::env::var("EDIT_BENCH_LOAD_LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(48);
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let size = write_checkpoint(tmp.path(), n_layer);
    let gb = size as f64 / 1e9;
    eprintln!("wrote a {n_layer}-layer GPT-2 at XL width: {gb:.2} GB in {:.0?}", t.elapsed());
    let predict = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edit"));
        c.arg("predict").arg("-v").arg("-m").arg(tmp.path()).arg("The Eiffel Tower is located in the city of");
        c
    };
    measured(&mut predict());
    let (wall, peak, err) = measured(&mut predict());
    let loaded = err.lines().find_map(|l| l.split("loaded in ").nth(1)).unwrap_or("?").trim().to_string();
    println!("| what | value |");
    println!("|---|---|");
    println!("| checkpoint | {n_layer}-layer GPT-2 at XL width, {gb:.2} GB f32, one file, page cache warm |");
    println!("| `edit predict`, 11-token prompt: load / whole run | {loaded} / {wall:.2} s |");
    println!("| `edit predict` peak resident memory | {:.2} GB ({:.2}× the weights) |", peak as f64 / 1e9, peak as f64 / size as f64);
    if std::env::var("EDIT_BENCH_TORCH").is_ok_and(|v| v == "1") {
        let script = "import sys, torch, transformers as t\n\
            tok = t.AutoTokenizer.from_pretrained(sys.argv[1]); m = t.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)\n\
            with torch.no_grad(): print(m(**tok(sys.argv[2], return_tensors='pt')).logits[0, -1].topk(3).indices.tolist())\n";
        let (wall, peak, _) = measured(Command::new("python3").arg("-c").arg(script).arg(tmp.path()).arg("The Eiffel Tower is located in the city of"));
        println!("| transformers (import, load, forward) | {wall:.2} s, peak {:.2} GB ({:.2}×) |", peak as f64 / 1e9, peak as f64 / size as f64);
    }
}
