//! ROME and MEMIT through the library on the tiny fixtures: edits take, unrelated prompts stay,
//! batched z = serial z, push-through solve = direct solve; every method through `run_edit`.

use crate::common;

use std::collections::BTreeMap;

use candle_core::{DType, IndexOp, Tensor};
use common::{fixture, fixture_dir};
use edit::editing::hparams::{self, GradCheckpoint, MethodConfig};
use edit::editing::memit::{apply_memit, compute_zs};
use edit::editing::memit::{MemitHparams, Solver};
use edit::editing::registry::Method;
use edit::editing::requests::{parse_requests, Request};
use edit::editing::rome::apply_rome;
use edit::editing::rome::RomeHparams;
use edit::editing::templates::{self, ContextTemplates};
use edit::editing::{apply_deltas, Deltas};
use edit::eval::score_pairs;
use edit::linalg::LayerStats;
use edit::models::{Batch, Logits, TraceSpec};
use edit::stats::collect::{collect_in_memory, CollectPlan};
use edit::stats::Precision;
use edit::LoadedModel;

/// Second moments of `layers` over `texts`, as `edit stats` computes them.
pub fn stats_over(lm: &LoadedModel, layers: &[usize], texts: &[String], max_len: usize) -> BTreeMap<usize, LayerStats> {
    let cfg = lm.config();
    let plan = CollectPlan { layers: layers.to_vec(), precision: Precision::F32, batch_tokens: 32 * cfg.n_ctx, max_len };
    let acc = collect_in_memory(&*lm.model, lm.tokenizer().unwrap(), texts, &plan).unwrap();
    let moments = acc.second_moments().unwrap();
    moments.iter().map(|(&l, c)| (l, LayerStats::from_matrix(edit::linalg::to_mat(c).unwrap(), "C"))).collect()
}

fn wikitext(n: usize) -> Vec<String> {
    edit::data::EMBEDDED_WIKITEXT.lines().filter(|l| !l.trim().is_empty()).take(n).map(str::to_string).collect()
}

fn hp_for<H: MethodConfig>(lm: &LoadedModel, sets: &[&str]) -> H {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    hparams::resolve::<H>(lm.config(), "tiny", None, &sets).unwrap().hparams
}

/// Log-probabilities of the next token after each prompt.
fn next_token_logprobs(lm: &LoadedModel, prompts: &[String]) -> Vec<Vec<f32>> {
    let tok = lm.tokenizer().unwrap();
    let seqs: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    let batch = Batch::from_sequences(&seqs, lm.pad_id(), lm.model.device()).unwrap();
    let logits = lm.model.forward(&batch, &TraceSpec::logits(Logits::Last), &[]).unwrap().logits.unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32).unwrap(), 1).unwrap();
    lp.to_vec2().unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

fn kl(p_log: &[f32], q_log: &[f32]) -> f64 {
    p_log.iter().zip(q_log).map(|(&p, &q)| f64::from(p).exp() * f64::from(p - q)).sum()
}

fn first_target_token(lm: &LoadedModel, r: &Request) -> usize {
    lm.tokenizer().unwrap().encode(&r.target_new_spaced()).unwrap()[0] as usize
}

/// Requests about made-up subjects (for the random-weight fixtures, which know nothing) with single-token-start targets.
fn requests(n: usize) -> Vec<Request> {
    let subjects =
        ["Alice Smith", "Bob Jones", "Carol White", "David Brown", "Eve Black", "Frank Green", "Grace Hall", "Henry King", "Irene Lake", "Jack Moore"];
    let targets = ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin", "Oslo", "Athens"];
    let items: Vec<serde_json::Value> =
        (0..n).map(|i| serde_json::json!({"prompt": "{} was born in the city of", "subject": subjects[i], "target_new": {"str": targets[i]}})).collect();
    parse_requests(&serde_json::Value::Array(items).to_string(), "test").unwrap()
}

fn fixed_templates() -> ContextTemplates {
    let rest = vec!["The story begins. {}".to_string(), "I think that. {}".to_string(), "Yesterday it rained. {}".to_string()];
    ContextTemplates { groups: vec![vec!["{}".into()], rest] }
}

fn fact_model() -> (LoadedModel, edit::tokenizer::Tokenizer) {
    let lm = fixture("fact-gpt2");
    let tok = edit::tokenizer::Tokenizer::from_file(&fixture_dir("fact-gpt2").join("tokenizer.json")).unwrap();
    (lm, tok)
}

fn fact_cases(n: usize) -> Vec<Request> {
    let mut all = edit::editing::requests::read_requests(&fixture_dir("fact-gpt2").join("cases.json")).unwrap();
    all.truncate(n);
    all
}

fn fact_hparams<H: MethodConfig>(lm: &LoadedModel, file: &str) -> H {
    let path = fixture_dir("fact-gpt2").join("hparams").join(file);
    hparams::resolve::<H>(lm.config(), "fact-gpt2", Some(&path), &[]).unwrap().hparams
}

/// The first `n` texts of the fixture's statistics corpus (WikiText-2 paragraphs).
fn fact_corpus(n: usize) -> Vec<String> {
    let mut t = edit::data::read_texts(&fixture_dir("fact-gpt2").join("stats-corpus.txt")).unwrap();
    t.truncate(n);
    t
}

/// Prompts about other things: WikiText openings and facts of subjects no request touches.
fn unrelated() -> Vec<String> {
    vec![
        "Robert Boulter is an English film".into(),
        "The game began development in".into(),
        "In the second half of the season".into(),
        "The album was released on".into(),
    ]
}

#[test]
fn rome_makes_the_new_target_the_argmax_and_spares_unrelated_prompts() {
    let (mut lm, tok) = fact_model();
    let hp: RomeHparams = fact_hparams(&lm, "ROME.json");
    let mut stats = stats_over(&lm, &hp.layers, &fact_corpus(3000), 128);
    let eos = tok.token_id("<|endoftext|>").or(lm.config().eos_token_id).unwrap_or(0);
    let templates = templates::rome_templates(&*lm.model, &tok, &[(5, 10), (10, 10)], &[eos], 0).unwrap();
    assert_eq!(templates.len(), 21);
    let reqs = fact_cases(3);
    let before = next_token_logprobs(&lm, &unrelated());
    // Three requests, applied one after another as the reference does.
    let out = apply_rome(&mut *lm.model, &tok, &reqs, &hp, &mut stats, &templates).unwrap();
    assert_eq!(next_token_logprobs(&lm, &unrelated()), before, "apply_rome must leave the model as it found it");
    assert_eq!(out.reports.len(), 3);
    apply_deltas(&mut *lm.model, &out.deltas, 1.0).unwrap();
    let prompts: Vec<String> = reqs.iter().map(Request::filled_prompt).collect();
    for (r, lp) in reqs.iter().zip(next_token_logprobs(&lm, &prompts)) {
        assert_eq!(argmax(&lp), first_target_token(&lm, r), "{}: edit did not take", r.subject);
    }
    for (b, a) in before.iter().zip(&next_token_logprobs(&lm, &unrelated())) {
        let d = kl(a, b);
        assert!(d < 0.05, "unrelated prompt moved by KL {d}");
    }
}

#[test]
fn memit_edits_a_batch_of_ten() {
    let (mut lm, tok) = fact_model();
    let hp: MemitHparams = fact_hparams(&lm, "MEMIT_tuned.json");
    let mut stats = stats_over(&lm, &hp.layers, &fact_corpus(3000), 128);
    let templates = templates::memit_templates(&*lm.model, &tok, 0).unwrap();
    let reqs = fact_cases(10);
    let before = next_token_logprobs(&lm, &unrelated());
    let out = apply_memit(&mut *lm.model, &tok, &reqs, &hp, &mut stats, &templates).unwrap();
    assert_eq!(out.deltas.len(), hp.layers.len());
    assert_eq!(next_token_logprobs(&lm, &unrelated()), before, "apply_memit must leave the model as it found it");
    apply_deltas(&mut *lm.model, &out.deltas, 1.0).unwrap();
    let prompts: Vec<String> = reqs.iter().map(Request::filled_prompt).collect();
    // Every edit succeeds as CounterFact scores it (the new object is now more likely than the
    // true one); the reference itself reaches 79 % of that on batches of 100, so the stricter
    // "new object is the top-1 token" must hold for at least 8 of the 10.
    let lps = next_token_logprobs(&lm, &prompts);
    let mut top1 = 0;
    for (r, lp) in reqs.iter().zip(&lps) {
        let p = score_pairs(&*lm.model, &tok, &[r.filled_prompt()], &r.target_new, r.target_true.as_deref().unwrap()).unwrap();
        assert!(p[0].new < p[0].true_, "{}: new object {:?} not more likely than the true one", r.subject, r.target_new);
        top1 += usize::from(argmax(lp) == first_target_token(&lm, r));
    }
    assert!(top1 >= 8, "only {top1} of 10 edits made the new object the top-1 token");
    for (b, a) in before.iter().zip(&next_token_logprobs(&lm, &unrelated())) {
        let d = kl(a, b);
        assert!(d < 0.05, "unrelated prompt moved by KL {d}");
    }
}

#[test]
fn batched_z_equals_serial_z() {
    let lm = fixture("tiny-gptj");
    let hp: MemitHparams = hp_for(&lm, &["v_num_grad_steps=12"]);
    let reqs = requests(5);
    let tok = edit::tokenizer::Tokenizer::from_file(&fixture_dir("tiny-gptj").join("tokenizer.json")).unwrap();
    let templates = fixed_templates();
    let serial = compute_zs(&*lm.model, &tok, &reqs, &hp, &templates, 1).unwrap();
    let batched = compute_zs(&*lm.model, &tok, &reqs, &hp, &templates, 5).unwrap();
    for (s, b) in serial.iter().zip(&batched) {
        assert_eq!(s.steps, b.steps);
        let scale = s.target.iter().map(|x| x.abs()).fold(0f32, f32::max);
        let diff = s.target.iter().zip(&b.target).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-4 * scale.max(1.0), "batched z differs by {diff}");
        assert!((s.losses.last().unwrap().total - b.losses.last().unwrap().total).abs() < 1e-4);
    }
}

/// Backpropagating one block at a time takes the same steps to the same targets as through the
/// whole suffix: MEMIT's z (block output, three requests in one batch) and ROME's v* (MLP
/// output) on fact-gpt2, whose edited layers have three blocks above them.
#[test]
fn per_block_backpropagation_gives_the_same_targets() {
    let (lm, tok) = fact_model();
    let cases = fact_cases(3);
    let templates = fixed_templates();
    let zs = |mode: GradCheckpoint| {
        let mut hp: MemitHparams = fact_hparams(&lm, "MEMIT_tuned.json");
        hp.grad_checkpoint = mode;
        compute_zs(&*lm.model, &tok, &cases, &hp, &templates, 3).unwrap()
    };
    let rome = |mode: GradCheckpoint| {
        let mut hp: RomeHparams = fact_hparams(&lm, "ROME.json");
        (hp.grad_checkpoint, hp.mom2_adjustment) = (mode, false);
        let mut lm = fixture("fact-gpt2");
        apply_rome(&mut *lm.model, &tok, &cases[..1], &hp, &mut BTreeMap::new(), &templates).unwrap()
    };
    for (whole, blocks) in zs(GradCheckpoint::Off).iter().zip(&zs(GradCheckpoint::Blocks)) {
        assert_eq!(whole.steps, blocks.steps);
        assert!(whole.steps > 1, "the test must take several steps");
        let scale = whole.target.iter().map(|x| x.abs()).fold(0f32, f32::max);
        let diff = whole.target.iter().zip(&blocks.target).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-4 * scale.max(1.0), "per-block z differs by {diff}");
    }
    let (whole, blocks) = (rome(GradCheckpoint::Off), rome(GradCheckpoint::Blocks));
    assert_eq!(whole.reports[0].steps, blocks.reports[0].steps);
    for (name, d) in &whole.deltas {
        let r = rel(&blocks.deltas[name], d);
        assert!(r <= 1e-4, "{name}: per-block ROME update differs by {r} (relative)");
    }
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    let n = b.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    d / n
}

#[test]
fn push_through_solve_equals_direct_solve() {
    let mut lm = fixture("tiny-neox");
    let reqs = requests(6);
    let tok = edit::tokenizer::Tokenizer::from_file(&fixture_dir("tiny-neox").join("tokenizer.json")).unwrap();
    let templates = fixed_templates();
    let mut results: Vec<Deltas> = Vec::new();
    for solver in ["push_through", "direct", "auto"] {
        let hp: MemitHparams = hp_for(&lm, &["layers=[0,1]", "mom2_update_weight=2", "v_num_grad_steps=5", &format!("solver=\"{solver}\"")]);
        let want = match solver {
            "direct" => Solver::Direct,
            "auto" => Solver::Auto,
            _ => Solver::PushThrough,
        };
        assert_eq!(hp.solver, want);
        let mut stats = stats_over(&lm, &hp.layers, &wikitext(300), lm.config().n_ctx);
        let out = apply_memit(&mut *lm.model, &tok, &reqs, &hp, &mut stats, &templates).unwrap();
        // 6 edits, wider keys: automatic is push-through.
        let used = if solver == "direct" { "direct (d_ff×d_ff, LU)" } else { "push-through (n×n)" };
        assert!(out.layers.iter().all(|l| l.solver == used), "{solver}");
        results.push(out.deltas);
    }
    for (name, d) in &results[0] {
        let r = rel(d, &results[1][name]);
        assert!(r < 1e-6, "{name}: push-through vs direct rel diff {r}");
        assert_eq!(rel(d, &results[2][name]), 0.0, "{name}: auto is push-through here");
    }
    let _ = results[0].values().next().unwrap().i(0).unwrap();
}

#[test]
fn run_edit_drives_every_method_and_refuses_oversized_updates_as_numerical() {
    use edit::editing::method::{run_edit, MethodSource};
    use edit::editing::registry::prepare;
    let (mut lm, tok) = fact_model();
    let reqs = fact_cases(2);
    let cases = [
        (Method::Rome, "ROME.json", "v_num_grad_steps=3"),
        (Method::Memit, "MEMIT_tuned.json", "v_num_grad_steps=3"),
        (Method::Ft, "FT_constr_eps5e-3.json", "num_steps=3"),
    ];
    for (method, file, steps) in cases {
        let path = fixture_dir("fact-gpt2").join("hparams").join(file);
        let p = prepare(method, lm.config(), "fact-gpt2", MethodSource { config: Some(&path), sets: &[steps.to_string()], ..Default::default() }).unwrap();
        let m = &*p.method;
        assert_eq!(m.method(), method);
        assert!(p.source.ends_with("with --set v_num_grad_steps") || p.source.ends_with("with --set num_steps"), "{}", p.source);
        let need = m.stats_need();
        // Both reference configs adjust by C; fine-tuning reads no statistics.
        assert_eq!(need.is_some(), method != Method::Ft, "{method}");
        let mut stats = match &need {
            Some(n) => stats_over(&lm, &n.layers, &fact_corpus(500), 128),
            None => BTreeMap::new(),
        };
        let err = run_edit(m, &mut *lm.model, &tok, &reqs, &mut stats, 0, None, 1e-9).err().expect("a tiny ratio refuses");
        assert!(matches!(err, edit::Error::Numerical(_)), "{method}: {err}");
        assert_eq!(err.kind(), edit::error::ErrorKind::Numerical);
        assert!(err.to_string().contains("--max-update-ratio"), "{err}");
        let run = run_edit(m, &mut *lm.model, &tok, &reqs, &mut stats, 0, None, 10.0).unwrap();
        assert_eq!(run.outcome.requests.len(), 2);
        assert_eq!(run.checks.len(), 2);
        assert!(run.outcome.requests.iter().all(|r| r.report.is_object() && !r.line.is_empty()));
        assert_eq!(run.outcome.modules.len(), run.outcome.deltas.len(), "{method}");
        assert_eq!(run.templates.is_some(), method != Method::Ft, "{method}");
        if method == Method::Ft {
            // The weight and bias of the tuned module: the weight by module name as [out, in].
            let keys: Vec<&String> = run.outcome.deltas.keys().collect();
            assert_eq!(keys, ["transformer.h.0.mlp.c_proj", "transformer.h.0.mlp.c_proj.bias"]);
            let cfg = lm.config();
            assert_eq!(run.outcome.deltas["transformer.h.0.mlp.c_proj"].dims(), [cfg.d_model, cfg.d_ff]);
        }
    }
}
