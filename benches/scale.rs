//! Editing at real model sizes, through the `edit` binary as a user runs it: a random-weight
//! checkpoint of GPT-2 XL's or GPT-J 6B's shape is written to a temporary directory (nothing can be
//! downloaded here), then, each as its own process with its peak resident memory (`wait4`):
//!   1. `edit stats` over the edited layers (GPT-2 XL 13-17, GPT-J 3-8): tokens per second;
//!      with `EDIT_BENCH_TORCH=1`, PyTorch over the same layers, corpus and batch shapes
//!      (`benches/torch_stats.py`) in the same run;
//!   2. `edit apply --method rome`, one request, on those statistics;
//!   3. `edit apply --method memit` with `EDIT_BENCH_MEMIT` requests (100), once per z batch size
//!      in `EDIT_BENCH_ZBATCH` (the device's default if unset, e.g. `1,32`).
//!
//! ROME and MEMIT run once per value of `grad_checkpoint` in `EDIT_BENCH_GRAD_CHECKPOINT` (the
//! config's `auto` if unset; `auto,off` compares backpropagating one block at a time with the
//! whole suffix's graph).
//!
//! Settings (environment): `EDIT_BENCH_SHAPE` gpt2-xl (default) | gpt-j-6b | a Llama-style shape
//! from tests/fixtures/hub-configs (llama-3.2-1b, llama-3-8b, qwen2.5-7b, mistral-7b, qwen3-0.6b,
//! gemma-2-2b, gemma-3-1b; statistics over layers 4-8, ROME at layer 5, the shipped configs);
//! `EDIT_BENCH_LAYERS` fewer layers; `EDIT_BENCH_DTYPE` the file's storage and `--dtype` (f32 for
//! GPT-2 XL, bf16 otherwise by default); `EDIT_BENCH_COMPUTE` a different `--dtype` (f32 computes
//! a bf16 checkpoint in f32, as the reference does, and PyTorch's side then too); `EDIT_BENCH_DEVICE` cpu | cuda; `EDIT_BENCH_STEPS` `v_num_grad_steps` (the
//! config's 20 by default; on 2 CPU cores a full edit at these sizes takes minutes per step);
//! `EDIT_BENCH_CORPUS` articles (default: the WikiText-2 sample's lines joined into texts that
//! fill the context) | lines (its paragraphs as they are); `EDIT_BENCH_TEXTS` texts for the
//! statistics (16 articles or 200 lines); `EDIT_BENCH_JOBS` a subset of
//! `stats,rome,memit`; `EDIT_BENCH_MODEL_DIR` / `EDIT_BENCH_STATS_DIR` to write (or reuse) the
//! checkpoint / statistics there instead of a temporary directory; `EDIT_BIN` another `edit`
//! binary (a CUDA build on a GPU machine). On CUDA the peak GPU memory (`nvidia-smi`, polled) is
//! reported beside the resident memory.
//!
//! `cargo bench --bench scale`. Prints one Markdown table.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::checkpoint::{measured, repo_root, write_random, Shape};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn edit_bin() -> PathBuf {
    env("EDIT_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_edit")))
}

/// The statistics' corpus, one text per line. `lines`: the embedded WikiText-2 sample as it is
/// (paragraphs of ~90 tokens on average). `articles` (the default): its consecutive lines joined
/// into texts of at least 6,000 characters, which the context's 1,024 tokens truncate, like the
/// Wikipedia articles the statistics are computed over in practice (rows at full width, where
/// attention costs as much as the MLP).
fn corpus(kind: &str, dir: &Path) -> PathBuf {
    let lines = repo_root().join("src/data/wikitext-2-raw-test.txt");
    match kind {
        "lines" => lines,
        "articles" => {
            let mut texts = vec![String::new()];
            for line in std::fs::read_to_string(&lines).unwrap().lines().map(str::trim).filter(|l| !l.is_empty()) {
                let last = texts.last_mut().unwrap();
                if last.len() >= 6000 {
                    texts.push(line.to_string());
                } else {
                    if !last.is_empty() {
                        last.push(' ');
                    }
                    last.push_str(line);
                }
            }
            let path = dir.join("articles.txt");
            std::fs::write(&path, texts.join("\n") + "\n").unwrap();
            path
        }
        other => panic!("EDIT_BENCH_CORPUS={other}: expected articles or lines"),
    }
}

/// `n` edit requests: the fact-gpt2 fixture's CounterFact cases, cycled with a numbered subject
/// past its 500.
fn write_requests(path: &Path, n: usize) {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("tests/fixtures/fact-gpt2/cases.json")).unwrap()).unwrap();
    let requests: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let r = &cases[i % cases.len()]["requested_rewrite"];
            let round = i / cases.len();
            let subject = r["subject"].as_str().unwrap();
            let subject = if round == 0 { subject.to_string() } else { format!("{subject} {}", round + 1) };
            serde_json::json!({"prompt": r["prompt"], "subject": subject, "target_new": r["target_new"]["str"], "target_true": r["target_true"]["str"]})
        })
        .collect();
    std::fs::write(path, serde_json::to_string(&requests).unwrap()).unwrap();
}

struct Run {
    wall: f64,
    peak: u64,
    /// Peak GPU memory in use while it ran (MiB, all processes), when polled.
    gpu_peak: Option<u64>,
    load: f64,
    out: String,
}

/// Polls `nvidia-smi` for the memory in use until `done` is set; returns the largest reading.
fn poll_gpu_memory(done: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<Option<u64>> {
    std::thread::spawn(move || {
        let mut peak = None;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let read = Command::new("nvidia-smi").args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]).output();
            if let Some(mib) = read.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok()) {
                peak = Some(peak.unwrap_or(0).max(mib));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        peak
    })
}

fn run(cmd: &mut Command, gpu: bool) -> Run {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll = gpu.then(|| poll_gpu_memory(done.clone()));
    let (wall, peak, out, err) = measured(cmd);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let gpu_peak = poll.and_then(|p| p.join().unwrap());
    let load = err
        .lines()
        .find_map(|l| l.split("loaded in ").nth(1))
        .and_then(|s| {
            let s = s.trim();
            s.strip_suffix("ms").map(|ms| ms.parse::<f64>().ok().map(|v| v / 1e3)).unwrap_or_else(|| s.strip_suffix('s').and_then(|v| v.parse().ok()))
        })
        .unwrap_or(f64::NAN);
    Run { wall, peak, gpu_peak, load, out }
}

fn main() {
    let shape = Shape::parse(&env("EDIT_BENCH_SHAPE").unwrap_or("gpt2-xl".into()), env("EDIT_BENCH_LAYERS").map(|s| s.parse().unwrap()));
    let (stats_layers, rome_layer) = match shape {
        Shape::Gpt2Xl { .. } => ("13-17", 17),
        Shape::GptJ { .. } => ("3-8", 5),
        // The AlphaEdit repository's Llama 3 8B layers (ROME: 5; MEMIT / AlphaEdit: 4-8).
        Shape::Hub { .. } => ("4-8", 5),
        Shape::Wide { .. } => panic!("the wide-key shapes are for `cargo bench --bench wide`"),
    };
    let dtype = env("EDIT_BENCH_DTYPE").unwrap_or(if matches!(shape, Shape::Gpt2Xl { .. }) { "f32".into() } else { "bf16".into() });
    // The compute dtype (`--dtype`): the storage's unless `EDIT_BENCH_COMPUTE` says otherwise.
    let compute = env("EDIT_BENCH_COMPUTE").unwrap_or(dtype.clone());
    let device = env("EDIT_BENCH_DEVICE").unwrap_or("cpu".into());
    let steps = env("EDIT_BENCH_STEPS");
    let corpus_kind = env("EDIT_BENCH_CORPUS").unwrap_or("articles".into());
    // 16 articles are ~16k tokens, past the 6,400 the widest keys need for an invertible C.
    let texts = env("EDIT_BENCH_TEXTS").unwrap_or(if corpus_kind == "lines" { "200".into() } else { "16".into() });
    let n_memit: usize = env("EDIT_BENCH_MEMIT").map(|s| s.parse().unwrap()).unwrap_or(100);
    let jobs = env("EDIT_BENCH_JOBS").unwrap_or("predict,stats,rome,memit".into());
    let list = |name: &str| -> Vec<Option<String>> {
        match env(name) {
            Some(list) => list.split(',').map(|s| Some(s.trim().to_string())).collect(),
            None => vec![None],
        }
    };
    let z_batches = list("EDIT_BENCH_ZBATCH");
    let checkpoints = list("EDIT_BENCH_GRAD_CHECKPOINT");

    let tmp = tempfile::tempdir().unwrap();
    let model = env("EDIT_BENCH_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| tmp.path().join("model"));
    std::fs::create_dir_all(&model).unwrap();
    let file = model.join("model.safetensors");
    let t = Instant::now();
    let size = match std::fs::metadata(&file) {
        Ok(m) if std::fs::read_to_string(model.join("bench-shape")).ok().as_deref() == Some(&format!("{shape:?} {dtype}")) => m.len(),
        _ => {
            let size = write_random(&model, shape, &dtype);
            std::fs::write(model.join("bench-shape"), format!("{shape:?} {dtype}")).unwrap();
            size
        }
    };
    let gb = size as f64 / 1e9;
    eprintln!("{} ({} layers, {dtype}): {gb:.2} GB at {} ({:.0?})", shape.name(), shape.n_layer(), model.display(), t.elapsed());
    let corpus = corpus(&corpus_kind, tmp.path());
    let stats_dir = env("EDIT_BENCH_STATS_DIR").map(PathBuf::from).unwrap_or_else(|| tmp.path().join("stats"));
    let common_args = |c: &mut Command| {
        c.arg("-v").arg("--model").arg(&model).args(["--dtype", &compute, "--device", &device]);
        c.arg("--text").arg(&corpus).args(["--samples", &texts]).arg("--stats-dir").arg(&stats_dir);
    };
    let mut rows: Vec<String> = Vec::new();
    let gpu = device.starts_with("cuda");
    let mem = |r: &Run| {
        let host = format!("{:.2} GB ({:.2}× the weights)", r.peak as f64 / 1e9, r.peak as f64 / size as f64);
        match r.gpu_peak {
            Some(mib) => format!("{host}; GPU {:.2} GB ({:.2}×)", mib as f64 * 1048576.0 / 1e9, mib as f64 * 1048576.0 / size as f64),
            None => host,
        }
    };

    if jobs.contains("predict") {
        let mut c = Command::new(edit_bin());
        c.args(["predict", "-v", "--json", "--model"]).arg(&model).args(["--dtype", &compute, "--device", &device, "The capital of France is"]);
        let r = run(&mut c, gpu);
        rows.push(format!("| `edit predict`, one prompt | {:.1} s after a {:.2} s load | {} |", r.wall - r.load, r.load, mem(&r)));
    }
    if jobs.contains("stats") {
        let mut c = Command::new(edit_bin());
        c.arg("stats").args(["--layers", stats_layers, "--json"]);
        common_args(&mut c);
        let r = run(&mut c, gpu);
        let tokens: f64 =
            r.out.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|v| v["tokens"].as_f64()).unwrap_or(f64::NAN);
        let secs = r.wall - r.load;
        rows.push(format!(
            "| `edit stats` layers {stats_layers}, {texts} texts ({corpus_kind}) | {tokens:.0} tokens in {secs:.1} s after a {:.1} s load: **{:.0} tokens/s** | {} |",
            r.load,
            tokens / secs,
            mem(&r)
        ));
        if env("EDIT_BENCH_TORCH").as_deref() == Some("1") {
            let script = repo_root().join("benches/torch_stats.py");
            let mut c = Command::new("python3");
            c.arg(script)
                .arg(&model)
                .args(["--layers", stats_layers, "--texts", &texts, "--device", &device, "--dtype", &compute])
                .arg("--corpus")
                .arg(&corpus);
            let r = run(&mut c, gpu);
            let v: serde_json::Value = serde_json::from_str(r.out.lines().last().unwrap_or("{}")).unwrap();
            rows.push(format!(
                "| PyTorch {} (same layers, corpus, batch shapes) | {} tokens in {:.1} s after a {:.1} s load: **{:.0} tokens/s** | {} |",
                v["torch"].as_str().unwrap_or("?"),
                v["tokens"],
                v["seconds"].as_f64().unwrap_or(f64::NAN),
                v["load_seconds"].as_f64().unwrap_or(f64::NAN),
                v["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                mem(&r)
            ));
        }
    }
    let full_depth = shape.full_depth();
    let method_args = |c: &mut Command, method: &str, checkpoint: &Option<String>| {
        c.args(["--method", method]);
        if let Some(g) = checkpoint {
            c.args(["--set", &format!("grad_checkpoint={g}")]);
        }
        if let Some(s) = &steps {
            c.args(["--set", &format!("v_num_grad_steps={s}")]);
        }
        // A shallower model is not recognised as its full-depth model: name the config, and read
        // the loss at its last layer as the config does at the real depth.
        if !full_depth {
            let file = match shape {
                Shape::Gpt2Xl { .. } => Some("gpt2-xl"),
                Shape::GptJ { .. } => Some("EleutherAI_gpt-j-6B"),
                Shape::Hub { name: "llama-3-8b", .. } => Some("meta-llama_Meta-Llama-3-8B"),
                Shape::Hub { name: "qwen2.5-7b", .. } => Some("Qwen_Qwen2.5-7B"),
                Shape::Hub { .. } | Shape::Wide { .. } => None,
            };
            if let Some(file) = file {
                c.args(["--config", &format!("{method}/{file}")]);
            }
            c.args(["--set", &format!("v_loss_layer={}", shape.n_layer() - 1)]);
        }
        // The Llama-style shapes edit the layers whose statistics the stats job collected (the
        // Llama 3 8B references' ROME layer 5, MEMIT 4-8), whatever config they get.
        if matches!(shape, Shape::Hub { .. }) {
            c.args(["--set", if method == "rome" { "layers=[5]" } else { "layers=[4,5,6,7,8]" }]);
        }
    };
    let steps_note = steps.as_deref().map(|s| format!("{s} v* steps")).unwrap_or_else(|| "the config's steps".into());
    let checkpoint_note = |g: &Option<String>| g.as_deref().map(|g| format!(", grad_checkpoint={g}")).unwrap_or_default();
    if jobs.contains("rome") {
        let req = tmp.path().join("rome.json");
        write_requests(&req, 1);
        for (i, g) in checkpoints.iter().enumerate() {
            let mut c = Command::new(edit_bin());
            c.arg("apply").arg(&req).args(["--json", "--delta-out"]).arg(tmp.path().join(format!("rome-delta-{i}.safetensors")));
            common_args(&mut c);
            method_args(&mut c, "rome", g);
            let r = run(&mut c, gpu);
            rows.push(format!(
                "| `edit apply --method rome`, 1 request, layer {rome_layer}, {steps_note}{} | {:.1} s after a {:.1} s load | {} |",
                checkpoint_note(g),
                r.wall - r.load,
                r.load,
                mem(&r)
            ));
        }
    }
    if jobs.contains("memit") {
        let req = tmp.path().join("memit.json");
        write_requests(&req, n_memit);
        let runs = z_batches.iter().flat_map(|zb| checkpoints.iter().map(move |g| (zb, g)));
        for (i, (zb, g)) in runs.enumerate() {
            let mut c = Command::new(edit_bin());
            c.arg("apply").arg(&req).args(["--json", "--delta-out"]).arg(tmp.path().join(format!("memit-delta-{i}.safetensors")));
            common_args(&mut c);
            method_args(&mut c, "memit", g);
            if let Some(zb) = zb {
                c.args(["--set", &format!("z_batch_size={zb}")]);
            }
            let r = run(&mut c, gpu);
            let zb = zb.as_deref().map(|z| format!("z batch {z}")).unwrap_or_else(|| "default z batch".into());
            let per = (r.wall - r.load) / n_memit as f64;
            rows.push(format!(
                "| `edit apply --method memit`, {n_memit} requests, {zb}, {steps_note}{} | {:.1} s after a {:.1} s load ({per:.2} s per edit) | {} |",
                checkpoint_note(g),
                r.wall - r.load,
                r.load,
                mem(&r)
            ));
        }
    }
    println!(
        "{} at random weights: {} layers, {dtype} storage ({gb:.2} GB), {compute} compute, device {device}, {} threads",
        shape.name(),
        shape.n_layer(),
        candle_core::utils::get_num_threads()
    );
    println!();
    println!("| job | time | peak memory |");
    println!("|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
