//! Statistics at wide keys: GPT-J's 16,384 and Llama 3 8B's 14,336, on narrow random-weight
//! models of 6 layers (residual width 256, so the keys' width dominates), a 5-layer job (layers
//! 1-5) through the binary, with each command's peak resident memory (`wait4`):
//!
//!   1. `edit stats --layers 1-5` in one pass, with a checkpoint after its first chunk of texts;
//!   2. the same job as two shards (`--shard 0/2`, `1/2`) and `edit stats merge`;
//!   3. `edit stats export`, then `edit stats pull --offline` from a repository laid out in a
//!      Hugging Face cache;
//!   4. `edit apply --method memit` on layers 1-5 (one request, one v* step): the solves. The
//!      statistics are first made invertible (count·I added to each sum: random keys are fine,
//!      memory is what is measured), since a few thousand tokens leave a 16,384-wide C singular.
//!
//! Settings (environment): `EDIT_BENCH_WIDE` the shapes (`gpt-j-wide,llama-3-8b-wide`, both by
//! default); `EDIT_BENCH_TEXTS` lines of the embedded WikiText-2 sample (120: two chunks of
//! texts, so that two shards each have one), truncated to `EDIT_BENCH_MAX_LEN` tokens (16: the
//! tokens cost d_ff² each, memory does not depend on them); `EDIT_BENCH_PRECISION` the sums'
//! precision (f32, the reference's, or f64); `EDIT_BENCH_JOBS` a subset of `stats,merge,pull,memit`;
//! `EDIT_BIN` another `edit` binary (an older build, for a before/after).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::checkpoint::{measured, write_random, Shape};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn edit() -> Command {
    let mut c = Command::new(env("EDIT_BIN").unwrap_or(env!("CARGO_BIN_EXE_edit").into()));
    c.env_remove("EDIT_STATS_DIR").env("HF_HUB_OFFLINE", "1");
    c
}

fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

fn stats_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(stats_files(&p));
            } else if p.extension().is_some_and(|e| e == "safetensors") && !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Adds count·I to every statistics file under `dir` (their metadata, and so the model's
/// fingerprint, kept). Run as a child process of the bench (`EDIT_BENCH_REGULARISE=dir`): a child
/// spawned later inherits this process's peak memory in its own count, which would otherwise
/// carry these gigabytes into every later row.
fn regularise(dir: &Path) {
    for f in stats_files(dir) {
        let m = edit::stats::cache::load(&f).unwrap();
        let eye = candle_core::Tensor::eye(m.meta.d_ff, m.sum.dtype(), &candle_core::Device::Cpu).unwrap();
        let sum = (&m.sum + (eye * m.count as f64).unwrap()).unwrap();
        edit::stats::cache::save(&f, &sum, m.count, &m.meta).unwrap();
    }
}

fn main() {
    if let Some(dir) = env("EDIT_BENCH_REGULARISE") {
        return regularise(Path::new(&dir));
    }
    let shapes = env("EDIT_BENCH_WIDE").unwrap_or("gpt-j-wide,llama-3-8b-wide".into());
    let texts = env("EDIT_BENCH_TEXTS").unwrap_or("120".into());
    let max_len = env("EDIT_BENCH_MAX_LEN").unwrap_or("16".into());
    let precision = env("EDIT_BENCH_PRECISION").unwrap_or("f32".into());
    let jobs = env("EDIT_BENCH_JOBS").unwrap_or("stats,merge,pull,memit".into());
    println!("| shape | keys | job | time | peak resident memory |\n|---|---|---|---|---|");
    for name in shapes.split(',') {
        let shape = Shape::parse(name, None);
        let d_ff = shape.model_config().d_ff;
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        let size = write_random(&model, shape, "f32");
        let sum_bytes = d_ff * d_ff * if precision == "f64" { 8 } else { 4 };
        eprintln!("{name}: {d_ff}-wide keys, weights {}, one layer's sum {}", gb(size), gb(sum_bytes as u64));
        let row = |job: &str, wall: f64, peak: u64| {
            println!("| {name} | {d_ff} | {job} | {wall:.1} s | {} ({:.1}× one layer's sum) |", gb(peak), peak as f64 / sum_bytes as f64);
        };
        let stats = |dir: &Path, shard: Option<&str>| {
            let mut c = edit();
            c.args(["stats", "-q", "--json", "--layers", "1-5", "--samples", &texts, "--max-len", &max_len, "--precision", &precision, "--model"])
                .arg(&model)
                .arg("--stats-dir")
                .arg(dir);
            match shard {
                Some(s) => c.args(["--shard", s]),
                None => c.args(["--checkpoint-secs", "0"]),
            };
            c
        };
        let single = tmp.path().join("single");
        if jobs.contains("stats") || jobs.contains("pull") || jobs.contains("memit") {
            let (wall, peak, out, _) = measured(&mut stats(&single, None));
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            row(&format!("`edit stats --layers 1-5` ({} tokens, {precision}, a checkpoint after the first 100 texts)", v["tokens"]), wall, peak);
        }
        if jobs.contains("merge") {
            let shards = tmp.path().join("shards");
            let mut files = Vec::new();
            for s in ["0/2", "1/2"] {
                let (wall, peak, out, _) = measured(&mut stats(&shards, Some(s)));
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                files.push(PathBuf::from(v["shard_file"].as_str().unwrap()));
                row(&format!("`edit stats --shard {s}`"), wall, peak);
            }
            let mut c = edit();
            c.args(["stats", "merge"]).args(&files).arg("--stats-dir").arg(tmp.path().join("merged"));
            let (wall, peak, _, _) = measured(&mut c);
            row("`edit stats merge` (2 shards)", wall, peak);
        }
        if jobs.contains("pull") {
            let out = tmp.path().join("export");
            let (wall, peak, _, _) = measured(edit().args(["stats", "export", "-q"]).arg(&out).arg("--model").arg(&model).arg("--stats-dir").arg(&single));
            row("`edit stats export`", wall, peak);
            let commit = "0000000000000000000000000000000000000000";
            let repo = tmp.path().join("hf/datasets--bench--wide-stats");
            std::fs::create_dir_all(repo.join("refs")).unwrap();
            std::fs::write(repo.join("refs/main"), commit).unwrap();
            std::fs::rename(&out, repo.join("snapshots").join(commit)).unwrap_or_else(|_| {
                std::fs::create_dir_all(repo.join("snapshots")).unwrap();
                std::fs::rename(&out, repo.join("snapshots").join(commit)).unwrap();
            });
            let mut c = edit();
            c.env("HF_HUB_CACHE", tmp.path().join("hf"))
                .args(["stats", "pull", "bench/wide-stats", "--offline", "-q", "--model"])
                .arg(&model)
                .arg("--stats-dir")
                .arg(tmp.path().join("pulled"));
            let (wall, peak, _, _) = measured(&mut c);
            row("`edit stats pull` (5 files)", wall, peak);
        }
        if jobs.contains("memit") {
            // Invertible statistics, in a child process (see `regularise`).
            let status = Command::new(std::env::current_exe().unwrap()).env("EDIT_BENCH_REGULARISE", &single).status().unwrap();
            assert!(status.success());
            let req = tmp.path().join("req.json");
            std::fs::write(&req, r#"[{"prompt": "{} plays the", "subject": "Danielle Darrieux", "target_new": "piano"}]"#).unwrap();
            let config = if name.starts_with("gpt-j") { "memit/EleutherAI_gpt-j-6B" } else { "memit/meta-llama_Meta-Llama-3-8B" };
            let mut c = edit();
            c.args(["apply", "-q"])
                .arg(&req)
                .args([
                    "--method",
                    "memit",
                    "--config",
                    config,
                    "--set",
                    "layers=[1,2,3,4,5]",
                    "--set",
                    "v_loss_layer=5",
                    "--set",
                    "v_num_grad_steps=1",
                    "--model",
                ])
                .arg(&model)
                .arg("--stats-dir")
                .arg(&single)
                .arg("--delta-out")
                .arg(tmp.path().join("delta.safetensors"));
            let (wall, peak, _, _) = measured(&mut c);
            row("`edit apply --method memit`, layers 1-5, 1 request", wall, peak);
        }
    }
}
