//! `edit apply` end to end through the real binary, on the small trained GPT-2 of
//! `tests/fixtures/fact-gpt2` with its CounterFact records and reference-format configs.
//!
//! Statistics come from a 3,000-text sample of the fixture's corpus. All tests but the first
//! share one statistics directory, collected once per run of this file (`edit stats`); the
//! first test starts from an empty one to see `apply` compute and then reuse them.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use candle_core::{DType, Device};
use common::{edit_bin, fixture_dir, max_abs_diff};
use edit::hub::{resolve_model, HubOptions};
use edit::models::{Batch, Logits, TraceSpec};
use serde_json::Value;

const SAMPLES: &str = "3000";

// ---- helpers --------------------------------------------------------------------------

fn model_dir() -> PathBuf {
    fixture_dir("fact-gpt2")
}

fn corpus() -> PathBuf {
    model_dir().join("stats-corpus.txt")
}

fn hparams(name: &str) -> PathBuf {
    model_dir().join("hparams").join(name)
}

/// `edit apply REQUESTS --method METHOD --model fact-gpt2 --config hparams/CONFIG` with the
/// quick statistics options; callers add outputs and overrides.
fn apply(requests: &Path, method: &str, config: &Path, stats_dir: &Path) -> Command {
    apply_to(&model_dir(), requests, method, config, stats_dir)
}

fn apply_to(model: &Path, requests: &Path, method: &str, config: &Path, stats_dir: &Path) -> Command {
    let mut c = edit_bin();
    c.arg("apply")
        .arg(requests)
        .args(["--method", method, "--model"])
        .arg(model)
        .arg("--config")
        .arg(config)
        .arg("--text")
        .arg(corpus())
        .args(["--samples", SAMPLES, "--stats-dir"])
        .arg(stats_dir);
    c
}

fn rome(requests: &Path, stats_dir: &Path) -> Command {
    apply(requests, "rome", &hparams("ROME.json"), stats_dir)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the edit binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed; returns its stdout lines parsed as JSON, and stderr.
fn ok_json(cmd: &mut Command) -> (Vec<Value>, String) {
    let out = run(cmd);
    let err = stderr(&out);
    assert!(out.status.success(), "edit apply failed: {err}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))).collect();
    (lines, err)
}

/// Runs a command without --json that must succeed; returns its stdout (the human-readable table).
fn ok_text(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "edit apply failed: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns stderr, which must mention every needle.
fn fails(cmd: &mut Command, needles: &[&str]) -> String {
    let out = run(cmd);
    let err = stderr(&out);
    assert!(!out.status.success(), "expected a failure; stderr: {err}");
    assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("\"summary\""), "no summary on failure");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
    err
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(model_dir().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The first `n` CounterFact records as a JSON list in `dir/name`.
fn write_cases(dir: &Path, name: &str, n: usize) -> PathBuf {
    let p = dir.join(name);
    let records: Vec<Value> = cases().into_iter().take(n).collect();
    std::fs::write(&p, serde_json::to_string_pretty(&records).unwrap()).unwrap();
    p
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every file under `dir`, recursively: relative path → (length, mtime, content hash).
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u64, SystemTime, u64)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap().hash(&mut h);
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), (meta.len(), meta.modified().unwrap(), h.finish()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn stats_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fingerprint(dir).into_keys().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).map(|p| dir.join(p)).collect();
    out.sort();
    out
}

/// Statistics of layers 0-2 (everything ROME.json and MEMIT_tuned.json edit), collected once
/// per run of this test file into a directory under Cargo's target tmp dir.
fn shared_stats() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let prefix = "apply_cli-stats-";
        // Directories left by earlier runs of this file (an hour old or more).
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                let stale = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > Duration::from_secs(3600));
                if e.file_name().to_string_lossy().starts_with(prefix) && stale {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = run(edit_bin()
            .args(["stats", "--json", "--layers", "0-2", "--samples", SAMPLES, "--model"])
            .arg(model_dir())
            .arg("--text")
            .arg(corpus())
            .arg("--stats-dir")
            .arg(&dir));
        assert!(out.status.success(), "edit stats failed: {}", stderr(&out));
        assert_eq!(stats_files(&dir).len(), 3, "one statistics file per layer");
        dir
    })
}

/// Raw tensors of a safetensors file: name → (dtype, shape, bytes).
fn raw_tensors(path: &Path) -> BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

fn load(dir: &Path) -> edit::LoadedModel {
    let files = resolve_model(dir.to_str().unwrap(), &HubOptions::default()).unwrap();
    edit::load_model(files, DType::F32, &Device::Cpu).unwrap()
}

/// Last-token logits `[prompts, vocab]`.
fn last_logits(lm: &edit::LoadedModel, prompts: &[String]) -> candle_core::Tensor {
    let tok = lm.tokenizer().unwrap();
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    let batch = Batch::from_sequences(&ids, lm.pad_id(), &Device::Cpu).unwrap();
    lm.model.forward(&batch, &TraceSpec::logits(Logits::Last), &[]).unwrap().logits.unwrap()
}

fn summary(lines: &[Value]) -> &Value {
    let last = lines.last().expect("a summary line");
    assert_eq!(last["summary"], true, "the last line is the summary: {last}");
    last
}

// ---- 1. ROME with a reference config; statistics computed once, then reused --------------

#[test]
fn rome_writes_model_and_delta_and_reuses_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 1);
    let stats = tmp.path().join("stats");
    let out = tmp.path().join("patched");
    let delta = tmp.path().join("delta.safetensors");

    let (lines, err) = ok_json(rome(&req, &stats).arg("--json").arg("--out").arg(&out).arg("--delta-out").arg(&delta).args(["--set", "v_num_grad_steps=10"]));
    assert!(err.contains("no cached statistics") && err.contains("computing them now"), "statistics should be computed: {err}");

    // One object per request, then the summary.
    assert_eq!(lines.len(), 2, "{lines:?}");
    let r = &lines[0];
    assert_eq!(r["index"], 0);
    assert_eq!(r["case_id"], 0);
    assert_eq!(r["subject"], "Alon Javberg");
    assert_eq!(r["target_new"], "Finnish");
    assert_eq!(r["module"], "transformer.h.2.mlp.c_proj");
    let losses = r["losses"].as_array().unwrap();
    assert!(!losses.is_empty() && losses.len() <= 10, "{} losses", losses.len());
    let first = losses[0]["total"].as_f64().unwrap();
    let last = losses.last().unwrap()["total"].as_f64().unwrap();
    assert!(last < first, "the loss should fall: {first} → {last}");
    for key in ["update_norm", "division_factor", "weight_norm", "key_norm", "delta_norm"] {
        let x = r[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {r}"));
        assert!(x.is_finite(), "{key} = {x}");
    }
    assert!(r["update_norm"].as_f64().unwrap() > 0.0);

    let s = summary(&lines);
    assert_eq!(s["method"], "rome");
    assert_eq!(s["requests"], 1);
    assert_eq!(s["seed"], 0, "ROME.json has no seed: the default is 0");
    assert!(s["config_source"].as_str().unwrap().contains("ROME.json"), "{s}");
    let modules: Vec<&str> = s["modules"].as_array().unwrap().iter().map(|m| m["module"].as_str().unwrap()).collect();
    assert_eq!(modules, ["transformer.h.2.mlp.c_proj"]);
    assert_eq!(s["out"], out.to_str().unwrap());
    assert_eq!(s["delta_out"], delta.to_str().unwrap());
    let templates = s["templates"]["groups"].as_array().unwrap();
    let n_templates: usize = templates.iter().map(|g| g.as_array().unwrap().len()).sum();
    assert_eq!(n_templates, 21, "\"{{}}\" + 10 + 10 sampled templates: {}", s["templates"]);

    // A complete model directory and a delta file.
    let written = names(&out);
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        assert!(written.contains(f), "{f} missing from --out: {written:?}");
    }
    assert!(delta.is_file());
    // Nothing but what was asked for beside them (no temporary files left).
    assert_eq!(names(tmp.path()), set(&["requests.json", "stats", "patched", "delta.safetensors"]));

    // A second run with the same statistics options reuses the cached file.
    let files = stats_files(&stats);
    assert_eq!(files.len(), 1, "statistics of layer 2 only: {files:?}");
    let before = fingerprint(&stats);
    let delta2 = tmp.path().join("delta2.safetensors");
    let (lines2, err2) = ok_json(rome(&req, &stats).arg("--json").arg("--delta-out").arg(&delta2).args(["--set", "v_num_grad_steps=3"]));
    assert!(!err2.contains("no cached statistics") && !err2.contains("computing"), "statistics should be reused: {err2}");
    assert_eq!(fingerprint(&stats), before, "the statistics cache must not be rewritten");
    assert!(delta2.is_file());
    assert_eq!(summary(&lines2)["out"], Value::Null);
}

// ---- 2. the written model = base model + delta; the edit takes --------------------------

#[test]
fn written_model_equals_base_plus_delta_and_the_edit_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 1);
    let out = tmp.path().join("patched");
    let delta = tmp.path().join("delta.safetensors");
    // The config's 20 steps: enough for the edit to take.
    let table = ok_text(rome(&req, shared_stats()).arg("--out").arg(&out).arg("--delta-out").arg(&delta));
    assert!(
        table.contains("Alon Javberg → Finnish") && table.contains("transformer.h.2.mlp.c_proj") && table.contains("1 request(s) edited with rome"),
        "{table}"
    );

    let record = &cases()[0]["requested_rewrite"];
    let rewrite = record["prompt"].as_str().unwrap().replace("{}", record["subject"].as_str().unwrap());
    let mut prompts = vec![rewrite.clone()];
    prompts.extend(cases()[0]["paraphrase_prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()));
    prompts.extend(cases()[1]["neighborhood_prompts"].as_array().unwrap().iter().take(2).map(|p| p.as_str().unwrap().to_string()));

    let mut base = load(&model_dir());
    let before = last_logits(&base, &prompts);
    let (deltas, meta) = edit::patch::load_delta(&delta, base.config()).unwrap();
    assert_eq!(deltas.keys().collect::<Vec<_>>(), ["transformer.h.2.mlp.c_proj"]);
    assert_eq!(meta.method, "rome");
    assert_eq!(meta.seed, Some(0));
    edit::editing::apply_deltas(&mut *base.model, &deltas, 1.0).unwrap();
    let want = last_logits(&base, &prompts);

    let patched = load(&out);
    let got = last_logits(&patched, &prompts);
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-5, "written model and base + delta differ by {d}");
    assert!(max_abs_diff(&got, &before) > 1e-3, "the edit should change the logits");

    // The rewrite prompt now continues with the new target.
    let tok = patched.tokenizer().unwrap();
    let target = format!(" {}", record["target_new"]["str"].as_str().unwrap());
    let target_first = tok.encode(&target).unwrap()[0];
    let argmax = |t: &candle_core::Tensor| -> u32 { t.get(0).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap() };
    assert_ne!(argmax(&before), target_first, "the unedited model should not already predict {target:?}");
    assert_eq!(argmax(&got), target_first, "after the edit {rewrite:?} should continue with {target:?}");
}

// ---- 3. seeds ---------------------------------------------------------------------------

#[test]
fn same_seed_gives_identical_delta_and_another_seed_other_templates() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 1);
    let go = |seed: &str, name: &str| -> (Value, PathBuf) {
        let delta = tmp.path().join(name);
        let (lines, _) = ok_json(rome(&req, shared_stats()).args(["--json", "--seed", seed, "--set", "v_num_grad_steps=10", "--delta-out"]).arg(&delta));
        (summary(&lines).clone(), delta)
    };
    let (s1, d1) = go("7", "a.safetensors");
    let (s2, d2) = go("7", "b.safetensors");
    let (s3, _) = go("8", "c.safetensors");
    assert_eq!(s1["seed"], 7);
    assert_eq!(s1["templates"], s2["templates"]);
    let (t1, t2) = (raw_tensors(&d1), raw_tensors(&d2));
    assert_eq!(t1.keys().collect::<Vec<_>>(), ["transformer.h.2.mlp.c_proj.weight"]);
    assert!(t1 == t2, "the same seed must give a bit-identical delta");
    assert_eq!(s3["seed"], 8);
    assert_ne!(s1["templates"], s3["templates"], "another seed should sample other templates");
}

/// On a small model `edit` runs MEMIT's z vectors side by side, one thread each; a user's
/// RAYON_NUM_THREADS runs them one after another on shared threads. Same delta either way.
#[test]
fn memit_z_vectors_side_by_side_equal_one_after_another() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 6);
    let go = |threads: Option<&str>, name: &str| {
        let delta = tmp.path().join(name);
        let mut c = apply(&req, "memit", &hparams("MEMIT_tuned.json"), shared_stats());
        c.args(["--set", "v_num_grad_steps=8", "--max-update-ratio", "1000", "--delta-out"]).arg(&delta);
        c.env_remove("RAYON_NUM_THREADS").env_remove("CANDLE_NUM_THREADS");
        if let Some(t) = threads {
            c.env("RAYON_NUM_THREADS", t);
        }
        ok_text(&mut c);
        raw_tensors(&delta)
    };
    let side_by_side = go(None, "parallel.safetensors");
    assert_eq!(side_by_side, go(Some("1"), "serial.safetensors"), "z vectors computed side by side must give the serial delta");
    assert_eq!(side_by_side, go(Some("2"), "two-threads.safetensors"), "and the delta of operations on two threads");
}

// ---- 4. MEMIT, JSON Lines input ---------------------------------------------------------

#[test]
fn memit_edits_every_configured_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let req = tmp.path().join("requests.jsonl");
    let lines: Vec<String> = cases().iter().take(3).map(|c| serde_json::to_string(c).unwrap()).collect();
    std::fs::write(&req, lines.join("\n") + "\n").unwrap();
    let delta = tmp.path().join("delta.safetensors");
    let (out, err) =
        ok_json(apply(&req, "memit", &hparams("MEMIT_tuned.json"), shared_stats()).args(["--json", "--set", "v_num_grad_steps=10", "--delta-out"]).arg(&delta));
    assert!(!err.contains("computing them now"), "shared statistics should be used: {err}");
    assert_eq!(out.len(), 4, "three requests and a summary: {out:?}");
    for (i, r) in out[..3].iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["subject"], cases()[i]["requested_rewrite"]["subject"]);
        let n = r["losses"].as_array().unwrap().len();
        assert!((1..=10).contains(&n), "request {i}: {n} losses");
    }
    let want = ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj", "transformer.h.2.mlp.c_proj"];
    let s = summary(&out);
    assert_eq!(s["method"], "memit");
    assert_eq!(s["requests"], 3);
    let modules: Vec<&str> = s["modules"].as_array().unwrap().iter().map(|m| m["module"].as_str().unwrap()).collect();
    assert_eq!(modules, want);
    for m in s["modules"].as_array().unwrap() {
        assert!(m["update_norm"].as_f64().unwrap() > 0.0 && m["weight_norm"].as_f64().unwrap() > 0.0, "{m}");
    }

    let base = load(&model_dir());
    let (deltas, meta) = edit::patch::load_delta(&delta, base.config()).unwrap();
    assert_eq!(deltas.keys().map(String::as_str).collect::<Vec<_>>(), want);
    assert_eq!(meta.method, "memit");
    assert_eq!(meta.requests.as_array().unwrap().len(), 3);
    assert_eq!(meta.config["layers"], serde_json::json!([0, 1, 2]));
    assert_eq!(meta.config["v_num_grad_steps"], 10, "the delta records the overridden config");
}

// ---- 5. --set overrides; -v names the config --------------------------------------------

#[test]
fn set_overrides_and_bad_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 2);
    // --force replaces an existing, non-empty --out.
    let out = tmp.path().join("patched");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    let (lines, err) = ok_json(rome(&req, shared_stats()).args(["-v", "--json", "--set", "v_num_grad_steps=3", "--force", "--out"]).arg(&out));
    assert_eq!(lines.len(), 3);
    for r in &lines[..2] {
        let n = r["losses"].as_array().unwrap().len();
        assert!((1..=3).contains(&n), "{n} losses with v_num_grad_steps=3");
    }
    let source = summary(&lines)["config_source"].as_str().unwrap().to_string();
    assert!(source.contains("ROME.json") && source.contains("--set v_num_grad_steps"), "{source}");
    assert!(err.contains("config:") && err.contains(&hparams("ROME.json").display().to_string()), "-v should print the config source: {err}");
    assert!(!out.join("stale.txt").exists(), "--force replaces the directory");
    assert!(out.join("model.safetensors").is_file());

    // An unknown key fails before anything is loaded or written.
    let delta = tmp.path().join("delta.safetensors");
    fails(
        rome(&req, &tmp.path().join("stats")).args(["--set", "v_num_grad_stepz=3", "--delta-out"]).arg(&delta),
        &["v_num_grad_stepz", "unknown rome hyperparameter", "v_num_grad_steps"],
    );
    // A value of the wrong type names the field too.
    fails(rome(&req, &tmp.path().join("stats")).args(["--set", "v_lr=fast", "--delta-out"]).arg(&delta), &["v_lr"]);
    assert!(!delta.exists());
    assert_eq!(names(tmp.path()), set(&["requests.json", "patched"]), "nothing written by the failed runs");
}

// ---- 6. bad input: a clear message and nothing written ------------------------------------

/// Runs `cmd` (which writes to `tmp/out` and `tmp/delta.safetensors`) expecting a failure that
/// mentions every needle, and checks that nothing appeared in `tmp` beyond `keep`.
fn fails_writing_nothing(tmp: &Path, cmd: &mut Command, needles: &[&str], keep: &[&str]) -> String {
    let err = fails(cmd, needles);
    assert!(!tmp.join("out").exists(), "--out must not be written: {err}");
    assert!(!tmp.join("delta.safetensors").exists(), "--delta-out must not be written: {err}");
    assert_eq!(names(tmp), set(keep), "nothing else may be written: {err}");
    err
}

fn with_outputs<'a>(cmd: &'a mut Command, tmp: &Path) -> &'a mut Command {
    cmd.arg("--out").arg(tmp.join("out")).arg("--delta-out").arg(tmp.join("delta.safetensors"))
}

#[test]
fn bad_requests_are_all_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let req = tmp.path().join("requests.json");
    let requests = serde_json::json!([
        {"prompt": "The native language of {} is", "subject": "Alon Javberg", "target_new": "Finnish"},
        {"prompt": "The native language of Alon Javberg is", "subject": "Alon Javberg", "target_new": "Finnish"},
        {"prompt": "The native language of {} is", "subject": "", "target_new": "Finnish"},
        {"prompt": "The native language of {} is", "subject": "Alon Javberg", "target_new": ""},
    ]);
    std::fs::write(&req, requests.to_string()).unwrap();
    let err = fails_writing_nothing(
        tmp.path(),
        with_outputs(&mut rome(&req, &tmp.path().join("stats")), tmp.path()),
        &["3 problems", "request 1", "slot", "request 2", "subject is empty", "request 3", "target_new is empty"],
        &["requests.json"],
    );
    assert!(!err.contains("request 0"), "the good request is not listed: {err}");
}

#[test]
fn missing_or_dangerous_outputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let req = write_cases(t, "requests.json", 1);
    let stats = t.join("stats");

    // Neither --out nor --delta-out.
    fails_writing_nothing(t, &mut rome(&req, &stats), &["nothing to write", "--out", "--delta-out"], &["requests.json"]);

    // --out is the input model directory (a copy of the fixture: never risk the real one).
    let copy = t.join("model");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        std::fs::copy(model_dir().join(f), copy.join(f)).unwrap();
    }
    let before = fingerprint(&copy);
    let mut cmd = apply_to(&copy, &req, "rome", &hparams("ROME.json"), &stats);
    cmd.arg("--out").arg(&copy).arg("--delta-out").arg(t.join("delta.safetensors"));
    fails_writing_nothing(t, &mut cmd, &["input model directory", "never modified"], &["requests.json", "model"]);
    assert_eq!(fingerprint(&copy), before, "the input model must be untouched");
    // ... or inside it.
    let mut cmd = apply_to(&copy, &req, "rome", &hparams("ROME.json"), &stats);
    cmd.arg("--out").arg(copy.join("edited")).arg("--delta-out").arg(t.join("delta.safetensors"));
    fails_writing_nothing(t, &mut cmd, &["input model directory"], &["requests.json", "model"]);
    assert_eq!(fingerprint(&copy), before);
    std::fs::remove_dir_all(&copy).unwrap();

    // An existing, non-empty --out without --force.
    let out = t.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = fails(with_outputs(&mut rome(&req, &stats), t), &["already exists", "--force"]);
    assert_eq!(names(&out), set(&["keep.txt"]), "the existing --out is untouched: {err}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    assert!(!t.join("delta.safetensors").exists(), "--delta-out must not be written: {err}");
    assert_eq!(names(t), set(&["requests.json", "out"]));
    std::fs::remove_dir_all(&out).unwrap();

    // An existing --delta-out without --force.
    let delta = t.join("delta.safetensors");
    std::fs::write(&delta, "mine").unwrap();
    fails(rome(&req, &stats).arg("--delta-out").arg(&delta), &["already exists", "--force"]);
    assert_eq!(std::fs::read_to_string(&delta).unwrap(), "mine");
    std::fs::remove_file(&delta).unwrap();
    assert_eq!(names(t), set(&["requests.json"]));
}

#[test]
fn config_for_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 1);
    let gptj = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/rome/EleutherAI_gpt-j-6B.json");
    fails_writing_nothing(
        tmp.path(),
        with_outputs(&mut apply(&req, "rome", &gptj, &tmp.path().join("stats")), tmp.path()),
        &["rewrite_module_tmp", "transformer.h.5.mlp.fc_out", "transformer.h.5.mlp.c_proj", "v_loss_layer", "EleutherAI_gpt-j-6B.json"],
        &["requests.json"],
    );
}

#[test]
fn oversized_update_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 1);
    fails_writing_nothing(
        tmp.path(),
        with_outputs(rome(&req, shared_stats()).args(["--max-update-ratio", "1e-9", "--set", "v_num_grad_steps=3"]), tmp.path()),
        &["request 0", "Alon Javberg", "--max-update-ratio", "nothing was written"],
        &["requests.json"],
    );
}

// ---- 7. the input model is never modified -------------------------------------------------

#[test]
fn input_model_directory_is_unchanged() {
    let before = fingerprint(&model_dir());
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 1);
    let out = tmp.path().join("patched");
    ok_text(rome(&req, shared_stats()).args(["--set", "v_num_grad_steps=3", "--out"]).arg(&out).arg("--delta-out").arg(tmp.path().join("delta.safetensors")));
    assert_eq!(fingerprint(&model_dir()), before, "apply must not modify the input model directory");
    // The written copy differs from the input only in the weights.
    let written = fingerprint(&out);
    // Top-level files (a model directory's subfolders, here `hparams/`, are not part of the model).
    for (name, (len, _, hash)) in before.iter().filter(|(n, _)| n.components().count() == 1) {
        let (wlen, _, whash) = written.get(name).unwrap_or_else(|| panic!("{} not copied", name.display()));
        if name.as_os_str() == "model.safetensors" {
            assert_ne!(whash, hash, "the weights should change");
        } else {
            assert_eq!((wlen, whash), (len, hash), "{} should be copied unchanged", name.display());
        }
    }
}

// ---- the delta may be saved inside the patched model's directory ---------------------------

#[test]
fn delta_inside_the_output_directory_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 1);
    let out = tmp.path().join("patched");
    let delta = out.join("delta.safetensors");
    let base = load(&model_dir());
    for force in [false, true] {
        let mut cmd = rome(&req, shared_stats());
        cmd.args(["--json", "--set", "v_num_grad_steps=3", "--out"]).arg(&out).arg("--delta-out").arg(&delta);
        if force {
            // A second run replaces both.
            cmd.arg("--force");
        }
        let (lines, _) = ok_json(&mut cmd);
        assert_eq!(summary(&lines)["delta_out"], delta.to_str().unwrap());
        assert!(out.join("model.safetensors").is_file(), "force={force}: the model is written");
        assert!(delta.is_file(), "force={force}: the delta the summary reports must exist");
        let (deltas, _) = edit::patch::load_delta(&delta, base.config()).unwrap();
        assert_eq!(deltas.keys().collect::<Vec<_>>(), ["transformer.h.2.mlp.c_proj"]);
    }
}

/// A program edits without the CLI as `edit apply` does (plan → editor → outputs): the delta it
/// writes records the same provenance and holds the binary's update (to float rounding, in case
/// the binary's thread plan sums in another order).
#[test]
fn the_library_alone_writes_the_binarys_delta() {
    use edit::editing::method::MethodSource;
    use edit::editing::pipeline::{EditPlan, EditSetup};
    use edit::editing::registry::Method;
    use edit::stats::ensure::{Quiet, StatsWanted};

    let tmp = tempfile::tempdir().unwrap();
    let req = write_cases(tmp.path(), "requests.json", 2);
    let cli_delta = tmp.path().join("cli.safetensors");
    ok_json(rome(&req, shared_stats()).args(["--json", "--set", "v_num_grad_steps=10", "--delta-out"]).arg(&cli_delta));

    let model = model_dir().display().to_string();
    let files = resolve_model(&model, &HubOptions::default()).unwrap();
    let cfg = edit::ModelConfig::from_file(&files.config).unwrap();
    let identity = edit::identity::ModelIdentity::of(&files).unwrap();
    let reqs = edit::editing::requests::read_requests(&req).unwrap();
    let (config, sets) = (hparams("ROME.json"), ["v_num_grad_steps=10".to_string()]);
    let setup = EditSetup {
        method: Method::Rome,
        model_id: &model,
        source: MethodSource { config: Some(&config), sets: &sets, ..Default::default() },
        seed: None,
        hub_progress: false,
    };
    let wanted = || {
        Ok(StatsWanted {
            corpus: Some(edit::data::Corpus::from_files(vec![corpus()], shared_stats())?),
            cached_corpus: None,
            samples: Some(SAMPLES.parse().unwrap()),
            precision: None,
            batch_tokens: None,
            max_len: None,
            stats_dir: shared_stats().to_path_buf(),
            offline: false,
            model_id: model.clone(),
        })
    };
    let plan = EditPlan::prepare(setup, &cfg, &identity, wanted).unwrap();
    let tok = edit::model::load_tokenizer(&files).unwrap().unwrap();
    let mut lm = edit::load_model(files, DType::F32, &Device::Cpu).unwrap();
    let mut editor = plan.load(&lm, &mut Quiet).unwrap();
    let run = editor.run(&mut *lm.model, &tok, &reqs, 10.0).unwrap();
    let lib_delta = tmp.path().join("lib.safetensors");
    let outputs = edit::patch::EditOutputs { out: None, delta_out: Some(&lib_delta), force: false };
    outputs.check_paths().unwrap();
    outputs.write(&lm.files, &cfg, &run.outcome.deltas, &editor.delta_meta(&reqs)).unwrap();

    let (a, b) = (edit::patch::load_delta(&cli_delta, &cfg).unwrap(), edit::patch::load_delta(&lib_delta, &cfg).unwrap());
    assert_eq!(a.1, b.1, "the same provenance: method, requests, config, seed, base model");
    assert_eq!(a.0.keys().collect::<Vec<_>>(), b.0.keys().collect::<Vec<_>>());
    for (name, d) in &a.0 {
        let scale = d.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max_abs_diff(d, &b.0[name]) <= 1e-5 * scale, "{name}: the library's update differs from the binary's");
    }
}
