//! `edit stats` end to end: golden second moments, one pass = many single-layer passes,
//! resume = uninterrupted, corpus formats, cache checks, npz import.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::DType;
use common::{edit_bin, fixture_dir, golden, max_abs_diff, rel_diff};
use edit::stats::cache;

fn ok(cmd: &mut Command) -> serde_json::Value {
    let out: Output = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The first `n` lines of WikiText-2 test (the embedded corpus), as a .txt corpus file.
fn wikitext_lines(dir: &Path, n: usize) -> (PathBuf, Vec<String>) {
    let all = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/data/wikitext-2-raw-test.txt")).unwrap();
    let lines: Vec<String> = all.lines().filter(|l| !l.is_empty()).take(n).map(str::to_string).collect();
    let p = dir.join(format!("wiki{n}.txt"));
    std::fs::write(&p, lines.join("\n")).unwrap();
    (p, lines)
}

fn stats_cmd(model: &str, layers: &str, text: &Path, samples: usize, stats_dir: &Path, precision: &str) -> Command {
    let mut c = edit_bin();
    c.args(["stats", "--json", "--layers", layers, "--precision", precision, "--samples", &samples.to_string(), "--model"])
        .arg(fixture_dir(model))
        .arg("--text")
        .arg(text)
        .arg("--stats-dir")
        .arg(stats_dir);
    c
}

fn layer_file(summary: &serde_json::Value, layer: usize) -> PathBuf {
    let l = summary["layers"].as_array().unwrap().iter().find(|l| l["layer"] == layer).unwrap();
    PathBuf::from(l["file"].as_str().unwrap())
}

#[test]
fn second_moments_match_golden_for_all_families() {
    for name in common::TINY {
        let tmp = tempfile::tempdir().unwrap();
        let (text, _) = wikitext_lines(tmp.path(), 64);
        let summary = ok(&mut stats_cmd(name, "1,2", &text, 64, &tmp.path().join("stats"), "f64"));
        let g = golden(name);
        let want_count = g.tensor("mom2_count").to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0] as u64;
        for layer in [1, 2] {
            let m = cache::load(&layer_file(&summary, layer)).unwrap();
            assert_eq!(m.count, want_count, "{name} token count");
            let rel = rel_diff(&m.sum, &g.tensor(&format!("mom2_sum.{layer}")));
            assert!(rel <= 1e-4, "{name} layer {layer}: relative error {rel}");
            assert_eq!(m.meta.layer, layer);
            assert_eq!(m.meta.texts, 64);
        }
        // f32 accumulation (the reference's) agrees to float rounding.
        let s32 = ok(&mut stats_cmd(name, "2", &text, 64, &tmp.path().join("stats32"), "f32"));
        let m = cache::load(&layer_file(&s32, 2)).unwrap();
        assert_eq!(m.sum.dtype(), DType::F32);
        assert!(rel_diff(&m.sum, &g.tensor("mom2_sum.2")) <= 1e-4);
    }
}

#[test]
fn one_pass_over_many_layers_equals_single_layer_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, _) = wikitext_lines(tmp.path(), 150);
    let multi = ok(&mut stats_cmd("tiny-neox", "0-3", &text, 150, &tmp.path().join("multi"), "f32"));
    for layer in 0..4 {
        let single = ok(&mut stats_cmd("tiny-neox", &layer.to_string(), &text, 150, &tmp.path().join(format!("single{layer}")), "f32"));
        let a = cache::load(&layer_file(&multi, layer)).unwrap();
        let b = cache::load(&layer_file(&single, layer)).unwrap();
        assert_eq!(a.count, b.count);
        assert_eq!(max_abs_diff(&a.sum, &b.sum), 0.0, "layer {layer}");
    }
}

#[test]
fn interrupted_job_resumes_to_identical_sums() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, _) = wikitext_lines(tmp.path(), 320); // 4 chunks of 100 texts
    let whole = ok(&mut stats_cmd("tiny-gpt2", "1,3", &text, 320, &tmp.path().join("whole"), "f32"));
    let dir = tmp.path().join("resumed");
    let out = stats_cmd("tiny-gpt2", "1,3", &text, 320, &dir, "f32").args(["--abort-after-chunks", "2"]).output().unwrap();
    assert!(!out.status.success(), "the interrupted run must fail");
    let partials: Vec<_> = walk(&dir).into_iter().filter(|p| p.to_string_lossy().contains(".partial")).collect();
    assert_eq!(partials.len(), 1, "a checkpoint is left behind");
    assert!(
        walk(&dir).iter().all(|p| !p.to_string_lossy().ends_with("_320.safetensors") || p.to_string_lossy().contains(".partial")),
        "no final file from an interrupted run"
    );
    let resumed = ok(&mut stats_cmd("tiny-gpt2", "1,3", &text, 320, &dir, "f32"));
    assert_eq!(resumed["resumed_from_chunk"], 2);
    for layer in [1, 3] {
        let a = cache::load(&layer_file(&whole, layer)).unwrap();
        let b = cache::load(&layer_file(&resumed, layer)).unwrap();
        assert_eq!(a.count, b.count);
        assert_eq!(max_abs_diff(&a.sum, &b.sum), 0.0, "layer {layer} must be bit-identical");
    }
    assert!(walk(&dir).iter().all(|p| !p.to_string_lossy().contains(".partial")), "checkpoint removed when done");
    // A third run finds everything cached.
    let again = ok(&mut stats_cmd("tiny-gpt2", "1,3", &text, 320, &dir, "f32"));
    assert!(again["layers"].as_array().unwrap().iter().all(|l| l["cached"] == true));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn write_parquet(path: &Path, texts: &[String]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(parquet::schema::parser::parse_message_type("message schema { REQUIRED BYTE_ARRAY text (UTF8); }").unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).set_max_row_group_row_count(Some(40)).build());
    let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for chunk in texts.chunks(40) {
        let mut rg = w.next_row_group().unwrap();
        while let Some(mut col) = rg.next_column().unwrap() {
            let vals: Vec<ByteArray> = chunk.iter().map(|t| ByteArray::from(t.as_str())).collect();
            col.typed::<ByteArrayType>().write_batch(&vals, None, None).unwrap();
            col.close().unwrap();
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
}

#[test]
fn parquet_and_jsonl_corpora_equal_the_text_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, lines) = wikitext_lines(tmp.path(), 130);
    let pq = tmp.path().join("corpus.parquet");
    write_parquet(&pq, &lines);
    let jl = tmp.path().join("corpus.jsonl");
    std::fs::write(&jl, lines.iter().map(|t| serde_json::json!({"text": t, "id": 1}).to_string()).collect::<Vec<_>>().join("\n")).unwrap();
    // Sample fewer than all so the shuffle matters: same seed, same rows, same order.
    let base = ok(&mut stats_cmd("tiny-gpt2", "2", &text, 90, &tmp.path().join("a"), "f32"));
    let a = cache::load(&layer_file(&base, 2)).unwrap();
    for (f, d) in [(&pq, "b"), (&jl, "c")] {
        let s = ok(&mut stats_cmd("tiny-gpt2", "2", f, 90, &tmp.path().join(d), "f32"));
        let b = cache::load(&layer_file(&s, 2)).unwrap();
        assert_eq!(a.count, b.count, "{}", f.display());
        assert_eq!(max_abs_diff(&a.sum, &b.sum), 0.0, "{}", f.display());
    }
}

#[test]
fn embedded_corpus_is_the_default_and_says_it_is_small() {
    let tmp = tempfile::tempdir().unwrap();
    let out = edit_bin()
        .args(["stats", "--json", "--layers", "0", "--samples", "20", "--model"])
        .arg(fixture_dir("tiny-gpt2"))
        .arg("--stats-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["note"].as_str().unwrap().contains("small sample"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("small sample"));
    assert_eq!(v["dataset"], "wikitext-2-test-embedded");
    assert!(v["tokens"].as_u64().unwrap() > 100);
}

#[test]
fn statistics_of_another_model_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, _) = wikitext_lines(tmp.path(), 10);
    let s = ok(&mut stats_cmd("tiny-gpt2", "1", &text, 10, tmp.path(), "f32"));
    let m = cache::load(&layer_file(&s, 1)).unwrap();
    let gptj = edit::hub::resolve_model(fixture_dir("tiny-gptj").to_str().unwrap(), &Default::default()).unwrap();
    let cfg = edit::ModelConfig::from_file(&gptj.config).unwrap();
    let identity = edit::identity::ModelIdentity::of(&gptj).unwrap();
    // Same widths (both tiny models have 128-wide keys), different weights.
    let module = edit::models::modules::mlp_down(&cfg, 1).unwrap();
    let mut m2 = cache::load(&layer_file(&s, 1)).unwrap();
    m2.meta.module = module.name.clone();
    let err = m2.check(&identity, &module).unwrap_err().to_string();
    assert!(err.contains("recompute") && err.contains("weights"), "{err}");
    // And a width mismatch is named as such.
    let mut wide = module.clone();
    wide.in_dim = 256;
    let err = m.check(&identity, &wide).unwrap_err().to_string();
    assert!(err.contains("256"), "{err}");
    // The right model passes, and C = sum / count.
    let own = edit::hub::resolve_model(fixture_dir("tiny-gpt2").to_str().unwrap(), &Default::default()).unwrap();
    let own_cfg = edit::ModelConfig::from_file(&own.config).unwrap();
    m.check(&edit::identity::ModelIdentity::of(&own).unwrap(), &edit::models::modules::mlp_down(&own_cfg, 1).unwrap()).unwrap();
    let c = m.second_moment().unwrap();
    let back = (c * m.count as f64).unwrap();
    assert!(rel_diff(&back, &m.sum) < 1e-6);
}

/// Reference-format `.npz` files written by numpy (`tests/fixtures/npz/make_npz.py`).
#[test]
fn reference_npz_import() {
    let tmp = tempfile::tempdir().unwrap();
    let g = golden("tiny-gptj");
    let sum: Vec<f32> = g.tensor("mom2_sum.2").to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    // Where the reference keeps it: data/stats/<model>/wikipedia_stats/<module>_float32_mom2_<n>.npz.
    let dir = tmp.path().join("EleutherAI_gpt-j-tiny").join("wikipedia_stats");
    std::fs::create_dir_all(&dir).unwrap();
    let name = "transformer.h.2.mlp.fc_out_float32_mom2_100000.npz";
    let file = dir.join(name);
    std::fs::copy(fixture_dir("npz").join(name), &file).unwrap();
    let stats_dir = tmp.path().join("stats");
    let v = ok(edit_bin().args(["stats", "import", "--json"]).arg(&file).arg("--model").arg(fixture_dir("tiny-gptj")).arg("--stats-dir").arg(&stats_dir));
    assert_eq!(v["layer"], 2);
    let m = cache::load(Path::new(v["file"].as_str().unwrap())).unwrap();
    assert_eq!(m.count, 4321);
    assert_eq!(m.meta.dataset, "wikipedia");
    assert_eq!(m.meta.samples, 100000);
    assert_eq!(m.sum.flatten_all().unwrap().to_vec1::<f32>().unwrap(), sum);
    // The imported file is found by a later `edit stats` with matching settings.
    assert!(v["file"].as_str().unwrap().ends_with("transformer.h.2.mlp.fc_out_float32_100000.safetensors"));

    let fails = |file: &Path, needle: &str| {
        let out =
            edit_bin().args(["stats", "import"]).arg(file).arg("--model").arg(fixture_dir("tiny-gptj")).arg("--stats-dir").arg(&stats_dir).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(needle), "{err}");
    };
    // Wrong width: refused with a message naming the shapes.
    fails(&fixture_dir("npz").join("transformer.h.1.mlp.fc_out_float32_mom2_10.npz"), "128-wide");
    // Fortran order is not read (the reference never writes it): said, with the fix.
    fails(&fixture_dir("npz").join("transformer.h.2.mlp.fc_out_float64_mom2_7.npz"), "np.ascontiguousarray");
    // Not a zip at all.
    let junk = tmp.path().join("junk.npz");
    std::fs::write(&junk, "not a zip").unwrap();
    fails(&junk, "not a readable .npz");
}

#[test]
fn bad_layer_and_missing_corpus_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = edit_bin().args(["stats", "--layers", "9", "--model"]).arg(fixture_dir("tiny-gpt2")).arg("--stats-dir").arg(tmp.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("layer 9 does not exist"));
    let out = edit_bin().args(["stats", "--layers", "1", "--text", "/no/such.txt", "--model"]).arg(fixture_dir("tiny-gpt2")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such.txt"));
}

#[test]
fn hub_dataset_from_offline_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, lines) = wikitext_lines(tmp.path(), 120);
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    let repo = tmp.path().join("hub").join("datasets--Salesforce--wikitext");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit).join("wikitext-103-raw-v1");
    std::fs::create_dir_all(&snap).unwrap();
    write_parquet(&snap.join("train-00000-of-00002.parquet"), &lines[..70]);
    // Only one of two shards: refused, because the sample would silently change.
    let run = |stats: &str| {
        edit_bin()
            .env("HF_HUB_CACHE", tmp.path().join("hub"))
            .args(["stats", "--json", "--offline", "--dataset", "wikitext", "--layers", "1", "--samples", "50", "--model"])
            .arg(fixture_dir("tiny-gpt2"))
            .arg("--stats-dir")
            .arg(tmp.path().join(stats))
            .output()
            .unwrap()
    };
    let out = run("s1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only 1 of 2") && err.contains("huggingface-cli download --repo-type dataset Salesforce/wikitext"), "{err}");
    write_parquet(&snap.join("train-00001-of-00002.parquet"), &lines[70..]);
    let out = run("s2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dataset"], "wikitext-103-raw-v1");
    // Same rows as the .txt corpus of the same lines: same sample, same sums.
    let txt = tmp.path().join("all.txt");
    std::fs::write(&txt, lines.join("\n")).unwrap();
    let t = ok(&mut stats_cmd("tiny-gpt2", "1", &txt, 50, &tmp.path().join("s3"), "f32"));
    let a = cache::load(&layer_file(&v, 1)).unwrap();
    let b = cache::load(&layer_file(&t, 1)).unwrap();
    assert_eq!(a.count, b.count);
    assert_eq!(max_abs_diff(&a.sum, &b.sum), 0.0);
}

/// `edit stats --shard I/N` on every I, then `edit stats merge`: the files one run writes, with
/// sums equal to float rounding (addition in another order) and counts exact.
#[test]
fn three_shards_merged_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, _) = wikitext_lines(tmp.path(), 520); // 6 chunks: shard I holds chunks I and I + 3
    for (precision, tol) in [("f64", 1e-13), ("f32", 1e-5)] {
        let whole = ok(&mut stats_cmd("tiny-gpt2", "1,3", &text, 520, &tmp.path().join(format!("whole-{precision}")), precision));
        let shard_dir = tmp.path().join(format!("shards-{precision}"));
        let mut files = Vec::new();
        let mut tokens = 0;
        for i in [2, 0, 1] {
            let s = ok(stats_cmd("tiny-gpt2", "1,3", &text, 520, &shard_dir, precision).args(["--shard", &format!("{i}/3")]));
            assert!(s["layers"].as_array().unwrap().is_empty(), "a shard files no statistics");
            tokens += s["tokens"].as_u64().unwrap();
            files.push(PathBuf::from(s["shard_file"].as_str().unwrap()));
        }
        assert_eq!(tokens, whole["tokens"].as_u64().unwrap(), "the shards split the tokens");
        let merged_dir = tmp.path().join(format!("merged-{precision}"));
        let merged = ok(edit_bin().args(["stats", "merge", "--json", "--stats-dir"]).arg(&merged_dir).args(&files));
        for layer in [1, 3] {
            let a = cache::load(&layer_file(&whole, layer)).unwrap();
            let b = cache::load(&layer_file(&merged, layer)).unwrap();
            assert_eq!((a.count, a.meta.texts, a.meta.samples), (b.count, b.meta.texts, b.meta.samples));
            assert_eq!(a.sum.dtype(), b.sum.dtype());
            let rel = rel_diff(&b.sum, &a.sum);
            assert!(rel <= tol, "{precision} layer {layer}: merged sums differ by {rel}");
            // Filed where a single run files them: a later `edit stats` finds them cached.
            assert_eq!(
                layer_file(&merged, layer).strip_prefix(&merged_dir).unwrap(),
                layer_file(&whole, layer).strip_prefix(tmp.path().join(format!("whole-{precision}"))).unwrap()
            );
        }
        let again = ok(&mut stats_cmd("tiny-gpt2", "1,3", &text, 520, &merged_dir, precision));
        assert!(again["layers"].as_array().unwrap().iter().all(|l| l["cached"] == true));

        if precision == "f32" {
            // An interrupted shard resumes to the same file; a finished one is not recomputed.
            let dir = tmp.path().join("resumed-shard");
            let cut = stats_cmd("tiny-gpt2", "1,3", &text, 520, &dir, "f32").args(["--shard", "1/3", "--abort-after-chunks", "1"]).output().unwrap();
            assert!(!cut.status.success());
            let s = ok(stats_cmd("tiny-gpt2", "1,3", &text, 520, &dir, "f32").args(["--shard", "1/3"]));
            assert_eq!(s["resumed_from_chunk"], 2, "chunk 1 was done before the cut");
            let a = cache::load_shard(&files[2]).unwrap();
            let b = cache::load_shard(Path::new(s["shard_file"].as_str().unwrap())).unwrap();
            assert_eq!(a.acc.count, b.acc.count);
            for l in [1, 3] {
                assert_eq!(max_abs_diff(&a.acc.sums[&l], &b.acc.sums[&l]), 0.0);
            }
            let again = ok(stats_cmd("tiny-gpt2", "1,3", &text, 520, &dir, "f32").args(["--shard", "1/3"]));
            assert_eq!(again["tokens"], s["tokens"]);
            // Found before the model is loaded or the texts sampled.
            let rerun = stats_cmd("tiny-gpt2", "1,3", &text, 520, &dir, "f32").args(["--shard", "1/3", "-v"]).output().unwrap();
            let log = String::from_utf8_lossy(&rerun.stderr);
            assert!(rerun.status.success() && log.contains("already finished"), "{log}");
            assert!(!log.contains("loaded in") && !log.contains("texts sampled"), "a finished shard loads nothing: {log}");

            // Bad merges name the problem and write nothing.
            let fail = |args: &[&Path], needle: &str| {
                let bad_dir = tmp.path().join("bad");
                let out = edit_bin().args(["stats", "merge", "--stats-dir"]).arg(&bad_dir).args(args).output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(!out.status.success() && err.contains(needle), "{err}");
                assert!(!bad_dir.exists(), "nothing written");
            };
            fail(&[&files[0], &files[1]], "missing");
            fail(&[&files[0], &files[1], &files[2], &files[0]], "given 2 times");
            let other = ok(stats_cmd("tiny-gpt2", "1,3", &text, 520, &tmp.path().join("f64-other"), "f64").args(["--shard", "0/3"]));
            fail(&[Path::new(other["shard_file"].as_str().unwrap()), &files[1], &files[2]], "precision");
            fail(&[&layer_file(&whole, 1)], "not a shard");
        }
    }
}

/// `--samples auto`'s stopping rule in a real collection: fact-gpt2's corpus in a shuffled order
/// (the rule assumes the sample order is random), layers 0-2, the probe keys those of 30 held-out
/// texts. C⁻¹K converges as 1/√n (its change halves every two doublings: 0.78 at 5k tokens, 0.07 at
/// 194k), so on this 346k-token corpus the tolerance is 0.15: the collection stops well before the
/// end, and there its C⁻¹K is within about the tolerance of the whole corpus's.
#[test]
fn a_collection_stops_once_c_inverse_k_has_converged() {
    use edit::stats::collect::{collect, collect_in_memory, Accumulator, CollectPlan, Observer};
    use edit::stats::converge::Convergence;
    use std::collections::BTreeMap;

    struct Watch(Convergence);
    impl Observer for Watch {
        fn chunk_done(&mut self, _: &Accumulator, _: usize) -> edit::error::Result<bool> {
            Ok(false)
        }
        fn checkpoint(&mut self, _: &Accumulator, _: &edit::stats::collect::SumView) -> edit::error::Result<()> {
            Ok(())
        }
        fn convergence(&mut self) -> Option<&mut Convergence> {
            Some(&mut self.0)
        }
    }
    let lm = common::fixture("fact-gpt2");
    let tok = lm.tokenizer.as_ref().unwrap();
    let corpus = edit::data::read_texts(&fixture_dir("fact-gpt2").join("stats-corpus.txt")).unwrap();
    let order = edit::pyrandom::shuffled_indices(corpus.len(), 1);
    let mut texts: Vec<String> = order.iter().map(|&i| corpus[i].clone()).collect();
    let held_out = texts.split_off(texts.len() - 30);
    let layers = [0usize, 1, 2];
    let plan = CollectPlan { layers: layers.to_vec(), precision: edit::stats::Precision::F64, batch_tokens: 4096, max_len: 128 };

    // The probe keys: every token of the held-out texts.
    let mut probes: BTreeMap<usize, Vec<candle_core::Tensor>> = BTreeMap::new();
    for t in &held_out {
        let mut ids = tok.encode_input(t).unwrap();
        ids.truncate(128);
        if ids.len() < 2 {
            continue;
        }
        let b = edit::Batch::from_sequences(&[ids], lm.pad_id(), lm.model.device()).unwrap();
        let spec = edit::TraceSpec { keys: layers.iter().copied().collect(), stop_after: Some(2), ..Default::default() };
        let trace = lm.model.forward(&b, &spec, &[]).unwrap();
        for l in layers {
            probes.entry(l).or_default().push(trace.keys[&l].squeeze(0).unwrap().to_dtype(DType::F64).unwrap());
        }
    }
    let probes: BTreeMap<usize, candle_core::Tensor> = probes.into_iter().map(|(l, v)| (l, candle_core::Tensor::cat(&v, 0).unwrap())).collect();

    let tolerance = 0.15;
    let full = collect_in_memory(&*lm.model, tok, &texts, &plan).unwrap();
    let mut watch = Watch(Convergence::new(&probes, tolerance).unwrap());
    let acc = Accumulator::new(&plan.layers, lm.config().d_ff, plan.precision, lm.model.device()).unwrap();
    let auto = collect(&*lm.model, tok, &texts, &plan, acc, &mut watch).unwrap();
    eprintln!("auto stopped at {} of {} tokens; curve {:?}", auto.count, full.count, watch.0.curve.iter().map(|p| (p.tokens, p.worst())).collect::<Vec<_>>());
    assert!(auto.count * 4 < full.count, "stopped at {} of {} tokens", auto.count, full.count);
    assert!(watch.0.curve.last().unwrap().worst().unwrap() < tolerance);
    let (c_auto, c_full) = (auto.second_moments().unwrap(), full.second_moments().unwrap());
    for l in layers {
        let k = edit::linalg::to_mat(&probes[&l].t().unwrap().contiguous().unwrap()).unwrap();
        let solve = |c: &candle_core::Tensor| edit::linalg::SpdFactor::new(&edit::linalg::to_mat(c).unwrap(), "C").unwrap().solve(&k);
        let (a, f) = (solve(&c_auto[&l]), solve(&c_full[&l]));
        let err = (&a - &f).norm_l2() / f.norm_l2();
        eprintln!("layer {l}: C⁻¹K {err:.4} from the whole corpus's");
        assert!(err < tolerance, "layer {l}: C⁻¹K is {err} from the whole corpus's");
    }
}

/// `edit stats --samples auto` end to end on fact-gpt2's corpus: it stops once converged, files
/// the statistics beside the full sample's (`..._<n>-auto`), with the curve in their metadata;
/// a rerun finds them; an interrupted job resumes to the same bytes; `edit apply` with no
/// statistics options uses them; a shard or a tolerance out of range is refused.
#[test]
fn samples_auto_stops_files_beside_the_full_statistics_and_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_dir("fact-gpt2");
    let corpus = model.join("stats-corpus.txt");
    let auto = |dir: &Path, extra: &[&str]| {
        let mut c = edit_bin();
        c.args(["stats", "--json", "-q", "--layers", "0-2", "--samples", "auto", "--model"])
            .arg(&model)
            .arg("--text")
            .arg(&corpus)
            .arg("--stats-dir")
            .arg(dir)
            .args(extra);
        c
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let s = ok(&mut auto(&a, &[]));
    let tokens = s["tokens"].as_u64().unwrap();
    assert_eq!(s["auto"]["converged"], true, "{s}");
    assert!(tokens * 4 < 347_064, "stopped at {tokens} of the corpus's 347,064 tokens");
    let curve = s["auto"]["curve"].as_array().unwrap();
    assert_eq!(curve.last().unwrap()["tokens"].as_u64(), Some(tokens));
    for l in 0..3 {
        let file = layer_file(&s, l);
        assert!(file.file_name().unwrap().to_str().unwrap().ends_with("_11783-auto.safetensors"), "{}", file.display());
        let (meta, _) = cache::load_meta(&file).unwrap();
        assert_eq!((meta.tokens, meta.auto.as_ref().map(|x| x.converged)), (tokens, Some(true)));
    }
    // Cached: a rerun collects nothing.
    let again = ok(&mut auto(&a, &[]));
    assert!(again["layers"].as_array().unwrap().iter().all(|l| l["cached"] == true), "{again}");

    // Interrupted after 7 chunks, then resumed: the files an uninterrupted job writes, byte for byte.
    let out = auto(&b, &["--abort-after-chunks", "7", "--checkpoint-secs", "100000"]).output().unwrap();
    assert!(!out.status.success());
    let resumed = ok(&mut auto(&b, &[]));
    assert_eq!(resumed["resumed_from_chunk"], 7);
    assert_eq!(resumed["auto"], s["auto"]);
    for l in 0..3 {
        assert_eq!(std::fs::read(layer_file(&s, l)).unwrap(), std::fs::read(layer_file(&resumed, l)).unwrap(), "layer {l}");
    }

    // `edit apply` with no statistics options finds them.
    let requests = tmp.path().join("r.json");
    std::fs::write(&requests, r#"[{"prompt": "{} works as a", "subject": "Faara Ravello", "target_new": "dentist"}]"#).unwrap();
    let out = edit_bin()
        .args(["apply", "--method", "memit", "--config"])
        .arg(model.join("hparams/MEMIT_tuned.json"))
        .arg("--model")
        .arg(&model)
        .arg(&requests)
        .arg("--out")
        .arg(tmp.path().join("edited"))
        .arg("--stats-dir")
        .arg(&a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--samples auto") && !err.contains("computing them now"), "{err}");

    // A config's `mom2_n_samples: "auto"` computes them when none are cached, and files them alike.
    let c = tmp.path().join("from-apply");
    let out = edit_bin()
        .args(["apply", "--method", "memit", "--set", "mom2_n_samples=auto", "--config"])
        .arg(model.join("hparams/MEMIT_tuned.json"))
        .arg("--model")
        .arg(&model)
        .arg(&requests)
        .arg("--out")
        .arg(tmp.path().join("edited2"))
        .arg("--stats-dir")
        .arg(&c)
        .arg("--text")
        .arg(&corpus)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("until they converge"), "{err}");
    for l in 0..3 {
        let name = layer_file(&s, l).file_name().unwrap().to_owned();
        let filed = walk(&c).into_iter().find(|p| p.file_name() == Some(&name)).unwrap_or_else(|| panic!("{name:?} not filed under {}", c.display()));
        assert_eq!(std::fs::read(&filed).unwrap(), std::fs::read(layer_file(&s, l)).unwrap(), "layer {l}: the same statistics as edit stats --samples auto");
    }
    let out = edit_bin()
        .args(["apply", "--method", "rome", "--set", "mom2_n_samples=some"])
        .arg("--model")
        .arg(&model)
        .arg(&requests)
        .arg("--out")
        .arg(tmp.path().join("edited3"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("or \"auto\""), "{}", String::from_utf8_lossy(&out.stderr));

    for (extra, message) in [(&["--shard", "0/2"][..], "cannot be sharded"), (&["--tolerance", "0"][..], "--tolerance")] {
        let out = auto(&tmp.path().join("c"), extra).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(message), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
