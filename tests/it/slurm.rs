//! The Slurm array jobs the docs give (`scripts/slurm/*.sbatch`), run by Slurm on fact-gpt2:
//! statistics in 3 shards then `edit stats merge`, an evaluation in 4 shards (on the merged
//! statistics) then `edit eval merge`, each compared with a single run. The run needs a cluster:
//! `scripts/slurm-check.sh` starts a one-node one and runs it (`--ignored`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{edit_bin, fixture_dir, ok, rel_diff};
use edit::stats::cache;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced block of `doc` that holds `script`'s text.
fn shows_verbatim(doc: &str, script: &str) -> bool {
    let doc = std::fs::read_to_string(repo().join(doc)).unwrap();
    let script = std::fs::read_to_string(repo().join("scripts/slurm").join(script)).unwrap();
    doc.contains(&format!("```sh\n{script}```\n"))
}

#[test]
fn the_docs_show_the_job_scripts_that_are_run() {
    assert!(shows_verbatim("docs/statistics.md", "stats.sbatch"), "docs/statistics.md must show scripts/slurm/stats.sbatch verbatim");
    assert!(shows_verbatim("docs/evaluation.md", "eval.sbatch"), "docs/evaluation.md must show scripts/slurm/eval.sbatch verbatim");
}

/// Submits `script` as an array of `tasks` with `env`, and waits for every task to finish.
fn submit(script: &str, tasks: usize, env: &[(&str, String)], logs: &Path) {
    // The jobs run `edit` from PATH, as a user's do: this build's binary first.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_edit")).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()))).unwrap();
    let mut c = Command::new("sbatch");
    c.args(["--wait", "--parsable", "--cpus-per-task=1", "--time=30:00"])
        .arg(format!("--array=0-{}", tasks - 1))
        .arg(format!("--output={}/%x-%a.out", logs.display()))
        .arg(format!("--chdir={}", repo().display()))
        .arg(repo().join("scripts/slurm").join(script))
        .env("PATH", path)
        .env_remove("EDIT_STATS_DIR")
        .env_remove("RUST_LOG")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HOME", "/nonexistent-hf-home")
        .env("HF_HUB_CACHE", "/nonexistent-hf-cache");
    for (k, v) in env {
        c.env(k, v);
    }
    let started = std::time::Instant::now();
    let o = c.output().expect("sbatch runs (scripts/slurm-check.sh starts a cluster)");
    let mut task_logs = String::new();
    for e in std::fs::read_dir(logs).unwrap().flatten() {
        task_logs += &format!("--- {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    assert!(o.status.success(), "sbatch {script}: {}{}\n{task_logs}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{script}: job {} ({tasks} tasks) done in {:.0} s", String::from_utf8_lossy(&o.stdout).trim(), started.elapsed().as_secs_f64());
}

fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_named(&p, part));
        } else if p.file_name().unwrap().to_string_lossy().contains(part) {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn layer_files(summary: &str) -> Vec<(u64, PathBuf)> {
    let v: Value = serde_json::from_str(summary).unwrap();
    v["layers"].as_array().unwrap().iter().map(|l| (l["layer"].as_u64().unwrap(), PathBuf::from(l["file"].as_str().unwrap()))).collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `v` without the keys that say when and how long (a merge keeps a single run's content, not
/// its clock).
fn timeless(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().filter(|(k, _)| *k != "time" && *k != "seconds").map(|(k, v)| (k.clone(), timeless(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(timeless).collect()),
        v => v.clone(),
    }
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-check.sh starts a one-node one and runs this"]
fn array_jobs_equal_single_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = fixture_dir("fact-gpt2");
    let corpus_args = format!("--samples 100000 --text {}", model.join("stats-corpus.txt").display());

    // Statistics: 3 shards, merged, against one run.
    let stats_dir = t.join("stats");
    std::fs::create_dir_all(t.join("logs-stats")).unwrap();
    let env = [
        ("MODEL", model.display().to_string()),
        ("LAYERS", "0-2".to_string()),
        ("STATS_DIR", stats_dir.display().to_string()),
        ("EDIT_ARGS", corpus_args.clone()),
    ];
    submit("stats.sbatch", 3, &env, &t.join("logs-stats"));
    let shards = files_named(&stats_dir, ".shard-");
    assert_eq!(shards.len(), 3, "one shard file per task: {shards:?}");
    assert!(shards.iter().all(|s| s.to_string_lossy().ends_with("-of-3.safetensors")), "{shards:?}");
    let merged = ok(edit_bin().args(["stats", "merge", "--json", "--stats-dir"]).arg(&stats_dir).args(&shards));
    let single_dir = t.join("single-stats");
    let single =
        ok(edit_bin().args(["stats", "--json", "--layers", "0-2", "--model"]).arg(&model).args(corpus_args.split(' ')).arg("--stats-dir").arg(&single_dir));
    let (merged, single) = (layer_files(&merged), layer_files(&single));
    assert_eq!(merged.len(), 3);
    for ((layer, m), (l2, s)) in merged.iter().zip(&single) {
        assert_eq!(layer, l2);
        let (a, b) = (cache::load(m).unwrap(), cache::load(s).unwrap());
        assert_eq!((a.count, a.meta.texts, a.meta.samples), (b.count, b.meta.texts, b.meta.samples), "layer {layer}: counts are exact");
        let tol = if a.sum.dtype() == candle_core::DType::F64 { 1e-13 } else { 1e-5 };
        let rel = rel_diff(&a.sum, &b.sum);
        assert!(rel <= tol, "layer {layer}: merged sums differ from one run's by {rel} (relative)");
        assert_eq!(m.strip_prefix(&stats_dir).unwrap(), s.strip_prefix(&single_dir).unwrap(), "filed where one run files them");
        eprintln!("layer {layer}: {} tokens, sums within {rel:.1e}", a.count);
    }

    // Evaluation on the merged statistics: 4 shards, merged, against one run.
    let out = t.join("eval");
    std::fs::create_dir_all(t.join("logs-eval")).unwrap();
    let rome = model.join("hparams/ROME.json");
    let env = [
        ("MODEL", model.display().to_string()),
        ("METHOD", "rome".to_string()),
        ("DATASET", model.join("cases.json").display().to_string()),
        ("STATS_DIR", stats_dir.display().to_string()),
        ("OUT", out.display().to_string()),
        ("EDIT_ARGS", format!("--config {} --limit 8", rome.display())),
    ];
    submit("eval.sbatch", 4, &env, &t.join("logs-eval"));
    let shard_dirs: Vec<PathBuf> = (0..4).map(|i| out.join(format!("shard-{i}"))).collect();
    let merged = out.join("merged");
    ok(edit_bin().args(["eval", "merge"]).args(&shard_dirs).arg("--out").arg(&merged));
    let single = t.join("single-eval");
    ok(edit_bin()
        .args(["eval", "--method", "rome", "--limit", "8", "--model"])
        .arg(&model)
        .arg("--dataset")
        .arg(model.join("cases.json"))
        .arg("--config")
        .arg(&rome)
        .arg("--stats-dir")
        .arg(&stats_dir)
        .arg("--out")
        .arg(&single));
    let cases = |d: &Path| -> Vec<Value> {
        std::fs::read_to_string(d.join("cases.jsonl")).unwrap().lines().map(|l| timeless(&serde_json::from_str(l).unwrap())).collect()
    };
    let (a, b) = (cases(&merged), cases(&single));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "cases.jsonl: the merged shards are the single run's");
    assert_eq!(timeless(&read_json(&merged.join("summary.json"))), timeless(&read_json(&single.join("summary.json"))));
    assert_eq!(read_json(&merged.join("run.json")), read_json(&single.join("run.json")));
}
