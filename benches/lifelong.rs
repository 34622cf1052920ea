//! Lifelong (sequential) editing, issue 27. Two jobs (`EDIT_BENCH_JOBS`, default `quality`):
//!
//! `quality`: the 500 cases of `EDIT_BENCH_FIXTURE` (fact-gpt2 or fact-llama) edited in sequence, in chunks of `EDIT_BENCH_CHUNKS`
//! (10,50,100), by `EDIT_BENCH_METHODS` (ultraedit,emmet,alphaedit,memit; empty for the anchor alone) through the binary
//! (`edit eval --sequential`, the fixture's tuned configs: `hparams/UltraEdit.json`,
//! `MEMIT_tuned.json` (else `MEMIT.json`) for MEMIT and EMMET, `AlphaEdit.json`); per run ES / PS / NS right after
//! each chunk (mean over chunks) and on the final model (retention of every earlier edit). With
//! `EDIT_BENCH_ULTRAEDIT_REF` (a work tree of XiaojieGu/UltraEdit) the reference code edits the
//! same cases in the same turns (`benches/lifelong/ref_ultraedit.py`, python3 with torch,
//! transformers and omegaconf) and its final model is scored by the same evaluator (`edit eval
//! --method none`): the anchor. `EDIT_BENCH_PLOT` (an .svg or .png) draws the final scores
//! against the chunk size, one curve per method and metric.
//!
//! `scale`: UltraEdit alone, in process, `EDIT_BENCH_EDITS` (10000) requests in turns of
//! `EDIT_BENCH_TURN` (100), each turn's edit applied and kept before the next: the time of every
//! turn (first and last tenth, to see whether it grows) and the resident memory after the first
//! and the last turn and at its peak. `EDIT_BENCH_SHAPE`: `fact-gpt2` (the fixture, its tuned
//! config) or a random-weight checkpoint of `gpt2-xl` (or `gpt-j-6b`) shape with UltraEdit's
//! generic starting point. Requests: `EDIT_BENCH_COUNTERFACT`, any CounterFact file (the
//! benches/README figures used EasyEdit's simplified CounterFact, `counterfact-10k-simplified.json`,
//! which is not in this repository), by default fact-gpt2's 500 cases; repeated when more edits are
//! asked for than it holds. With `EDIT_BENCH_ULTRAEDIT_REF`, the
//! reference code runs `EDIT_BENCH_REF_TURNS` (5) turns on the same checkpoint and requests, and
//! the per-turn times are compared (same CPU, one run). `EDIT_BENCH_DTYPE` (f32; the checkpoint's
//! storage and the compute dtype), `EDIT_BENCH_DEVICE` (cpu | cuda, a CUDA build), and a Llama-style
//! shape of tests/fixtures/hub-configs (`llama-3-8b`, ...) run `benches/gpu.sh`'s row.
//!
//! `cargo bench --bench lifelong`. Prints Markdown tables.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::DType;
use common::checkpoint::{measured, repo_root, write_random, Shape};
use edit::editing::hparams::resolve;
use edit::editing::method::{EditInputs, EditMethod};
use edit::editing::requests::{read_requests, Request};
use edit::editing::ultraedit::{UltraEdit, UltraEditHparams};
use edit::editing::Snapshot;
use serde_json::Value;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn edit_bin() -> PathBuf {
    env("EDIT_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_edit")))
}

fn fact_gpt2() -> PathBuf {
    repo_root().join("tests/fixtures/fact-gpt2")
}

/// The trained fixture the quality job edits (`EDIT_BENCH_FIXTURE`, fact-gpt2 by default).
fn fixture() -> (String, PathBuf) {
    let name = env("EDIT_BENCH_FIXTURE").unwrap_or_else(|| "fact-gpt2".into());
    let dir = repo_root().join("tests/fixtures").join(&name);
    assert!(dir.join("cases.json").is_file(), "EDIT_BENCH_FIXTURE: {} has no cases.json (fact-gpt2 or fact-llama)", dir.display());
    (name, dir)
}

/// A comma-separated setting; set but empty, it is an empty list.
fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_else(|_| default.into()).split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// The resident and peak resident memory of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0;
    (field("VmRSS:"), field("VmHWM:"))
}

fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("unknown").trim().to_string();
    format!("{model}, {} logical CPUs", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

/// (ES, PS, NS, Score) right after each chunk and on the final model, from `edit eval --json`.
type Scores = ([f64; 4], [f64; 4]);

fn scores(summary: &Value) -> Scores {
    let get = |k: &str| summary[k][0].as_f64().unwrap_or(f64::NAN);
    let row = |prefix: &str| ["rewrite_success", "paraphrase_success", "neighborhood_success", "score"].map(|k| get(&format!("{prefix}_{k}")));
    (row("post"), row("final"))
}

fn eval(method: &str, model: &Path, chunk: usize, stats: &Path) -> (Scores, f64) {
    let m = fixture().1;
    let memit = if m.join("hparams/MEMIT_tuned.json").is_file() { "MEMIT_tuned.json" } else { "MEMIT.json" };
    let config = match method {
        "ultraedit" => Some("UltraEdit.json"),
        "alphaedit" => Some("AlphaEdit.json"),
        "memit" | "emmet" => Some(memit),
        _ => None,
    };
    let mut c = Command::new(edit_bin());
    c.args(["eval", "--method", method, "--model"]).arg(model).arg("--dataset").arg(m.join("cases.json"));
    c.args(["--limit", "500", "--json", "-q", "--max-update-ratio", "1000", "--num-edits", &chunk.to_string()]);
    if method != "none" {
        c.arg("--sequential");
    }
    if let Some(cfg) = config {
        c.arg("--config").arg(m.join("hparams").join(cfg));
    }
    c.arg("--stats-dir").arg(stats).arg("--text").arg(m.join("stats-corpus.txt"));
    let (wall, _, out, _) = measured(&mut c);
    let s: Vec<Value> = serde_json::from_str(&out).unwrap();
    (scores(&s[0]), wall)
}

/// The reference code on `model`: `limit` requests of `cases` in turns of `turn`, with UltraEdit's
/// `lr` and `modules`; returns its timing.json.
fn python_reference(reference: &str, model: &Path, cases: &Path, out: &Path, (turn, limit): (usize, usize), lr: f64, modules: &[String]) -> Value {
    let script = repo_root().join("benches/lifelong/ref_ultraedit.py");
    let mut c = Command::new("python3");
    c.arg(script).arg(reference).arg(model).arg(cases).arg(out);
    c.args(["--num-edits", &turn.to_string(), "--limit", &limit.to_string(), "--lr", &lr.to_string(), "--modules", &modules.join(",")]);
    measured(&mut c);
    serde_json::from_str(&std::fs::read_to_string(out.join("timing.json")).unwrap()).unwrap()
}

fn quality() {
    let chunks: Vec<usize> = list("EDIT_BENCH_CHUNKS", "10,50,100").iter().map(|c| c.parse().unwrap()).collect();
    let methods = list("EDIT_BENCH_METHODS", "ultraedit,emmet,alphaedit,memit");
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("stats");
    let mut rows: Vec<(String, usize, Scores, f64)> = Vec::new();
    let (name, dir) = fixture();
    for &chunk in &chunks {
        for m in &methods {
            let (s, wall) = eval(m, &dir, chunk, &stats);
            eprintln!("{m} in chunks of {chunk}: {s:?} ({wall:.0} s)");
            rows.push((m.clone(), chunk, s, wall));
        }
        if let Some(reference) = env("EDIT_BENCH_ULTRAEDIT_REF") {
            let hp: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("hparams/UltraEdit.json")).unwrap()).unwrap();
            let modules: Vec<String> = serde_json::from_value(hp["edit_modules"].clone()).unwrap();
            let out = tmp.path().join(format!("ref-{chunk}"));
            let t = Instant::now();
            python_reference(&reference, &dir, &dir.join("cases.json"), &out, (chunk, 500), hp["lr"].as_f64().unwrap(), &modules);
            let wall = t.elapsed().as_secs_f64();
            // Scored as it is (`--method none`): its "post" scores are the final model's.
            let ((fin, _), _) = eval("none", &out, 1, &stats);
            eprintln!("reference ultraedit in chunks of {chunk}: final {fin:?} ({wall:.0} s)");
            rows.push(("ultraedit (reference code)".into(), chunk, ([f64::NAN; 4], fin), wall));
        }
    }
    println!("{name}, cases 0-499 in sequence; {}", cpu());
    println!();
    println!("| method | edits per chunk | ES / PS / NS / Score after each chunk | final ES / PS / NS / Score | wall (s) |");
    println!("|---|---|---|---|---|");
    let f = |v: [f64; 4]| if v[0].is_nan() { "–".to_string() } else { format!("{:.1} / {:.1} / {:.1} / {:.1}", v[0], v[1], v[2], v[3]) };
    for (m, chunk, (post, fin), wall) in &rows {
        println!("| {m} | {chunk} | {} | {} | {wall:.0} |", f(*post), f(*fin));
    }
    if let Some(path) = env("EDIT_BENCH_PLOT") {
        let mut series = Vec::new();
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).fold(Vec::new(), |mut v, m| {
            if !v.contains(&m) {
                v.push(m);
            }
            v
        });
        for m in names {
            for (i, metric) in ["ES", "PS", "NS"].iter().enumerate() {
                let points: Vec<(f64, f64)> = rows.iter().filter(|r| r.0 == m).map(|r| (r.1 as f64, r.2 .1[i])).collect();
                series.push((format!("{m} {metric}"), points));
            }
        }
        edit::eval::plot::write_plot(Path::new(&path), &format!("{name}, 500 edits in sequence: final scores"), "edits per chunk", &series).unwrap();
        eprintln!("plot: {path}");
    }
}

/// The requests: EasyEdit's simplified CounterFact, repeated up to `n`.
fn scale_requests(n: usize) -> (Vec<Request>, PathBuf) {
    let path = env("EDIT_BENCH_COUNTERFACT").map(PathBuf::from).unwrap_or_else(|| fact_gpt2().join("cases.json"));
    let base = read_requests(&path).unwrap_or_else(|e| panic!("{}: {e} (set EDIT_BENCH_COUNTERFACT)", path.display()));
    let reqs = (0..n)
        .map(|i| {
            let mut r = base[i % base.len()].clone();
            r.index = i;
            r
        })
        .collect();
    (reqs, path)
}

fn scale() {
    let shape = env("EDIT_BENCH_SHAPE").unwrap_or_else(|| "gpt2-xl".into());
    let edits: usize = env("EDIT_BENCH_EDITS").map(|v| v.parse().unwrap()).unwrap_or(10_000);
    let turn: usize = env("EDIT_BENCH_TURN").map(|v| v.parse().unwrap()).unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    let dtype_name = env("EDIT_BENCH_DTYPE").unwrap_or_else(|| "f32".into());
    let dtype = match dtype_name.as_str() {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => DType::F32,
    };
    let device = edit::device::parse_device(&env("EDIT_BENCH_DEVICE").unwrap_or_else(|| "cpu".into())).unwrap();
    let (dir, config) = if shape == "fact-gpt2" {
        (fact_gpt2(), Some(fact_gpt2().join("hparams/UltraEdit.json")))
    } else {
        let dir = env("EDIT_BENCH_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| tmp.path().join("model"));
        if !dir.join("model.safetensors").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            write_random(&dir, Shape::parse(&shape, None), &dtype_name);
        }
        (dir, None)
    };
    let (requests, source) = scale_requests(edits);
    let files = edit::hub::resolve_model(dir.to_str().unwrap(), &edit::hub::HubOptions::default()).unwrap();
    let mut lm = edit::load_model(files, dtype, &device).unwrap();
    let tok = lm.tokenizer.take().expect("the checkpoint has a tokenizer");
    let cfg = lm.config().clone();
    let hp = resolve::<UltraEditHparams>(&cfg, dir.to_str().unwrap(), config.as_deref(), &[]).unwrap().hparams;
    let (modules, lr) = (hp.edit_modules.clone(), hp.lr);
    let method = UltraEdit::open(hp, None, None).unwrap();
    let (rss0, _) = memory();
    let mut times = Vec::new();
    let mut rss_first = 0.0;
    let started = Instant::now();
    for (i, batch) in requests.chunks(turn).enumerate() {
        let t = Instant::now();
        let mut stats = std::collections::BTreeMap::new();
        let out = method.edit(&mut *lm.model, EditInputs { tok: &tok, requests: batch, stats: &mut stats, templates: None }).unwrap();
        Snapshot::new().apply(&mut *lm.model, &out.deltas).unwrap();
        method.keep(&out.deltas).unwrap();
        times.push(t.elapsed().as_secs_f64());
        if i == 0 {
            rss_first = memory().0;
        }
        if (i + 1) % 10 == 0 {
            eprintln!("{} edits, last turn {:.2} s, RSS {:.0} MiB", (i + 1) * turn, times[i], memory().0);
        }
    }
    let total = started.elapsed().as_secs_f64();
    let (rss_last, peak) = memory();
    let tenth = (times.len() / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&times[..tenth]), mean(&times[times.len() - tenth..]));
    println!(
        "UltraEdit, {edits} sequential edits in turns of {turn} on {shape} ({dtype_name}, {}; {} modules, lr {lr}); requests from {}; {}",
        if device.is_cpu() { "CPU".to_string() } else { format!("{device:?}") },
        modules.len(),
        source.display(),
        cpu()
    );
    println!();
    println!(
        "| turns | total (s) | s per turn, first tenth | s per turn, last tenth | last / first | RSS before (MiB) | after turn 1 | after the last | peak |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!("| {} | {total:.0} | {first:.3} | {last:.3} | {:.2} | {rss0:.0} | {rss_first:.0} | {rss_last:.0} | {peak:.0} |", times.len(), last / first);
    if let Some(reference) = env("EDIT_BENCH_ULTRAEDIT_REF") {
        let turns: usize = env("EDIT_BENCH_REF_TURNS").map(|v| v.parse().unwrap()).unwrap_or(5);
        let out = tmp.path().join("ref");
        let timing = python_reference(&reference, &dir, &source, &out, (turn, turns * turn), lr, &modules);
        let per: Vec<f64> = serde_json::from_value(timing["per_turn"].clone()).unwrap();
        let ours = mean(&times[..turns.min(times.len())]);
        println!();
        println!(
            "| reference code, first {turns} turns | {:.3} s per turn | ours, same turns | {ours:.3} s per turn | reference / ours | {:.2} |",
            mean(&per),
            mean(&per) / ours
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for job in list("EDIT_BENCH_JOBS", "quality") {
        match job.as_str() {
            "quality" => quality(),
            "scale" => scale(),
            other => panic!("EDIT_BENCH_JOBS: unknown job {other} (quality, scale)"),
        }
    }
}
