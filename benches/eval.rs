//! Evaluation overhead: scoring the fact-gpt2 fixture's 500 CounterFact records as `edit eval
//! --method none` does (13 prompts × 2 targets each, batched), and an FT-L evaluation of 20
//! records, one edit each, split into edit time and scoring time, so that the cost of the
//! evaluation beside the edits it measures is visible.
//!
//! `cargo bench --bench eval`.

use std::path::Path;
use std::time::Instant;

use edit::editing::method::MethodSource;
use edit::editing::pipeline::{EditPlan, EditSetup};
use edit::editing::records::{read_dataset, Dataset};
use edit::editing::registry::Method;
use edit::eval::run::{evaluate, EvalPlan, Silent};
use edit::identity::ModelIdentity;
use edit::stats::ensure::Quiet;

fn plan(dataset: &Dataset) -> EvalPlan<'_> {
    EvalPlan {
        dataset,
        num_edits: vec![1],
        sequential: false,
        seed: 0,
        max_update_ratio: 10.0,
        scoring: edit::eval::probes::ScoreOptions { batch: 64, ..Default::default() },
        shard: None,
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fact-gpt2");
    let files = edit::hub::resolve_model(dir.to_str().unwrap(), &edit::hub::HubOptions::default()).unwrap();
    let identity = ModelIdentity::of(&files).unwrap();
    let mut lm = edit::load_model(files, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let tok = edit::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let mut dataset = read_dataset(&dir.join("cases.json"), None).unwrap();
    println!("| what | time |");
    println!("|---|---|");

    let t = Instant::now();
    let runs = evaluate(&mut *lm.model, &tok, None, &plan(&dataset), None, &mut Silent).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(runs[0].cases.len(), 500);
    println!("| score 500 CounterFact records (`--method none`; 13,000 prompt-target pairs) | {secs:.2} s ({:.1} ms per record) |", secs * 2.0);

    dataset.records.truncate(20);
    let ft = dir.join("hparams/FT_constr_eps5e-3.json");
    let setup = EditSetup {
        method: Method::Ft,
        model_id: "fact-gpt2",
        source: MethodSource { config: Some(&ft), ..Default::default() },
        seed: None,
        hub_progress: false,
    };
    let no_stats = || unreachable!("FT reads no statistics");
    let mut editor = EditPlan::prepare(setup, lm.config(), &identity, no_stats).unwrap().load(&lm, &mut Quiet).unwrap();
    let t = Instant::now();
    let runs = evaluate(&mut *lm.model, &tok, Some(&mut editor), &plan(&dataset), None, &mut Silent).unwrap();
    let total = t.elapsed().as_secs_f64();
    let edit: f64 = runs[0].cases.iter().map(|c| c.time).sum();
    println!(
        "| FT-L evaluation of 20 records, one edit each: total / edits / scoring (pre + post) | {total:.2} s / {edit:.2} s / {:.2} s ({:.0} ms per record) |",
        total - edit,
        (total - edit) / 20.0 * 1000.0
    );
}
