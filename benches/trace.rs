//! `edit trace` on the fact-gpt2 fixture, through the binary: the first 100 CounterFact cases,
//! all three kinds, timed; then (with `EDIT_BENCH_SWEEP=1`) the question: does the MLP
//! trace's peak at the last subject token point at the layer where ROME edits best? The trace on
//! the first 40 cases (windows 1 and 2, noise s3 and s1) beside `edit eval --method rome` at
//! layers 0-3 on the same cases.
//!
//! `cargo bench --bench trace`. Prints Markdown tables.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fact-gpt2")
}

fn edit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edit"))
}

fn run(c: &mut Command) -> String {
    let out = c.output().expect("edit runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn trace(limit: usize, extra: &[&str], summary: &Path) -> (f64, serde_json::Value) {
    let t = Instant::now();
    let mut c = edit();
    c.args(["trace", "-q", "--model"]).arg(fixture()).arg("--facts").arg(fixture().join("cases.json"));
    c.args(["--limit", &limit.to_string()]).args(extra).arg("--summary").arg(summary);
    run(&mut c);
    (t.elapsed().as_secs_f64(), serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap())
}

fn row(v: &serde_json::Value) -> String {
    v.as_array().unwrap().iter().map(|x| format!("{:.4}", x.as_f64().unwrap())).collect::<Vec<_>>().join(" / ")
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = tmp.path().join("summary.json");
    println!("| run (fact-gpt2, first 100 CounterFact cases, hidden + mlp + attn, 10 samples, noise s3) | wall time (process start to exit) | facts traced |");
    println!("|---|---|---|");
    for window in ["10", "2"] {
        let (secs, s) = trace(100, &["--window", window], &summary);
        println!("| window {window} | {secs:.1} s | {} of {} |", s["traced"], s["facts"]);
    }
    if std::env::var("EDIT_BENCH_SWEEP").is_ok_and(|v| v == "1") {
        println!();
        println!("| trace, first 40 cases | suggested layer | MLP effect at the last subject token, layers 0-5 | MLP effect at the middle subject tokens |");
        println!("|---|---|---|---|");
        for (window, noise) in [("1", "s3"), ("2", "s3"), ("1", "s1")] {
            let (_, s) = trace(40, &["--window", window, "--noise", noise, "--kind", "mlp"], &summary);
            let aie = &s["kinds"]["mlp"]["average_indirect_effect"];
            println!("| window {window}, noise {noise} | {} | {} | {} |", s["suggested_layer"], row(&aie["last_subject"]), row(&aie["middle_subject"]));
        }
        println!();
        println!("| ROME (`hparams/ROME.json`) at layer | ES | PS | NS | Score |");
        println!("|---|---|---|---|---|");
        for layer in 0..4 {
            let out = tmp.path().join(format!("rome-{layer}"));
            let mut c = edit();
            c.args(["eval", "-q", "--method", "rome", "--model"]).arg(fixture()).arg("--dataset").arg(fixture().join("cases.json"));
            c.arg("--config").arg(fixture().join("hparams/ROME.json")).args(["--set", &format!("layers=[{layer}]"), "--limit", "40"]);
            c.arg("--text").arg(fixture().join("stats-corpus.txt")).arg("--stats-dir").arg(tmp.path().join("stats")).arg("--out").arg(&out);
            run(&mut c);
            let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
            // summary.json: one entry per --num-edits value, summarize.py's keys, [mean, std].
            let m = |k: &str| s[0][k][0].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {layer} | {:.1} | {:.1} | {:.1} | {:.1} |",
                m("post_rewrite_success"),
                m("post_paraphrase_success"),
                m("post_neighborhood_success"),
                m("post_score")
            );
        }
    }
}
