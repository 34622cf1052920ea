//! Loading a checkpoint of real size: a random-weight GPT-2 of GPT-2 XL shape (48 layers, d 1600,
//! 1.56 B parameters, 6.2 GB f32; EDIT_BENCH_LOAD_LAYERS for fewer layers) is written to a
//! temporary directory as one safetensors file (streamed: the bench never holds the weights),
//! then `edit predict` runs on it twice (the second from the page cache is reported): its load
//! time, wall time and peak resident memory against the weights' size. With `EDIT_BENCH_TORCH=1`
//! and transformers installed, the same prediction by transformers is measured beside it.
//!
//! `cargo bench --bench load`.

mod common;

use std::process::Command;
use std::time::Instant;

use common::checkpoint::{measured, write_random, Shape};

fn main() {
    let n_layer: usize = std::env::var("EDIT_BENCH_LOAD_LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(48);
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let size = write_random(tmp.path(), Shape::Gpt2Xl { n_layer }, "f32");
    let gb = size as f64 / 1e9;
    eprintln!("wrote a {n_layer}-layer GPT-2 at XL width: {gb:.2} GB in {:.0?}", t.elapsed());
    let predict = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edit"));
        c.arg("predict").arg("-v").arg("-m").arg(tmp.path()).arg("The Eiffel Tower is located in the city of");
        c
    };
    measured(&mut predict());
    let (wall, peak, _, err) = measured(&mut predict());
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
        let (wall, peak, _, _) = measured(Command::new("python3").arg("-c").arg(script).arg(tmp.path()).arg("The Eiffel Tower is located in the city of"));
        println!("| transformers (import, load, forward) | {wall:.2} s, peak {:.2} GB ({:.2}×) |", peak as f64 / 1e9, peak as f64 / size as f64);
    }
}
