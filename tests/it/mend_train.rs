//! `edit mend train` end to end on fact-gpt2: a hypernetwork trained in CPU minutes edits
//! records it never saw (scored by `edit eval`, the reference protocol), and a run stopped by
//! Ctrl-C resumes to exactly the file an uninterrupted run writes.

use crate::common;

use std::path::{Path, PathBuf};

use common::{edit_bin, ok, outcome};
use serde_json::Value;

fn model() -> PathBuf {
    common::fixture_dir("fact-gpt2")
}

/// Records `range` of fact-gpt2's cases, written to `path`.
fn cases(path: &Path, range: std::ops::Range<usize>) -> PathBuf {
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(model().join("cases.json")).unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string(&all[range]).unwrap()).unwrap();
    path.to_path_buf()
}

fn train_cmd(edits: &Path, out: &Path) -> std::process::Command {
    let mut c = edit_bin();
    c.args(["mend", "train", "-q", "--locality", "neighbors", "--model"]).arg(model()).arg("--edits").arg(edits).arg("--out").arg(out);
    c
}

/// Trained on cases 100-499 (their neighbourhood prompts as locality, `hparams/MEND_train.json`:
/// 600 steps), the hypernetwork edits cases 0-49 one at a time with ES ≥ 90 and NS ≥ 85; ten at
/// once is reported.
#[test]
fn a_hypernetwork_trained_on_fact_gpt2_edits_unseen_records() {
    let tmp = tempfile::tempdir().unwrap();
    let train = cases(&tmp.path().join("train.json"), 100..500);
    let test = cases(&tmp.path().join("test.json"), 0..50);
    let net = tmp.path().join("mend.safetensors");
    let plot = tmp.path().join("curve.svg");
    let started = std::time::Instant::now();
    let out = ok(train_cmd(&train, &net).arg("--config").arg(model().join("hparams/MEND_train.json")).arg("--plot").arg(&plot).arg("--json"));
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    let history = &report["history"];
    assert_eq!(history["step"], 600);
    assert_eq!(history["validations"].as_array().unwrap().len(), 4, "steps 1, 201, 401 and the end");
    eprintln!("trained in {:.0?}; best validation {}", started.elapsed(), report["best"]);
    assert!(std::fs::read_to_string(&plot).unwrap().contains("edit success"));
    assert!(!PathBuf::from(format!("{}.ckpt", net.display())).exists(), "the checkpoint is removed at the end");

    let scores = |extra: &[&str]| {
        let out = ok(edit_bin()
            .args(["eval", "--method", "mend", "--json", "--mend"])
            .arg(&net)
            .arg("--model")
            .arg(model())
            .arg("--dataset")
            .arg(&test)
            .arg("--out")
            .arg(tmp.path().join(format!("eval{}", extra.len())))
            .args(extra));
        let s: Vec<Value> = serde_json::from_str(&out).unwrap();
        ["post_rewrite_success", "post_paraphrase_success", "post_neighborhood_success"].map(|k| s[0][k][0].as_f64().unwrap())
    };
    let one = scores(&[]);
    eprintln!("MEND on 50 unseen fact-gpt2 cases, one at a time: ES/PS/NS {one:?}");
    assert!(one[0] >= 90.0 && one[2] >= 85.0, "ES/PS/NS {one:?}");
    let ten = scores(&["--num-edits", "10"]);
    eprintln!("ten at once: ES/PS/NS {ten:?}");
    // Trained one edit at a time (the reference's n_edits 1), it edits batches far less well.
    assert!(ten[0] > 10.0, "a batch of 10 still edits some: {ten:?}");
}

/// A run interrupted by Ctrl-C after its first checkpoint, then run again, writes the same file
/// as one that ran straight through.
#[test]
#[cfg(unix)]
fn an_interrupted_run_resumes_to_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let train = cases(&tmp.path().join("train.json"), 0..40);
    let sets = ["--set", "val_interval=10", "--set", "val_steps=3", "--set", "lr=1e-4", "--set", "accumulate_bs=3", "--set", "rank=16", "--max-steps", "60"];
    let straight = tmp.path().join("straight.safetensors");
    ok(train_cmd(&train, &straight).args(sets));

    let resumed = tmp.path().join("resumed.safetensors");
    let ckpt = PathBuf::from(format!("{}.ckpt", resumed.display()));
    let child = train_cmd(&train, &resumed).args(sets).args(["--checkpoint-every", "5"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let waited = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(waited.elapsed().as_secs() < 120, "no checkpoint was written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("run the same command again to resume"), "{err}");
    assert!(ckpt.exists() && !resumed.exists());
    ok(train_cmd(&train, &resumed).args(sets).args(["--checkpoint-every", "5"]));
    let a = candle_core::safetensors::load(&straight, &candle_core::Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(&resumed, &candle_core::Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let (x, y) = (t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{k} differs after resuming");
    }
    // A checkpoint of another run is not resumed.
    std::fs::write(&ckpt, b"").unwrap();
    let (code, _, err) = outcome(train_cmd(&train, &resumed).args(sets).arg("--force"));
    assert_eq!(code, Some(1), "{err}");
}

/// `edit mend sample` writes seeded self-sampled texts (the same seed, the same file), and
/// training reads them: the edit learns each text's last `n_tokens` tokens.
#[test]
fn self_sampled_texts_are_seeded_and_train() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = |name: &str, seed: &str| {
        let out = tmp.path().join(name);
        ok(edit_bin()
            .args(["mend", "sample", "--texts", "embedded", "-n", "12", "--n-tokens", "4", "--seed", seed, "--model"])
            .arg(model())
            .arg("--out")
            .arg(&out));
        std::fs::read_to_string(out).unwrap()
    };
    let a = sample("a.jsonl", "3");
    assert_eq!(a, sample("b.jsonl", "3"));
    assert_ne!(a, sample("c.jsonl", "4"));
    let lines: Vec<Value> = a.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12);
    assert!(lines.iter().all(|l| l["n_tokens"] == 4 && !l["text"].as_str().unwrap().is_empty()));
    let net = tmp.path().join("net.safetensors");
    let out = ok(edit_bin()
        .args(["mend", "train", "-q", "--locality", "embedded", "--max-steps", "6", "--json", "--model"])
        .arg(model())
        .arg("--edits")
        .arg(tmp.path().join("a.jsonl"))
        .arg("--out")
        .arg(&net)
        .args(["--set", "val_interval=3", "--set", "val_steps=2", "--set", "rank=8"]));
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["history"]["step"], 6);
    // The result is a hypernetwork `edit apply` reads.
    let meta = edit::editing::mend::hypernet::read_meta(&net).unwrap();
    assert_eq!(meta.inner_params, edit::editing::mend::hparams::default_inner_params(&edit::ModelConfig::from_file(&model().join("config.json")).unwrap()));
    assert!(meta.origin.starts_with("trained by edit mend train"));
}
