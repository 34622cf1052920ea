//! What a new user runs, through the real binary, offline, in a tempdir: the main flow
//! (`edit stats`, then `edit apply` with no extra flags), statistics keyed by content, outputs
//! written all or nothing with the umask's permissions, `revert` refusing a delta the model never
//! had, edits that do not take, and the command line's messages.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{edit_bin, fixture_dir, outcome};
use serde_json::Value;

fn fact() -> PathBuf {
    fixture_dir("fact-gpt2")
}

/// The first `n` CounterFact records of fact-gpt2 in `dir/requests.json`.
fn requests(dir: &Path, n: usize) -> PathBuf {
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(fact().join("cases.json")).unwrap()).unwrap();
    let p = dir.join("requests.json");
    std::fs::write(&p, serde_json::to_string(&all[..n]).unwrap()).unwrap();
    p
}

/// `edit ...` with the statistics cache at `stats` through the environment, as a user's
/// `EDIT_STATS_DIR` would be: the commands themselves carry no extra flags.
fn edit_env(stats: &Path) -> Command {
    let mut c = edit_bin();
    c.env("EDIT_STATS_DIR", stats);
    c
}

fn ok(cmd: &mut Command) -> (String, String) {
    let (code, out, err) = outcome(cmd);
    assert_eq!(code, Some(0), "the command should succeed; stderr: {err}");
    (out, err)
}

fn fails(cmd: &mut Command, needles: &[&str]) -> String {
    let (code, _, err) = outcome(cmd);
    assert!(code.is_some_and(|c| c != 0), "the command should fail; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
    err
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn stats_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "safetensors") && !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, &mut v);
    v.sort();
    v
}

// ---- the main flow ---------------------------------------------------------------------------

#[test]
fn stats_then_apply_with_no_extra_flags_uses_the_cached_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("stats");
    let req = requests(tmp.path(), 2);

    // Nothing cached, and the fixture's config names a corpus edit cannot fetch: a clear error
    // before any weights are read, naming the offline choice.
    let err = fails(
        edit_env(&stats)
            .args(["-v", "apply", "--method", "rome", "--model"])
            .arg(fact())
            .arg(&req)
            .arg("--config")
            .arg(fact().join("hparams/ROME.json"))
            .arg("--out")
            .arg(tmp.path().join("x")),
        &["wikitext2_facts", "--dataset embedded", "edit stats"],
    );
    assert!(!err.contains("loading"), "the model must not be loaded before the statistics are settled: {err}");
    // The shipped config names Wikipedia, which is not in the (empty) Hub cache offline.
    fails(
        edit_env(&stats).args(["apply", "--offline", "--method", "memit", "--model"]).arg(fact()).arg(&req).arg("--out").arg(tmp.path().join("x")),
        &["wikimedia/wikipedia", "--dataset embedded"],
    );
    assert!(!tmp.path().join("x").exists());

    // The flow of the README: statistics on the embedded sample, then edits with no extra flags
    // (a 400-text sample of it here, to keep the test quick; the README uses all 2,891).
    let (out, _) = ok(edit_env(&stats).args(["stats", "--samples", "400", "--model"]).arg(fact()).args(["--layers", "0-5"]));
    assert_eq!(out.lines().count(), 6, "{out}");
    let files = stats_files(&stats);
    assert_eq!(files.len(), 6);
    assert!(files.iter().all(|f| f.to_string_lossy().ends_with("_float32_400.safetensors")), "{files:?}");
    let before: Vec<_> = files.iter().map(|f| std::fs::metadata(f).unwrap().modified().unwrap()).collect();

    for method in ["memit", "rome"] {
        let out_dir = tmp.path().join(format!("edited-{method}"));
        let (_, err) = ok(edit_env(&stats).args(["apply", "--method", method, "--model"]).arg(fact()).arg(&req).arg("--out").arg(&out_dir));
        assert!(
            err.contains("cached ones are of wikitext-2-test-embedded (400 samples)") && err.contains("`wikipedia`"),
            "says which corpus, and that it differs: {err}"
        );
        assert!(!err.contains("computing"), "{err}");
        assert!(out_dir.join("model.safetensors").is_file());
    }
    // An edited model keeps using the statistics of the model it was edited from.
    let (_, err) = ok(edit_env(&stats)
        .args(["-v", "apply", "--method", "rome", "--model"])
        .arg(tmp.path().join("edited-rome"))
        .arg(&req)
        .arg("--delta-out")
        .arg(tmp.path().join("second.safetensors")));
    assert!(err.contains("the model this one was edited from") && !err.contains("computing"), "{err}");
    let after: Vec<_> = files.iter().map(|f| std::fs::metadata(f).unwrap().modified().unwrap()).collect();
    assert_eq!(before, after, "the cached statistics are read, not rewritten");
    assert_eq!(stats_files(&stats).len(), 6, "nothing recomputed");

    // --stats-dir instead of the environment, and --json: the summary names the statistics used.
    let (out, _) = ok(edit_bin()
        .args(["apply", "--json", "--method", "rome", "--model"])
        .arg(fact())
        .arg(&req)
        .arg("--stats-dir")
        .arg(&stats)
        .arg("--delta-out")
        .arg(tmp.path().join("d.safetensors")));
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["statistics"]["dataset"], "wikitext-2-test-embedded");
    assert_eq!(summary["statistics"]["samples"], 400);

    // A cached corpus chosen by its name in the cache; an unknown one lists what is there.
    ok(edit_env(&stats)
        .args(["apply", "--method", "rome", "--stats-corpus", "wikitext-2-test-embedded", "--model"])
        .arg(fact())
        .arg(&req)
        .arg("--delta-out")
        .arg(tmp.path().join("d2.safetensors")));
    fails(
        edit_env(&stats)
            .args(["apply", "--method", "rome", "--stats-corpus", "wikipedia", "--model"])
            .arg(fact())
            .arg(&req)
            .arg("--delta-out")
            .arg(tmp.path().join("d3.safetensors")),
        &["no cached statistics of corpus `wikipedia`", "wikitext-2-test-embedded (400 samples, float32)"],
    );
    assert!(!tmp.path().join("d3.safetensors").exists());
}

#[test]
fn a_delta_inside_the_output_directory_spelled_another_way_lands_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let req = requests(tmp.path(), 1);
    let out = tmp.path().join("patched");
    let delta = tmp.path().join(".").join("patched").join("sub").join("..").join("delta.safetensors");
    ok(edit_bin()
        .args(["apply", "--method", "rome", "--model"])
        .arg(fact())
        .arg(&req)
        .args(["--set", "mom2_adjustment=false", "--set", "v_num_grad_steps=3", "--out"])
        .arg(&out)
        .arg("--delta-out")
        .arg(&delta));
    assert!(out.join("delta.safetensors").is_file() && out.join("model.safetensors").is_file());
    assert_eq!(entries(tmp.path()), ["patched", "requests.json"], "no temporaries left beside it");
}

#[test]
fn requests_from_standard_input() {
    let tmp = tempfile::tempdir().unwrap();
    let req = std::fs::read_to_string(requests(tmp.path(), 1)).unwrap();
    let mut child = edit_bin()
        .args(["apply", "--json", "--method", "rome", "--model"])
        .arg(fact())
        .arg("-")
        .args(["--set", "mom2_adjustment=false", "--set", "v_num_grad_steps=3", "--delta-out"])
        .arg(tmp.path().join("d.safetensors"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), req.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first: Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["subject"], "Alon Javberg");
}

// ---- statistics keyed by content -------------------------------------------------------------

#[test]
fn text_corpora_are_keyed_by_content_not_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("stats");
    let corpus = tmp.path().join("c.txt");
    std::fs::write(&corpus, "aaaa bbbb\ncccc dddd\n").unwrap();
    let run = |path: &Path| {
        let (out, _) = ok(edit_bin().args(["stats", "--json", "--layers", "0", "--model"]).arg(fact()).arg("--text").arg(path).arg("--stats-dir").arg(&stats));
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let first = run(&corpus);
    assert_eq!(first["layers"][0]["cached"], false);
    assert_eq!(first["texts"], 2);
    // The same file by another path: cached.
    std::fs::create_dir_all(tmp.path().join("sub")).unwrap();
    let other_path = tmp.path().join("sub").join("..").join("c.txt");
    let second = run(&other_path);
    assert_eq!(second["layers"][0]["cached"], true, "the same file reached by two paths is one corpus");
    // Same length, new content: computed again, into another file.
    std::fs::write(&corpus, "zzzz yyyy\nxxxx wwww\n").unwrap();
    let third = run(&corpus);
    assert_eq!(third["layers"][0]["cached"], false, "changed content must not reuse old statistics");
    assert_ne!(third["dataset"], first["dataset"]);
    assert_eq!(stats_files(&stats).len(), 2);
    assert!(stats_files(&stats).iter().all(|f| f.to_string_lossy().ends_with("_float32_2.safetensors")), "named by the 2 texts used");
    // Asking for 2 or for 100000 texts of a 2-line corpus is the same sample.
    let (out, _) = ok(edit_bin()
        .args(["stats", "--json", "--samples", "2", "--layers", "0", "--model"])
        .arg(fact())
        .arg("--text")
        .arg(&corpus)
        .arg("--stats-dir")
        .arg(&stats));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["layers"][0]["cached"], true);
}

// ---- nothing half-written, umask permissions ------------------------------------------------------

#[test]
fn an_unwritable_delta_path_fails_before_any_work_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let req = requests(tmp.path(), 1);
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    let err = fails(
        edit_bin()
            .args(["-v", "apply", "--method", "rome", "--model"])
            .arg(fact())
            .arg(&req)
            .arg("--out")
            .arg(tmp.path().join("o"))
            .arg("--delta-out")
            .arg(&d)
            .args(["--set", "mom2_adjustment=false"]),
        &["--delta-out", "is an existing directory"],
    );
    assert!(!err.contains("loading"), "checked before the model is read: {err}");
    assert_eq!(entries(tmp.path()), ["d", "requests.json"], "--out must not exist after a failure");
}

#[cfg(unix)]
#[test]
fn written_files_respect_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let req = requests(tmp.path(), 1);
    let stats = tmp.path().join("stats");
    let out = tmp.path().join("out");
    let delta = tmp.path().join("delta.safetensors");
    // `sh -c 'umask 022; exec edit ...'`: the umask of a typical login shell.
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("umask 022; exec \"$@\"").arg("sh").arg(env!("CARGO_BIN_EXE_edit"));
    cmd.env("HF_HOME", "/nonexistent").env_remove("EDIT_STATS_DIR").env_remove("RUST_LOG");
    cmd.args(["apply", "--method", "rome", "--model"])
        .arg(fact())
        .arg(&req)
        .args(["--dataset", "embedded", "--samples", "200", "--set", "v_num_grad_steps=3", "--stats-dir"])
        .arg(&stats)
        .arg("--out")
        .arg(&out)
        .arg("--delta-out")
        .arg(&delta);
    ok(&mut cmd);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&delta), 0o644, "delta file");
    for f in entries(&out) {
        assert_eq!(mode(&out.join(&f)), 0o644, "{f} in --out");
    }
    assert_eq!(mode(&out), 0o755, "--out itself");
    for f in stats_files(&stats) {
        assert_eq!(mode(&f), 0o644, "{}", f.display());
    }
}

// ---- revert refuses a delta the model never had ----------------------------------------------------

#[test]
fn revert_checks_that_the_model_holds_the_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let req = requests(t, 1);
    let delta = t.join("delta.safetensors");
    let patched = t.join("patched");
    ok(edit_bin()
        .args(["apply", "--method", "rome", "--model"])
        .arg(fact())
        .arg(&req)
        .args(["--set", "mom2_adjustment=false", "--set", "v_num_grad_steps=3", "--out"])
        .arg(&patched)
        .arg("--delta-out")
        .arg(&delta));
    // The base model never had it.
    fails(edit_bin().args(["revert", "--model"]).arg(fact()).arg(&delta).arg("--out").arg(t.join("r1")), &["does not hold the delta", "--force"]);
    assert!(!t.join("r1").exists());
    let (_, err) = ok(edit_bin().args(["revert", "--force", "--model"]).arg(fact()).arg(&delta).arg("--out").arg(t.join("r1")));
    assert!(err.contains("reverting anyway"), "{err}");
    // The patched model holds it; the reverted one no longer does; apply-delta puts it back.
    ok(edit_bin().args(["revert", "--model"]).arg(&patched).arg(&delta).arg("--out").arg(t.join("r2")));
    fails(edit_bin().args(["revert", "--model"]).arg(t.join("r2")).arg(&delta).arg("--out").arg(t.join("r3")), &["does not hold the delta"]);
    ok(edit_bin().args(["apply-delta", "--model"]).arg(t.join("r2")).arg(&delta).arg("--out").arg(t.join("r4")));
    ok(edit_bin().args(["revert", "--model"]).arg(t.join("r4")).arg(&delta).arg("--out").arg(t.join("r5")));
}

// ---- an edit that does not take is reported ---------------------------------------------------------

#[test]
fn an_edit_that_does_not_take_is_reported_and_can_fail_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let req = requests(tmp.path(), 1);
    let apply = |steps: &str| {
        let mut c = edit_bin();
        c.args(["apply", "--json", "--method", "rome", "--model"])
            .arg(fact())
            .arg(&req)
            .args(["--set", "mom2_adjustment=false", "--set"])
            .arg(format!("v_num_grad_steps={steps}"))
            .arg("--delta-out")
            .arg(tmp.path().join("d.safetensors"));
        c
    };
    // One step evaluates only: the loss cannot fall, and the target is not yet the top token.
    let (out, err) = ok(&mut apply("1"));
    assert!(err.contains("request 0") && err.contains("did not take"), "{err}");
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["check"]["took"], false, "{first}");
    assert_eq!(first["check"]["loss_fell"], false);
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["failed"], serde_json::json!([0]));
    std::fs::remove_file(tmp.path().join("d.safetensors")).unwrap();

    // --require-success: exit code 3 and nothing written.
    let (code, _, err) = outcome(apply("1").arg("--require-success"));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(entries(tmp.path()), ["requests.json"]);

    // A full optimisation takes.
    let (out, _) = ok(apply("20").arg("--require-success"));
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["check"]["took"], true, "{first}");
    assert_eq!(first["check"]["top_token"], " Finnish");
}

// ---- messages and help -----------------------------------------------------------------------------

#[test]
fn error_causes_are_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(
        edit_bin()
            .args(["apply", "--method", "rome", "--model"])
            .arg(fact())
            .arg(tmp.path().join("missing.json"))
            .arg("--delta-out")
            .arg(tmp.path().join("d.safetensors")),
        &["missing.json"],
    );
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn layer_lists_have_one_parser_and_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = |layers: &[&str]| {
        let mut c = edit_bin();
        c.args(["stats", "--json", "--samples", "20", "--model"]).arg(fact()).arg("--stats-dir").arg(tmp.path()).arg("--layers").args(layers);
        c
    };
    // `--layers 1, 2` unquoted is what was meant.
    let (out, _) = ok(&mut stats(&["1,", "2"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    fails(&mut stats(&["2-1"]), &["runs backwards", "1-2"]);
    fails(&mut stats(&["1 - 2"]), &["spaces inside the range"]);
    fails(&mut stats(&["1,,2"]), &["empty item"]);
    fails(&mut stats(&["9"]), &["layer 9 does not exist", "6 layers"]);
}

#[test]
fn text_takes_one_value_so_the_requests_path_is_not_swallowed() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(
        edit_bin()
            .args(["apply", "--method", "rome", "--model"])
            .arg(fact())
            .arg("--text")
            .arg(fact().join("stats-corpus.txt"))
            .arg(tmp.path().join("missing-requests.json"))
            .arg("--delta-out")
            .arg(tmp.path().join("d.safetensors")),
        &["cannot read requests from", "missing-requests.json"],
    );
    assert!(!err.contains("--text"), "{err}");
}

#[test]
fn help_texts_and_options_fit_each_command() {
    let help = |args: &[&str]| {
        let (out, _) = ok(edit_bin().args(args).arg("--help"));
        out
    };
    let apply = help(&["apply"]);
    assert!(apply.contains("--method <METHOD>") && apply.contains("rank-one update"), "--method is explained: {apply}");
    assert!(apply.contains("Global options:") && apply.contains("--require-success"), "{apply}");
    assert!(help(&["stats", "import"]).contains("Print one JSON object"));
    for cmd in [&["inspect"][..], &["apply-delta"], &["revert"], &["stats", "import"]] {
        let h = help(cmd);
        assert!(!h.contains("--dtype") && !h.contains("--device"), "{cmd:?} runs no model: {h}");
    }
    for cmd in [&["predict"][..], &["apply"], &["stats"]] {
        assert!(help(cmd).contains("--device"), "{cmd:?}");
    }
}

#[test]
fn very_verbose_logs_are_edits_own() {
    let (_, err) = ok(edit_bin().args(["-vv", "predict", "--model"]).arg(fixture_dir("tiny-gpt2")).arg("The Eiffel Tower is in"));
    assert!(err.lines().count() < 40, "-vv should not flood stderr with dependencies' trace logs ({} lines)", err.lines().count());
    assert!(err.contains("loading"), "edit's own logs are there: {err}");
}

// ---- an interrupted statistics job says so, and the rerun says it resumed ---------------------------

#[cfg(unix)]
#[test]
fn interrupted_stats_say_how_to_resume_and_the_rerun_says_it_resumed() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("stats");
    let cmd = || {
        let mut c = edit_bin();
        // Small forward batches over 600 texts of the embedded sample: long enough to interrupt.
        c.args(["-v", "stats", "--layers", "0-5", "--samples", "600", "--batch-tokens", "64", "--checkpoint-secs", "3600", "--model"])
            .arg(fact())
            .arg("--stats-dir")
            .arg(&stats);
        c
    };
    let mut child = cmd().stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push_str(&line);
        if line.contains("texts sampled") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Safety: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    log.push_str(&rest);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("interrupted after") && log.contains("run the same command again to resume"), "{log}");
    assert!(stats_files(&stats).is_empty(), "no final statistics from an interrupted job");

    let (_, err2) = ok(cmd().stdout(Stdio::null()));
    assert!(err2.contains("resuming an interrupted job"), "{err2}");
    assert_eq!(stats_files(&stats).len(), 6);
}
