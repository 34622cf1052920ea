//! Issue 12's speed table on the fact-gpt2 fixture, in one run: the v* loop side by side with
//! PyTorch (`benches/torch_v_loop.py`, the script, embedded below), ROME, MEMIT,
//! FT-L and `edit stats` through the real binary, each against the reference code's own time
//! (tests/fixtures/fact-gpt2/REFERENCE.md), and the FLOPs the v* loop needs against this
//! machine's GEMM peak, measured in the same run.
//!
//! `cargo bench --bench speed` (PyTorch's side runs when `python3` can import torch and
//! transformers; `EDIT_BENCH_TORCH=0` skips it; `EDIT_BENCH_MEMIT_500=1` adds MEMIT's batch of
//! 500, about a minute).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use edit::models::{first_positions, shift_positions, ResumeCache};
use edit::{Batch, CausalLm, Intervention, Logits, Site, TraceSpec};

// The binary's allocator, so that the in-process loop allocates as `edit` does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fact-gpt2")
}

/// torch_v_loop.py's shapes.
const BATCH: usize = 22;
const TOKENS: usize = 16;
const LAYER: usize = 2;
const STEPS: usize = 20;

/// Best GFLOP/s of a 1024³ f32 matmul through candle (the gemm crate), all threads.
fn gemm_peak() -> f64 {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (1024, 1024), &dev).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t = Instant::now();
        let c = a.matmul(&b).unwrap();
        c.sum_all().unwrap().to_scalar::<f32>().unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * 1024f64.powi(3) / best / 1e9
}

/// The v* loop of torch_v_loop.py through the library: δ at layer 2's MLP output at position 8
/// of every row, −log p(token 5) at position 9 averaged over the rows, Adam (lr 0.5), 20 steps;
/// layers 0-2 run once (the first step), the loss's logits only; with `suffix`, later steps
/// compute positions 8-15 only (over the cached keys/values of 0-7), as the library's v*/z loop
/// does. Returns the best of 3 (s).
fn our_v_loop(model: &dyn CausalLm, suffix: bool) -> f64 {
    let dev = Device::Cpu;
    let d = model.config().d_model;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % model.config().vocab_size as u64) as u32
    };
    let rows: Vec<Vec<u32>> = (0..BATCH).map(|_| (0..TOKENS).map(|_| next()).collect()).collect();
    let full = Batch::from_sequences(&rows, 0, &dev).unwrap();
    let pos = TOKENS / 2;
    let at: Vec<(usize, usize)> = (0..BATCH).map(|r| (r, pos)).collect();
    let loss_at: Vec<(usize, usize)> = (0..BATCH).map(|r| (r, pos + 1)).collect();
    let offsets = if suffix { first_positions(&full, &at) } else { vec![0; BATCH] };
    let all_rows: Vec<usize> = (0..BATCH).collect();
    let target = Tensor::from_vec(vec![5u32; BATCH], (BATCH, 1), &dev).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let (mut delta, mut m, mut v) = (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
        let mut cache: Option<ResumeCache> = None;
        for step in 1..=STEPS {
            let var = Var::from_slice(&delta, d, &dev).unwrap();
            let (batch, spec, iv) = match &cache {
                Some(c) => {
                    let (short, resume) = c.resume(&full, &all_rows, &offsets).unwrap();
                    let spec = TraceSpec { logits: Logits::At(shift_positions(&loss_at, &offsets)), resume: Some(resume), ..Default::default() };
                    (
                        short,
                        spec,
                        Intervention { layer: LAYER, site: Site::BlockOut, positions: shift_positions(&at, &offsets), deltas: var.as_tensor().clone() },
                    )
                }
                None => {
                    let mut spec = TraceSpec::logits(Logits::At(loss_at.clone()));
                    ResumeCache::request(&mut spec, LAYER, model.config().n_layer);
                    (full.clone(), spec, Intervention { layer: LAYER, site: Site::MlpOut, positions: at.clone(), deltas: var.as_tensor().clone() })
                }
            };
            let trace = model.forward(&batch, &spec, &[iv]).unwrap();
            if cache.is_none() {
                cache = Some(ResumeCache::from_trace(&trace, LAYER).unwrap());
            }
            let logits = trace.logits.unwrap();
            let lp = candle_nn::ops::log_softmax(&logits, 1).unwrap();
            let loss = lp.gather(&target, 1).unwrap().mean_all().unwrap().neg().unwrap();
            let g: Vec<f32> = loss.backward().unwrap().get(var.as_tensor()).unwrap().to_vec1().unwrap();
            let (b1, b2) = (0.9f32, 0.999f32);
            let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            for i in 0..d {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                delta[i] -= 0.5 / c1 * m[i] / ((v[i] / c2).sqrt() + 1e-8);
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// Matmul FLOPs of one forward of `tokens` tokens through `layers` GPT-2 blocks (the four linear
/// maps and the two attention products over a `t`-token context).
fn block_flops(d: usize, f: usize, t: usize, tokens: usize, layers: usize) -> f64 {
    let linear = 2.0 * tokens as f64 * (3 * d * d + d * d + 2 * d * f) as f64;
    let attention = 2.0 * 2.0 * tokens as f64 * t as f64 * d as f64;
    (linear + attention) * layers as f64
}

const TORCH_V_LOOP: &str = include_str!("torch_v_loop.py");

fn torch_v_loop() -> Option<String> {
    if std::env::var("EDIT_BENCH_TORCH").is_ok_and(|v| v == "0") {
        return None;
    }
    let out = Command::new("python3").arg("-c").arg(TORCH_V_LOOP).arg(fixture()).output().ok()?;
    if !out.status.success() {
        eprintln!("PyTorch side skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    String::from_utf8(out.stdout).ok()?.lines().last().map(str::to_string)
}

/// The reference collects one layer per run: `benches/torch_stats.py` (the reference's loop
/// without its dataset library: the same texts, truncation and batch shapes, f32 sums, the
/// forward stopped at the layer) for layers 0, 1 and 2 of the fixture, each its own process as
/// `edit stats` is; the sum of their wall times.
fn torch_stats_runs() -> Option<f64> {
    if std::env::var("EDIT_BENCH_TORCH").is_ok_and(|v| v == "0") {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_stats.py");
    let mut total = 0.0;
    for layer in ["0", "1", "2"] {
        let t = Instant::now();
        let out = Command::new("python3")
            .arg(&script)
            .arg(fixture())
            .args(["--layers", layer, "--texts", "100000", "--corpus"])
            .arg(fixture().join("stats-corpus.txt"))
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("PyTorch statistics skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
            return None;
        }
        total += t.elapsed().as_secs_f64();
    }
    Some(total)
}

/// Seconds from a torch_v_loop.py line (`...: 0.415 s (best of 3)`).
fn torch_seconds(line: &str) -> Option<f64> {
    line.rsplit(": ").next()?.split_whitespace().next()?.parse().ok()
}

/// The binary, choosing its own threads (not the plan this process set in its environment).
fn edit_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edit"));
    c.env_remove("RAYON_NUM_THREADS").env_remove("CANDLE_NUM_THREADS");
    if let Some(v) = &*USER_THREADS {
        c.env("RAYON_NUM_THREADS", v);
    }
    c
}

/// The user's RAYON_NUM_THREADS, read before [`edit::threads::configure`] set its own.
static USER_THREADS: std::sync::LazyLock<Option<String>> = std::sync::LazyLock::new(|| std::env::var("RAYON_NUM_THREADS").ok());

/// Runs `edit apply` on `requests` with `--json`: the summary's `seconds` (the edit, without
/// process start and loading) and the per-request ones.
fn apply(method: &str, config: &str, requests: &Path, cache: &Path, out: &Path) -> (f64, Vec<f64>) {
    let o = edit_bin()
        .args(["apply", "-q", "--json", "--force", "--method", method, "--model"])
        .arg(fixture())
        .arg("--config")
        .arg(fixture().join("hparams").join(config))
        .arg(requests)
        .arg("--delta-out")
        .arg(out)
        // The reference has no such guard; MEMIT_tuned's large batches exceed the default.
        .args(["--max-update-ratio", "1000"])
        .env("EDIT_STATS_DIR", cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let seconds = |v: &serde_json::Value| v.get("seconds").and_then(|s| s.as_f64());
    let (summary, per): (Vec<_>, Vec<_>) = lines.iter().partition(|v| v.get("summary").is_some());
    (summary.first().and_then(|v| seconds(v)).expect("a summary line"), per.iter().filter_map(|v| seconds(v)).collect())
}

fn write_requests(path: &Path, cases: &[serde_json::Value]) {
    let reqs: Vec<&serde_json::Value> = cases.iter().map(|c| &c["requested_rewrite"]).collect();
    std::fs::write(path, serde_json::to_string(&reqs).unwrap()).unwrap();
}

fn main() {
    std::sync::LazyLock::force(&USER_THREADS);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let peak = gemm_peak();

    let files = edit::hub::resolve_model(fixture().to_str().unwrap(), &edit::hub::HubOptions::default()).unwrap();
    // The thread plan `edit` itself would use for an edit on this model.
    let plan = edit::threads::configure(&edit::ModelConfig::from_file(&files.config).unwrap(), edit::threads::Workload::Editing);
    let lm = edit::load_model(files, DType::F32, &Device::Cpu).unwrap();
    let cfg = lm.config().clone();
    if std::env::var("EDIT_BENCH_VLOOP_ONLY").is_ok_and(|v| v == "1") {
        // For profiling the loop alone.
        for _ in 0..5 {
            eprintln!("v* loop: {:.3} s", our_v_loop(&*lm.model, true));
        }
        return;
    }
    let whole_rows = our_v_loop(&*lm.model, false);
    let ours = our_v_loop(&*lm.model, true);
    // Needed: layers 0-2 once; per step layers 3-5 forward and their dX backward (about the
    // forward's matmul FLOPs again) at positions 8-15 over a 16-token context, the head at the
    // 22 loss rows forward and back.
    let above = cfg.n_layer - LAYER - 1;
    let head = 2.0 * BATCH as f64 * (cfg.d_model * cfg.vocab_size) as f64;
    let recomputed = TOKENS - TOKENS / 2;
    let per_step = 2.0 * (block_flops(cfg.d_model, cfg.d_ff, TOKENS, BATCH * recomputed, above) + head);
    let first_step = block_flops(cfg.d_model, cfg.d_ff, TOKENS, BATCH * TOKENS, LAYER + 1)
        + 2.0 * (block_flops(cfg.d_model, cfg.d_ff, TOKENS, BATCH * TOKENS, above) + head);
    let needed = first_step + (STEPS - 1) as f64 * per_step;
    let torch = torch_v_loop();

    println!("| what | ours | reference | ratio (reference / ours) |");
    println!("|---|---|---|---|");
    let threads = plan.per_operation;
    match torch.as_deref().and_then(torch_seconds) {
        Some(t) => {
            println!("| v* loop, 20 steps, 22 × 16 tokens, δ at layer 2 (ours: {threads} thread(s) per operation; PyTorch in this run, 2 threads) | {ours:.3} s | {t:.3} s | {:.2}× |", t / ours);
            println!(
                "| the same, every row's 16 positions recomputed at each step (the loop before issue 12's step 9) | {whole_rows:.3} s | {t:.3} s | {:.2}× |",
                t / whole_rows
            );
        }
        None => {
            println!("| v* loop, 20 steps, 22 × 16 tokens, δ at layer 2 | {ours:.3} s | (PyTorch not run) | |");
            println!("| the same, all 16 positions recomputed at each step | {whole_rows:.3} s | (PyTorch not run) | |");
        }
    }

    // Statistics of layers 0-2 over the fixture's corpus: one pass (the reference: one run per
    // layer, ~16 s each).
    let t = Instant::now();
    let st = edit_bin()
        .args(["stats", "-q", "--layers", "0,1,2", "--model"])
        .arg(fixture())
        .arg("--text")
        .arg(fixture().join("stats-corpus.txt"))
        .env("EDIT_STATS_DIR", &cache)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let stats_s = t.elapsed().as_secs_f64();
    println!("| `edit stats`, layers 0-2, the fixture's corpus (347k tokens) | {stats_s:.1} s | 48 s (3 runs × ~16 s) | {:.2}× |", 48.0 / stats_s);
    if let Some(torch_s) = torch_stats_runs() {
        println!(
            "| the same against PyTorch in this run: `benches/torch_stats.py` once per layer, as the reference collects (process start, load and collection) | {stats_s:.1} s | {torch_s:.1} s | {:.2}× |",
            torch_s / stats_s
        );
    }

    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(fixture().join("cases.json")).unwrap()).unwrap();
    let five = tmp.path().join("five.json");
    write_requests(&five, &cases[..5]);
    let ten = tmp.path().join("ten.json");
    write_requests(&ten, &cases[..10]);
    let delta = tmp.path().join("delta.safetensors");

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (_, rome) = apply("rome", "ROME.json", &five, &cache, &delta);
    let r = mean(&rome);
    println!("| ROME, one edit (`ROME.json`, mean of {}) | {r:.3} s | 2.22 s | {:.2}× |", rome.len(), 2.22 / r);
    let (memit, _) = apply("memit", "MEMIT_tuned.json", &ten, &cache, &delta);
    println!("| MEMIT, 10 edits in one batch (`MEMIT_tuned.json`) | {memit:.2} s | 5.9 s (293 s per 500) | {:.2}× |", 293.0 / 50.0 / memit);
    if std::env::var("EDIT_BENCH_MEMIT_500").is_ok_and(|v| v == "1") {
        let all = tmp.path().join("all.json");
        write_requests(&all, &cases[..500]);
        let (memit, _) = apply("memit", "MEMIT_tuned.json", &all, &cache, &delta);
        println!("| MEMIT, 500 edits in one batch (`MEMIT_tuned.json`) | {memit:.1} s | 293 s | {:.2}× |", 293.0 / memit);
    }
    // FT-L tunes all requests of a file in one run: one edit per run, the mean of five runs.
    let mut ft = Vec::new();
    for (i, case) in cases[..5].iter().enumerate() {
        let one = tmp.path().join(format!("ft{i}.json"));
        write_requests(&one, std::slice::from_ref(case));
        ft.push(apply("ft", "FT_constr_eps5e-3.json", &one, &cache, &delta).0);
    }
    let f = mean(&ft);
    println!("| FT-L, one edit (`FT_constr_eps5e-3.json`, mean of {}) | {f:.3} s | 0.37 s | {:.2}× |", ft.len(), 0.37 / f);

    println!();
    println!("| v* loop FLOPs | value |");
    println!("|---|---|");
    println!("| GEMM peak of this machine (1024³ f32 matmul, candle, all threads) | {peak:.0} GFLOP/s |");
    println!("| matmul FLOPs the loop needs (the first step: layers 0-2 forward, layers 3-5 and the head forward + dX backward at all positions; then 19 × forward + dX backward of layers 3-5 at positions 8-15 and of the head at 22 rows) | {:.2} GFLOP |", needed / 1e9);
    println!("| achieved by ours | {:.1} GFLOP/s ({:.0}% of peak) |", needed / ours / 1e9, 100.0 * needed / ours / 1e9 / peak);
    if let Some(t) = torch.as_deref().and_then(torch_seconds) {
        // PyTorch runs every layer and the whole vocabulary projection at every step.
        let full = STEPS as f64 * 2.0 * (block_flops(cfg.d_model, cfg.d_ff, TOKENS, BATCH * TOKENS, cfg.n_layer) + head * TOKENS as f64);
        println!(
            "| PyTorch: FLOPs it computes (all 6 layers and all 352 logits rows, forward + backward) / achieved | {:.2} GFLOP / {:.1} GFLOP/s |",
            full / 1e9,
            full / t / 1e9
        );
    }
    if let Some(line) = torch {
        println!();
        println!("PyTorch: {line}");
    }
}
