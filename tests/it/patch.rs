//! Writing patched model directories and delta files (`edit::patch`, `edit apply-delta`,
//! `edit revert`) on the bundled tiny checkpoints: GPT-2 (one file, Conv1D `[in, out]`
//! weights, keys without `transformer.`) and GPT-J (two shards + index, `nn.Linear` weights).

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use common::{edit_bin, fixture_dir, max_abs_diff};
use edit::checkpoint::Checkpoint;
use edit::editing::Deltas;
use edit::hub::{resolve_model, HubOptions, ModelFiles};
use edit::identity::ModelIdentity;
use edit::models::modules::{find, EditableModule};
use edit::patch::{load_delta, save_delta, write_model_dir, DeltaMeta};
use edit::{Batch, Logits, ModelConfig, TraceSpec};

// ---- helpers --------------------------------------------------------------------------

/// A deterministic pseudo-random stream (64-bit LCG, Knuth's constants): candle's `randn`
/// is not seeded.
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        // Top 24 bits → [-1, 1).
        ((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// A random `[out, in]` delta for `module`, uniform in [-scale, scale).
fn random_delta(module: &EditableModule, seed: u64, scale: f32) -> Tensor {
    let mut rng = Lcg(seed);
    let data: Vec<f32> = (0..module.out_dim * module.in_dim).map(|_| rng.next_f32() * scale).collect();
    Tensor::from_vec(data, (module.out_dim, module.in_dim), &Device::Cpu).unwrap()
}

fn model_files(dir: &Path) -> ModelFiles {
    resolve_model(dir.to_str().unwrap(), &HubOptions::default()).unwrap()
}

fn config(files: &ModelFiles) -> ModelConfig {
    ModelConfig::from_file(&files.config).unwrap()
}

/// Random deltas for the named modules (seeded by position).
fn deltas_for(cfg: &ModelConfig, names: &[&str], scale: f32) -> Deltas {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let m = find(cfg, n).unwrap();
            (m.name.clone(), random_delta(&m, 1234 + i as u64 * 7919, scale))
        })
        .collect()
}

/// Every file of a directory (not recursing): name → bytes.
fn dir_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file(), "unexpected non-file {}", e.path().display());
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// Every tensor of a model directory's weight files: key → (dtype, shape, raw bytes).
fn raw_tensors(files: &ModelFiles) -> BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let mut all = BTreeMap::new();
    for f in &files.weights {
        let bytes = std::fs::read(f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            all.insert(name, (view.dtype(), view.shape().to_vec(), view.data().to_vec()));
        }
    }
    all
}

fn load_tensor(files: &ModelFiles, key: &str) -> Tensor {
    for f in &files.weights {
        let t = candle_core::safetensors::load(f, &Device::Cpu).unwrap();
        if let Some(t) = t.get(key) {
            return t.clone();
        }
    }
    panic!("tensor {key} not found")
}

fn file_metadata(path: &Path) -> Option<HashMap<String, String>> {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().clone()
}

fn meta_for(files: &ModelFiles) -> DeltaMeta {
    DeltaMeta {
        method: "rome".into(),
        requests: serde_json::json!([{"prompt": "{} is located in", "subject": "The Eiffel Tower", "target_new": " Rome"}]),
        config: serde_json::json!({"layers": [1]}),
        seed: Some(0),
        base_model: ModelIdentity::of(files).unwrap(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Copies a fixture into a fresh temporary directory (tests that try to write into the
/// model's own directory must not risk the real fixture).
fn temp_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (tmp, dir)
}

fn is_input_error(e: &edit::Error) -> bool {
    matches!(e, edit::Error::Input(_))
}

struct Case {
    fixture: &'static str,
    modules: &'static [&'static str],
    /// Weight files that hold no edited tensor and must be copied byte for byte.
    untouched: &'static [&'static str],
}

const CASES: [Case; 2] = [
    Case { fixture: "tiny-gpt2", modules: &["transformer.h.1.mlp.c_proj", "transformer.h.3.mlp.c_proj"], untouched: &[] },
    Case { fixture: "tiny-gptj", modules: &["transformer.h.2.mlp.fc_out", "transformer.h.3.mlp.fc_out"], untouched: &["model-00001-of-00002.safetensors"] },
];

// ---- (a) the written directory --------------------------------------------------------

#[test]
fn written_model_changes_only_the_edited_weights() {
    for case in &CASES {
        let input = fixture_dir(case.fixture);
        let before = dir_contents(&input);
        let files = model_files(&input);
        let cfg = config(&files);
        let deltas = deltas_for(&cfg, case.modules, 0.05);

        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("patched");
        let report = write_model_dir(&files, &cfg, &deltas, 1.0, &out, false).unwrap();
        assert_eq!(report.out, out);
        // Nothing but the output directory is left beside it (no temporary directories).
        assert_eq!(dir_names(tmp.path()), BTreeSet::from(["patched".to_string()]));

        // Same files, same names; everything but the edited shards byte-identical.
        let written = dir_contents(&out);
        assert_eq!(written.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "{}", case.fixture);
        let out_files = model_files(&out);
        let rel = |fs: &ModelFiles| -> Vec<String> { fs.weights.iter().map(|w| w.file_name().unwrap().to_string_lossy().into_owned()).collect() };
        assert_eq!(rel(&out_files), rel(&files));
        assert_eq!(out_files.index.is_some(), files.index.is_some());
        for (name, bytes) in &written {
            let edited_shard = report.files_written.contains(name);
            if !edited_shard {
                assert_eq!(bytes, &before[name], "{}: {name} should be copied byte for byte", case.fixture);
                assert!(report.files_copied.contains(name), "{name} missing from files_copied");
            }
        }
        for u in case.untouched {
            assert!(!report.files_written.iter().any(|w| w == u), "{u} was rewritten");
            assert_eq!(written[*u], before[*u]);
        }
        assert!(written.contains_key("config.json") && written.contains_key("tokenizer.json"));
        // Rewritten shards keep their `__metadata__`, and record the delta they now hold.
        let id = edit::editing::delta_id(&deltas).unwrap();
        for w in &report.files_written {
            let mut md = file_metadata(&out.join(w)).unwrap_or_default();
            assert_eq!(md.remove(edit::checkpoint::EDIT_APPLIED_KEY), Some(format!("[\"{id}\"]")), "{w} records the delta");
            let base = edit::identity::ModelIdentity::of(&files).unwrap().weights_fingerprint;
            assert_eq!(md.remove(edit::checkpoint::EDIT_BASE_KEY), Some(base), "{w} records its base weights");
            assert_eq!(Some(md).filter(|m| !m.is_empty()), file_metadata(&input.join(w)), "{w} metadata");
        }

        // Tensor by tensor: same names, dtypes and shapes; edited = W + Δ, others bit-identical.
        let ckpt = Checkpoint::open_files(files.weights.clone()).unwrap();
        let mut edited_keys = BTreeMap::new();
        for (name, delta) in &deltas {
            let m = find(&cfg, name).unwrap();
            let key = ckpt.resolve(&format!("{name}.weight"), cfg.family.prefix()).unwrap().to_string();
            edited_keys.insert(key, (m.clone(), delta.clone()));
        }
        assert_eq!(report.tensors_changed, edited_keys.keys().cloned().collect::<Vec<_>>());
        let old = raw_tensors(&files);
        let new = raw_tensors(&out_files);
        assert_eq!(old.keys().collect::<Vec<_>>(), new.keys().collect::<Vec<_>>());
        for (key, (dtype, shape, bytes)) in &old {
            let (ndtype, nshape, nbytes) = &new[key];
            assert_eq!((dtype, shape), (ndtype, nshape), "{key}");
            match edited_keys.get(key) {
                None => assert_eq!(bytes, nbytes, "{}: {key} changed", case.fixture),
                Some((m, delta)) => {
                    let w = load_tensor(&files, key);
                    let want = (&w + m.from_out_in(delta).unwrap()).unwrap();
                    let got = load_tensor(&out_files, key);
                    assert_eq!(got.dims(), m.stored_shape());
                    let d = max_abs_diff(&got, &want);
                    assert!(d <= 1e-7, "{}: {key} differs from W + Δ by {d}", case.fixture);
                    assert!(max_abs_diff(&got, &w) > 1e-3, "{key} did not change");
                }
            }
        }

        // It loads, and the input directory is untouched.
        edit::load_model(out_files, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(dir_contents(&input), before, "{}: the input model changed", case.fixture);
    }
}

// ---- (b) logits -----------------------------------------------------------------------

#[test]
fn written_model_computes_what_the_in_memory_edit_computes() {
    let prompts = vec![vec![464u32, 412, 733, 11752, 318, 287], vec![40, 1842, 262, 3139, 286]];
    for case in &CASES {
        let input = fixture_dir(case.fixture);
        let files = model_files(&input);
        let cfg = config(&files);
        let deltas = deltas_for(&cfg, case.modules, 0.05);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("patched");
        write_model_dir(&files, &cfg, &deltas, 1.0, &out, false).unwrap();

        let mut original = edit::load_model(files.clone(), DType::F32, &Device::Cpu).unwrap();
        let batch = Batch::from_sequences(&prompts, original.pad_id(), &Device::Cpu).unwrap();
        let spec = TraceSpec::logits(Logits::All);
        let before = original.model.forward(&batch, &spec, &[]).unwrap().logits.unwrap();
        for (name, delta) in &deltas {
            let m = find(&cfg, name).unwrap();
            let w = original.model.weight(name).unwrap();
            original.model.set_weight(name, (&w + m.from_out_in(delta).unwrap()).unwrap()).unwrap();
        }
        let want = original.model.forward(&batch, &spec, &[]).unwrap().logits.unwrap();
        let patched = edit::load_model(model_files(&out), DType::F32, &Device::Cpu).unwrap();
        let got = patched.model.forward(&batch, &spec, &[]).unwrap().logits.unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "{}: logits differ by {d}", case.fixture);
        assert!(max_abs_diff(&before, &want) > 1e-3, "{}: the delta should change the logits", case.fixture);
    }
}

// ---- (c) delta files ------------------------------------------------------------------

#[test]
fn delta_files_round_trip_in_the_stored_layout() {
    for case in &CASES {
        let files = model_files(&fixture_dir(case.fixture));
        let cfg = config(&files);
        let deltas = deltas_for(&cfg, case.modules, 0.05);
        let meta = meta_for(&files);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub").join("delta.safetensors");
        save_delta(&path, &cfg, &deltas, &meta).unwrap();
        assert_eq!(dir_names(&tmp.path().join("sub")), BTreeSet::from(["delta.safetensors".to_string()]));

        let (back, back_meta) = load_delta(&path, &cfg).unwrap();
        assert_eq!(back_meta, meta);
        assert_eq!(back.keys().collect::<Vec<_>>(), deltas.keys().collect::<Vec<_>>());
        for (name, d) in &deltas {
            assert_eq!(back[name].dims(), d.dims());
            assert_eq!(back[name].dtype(), DType::F32);
            assert_eq!(back[name].to_vec2::<f32>().unwrap(), d.to_vec2::<f32>().unwrap(), "{name} not exact");
        }

        // On disk: `<module>.weight`, f32, the checkpoint's own layout, so W + Δ works directly.
        let md = file_metadata(&path).unwrap();
        assert_eq!(md["edit.layout"], "stored");
        let parsed: DeltaMeta = serde_json::from_str(&md["edit.delta"]).unwrap();
        assert_eq!(parsed, meta);
        let raw = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(raw.len(), deltas.len());
        let ckpt = Checkpoint::open_files(files.weights.clone()).unwrap();
        for (name, d) in &deltas {
            let stored = &raw[&format!("{name}.weight")];
            assert_eq!(stored.dtype(), DType::F32);
            let key = ckpt.resolve(&format!("{name}.weight"), cfg.family.prefix()).unwrap();
            assert_eq!(stored.dims(), ckpt.tensors()[key].shape.as_slice(), "{name}: not the stored layout");
            let m = find(&cfg, name).unwrap();
            let expect = if case.fixture == "tiny-gpt2" { d.t().unwrap() } else { d.clone() };
            assert_eq!(stored.dims(), expect.dims());
            assert_eq!(max_abs_diff(stored, &expect), 0.0);
            assert_eq!(max_abs_diff(&m.to_out_in(stored).unwrap(), d), 0.0);
        }
    }
}

#[test]
fn delta_files_that_do_not_fit_are_refused() {
    let gpt2 = model_files(&fixture_dir("tiny-gpt2"));
    let gpt2_cfg = config(&gpt2);
    let neox = model_files(&fixture_dir("tiny-neox"));
    let neox_cfg = config(&neox);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("delta.safetensors");
    save_delta(&path, &gpt2_cfg, &deltas_for(&gpt2_cfg, &["transformer.h.1.mlp.c_proj"], 0.05), &meta_for(&gpt2)).unwrap();

    // Another family: the module does not exist there.
    let err = load_delta(&path, &neox_cfg).unwrap_err();
    let msg = err.to_string();
    assert!(is_input_error(&err) && msg.contains("delta.safetensors") && msg.contains("transformer.h.1.mlp.c_proj"), "{msg}");
    assert!(msg.contains("--model"), "{msg}");

    // Same family, another size: the shape does not fit.
    let mut bigger = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&gpt2.config).unwrap()).unwrap();
    bigger["n_embd"] = 64.into();
    let bigger_cfg = ModelConfig::from_json(&bigger, Path::new("config.json")).unwrap();
    let err = load_delta(&path, &bigger_cfg).unwrap_err();
    let msg = err.to_string();
    assert!(is_input_error(&err) && msg.contains("shape") && msg.contains("different size"), "{msg}");

    // Not a delta file at all.
    let model = fixture_dir("tiny-gpt2").join("model.safetensors");
    let err = load_delta(&model, &gpt2_cfg).unwrap_err();
    let msg = err.to_string();
    assert!(is_input_error(&err) && msg.contains("model.safetensors") && msg.contains("not a delta file"), "{msg}");
    let err = load_delta(&fixture_dir("tiny-gpt2").join("config.json"), &gpt2_cfg).unwrap_err();
    assert!(err.to_string().contains("not a delta file"), "{err}");
}

// ---- (e) refusals in the library -------------------------------------------------------

#[test]
fn bad_deltas_are_refused_and_nothing_is_written() {
    let files = model_files(&fixture_dir("tiny-gpt2"));
    let cfg = config(&files);
    let m = find(&cfg, "transformer.h.1.mlp.c_proj").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let attempt = |deltas: Deltas| {
        let err = write_model_dir(&files, &cfg, &deltas, 1.0, &out, false).unwrap_err();
        assert!(is_input_error(&err), "{err:?}");
        assert!(dir_names(tmp.path()).is_empty(), "something was written: {:?}", dir_names(tmp.path()));
        err.to_string()
    };

    // A module the model lacks (layer 9 of 4; a GPT-J name in a GPT-2).
    let d = random_delta(&m, 1, 0.01);
    let msg = attempt(Deltas::from([("transformer.h.9.mlp.c_proj".to_string(), d.clone())]));
    assert!(msg.contains("layer 9"), "{msg}");
    let msg = attempt(Deltas::from([("transformer.h.1.mlp.fc_out".to_string(), d.clone())]));
    assert!(msg.contains("transformer.h.1.mlp.fc_out"), "{msg}");

    // The wrong shape: transposed (the stored Conv1D layout instead of [out, in]).
    let msg = attempt(Deltas::from([(m.name.clone(), d.t().unwrap().contiguous().unwrap())]));
    assert!(msg.contains("shape") && msg.contains("[32, 128]"), "{msg}");

    // NaN and infinity.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut v = d.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[77] = bad;
        let bad_delta = Tensor::from_vec(v, d.dims(), &Device::Cpu).unwrap();
        let msg = attempt(Deltas::from([(m.name.clone(), bad_delta.clone())]));
        assert!(msg.contains("NaN"), "{msg}");
        let err = save_delta(&tmp.path().join("d.safetensors"), &cfg, &Deltas::from([(m.name.clone(), bad_delta)]), &meta_for(&files)).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        assert!(dir_names(tmp.path()).is_empty());
    }

    // The same module twice, under two spellings.
    let msg = attempt(Deltas::from([(m.name.clone(), d.clone()), ("h.1.mlp.c_proj".to_string(), d.clone())]));
    assert!(msg.contains("twice") || msg.contains("two deltas"), "{msg}");
}

#[test]
fn output_directory_rules() {
    let (_tmp, model) = temp_copy("tiny-gpt2");
    let files = model_files(&model);
    let cfg = config(&files);
    let deltas = deltas_for(&cfg, &["transformer.h.1.mlp.c_proj"], 0.05);
    let before = dir_contents(&model);
    let parent = model.parent().unwrap().to_path_buf();
    let siblings = || dir_names(&parent);
    let start = siblings();

    // Never into the input model (itself, inside it, or via `..`), and never over it.
    for out in [model.clone(), model.join("sub"), model.join("..").join("tiny-gpt2"), parent.clone()] {
        for force in [false, true] {
            let err = write_model_dir(&files, &cfg, &deltas, 1.0, &out, force).unwrap_err();
            assert!(is_input_error(&err), "{}: {err:?}", out.display());
            assert!(err.to_string().contains("input model"), "{err}");
            assert_eq!(dir_contents(&model), before);
            assert_eq!(siblings(), start);
        }
    }

    // An existing non-empty directory needs --force; an empty one does not.
    let out = parent.join("out");
    std::fs::create_dir_all(&out).unwrap();
    write_model_dir(&files, &cfg, &deltas, 1.0, &out, false).unwrap();
    let err = write_model_dir(&files, &cfg, &deltas, 1.0, &out, false).unwrap_err();
    assert!(is_input_error(&err) && err.to_string().contains("--force") && err.to_string().contains("--out"), "{err}");
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    let report = write_model_dir(&files, &cfg, &deltas, -1.0, &out, true).unwrap();
    assert!(!out.join("stale.txt").exists(), "the old directory should be replaced");
    assert_eq!(report.tensors_changed, vec!["h.1.mlp.c_proj.weight".to_string()]);
    let mut expect = start.clone();
    expect.insert("out".into());
    assert_eq!(siblings(), expect, "no temporary or old directories left");
    // A file in the way is refused even with --force.
    let file = parent.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = write_model_dir(&files, &cfg, &deltas, 1.0, &file, true).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    assert_eq!(dir_contents(&model), before);
}

#[test]
fn symlinked_snapshot_files_are_followed_and_extra_files_copied() {
    // A Hub-cache-like directory: every file a symlink to a blob; plus generation_config.json,
    // a hidden file, a subfolder, and a stale pytorch_model.bin that must not be shipped.
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("blobs");
    let snap = tmp.path().join("snapshot");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(snap.join("subfolder")).unwrap();
    for e in std::fs::read_dir(fixture_dir("tiny-gptj")).unwrap() {
        let e = e.unwrap();
        let blob = blobs.join(format!("blob-{}", e.file_name().to_string_lossy()));
        std::fs::copy(e.path(), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(e.file_name())).unwrap();
    }
    std::fs::write(snap.join("generation_config.json"), "{\"bos_token_id\": 0}").unwrap();
    std::fs::write(snap.join(".gitattributes"), "*.safetensors filter=lfs").unwrap();
    std::fs::write(snap.join("subfolder").join("x.txt"), "x").unwrap();
    std::fs::write(snap.join("pytorch_model.bin"), "stale weights").unwrap();

    let files = model_files(&snap);
    let cfg = config(&files);
    let deltas = deltas_for(&cfg, &["transformer.h.0.mlp.fc_out"], 0.05);
    let out = tmp.path().join("out");
    let report = write_model_dir(&files, &cfg, &deltas, 1.0, &out, false).unwrap();
    assert_eq!(report.files_written, vec!["model-00001-of-00002.safetensors".to_string()]);
    assert_eq!(report.files_skipped, vec!["pytorch_model.bin".to_string()]);
    let names = dir_names(&out);
    assert!(names.contains("generation_config.json") && names.contains("model.safetensors.index.json"));
    assert!(!names.contains(".gitattributes") && !names.contains("subfolder") && !names.contains("pytorch_model.bin"));
    for name in &names {
        let meta = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} should be a regular file, not a link");
    }
    assert_eq!(
        std::fs::read(out.join("model-00002-of-00002.safetensors")).unwrap(),
        std::fs::read(fixture_dir("tiny-gptj").join("model-00002-of-00002.safetensors")).unwrap()
    );
    edit::load_model(model_files(&out), DType::F32, &Device::Cpu).unwrap();
}

// ---- (d, e) the binary -----------------------------------------------------------------

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn delta_cmd(op: &str, model: &Path, delta: &Path, out: &Path, extra: &[&str]) -> Output {
    run(edit_bin().arg(op).arg("--model").arg(model).arg(delta).arg("--out").arg(out).args(extra))
}

#[test]
fn apply_then_revert_restores_the_weights() {
    for case in &CASES {
        let input = fixture_dir(case.fixture);
        let files = model_files(&input);
        let cfg = config(&files);
        let deltas = deltas_for(&cfg, case.modules, 0.05);
        let tmp = tempfile::tempdir().unwrap();
        let delta = tmp.path().join("delta.safetensors");
        save_delta(&delta, &cfg, &deltas, &meta_for(&files)).unwrap();

        let applied = tmp.path().join("applied");
        let o = delta_cmd("apply-delta", &input, &delta, &applied, &["--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stderr(&o).contains("computed on"), "no fingerprint warning expected: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["operation"], "apply");
        assert_eq!(v["method"], "rome");
        assert_eq!(v["requests"], 1);
        assert_eq!(v["out"], applied.to_str().unwrap());
        assert_eq!(v["tensors_changed"].as_array().unwrap().len(), case.modules.len());
        assert!(v["files_copied"].as_array().unwrap().iter().any(|f| f == "config.json"));
        assert!(!v["files_written"].as_array().unwrap().is_empty());

        let reverted = tmp.path().join("reverted");
        let o = delta_cmd("revert", &applied, &delta, &reverted, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let line = String::from_utf8(o.stdout).unwrap();
        assert!(line.starts_with("reverted") && line.contains("rome") && line.contains("2 tensor(s) changed"), "{line}");
        assert_eq!(line.lines().count(), 1);

        let old = raw_tensors(&files);
        let applied_t = raw_tensors(&model_files(&applied));
        let back_files = model_files(&reverted);
        let back = raw_tensors(&back_files);
        assert_eq!(old.keys().collect::<Vec<_>>(), back.keys().collect::<Vec<_>>());
        for key in old.keys() {
            let changed = v["tensors_changed"].as_array().unwrap().iter().any(|k| k == key.as_str());
            if changed {
                assert_ne!(old[key].2, applied_t[key].2, "{key} was not edited");
                let d = max_abs_diff(&load_tensor(&back_files, key), &load_tensor(&files, key));
                assert!(d <= 1e-6, "{}: {key} restored only to {d}", case.fixture);
            } else {
                assert_eq!(old[key], back[key], "{}: {key} changed", case.fixture);
            }
        }
        // Everything else round-trips byte for byte too.
        let (a, b) = (dir_contents(&input), dir_contents(&reverted));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, bytes) in &a {
            if !v["files_written"].as_array().unwrap().iter().any(|f| f == name.as_str()) {
                assert_eq!(bytes, &b[name], "{name}");
            }
        }
    }
}

#[test]
fn apply_delta_warns_about_another_base_model() {
    let input = fixture_dir("tiny-gpt2");
    let files = model_files(&input);
    let cfg = config(&files);
    let tmp = tempfile::tempdir().unwrap();
    let delta = tmp.path().join("delta.safetensors");
    let mut meta = meta_for(&files);
    meta.base_model.model = "somewhere/else".into();
    meta.base_model.weights_fingerprint = "0000000000000000".into();
    save_delta(&delta, &cfg, &deltas_for(&cfg, &["transformer.h.2.mlp.c_proj"], 0.01), &meta).unwrap();
    let o = delta_cmd("apply-delta", &input, &delta, &tmp.path().join("a"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("somewhere/else") && err.contains("computed on"), "{err}");
    // revert expects the patched model: no warning.
    let o = delta_cmd("revert", &tmp.path().join("a"), &delta, &tmp.path().join("b"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("computed on"), "{}", stderr(&o));
}

#[test]
fn the_binary_refuses_unsafe_or_unfit_requests() {
    let (tmp, model) = temp_copy("tiny-gpt2");
    let files = model_files(&model);
    let cfg = config(&files);
    let deltas_dir = tempfile::tempdir().unwrap();
    let delta = deltas_dir.path().join("delta.safetensors");
    save_delta(&delta, &cfg, &deltas_for(&cfg, &["transformer.h.1.mlp.c_proj"], 0.05), &meta_for(&files)).unwrap();
    let before = dir_contents(&model);
    let listing = || dir_names(tmp.path());
    let start = listing();

    // --out is the input model (with or without --force): refused, nothing created.
    for extra in [&[][..], &["--force"][..]] {
        let o = delta_cmd("apply-delta", &model, &delta, &model, extra);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("input model"), "{}", stderr(&o));
        let o = delta_cmd("revert", &model, &delta, &model.join("inside"), extra);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("input model"), "{}", stderr(&o));
        assert_eq!(dir_contents(&model), before);
        assert_eq!(listing(), start);
    }

    // An existing, non-empty --out without --force.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let o = delta_cmd("apply-delta", &model, &delta, &out, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(dir_names(&out), BTreeSet::from(["keep.txt".to_string()]));
    let o = delta_cmd("apply-delta", &model, &delta, &out, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!out.join("keep.txt").exists());

    // A delta for another model: a module this model lacks, and the wrong size.
    let neox = fixture_dir("tiny-neox");
    let o = delta_cmd("apply-delta", &neox, &delta, &tmp.path().join("n"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("transformer.h.1.mlp.c_proj") && stderr(&o).contains("--model"), "{}", stderr(&o));
    assert!(!tmp.path().join("n").exists());
    let wrong_shape = deltas_dir.path().join("wrong-shape.safetensors");
    write_raw_delta(&wrong_shape, "transformer.h.1.mlp.c_proj.weight", &[64, 32], 0.01, &meta_for(&files));
    let o = delta_cmd("apply-delta", &model, &wrong_shape, &tmp.path().join("w"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("wrong-shape.safetensors") && stderr(&o).contains("shape"), "{}", stderr(&o));

    // NaN in the delta.
    let nan = deltas_dir.path().join("nan.safetensors");
    write_raw_delta(&nan, "transformer.h.1.mlp.c_proj.weight", &[128, 32], f32::NAN, &meta_for(&files));
    let o = delta_cmd("apply-delta", &model, &nan, &tmp.path().join("x"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("NaN"), "{}", stderr(&o));

    // Not a delta file.
    let o = delta_cmd("apply-delta", &model, &model.join("model.safetensors"), &tmp.path().join("y"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a delta file"), "{}", stderr(&o));

    let mut expect = start.clone();
    expect.insert("out".into());
    assert_eq!(listing(), expect, "failed runs must leave nothing behind");
    assert_eq!(dir_contents(&model), before);
}

/// A delta file written by hand (bypassing `save_delta`'s checks): one tensor filled with `value`.
fn write_raw_delta(path: &Path, name: &str, shape: &[usize], value: f32, meta: &DeltaMeta) {
    let t = Tensor::full(value, shape, &Device::Cpu).unwrap();
    let md = HashMap::from([("edit.delta".to_string(), serde_json::to_string(meta).unwrap()), ("edit.layout".to_string(), "stored".to_string())]);
    safetensors::serialize_to_file([(name, &t)], Some(md), path).unwrap();
}

#[test]
fn help_describes_the_commands() {
    for cmd in ["apply-delta", "revert"] {
        let o = run(edit_bin().args([cmd, "--help"]));
        assert!(o.status.success());
        let s = String::from_utf8(o.stdout).unwrap();
        assert!(s.contains("--out") && s.contains("--force") && s.contains("--model") && s.contains("DELTA"), "{s}");
    }
}

// ---- biases and norms (what fine-tuning changes) -------------------------------------------

/// Deltas of a bias and a LayerNorm weight, by checkpoint name, beside a linear weight: written
/// into the model directory (the checkpoint's key spellings found), through delta files, and
/// reverted; applied in memory they change exactly those parameters.
#[test]
fn bias_and_norm_deltas_are_written_saved_and_reverted() {
    let extra: [(&str, [&str; 2]); 3] = [
        ("tiny-gpt2", ["transformer.h.1.mlp.c_proj.bias", "transformer.h.1.ln_2.weight"]),
        ("tiny-gptj", ["transformer.h.1.mlp.fc_out.bias", "transformer.h.1.ln_1.weight"]),
        ("tiny-neox", ["gpt_neox.layers.1.mlp.dense_4h_to_h.bias", "gpt_neox.layers.1.post_attention_layernorm.weight"]),
    ];
    for (fixture, names) in extra {
        let input = fixture_dir(fixture);
        let files = model_files(&input);
        let cfg = config(&files);
        let down = edit::models::modules::mlp_down(&cfg, 1).unwrap();
        let mut deltas = deltas_for(&cfg, &[&down.name], 0.05);
        let mut rng = Lcg(99);
        for n in names {
            let v: Vec<f32> = (0..cfg.d_model).map(|_| rng.next_f32() * 0.05).collect();
            deltas.insert(n.to_string(), Tensor::from_vec(v, cfg.d_model, &Device::Cpu).unwrap());
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("patched");
        let report = write_model_dir(&files, &cfg, &deltas, 1.0, &out, false).unwrap();
        assert_eq!(report.tensors_changed.len(), 3, "{fixture}: {:?}", report.tensors_changed);
        let out_files = model_files(&out);
        let ckpt = Checkpoint::open_files(files.weights.clone()).unwrap();
        // f16 storage (tiny-neox) rounds the sums.
        let tol = if fixture == "tiny-neox" { 2e-3 } else { 1e-6 };
        for n in names {
            let key = ckpt.resolve(n, cfg.family.prefix()).unwrap();
            let base = load_tensor(&files, key).to_dtype(DType::F32).unwrap();
            let got = load_tensor(&out_files, key).to_dtype(DType::F32).unwrap();
            let want = (base + &deltas[n]).unwrap();
            assert!(max_abs_diff(&got, &want) <= tol, "{fixture}: {n} = base + delta");
        }
        // A delta file keeps them under their names; reverting the written model restores them.
        let delta_file = tmp.path().join("delta.safetensors");
        save_delta(&delta_file, &cfg, &deltas, &meta_for(&files)).unwrap();
        let (back, _) = load_delta(&delta_file, &cfg).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), deltas.keys().collect::<Vec<_>>());
        for (k, d) in &deltas {
            assert_eq!(max_abs_diff(&back[k], d), 0.0, "{fixture}: {k} round trip");
        }
        let reverted = tmp.path().join("reverted");
        write_model_dir(&out_files, &cfg, &back, -1.0, &reverted, false).unwrap();
        for n in names {
            let key = ckpt.resolve(n, cfg.family.prefix()).unwrap();
            let base = load_tensor(&files, key).to_dtype(DType::F32).unwrap();
            let got = load_tensor(&model_files(&reverted), key).to_dtype(DType::F32).unwrap();
            assert!(max_abs_diff(&got, &base) <= 2.0 * tol + 1e-6, "{fixture}: {n} reverted");
        }
        // In memory.
        let mut lm = edit::load_model(model_files(&input), DType::F32, &Device::Cpu).unwrap();
        let before = lm.model.parameter(names[0]).unwrap();
        edit::editing::apply_deltas(&mut *lm.model, &deltas, 1.0).unwrap();
        let after = lm.model.parameter(names[0]).unwrap();
        assert!(max_abs_diff(&after, &(before + &deltas[names[0]]).unwrap()) <= 1e-6, "{fixture}: in memory");
        // A parameter the model does not have is refused, naming it.
        let mut bad = deltas.clone();
        bad.insert("transformer.h.1.nope.bias".into(), Tensor::zeros(cfg.d_model, DType::F32, &Device::Cpu).unwrap());
        let err = write_model_dir(&files, &cfg, &bad, 1.0, &tmp.path().join("bad"), false).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(!tmp.path().join("bad").exists());
    }
}
