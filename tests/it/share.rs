//! `edit stats export` / `edit stats pull`: statistics shared through a Hub repository, read
//! offline from a repository laid out in a Hugging Face cache as hf-hub and huggingface-cli
//! leave it (`datasets--<owner>--<name>/refs/main`, `snapshots/<commit>/…`).

use crate::common::{edit_bin, fixture_dir, outcome};

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use edit::stats::cache;
use sha2::Digest;

const REPO: &str = "someone/fact-gpt2-stats";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn json(cmd: &mut Command) -> serde_json::Value {
    let (code, stdout, stderr) = outcome(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `edit stats` of fact-gpt2 (or `model`) over `samples` texts of its corpus.
fn stats(model: &Path, layers: &str, samples: usize, dir: &Path) -> serde_json::Value {
    json(
        edit_bin()
            .args(["stats", "--json", "--model"])
            .arg(model)
            .args(["--layers", layers, "--samples", &samples.to_string(), "--text"])
            .arg(fixture_dir("fact-gpt2").join("stats-corpus.txt"))
            .arg("--stats-dir")
            .arg(dir),
    )
}

/// A repository snapshot in the Hub cache `hf`, its files copied from `from` (a folder).
fn hub_repo(hf: &Path, from: &Path) -> PathBuf {
    let repo = hf.join(format!("datasets--{}", REPO.replace('/', "--")));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    copy_dir(from, &snap);
    snap
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn pull(hf: &Path, model: &Path, stats_dir: &Path) -> Command {
    let mut c = edit_bin();
    c.env("HF_HUB_CACHE", hf).args(["stats", "pull", REPO, "--offline", "--json", "--model"]).arg(model).arg("--stats-dir").arg(stats_dir);
    c
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A reference-layout `.npz` (`mom2.mom2`, `mom2.count`) holding `sum` and `count`.
fn write_npz(path: &Path, sum: &Tensor, count: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let count = Tensor::new(count, &Device::Cpu).unwrap();
    Tensor::write_npz(&[("mom2.mom2", sum), ("mom2.count", &count)], path).unwrap();
}

#[test]
fn statistics_go_out_and_come_back_through_a_hub_repository_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_dir("fact-gpt2");
    let made = tmp.path().join("made");
    let summary = stats(&model, "1-2", 3000, &made);
    let made_files: Vec<PathBuf> = summary["layers"].as_array().unwrap().iter().map(|l| PathBuf::from(l["file"].as_str().unwrap())).collect();

    // What a file records, checked against numbers taken here: the corpus digest is the SHA-256
    // over the corpus file's SHA-256, the weights' fingerprint the identity of the model files.
    let m = cache::load(&made_files[1]).unwrap();
    let corpus = std::fs::read(model.join("stats-corpus.txt")).unwrap();
    assert_eq!(m.meta.corpus_digest.as_deref(), Some(sha256_hex(sha256_hex(&corpus).as_bytes()).as_str()));
    let rows = m.meta.corpus_rows.unwrap();
    let sampling = m.meta.sampling.clone().unwrap();
    assert!(sampling.contains("seed-1 Python shuffle") && sampling.contains(&format!("{rows} rows")), "{sampling}");
    assert_eq!(m.meta.tool_version, env!("CARGO_PKG_VERSION"));
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let mut h = sha2::Sha256::new();
    h.update((weights.len() as u64).to_le_bytes());
    h.update(sha256_hex(&weights).as_bytes());
    let fingerprint: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(m.meta.identity.weights_fingerprint, fingerprint);

    // Export: the cache's files under their corpus, and a card that says what they are.
    let out = tmp.path().join("export");
    let report = json(edit_bin().args(["stats", "export", "--json"]).arg(&out).arg("--model").arg(&model).arg("--stats-dir").arg(&made));
    let exported = report["files"].as_array().unwrap();
    assert_eq!(exported.len(), 2);
    for (f, original) in exported.iter().zip(&made_files) {
        let path = out.join(f["path"].as_str().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(original).unwrap(), "{}", path.display());
    }
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    for needle in [fingerprint.as_str(), m.meta.corpus_digest.as_deref().unwrap(), "--layers 1-2", "--samples 3000", "edit stats pull", &sampling] {
        assert!(card.contains(needle), "the card should say {needle:?}:\n{card}");
    }

    // Pull into another cache: the same bytes, where `edit apply` looks.
    let hf = tmp.path().join("hf");
    hub_repo(&hf, &out);
    let fresh = tmp.path().join("fresh");
    let pulled = json(&mut pull(&hf, &model, &fresh));
    assert_eq!(pulled["commit"], COMMIT);
    assert_eq!(pulled["refused"].as_array().unwrap().len(), 0);
    let got = files_under(&fresh);
    assert_eq!(got.len(), 2, "{got:?}");
    for (p, original) in pulled["pulled"].as_array().unwrap().iter().zip(&made_files) {
        assert_eq!(p["status"], "filed");
        assert_eq!(std::fs::read(p["file"].as_str().unwrap()).unwrap(), std::fs::read(original).unwrap());
    }
    // `edit stats` with the same settings finds them: nothing is computed.
    let again = stats(&model, "1-2", 3000, &fresh);
    assert!(again["layers"].as_array().unwrap().iter().all(|l| l["cached"] == true), "{again}");
    // Pulled twice: already there.
    let twice = json(&mut pull(&hf, &model, &fresh));
    assert!(twice["pulled"].as_array().unwrap().iter().all(|p| p["status"] == "already_cached"), "{twice}");
    // The same files in a model repository (`models--<owner>--<name>` in the cache).
    let models = hf.join(format!("models--{}", REPO.replace('/', "--")));
    std::fs::rename(hf.join(format!("datasets--{}", REPO.replace('/', "--"))), &models).unwrap();
    let from_model = json(pull(&hf, &model, &tmp.path().join("from-model")).args(["--repo-type", "model"]));
    assert_eq!(from_model["pulled"].as_array().unwrap().len(), 2, "{from_model}");
    let (code, _, stderr) = outcome(&mut pull(&hf, &model, &tmp.path().join("from-model")));
    assert_ne!(code, Some(0), "a dataset repository of that name is not in the cache");
    assert!(stderr.contains("--repo-type dataset"), "{stderr}");

    // An edit with the pulled statistics and no statistics options uses them.
    let req = tmp.path().join("req.json");
    std::fs::write(&req, r#"[{"prompt": "{} speaks", "subject": "Alon Javberg", "target_new": {"str": "Finnish"}}]"#).unwrap();
    let (code, _, stderr) = outcome(
        edit_bin()
            .arg("apply")
            .arg(&req)
            .args(["--method", "rome", "--model"])
            .arg(&model)
            .arg("--config")
            .arg(model.join("hparams/ROME.json"))
            .args(["--set", "v_num_grad_steps=2", "--stats-dir"])
            .arg(&fresh)
            .arg("--delta-out")
            .arg(tmp.path().join("delta.safetensors")),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("computing them now"), "{stderr}");
    let after: Vec<PathBuf> = files_under(&fresh).into_iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    assert_eq!(after.len(), 2, "no statistics beside the pulled ones: {after:?}");
}

#[test]
fn files_for_other_weights_or_corrupt_are_refused_by_name_and_not_filed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_dir("fact-gpt2");
    let made = tmp.path().join("made");
    let summary = stats(&model, "1-2", 200, &made);
    let good = PathBuf::from(summary["layers"][1]["file"].as_str().unwrap());
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("ok")).unwrap();
    std::fs::copy(&good, repo.join("ok").join(good.file_name().unwrap())).unwrap();

    // Another model of another width.
    let tiny = tmp.path().join("tiny");
    let t = stats(&fixture_dir("tiny-gpt2"), "1", 50, &tiny);
    let tiny_file = PathBuf::from(t["layers"][0]["file"].as_str().unwrap());
    std::fs::create_dir_all(repo.join("bad")).unwrap();
    std::fs::copy(&tiny_file, repo.join("bad/tiny-transformer.h.1.mlp.c_proj_float32_50.safetensors")).unwrap();

    // fact-gpt2's shape, other weights: one byte of the last tensor changed.
    let other = tmp.path().join("other-weights");
    copy_dir(&model, &other);
    let w = other.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(&w, bytes).unwrap();
    let o = stats(&other, "1", 50, &tmp.path().join("other"));
    std::fs::copy(o["layers"][0]["file"].as_str().unwrap(), repo.join("bad/other-transformer.h.1.mlp.c_proj_float32_50.safetensors")).unwrap();

    // This model's file with a NaN written into its sum.
    let mut m = cache::load(&good).unwrap();
    let mut sum: Vec<f32> = m.sum.flatten_all().unwrap().to_vec1().unwrap();
    sum[7] = f32::NAN;
    m.sum = Tensor::from_vec(sum, m.sum.dims(), &Device::Cpu).unwrap();
    cache::save(&repo.join("bad/nan-transformer.h.2.mlp.c_proj_float32_200.safetensors"), &m.sum, m.count, &m.meta).unwrap();

    // Reference files: one good (filed, converted), one with an infinity, one for GPT-J's module.
    let c = cache::load(&good).unwrap();
    write_npz(&repo.join("stats/fact-gpt2/wikitext_stats/transformer.h.3.mlp.c_proj_float32_mom2_100000.npz"), &c.sum, c.count as i64);
    let mut inf: Vec<f32> = c.sum.flatten_all().unwrap().to_vec1().unwrap();
    inf[0] = f32::INFINITY;
    let inf = Tensor::from_vec(inf, c.sum.dims(), &Device::Cpu).unwrap();
    write_npz(&repo.join("bad/wikitext_stats/transformer.h.4.mlp.c_proj_float32_mom2_100000.npz"), &inf, 10);
    write_npz(&repo.join("bad/wikitext_stats/transformer.h.2.mlp.fc_out_float32_mom2_100000.npz"), &c.sum, 10);

    let hf = tmp.path().join("hf");
    hub_repo(&hf, &repo);
    let stats_dir = tmp.path().join("pulled");
    let (code, stdout, stderr) = outcome(&mut pull(&hf, &model, &stats_dir));
    assert_eq!(code, Some(4), "some files are refused: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let refused: Vec<(String, String)> =
        v["refused"].as_array().unwrap().iter().map(|r| (r["name"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string())).collect();
    let reason =
        |name: &str| refused.iter().find(|(n, _)| n.contains(name)).map(|(_, r)| r.clone()).unwrap_or_else(|| panic!("{name} not refused: {refused:?}"));
    assert!(reason("tiny-").contains("are 128x128 but") && reason("tiny-").contains("512-wide"), "{refused:?}");
    assert!(reason("other-").contains("weights"), "{refused:?}");
    assert!(reason("nan-").contains("non-finite"), "{refused:?}");
    assert!(reason("transformer.h.4.mlp.c_proj_float32_mom2").contains("non-finite"), "{refused:?}");
    assert!(reason("fc_out").contains("another model"), "{refused:?}");
    assert_eq!(refused.len(), 5, "{refused:?}");
    for (name, _) in &refused {
        assert!(stderr.contains(name.as_str()), "stderr should name {name}: {stderr}");
    }

    // The two good files are filed, nothing else.
    let filed = files_under(&stats_dir);
    assert_eq!(filed.len(), 2, "{filed:?}");
    let (from_npz, own): (Vec<&PathBuf>, Vec<&PathBuf>) = filed.iter().partition(|p| p.to_string_lossy().contains("/wikitext/"));
    assert!(std::fs::read(own[0]).unwrap() == std::fs::read(&good).unwrap(), "the good file is filed as it was");
    let npz = cache::load(from_npz[0]).unwrap();
    assert_eq!((npz.meta.layer, npz.meta.dataset.as_str(), npz.meta.samples, npz.count), (3, "wikitext", 100000, c.count));
    assert!(npz.meta.source.contains(COMMIT) && npz.meta.source.contains("wikitext_stats"), "{}", npz.meta.source);
    assert!(npz.sum.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap() == c.sum.flatten_all().unwrap().to_vec1::<f32>().unwrap());

    // One folder of the repository only: nothing refused.
    let only = tmp.path().join("only");
    let v = json(pull(&hf, &model, &only).args(["--include", "ok/"]));
    assert_eq!(v["pulled"].as_array().unwrap().len(), 1);

    // A repository not in the cache, offline: said, with the command that fetches it.
    let (code, _, stderr) = outcome(pull(&tmp.path().join("empty-hf"), &model, &only).args(["--revision", "v2"]));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("huggingface-cli download --repo-type dataset someone/fact-gpt2-stats --revision v2"), "{stderr}");
}

/// A minimal Hub for one dataset repository: the listing (`/api/datasets/<id>/revision/main`)
/// and range downloads (`/datasets/<id>/resolve/main/<file>`) as hf-hub requests them. Records
/// every request's path and `Authorization` header.
struct MockHub {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
}

/// A request's path and `Authorization` header.
type Request = (String, Option<String>);

fn mock_hub(root: PathBuf) -> MockHub {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut range, mut auth) = (None, None);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "authorization" => auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            log.lock().unwrap().push((path.clone(), auth));
            let api = format!("/api/datasets/{REPO}/revision/main");
            let resolve = format!("/datasets/{REPO}/resolve/main/");
            let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path == api {
                let names: Vec<serde_json::Value> =
                    files_under(&root).iter().map(|p| serde_json::json!({ "rfilename": p.strip_prefix(&root).unwrap().to_string_lossy() })).collect();
                ("200 OK", vec!["Content-Type: application/json".into()], serde_json::to_vec(&serde_json::json!({ "sha": COMMIT, "siblings": names })).unwrap())
            } else if let Some(bytes) = path.strip_prefix(&resolve).and_then(|f| std::fs::read(root.join(f)).ok()) {
                let from: usize =
                    range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split('-').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
                let to = match range.as_deref().and_then(|r| r.rsplit('-').next()).and_then(|s| s.parse::<usize>().ok()) {
                    Some(end) => end.min(bytes.len() - 1),
                    None => bytes.len() - 1,
                };
                let headers = vec![
                    format!("ETag: \"{}\"", sha256_hex(&bytes)),
                    format!("X-Repo-Commit: {COMMIT}"),
                    format!("Content-Range: bytes {from}-{to}/{}", bytes.len()),
                ];
                ("206 Partial Content", headers, bytes[from..=to].to_vec())
            } else {
                ("404 Not Found", vec![], b"not found".to_vec())
            };
            let mut out = stream;
            let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&body);
        }
    });
    MockHub { url, seen }
}

#[test]
fn pull_downloads_only_the_statistics_through_the_hub_api_with_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_dir("fact-gpt2");
    let made = tmp.path().join("made");
    let summary = stats(&model, "2", 200, &made);
    let original = PathBuf::from(summary["layers"][0]["file"].as_str().unwrap());
    let repo = tmp.path().join("repo");
    json(edit_bin().args(["stats", "export"]).arg(&repo).arg("--model").arg(&model).arg("--stats-dir").arg(&made).arg("--json"));
    // A repository may hold more than statistics: those files are never downloaded.
    std::fs::write(repo.join("model.safetensors"), vec![0u8; 4096]).unwrap();
    let hub = mock_hub(repo.clone());

    let hf = tmp.path().join("hf");
    let stats_dir = tmp.path().join("pulled");
    let v = json(
        edit_bin()
            .env("HF_HUB_CACHE", &hf)
            .env("HF_ENDPOINT", &hub.url)
            .env("HF_TOKEN", "hf_secret")
            .args(["stats", "pull", REPO, "--json", "-q", "--model"])
            .arg(&model)
            .arg("--stats-dir")
            .arg(&stats_dir),
    );
    assert_eq!(v["commit"], COMMIT);
    let pulled = v["pulled"].as_array().unwrap();
    assert_eq!(pulled.len(), 1, "{v}");
    assert!(std::fs::read(pulled[0]["file"].as_str().unwrap()).unwrap() == std::fs::read(&original).unwrap(), "the pulled file is the one made");
    let seen = hub.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(_, auth)| auth.as_deref() == Some("Bearer hf_secret")), "the token goes with every request: {seen:?}");
    assert!(!seen.iter().any(|(p, _)| p.ends_with("model.safetensors") || p.ends_with("README.md")), "only statistics are downloaded: {seen:?}");
    assert!(seen.iter().any(|(p, _)| p.ends_with("_float32_200.safetensors")), "{seen:?}");

    // The download landed in the standard cache: the same pull now works offline.
    let again = json(
        edit_bin()
            .env("HF_HUB_CACHE", &hf)
            .args(["stats", "pull", REPO, "--offline", "--json", "--model"])
            .arg(&model)
            .arg("--stats-dir")
            .arg(tmp.path().join("offline")),
    );
    assert_eq!(again["pulled"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again["commit"], COMMIT);
}
