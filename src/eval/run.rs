//! The evaluation protocol (the reference's `experiments/evaluate.py`, with the ROME
//! evaluator's `pre` scores): the records in chunks of `num_edits`, each chunk one edit; every
//! record of the chunk scored on the edited model; the weights restored — or, sequentially,
//! kept, so edits accumulate chunk after chunk, and at the end every edit re-scored (`final`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::probes::{score_records, CaseScores, ScoreOptions};
use super::rundir::{RunDir, FINAL_FILE};
use super::summary::{summary_of, CaseResult};
use crate::editing::pipeline::Editor;
use crate::editing::records::{Dataset, EvalRecord};
use crate::editing::requests::Request;
use crate::editing::{Deltas, Snapshot};
use crate::error::{Error, ErrorKind, Result};
use crate::models::CausalLm;
use crate::patch::{load_delta, write_delta_file, DeltaMeta};
use crate::tokenizer::Tokenizer;

/// How to run an evaluation.
pub struct EvalPlan<'a> {
    pub dataset: &'a Dataset,
    /// Edits per chunk, one pass per value (a scaling curve).
    pub num_edits: Vec<usize>,
    pub sequential: bool,
    pub seed: u64,
    pub max_update_ratio: f64,
    /// How records are scored (`zsre` is set from the dataset).
    pub scoring: ScoreOptions,
    /// `(i, n)`: evaluate only the chunks k with k mod n = i (not with `sequential`).
    pub shard: Option<(usize, usize)>,
}

impl EvalPlan<'_> {
    /// How its records are scored: the plan's options, by the dataset's layout.
    pub(super) fn score_options(&self) -> ScoreOptions {
        ScoreOptions { zsre: self.dataset.format.is_zsre(), ..self.scoring.clone() }
    }

    fn in_shard(&self, chunk: usize) -> bool {
        self.shard.is_none_or(|(i, n)| chunk % n == i)
    }

    /// Whether `record` belongs to a chunk of this shard for `num_edits` edits per chunk.
    fn record_in_shard(&self, position: usize, num_edits: usize) -> bool {
        self.in_shard(position / num_edits)
    }
}

/// What an evaluation reports as it goes.
pub trait EvalProgress {
    fn start(&mut self, _label: &str, _total: usize, _done: usize) {}
    fn advance(&mut self, _n: usize) {}
    fn finish(&mut self) {}
}

/// No progress shown.
pub struct Silent;
impl EvalProgress for Silent {}

/// One `num_edits` value's results.
pub struct NumEditsRun {
    pub num_edits: usize,
    /// Every record's result, in dataset order.
    pub cases: Vec<CaseResult>,
    /// Sequential runs: every record re-scored after the last chunk.
    pub finals: Vec<(u64, CaseScores)>,
    /// The reference summary of these cases (plus `num_edits`, `num_failed`).
    pub summary: Map<String, Value>,
    /// A streamed run: each chunk's summary right after its edit (its cases are not kept).
    pub chunk_summaries: Vec<Map<String, Value>>,
}

/// Records scored together (in forwards of `batch` texts).
const SCORE_GROUP: usize = 64;

/// Scores `records` on the model as it is, a group at a time, reporting progress.
pub(super) fn score_all(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    records: &[&EvalRecord],
    opts: &ScoreOptions,
    progress: &mut dyn EvalProgress,
) -> Result<Vec<CaseScores>> {
    let mut out = Vec::with_capacity(records.len());
    for group in records.chunks(SCORE_GROUP) {
        out.extend(score_records(model, tok, group, opts)?);
        progress.advance(group.len());
    }
    Ok(out)
}

/// Runs the protocol. `editor` is `None` for `--method none` (the model scored as it is: `post`
/// is then the same as `pre`). With `dir`, every record is written as soon as it is scored and
/// records already there are skipped (a resumed run).
pub fn evaluate(
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    mut editor: Option<&mut Editor>,
    plan: &EvalPlan,
    mut dir: Option<&mut RunDir>,
    progress: &mut dyn EvalProgress,
) -> Result<Vec<NumEditsRun>> {
    let records = &plan.dataset.records;
    let is_done = |dir: &Option<&mut RunDir>, n: usize, id: u64| dir.as_ref().is_some_and(|d| d.is_done(n, id));
    if plan.sequential && plan.shard.is_some() {
        return Err(Error::Input("a sequential run cannot be sharded: each chunk's edit builds on the ones before".into()));
    }
    let pre = pre_edit_scores(&*model, tok, plan, dir.as_deref(), progress)?;

    // The context templates of every chunk, sampled once on the unedited model (the reference
    // caches them per process).
    if let Some(ed) = editor.as_deref_mut() {
        ed.sample_templates(&*model, tok)?;
    }
    let mut runs = Vec::new();
    for &n in &plan.num_edits {
        if n == 0 {
            return Err(Error::Input("--num-edits must be at least 1".into()));
        }
        let mut snapshot = Snapshot::new();
        let mut fresh: HashMap<u64, CaseResult> = HashMap::new();
        let mine = records.iter().enumerate().filter(|(p, _)| plan.record_in_shard(*p, n)).count();
        let already = records.iter().enumerate().filter(|(p, r)| plan.record_in_shard(*p, n) && is_done(&dir, n, r.case_id)).count();
        progress.start(&format!("{n} edit(s) per chunk"), mine, already);
        for (k, chunk) in records.chunks(n).enumerate() {
            if !plan.in_shard(k) {
                continue;
            }
            let todo: Vec<&EvalRecord> = chunk.iter().filter(|r| !is_done(&dir, n, r.case_id)).collect();
            let delta_path = dir.as_ref().map(|d| d.delta_path(n, k));
            let kept = plan.sequential && delta_path.as_ref().is_some_and(|p| p.exists());
            if todo.is_empty() && !plan.sequential {
                continue;
            }
            // The chunk's edit: none, the kept delta of a sequential run being resumed, or computed now.
            let (deltas, time, error): (Deltas, f64, Option<String>) = match editor.as_deref_mut() {
                None => (Deltas::new(), 0.0, None),
                Some(ed) if kept && ed.remembers_edits() => {
                    return Err(Error::Input(format!(
                        "cannot resume this sequential {} run at chunk {k}: the method's memory of earlier edits is kept in memory only; pass --force to start over",
                        ed.method()
                    )));
                }
                Some(_) if kept => {
                    let path = delta_path.as_ref().expect("kept implies a path");
                    let (d, _) = load_delta(path, model.config())?;
                    let time = std::fs::read_to_string(path.with_extension("json"))
                        .ok()
                        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                        .and_then(|v| v["time"].as_f64())
                        .unwrap_or(0.0);
                    (d, time, None)
                }
                Some(_) if todo.is_empty() => {
                    // Resuming a sequential run past a chunk whose edit failed: nothing to apply.
                    let failed = dir.as_ref().is_some_and(|d| chunk.iter().any(|r| d.done_case(n, r.case_id).is_some_and(|c| c.error.is_some())));
                    if !failed {
                        return Err(Error::Input(format!(
                            "cannot resume this sequential run: the edit of chunk {k} ({n} edits per chunk) is missing from {}; pass --force to start over",
                            dir.as_ref().map(|d| d.dir.display().to_string()).unwrap_or_default()
                        )));
                    }
                    continue;
                }
                Some(ed) => {
                    let how = ChunkEdit { k, sequential: plan.sequential, delta_path: delta_path.as_deref(), max_update_ratio: plan.max_update_ratio };
                    edit_chunk(ed, model, tok, chunk, how)?
                }
            };
            snapshot.apply(model, &deltas)?;
            let post: Vec<Option<CaseScores>> = if error.is_some() {
                vec![None; todo.len()]
            } else if editor.is_none() {
                todo.iter().map(|r| pre.get(&r.case_id).cloned()).collect()
            } else {
                // The whole chunk, as in an uninterrupted run (see the pre-edit scores).
                let all: Vec<&EvalRecord> = chunk.iter().collect();
                let scores = score_all(&*model, tok, &all, &plan.score_options(), &mut Silent)?;
                let wanted: HashSet<u64> = todo.iter().map(|t| t.case_id).collect();
                all.iter().zip(scores).filter(|(r, _)| wanted.contains(&r.case_id)).map(|(_, s)| Some(s)).collect()
            };
            let grouped: Vec<u64> = chunk.iter().map(|r| r.case_id).collect();
            for (r, post) in todo.iter().zip(post) {
                let c = CaseResult::new(r, n, &grouped, time, pre.get(&r.case_id).cloned(), post, &error);
                if let Some(d) = dir.as_deref_mut() {
                    d.append(&c)?;
                }
                fresh.insert(r.case_id, c);
            }
            progress.advance(todo.len());
            if !plan.sequential {
                snapshot.restore(model)?;
            }
        }
        progress.finish();
        let cases: Vec<CaseResult> = records
            .iter()
            .enumerate()
            .filter(|(p, _)| plan.record_in_shard(*p, n))
            .map(|(_, r)| r)
            .filter_map(|r| fresh.remove(&r.case_id).or_else(|| dir.as_ref().and_then(|d| d.done_case(n, r.case_id).cloned())))
            .collect();
        // Retention: every edit of a sequential run scored again on the final model.
        let finals = match plan.sequential && editor.is_some() {
            true => final_scores(&*model, tok, plan, n, &cases, dir.as_deref(), progress)?,
            false => Vec::new(),
        };
        snapshot.restore(model)?;
        let summary = summary_of(n, &cases, &finals);
        runs.push(NumEditsRun { num_edits: n, cases, finals, summary, chunk_summaries: Vec::new() });
    }
    Ok(runs)
}

/// Pre-edit scores, once per record still to score (in some `num_edits` pass of this shard, and
/// not in `dir` yet), on the unedited model. Records are always scored in the same groups (a
/// resumed run scores a whole group again), so that a score never depends on which other
/// records shared its forward: a resumed run writes the same numbers as an uninterrupted one.
fn pre_edit_scores(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    plan: &EvalPlan,
    dir: Option<&RunDir>,
    progress: &mut dyn EvalProgress,
) -> Result<HashMap<u64, CaseScores>> {
    let is_done = |n: usize, id: u64| dir.is_some_and(|d| d.is_done(n, id));
    let pending = |(p, r): (usize, &EvalRecord)| plan.num_edits.iter().any(|&n| n > 0 && plan.record_in_shard(p, n) && !is_done(n, r.case_id));
    let groups: Vec<(usize, Vec<&EvalRecord>)> = plan
        .dataset
        .records
        .chunks(SCORE_GROUP)
        .enumerate()
        .filter(|(g, rs)| rs.iter().enumerate().any(|(i, r)| pending((g * SCORE_GROUP + i, r))))
        .map(|(g, rs)| (g * SCORE_GROUP, rs.iter().collect()))
        .collect();
    progress.start("pre-edit scores", groups.iter().map(|(_, g)| g.len()).sum(), 0);
    let mut pre: HashMap<u64, CaseScores> = HashMap::new();
    for (start, g) in &groups {
        for (i, (r, s)) in g.iter().zip(score_all(model, tok, g, &plan.score_options(), progress)?).enumerate() {
            if pending((start + i, r)) {
                pre.insert(r.case_id, s);
            }
        }
    }
    progress.finish();
    Ok(pre)
}

/// A sequential run's retention: every record whose edit succeeded scored again on the final
/// model (and written to `dir`'s `<n>-edits-final` file).
fn final_scores(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    plan: &EvalPlan,
    n: usize,
    cases: &[CaseResult],
    dir: Option<&RunDir>,
    progress: &mut dyn EvalProgress,
) -> Result<Vec<(u64, CaseScores)>> {
    let ok: HashSet<u64> = cases.iter().filter(|c| c.error.is_none()).map(|c| c.case_id).collect();
    let edited: Vec<&EvalRecord> = plan.dataset.records.iter().filter(|r| ok.contains(&r.case_id)).collect();
    progress.start("re-scoring every edit on the final model", edited.len(), 0);
    let scores = score_all(model, tok, &edited, &plan.score_options(), progress)?;
    progress.finish();
    let finals: Vec<(u64, CaseScores)> = edited.iter().map(|r| r.case_id).zip(scores).collect();
    if let Some(d) = dir {
        let lines: Vec<Value> = finals.iter().map(|(id, s)| json!({"case_id": id, "num_edits": n, "final": s})).collect();
        d.write_lines(&format!("{n}-edits-{FINAL_FILE}"), &lines)?;
    }
    Ok(finals)
}

/// Which chunk is edited and how its edit is kept.
pub(super) struct ChunkEdit<'a> {
    pub k: usize,
    pub sequential: bool,
    pub delta_path: Option<&'a std::path::Path>,
    pub max_update_ratio: f64,
}

/// One chunk's edit (chunk `k`): computed, folded into the method's memory and saved to
/// `delta_path` (for a resume) when `sequential`; a numerical failure is returned as the chunk's
/// error (no deltas), for the run to record and go on.
pub(super) fn edit_chunk(
    ed: &mut Editor,
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    chunk: &[EvalRecord],
    how: ChunkEdit,
) -> Result<(Deltas, f64, Option<String>)> {
    let ChunkEdit { k, sequential, delta_path, max_update_ratio } = how;
    let requests: Vec<Request> = chunk.iter().flat_map(EvalRecord::edits).cloned().collect();
    let t0 = Instant::now();
    match ed.run(model, tok, &requests, max_update_ratio) {
        Ok(run) => {
            let time = t0.elapsed().as_secs_f64();
            if sequential {
                if let Some(path) = delta_path {
                    save_chunk_delta(path, model, &ed.delta_meta(&requests), &run.outcome.deltas, time)?;
                }
                // The chunk's edit stays: methods that remember edits fold it in.
                ed.keep(&run.outcome.deltas)?;
            }
            Ok((run.outcome.deltas, time, None))
        }
        Err(e) if e.kind() == ErrorKind::Numerical => {
            let ids = match chunk {
                [one] => format!("case_id {}", one.case_id),
                [first, .., last] => format!("case_id {} to {}, {} records", first.case_id, last.case_id, chunk.len()),
                [] => String::new(),
            };
            tracing::warn!("the edit of chunk {k} ({ids}) failed and is recorded as such: {e}");
            Ok((Deltas::new(), t0.elapsed().as_secs_f64(), Some(e.to_string())))
        }
        Err(e) => Err(e),
    }
}

/// Keeps a sequential run's chunk delta (and its edit time) for a resume.
fn save_chunk_delta(path: &std::path::Path, model: &dyn CausalLm, meta: &DeltaMeta, deltas: &Deltas, time: f64) -> Result<()> {
    let tmp = path.with_extension("tmp.safetensors");
    write_delta_file(&tmp, model.config(), deltas, meta)?;
    std::fs::write(path.with_extension("json"), json!({ "time": time }).to_string()).map_err(|e| Error::io(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
