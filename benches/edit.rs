//! Edit latency: ROME per edit, MEMIT for 1/10/100 edits, batched vs serial z optimisation (on
//! the fact-gpt2 fixture, a small trained GPT-2), and MEMIT's solve with a cached factor of C
//! (push-through identity) vs a new d×d solve per batch (at GPT-2 XL's key width, 6400).
//!
//! `cargo bench --bench edit` (EDIT_BENCH_SOLVE_DIM overrides 6400; EDIT_BENCH_SKIP_SOLVE=1 skips it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use edit::editing::hparams::{self, MethodConfig};
use edit::editing::memit::MemitHparams;
use edit::editing::memit::{apply_memit, compute_zs};
use edit::editing::requests::{read_requests, Request};
use edit::editing::rome::apply_rome;
use edit::editing::rome::RomeHparams;
use edit::editing::templates;
use edit::linalg::{memit_solve_direct, memit_solve_push_through, to_mat, LayerStats, SpdFactor};
use edit::stats::collect::{collect_in_memory, CollectPlan};
use edit::stats::Precision;
use edit::LoadedModel;
use faer::Mat;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fact-gpt2")
}

fn stats(lm: &LoadedModel, layers: &[usize]) -> BTreeMap<usize, Mat<f64>> {
    let texts = edit::data::read_texts(&dir().join("stats-corpus.txt")).unwrap();
    let cfg = lm.config();
    let plan = CollectPlan { layers: layers.to_vec(), precision: Precision::F32, batch_tokens: 32 * cfg.n_ctx, max_len: 128 };
    let acc = collect_in_memory(&*lm.model, lm.tokenizer().unwrap(), &texts, &plan).unwrap();
    acc.second_moments().unwrap().iter().map(|(&l, c)| (l, to_mat(c).unwrap())).collect()
}

fn layer_stats(c: &BTreeMap<usize, Mat<f64>>, layers: &[usize]) -> BTreeMap<usize, LayerStats> {
    layers.iter().map(|l| (*l, LayerStats::from_matrix(c[l].clone(), "C"))).collect()
}

fn hp<H: MethodConfig>(lm: &LoadedModel, file: &str) -> H {
    hparams::resolve::<H>(lm.config(), "fact-gpt2", Some(&dir().join("hparams").join(file)), &[]).unwrap().hparams
}

fn main() {
    let files = edit::hub::resolve_model(dir().to_str().unwrap(), &edit::hub::HubOptions::default()).unwrap();
    let mut lm = edit::load_model(files, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let tok = edit::tokenizer::Tokenizer::from_file(&dir().join("tokenizer.json")).unwrap();
    let cases: Vec<Request> = read_requests(&dir().join("cases.json")).unwrap();
    let c = stats(&lm, &[0, 1, 2]);
    println!("| what | time |");
    println!("|---|---|");

    // ROME: mean over 5 single edits (templates sampled once, as the reference caches them).
    let rome: RomeHparams = hp(&lm, "ROME.json");
    let eos = tok.token_id("<|endoftext|>").unwrap_or(0);
    let t = Instant::now();
    let rt = templates::rome_templates(&*lm.model, &tok, &[(5, 10), (10, 10)], &[eos], 0).unwrap();
    println!("| ROME: sample 21 context templates (once per run) | {:.2} s |", t.elapsed().as_secs_f64());
    let mut st = layer_stats(&c, &rome.layers);
    let t = Instant::now();
    for case in &cases[..5] {
        apply_rome(&mut *lm.model, &tok, std::slice::from_ref(case), &rome, &mut st, &rt).unwrap();
    }
    println!("| ROME: one edit (mean of 5; reference code on this model: 2.22 s) | {:.2} s |", t.elapsed().as_secs_f64() / 5.0);

    // MEMIT: 1 / 10 / 100 edits with the default settings (z one request at a time on the CPU), push-through solve.
    let memit: MemitHparams = hp(&lm, "MEMIT_tuned.json");
    let mt = templates::memit_templates(&*lm.model, &tok, 0).unwrap();
    for n in [1, 10, 100] {
        let mut st = layer_stats(&c, &memit.layers);
        let t = Instant::now();
        let out = apply_memit(&mut *lm.model, &tok, &cases[..n], &memit, &mut st, &mt).unwrap();
        let ref_note = if n == 100 { " (reference code: 5.4 s)" } else { "" };
        println!("| MEMIT: {n} edits{ref_note} | {:.2} s (z vectors {:.2} s) |", t.elapsed().as_secs_f64(), out.z_seconds);
    }

    // z vectors of 10 requests: together vs one after another (the reference).
    for batch in [1, 10] {
        let t = Instant::now();
        compute_zs(&*lm.model, &tok, &cases[..10], &memit, &mt, batch).unwrap();
        let label = if batch == 1 { "serial (reference)" } else { "batched" };
        println!("| z vectors of 10 requests, {label} | {:.2} s |", t.elapsed().as_secs_f64());
    }

    if std::env::var("EDIT_BENCH_SKIP_SOLVE").is_ok() {
        return;
    }
    // Solves at GPT-2 XL's key width on a random SPD matrix.
    let d: usize = std::env::var("EDIT_BENCH_SOLVE_DIM").ok().and_then(|s| s.parse().ok()).unwrap_or(6400);
    let b = Mat::from_fn(d, d / 4, |i, j| (((i * 31 + j * 17) % 97) as f64 - 48.0) / 97.0);
    let cmat = &b * b.transpose() * faer::Scale(1.0 / (d as f64)) + Mat::<f64>::identity(d, d) * faer::Scale(1e-2);
    let t = Instant::now();
    let f = SpdFactor::new(&cmat, "C").unwrap();
    println!("| Cholesky of C, d = {d} (once per layer, then cached) | {:.2} s |", t.elapsed().as_secs_f64());
    for n in [1, 10, 100] {
        let k = Mat::from_fn(d, n, |i, j| (((i * 7 + j * 13) % 23) as f64 - 11.0) / 23.0);
        let t = Instant::now();
        let x1 = memit_solve_direct(&cmat, 15000.0, &k);
        let direct = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let x2 = memit_solve_push_through(&f, 15000.0, &k).unwrap();
        let pt = t.elapsed().as_secs_f64();
        let rel = (&x1 - &x2).norm_l2() / x1.norm_l2();
        println!("| solve for {n} edits, d = {d}: direct {direct:.2} s vs push-through {pt:.3} s ({:.0}x; rel. diff {rel:.1e}) | |", direct / pt);
    }
}
