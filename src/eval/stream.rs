//! `edit eval --stream`: the protocol on a dataset read a chunk at a time (WikiBigEdit's 500k
//! updates, UltraEditBench's 2M), so memory holds one chunk of records, not the file. Every
//! record is read and checked first (a pass that does no model work, so a bad record is named
//! before any edit); then per chunk of `--num-edits`: its pre-edit scores, its edit, its
//! post-edit scores, its lines in `cases.jsonl`, its per-case means in the summary; with
//! `--sequential` the file is read once more at the end to score every edit on the final model.
//! What stays in memory across chunks: the per-case means the summary needs, the case ids, and
//! the unedited predictions of groups scored against them (EasyEdit's locality).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::{json, Map, Value};

use super::probes::{CaseScores, ProbeResult};
use super::run::{edit_chunk, score_all, ChunkEdit, EvalPlan, EvalProgress, NumEditsRun, Silent};
use super::rundir::{RunDir, FINAL_FILE, ORDER_FILE};
use super::summary::{summarize, CaseResult, Summarizer};
use crate::editing::pipeline::Editor;
use crate::editing::records::stream::RecordReader;
use crate::editing::records::{Dataset, DatasetFormat, ZsreTarget};
use crate::editing::{Deltas, Snapshot};
use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

/// Records read and checked per batch in the checking pass.
const CHECK_BATCH: usize = 1024;

/// A dataset file to stream, as the checking pass found it: the file and how it is read, its
/// layout, and how many records will be evaluated.
pub struct StreamedDataset<'a> {
    pub path: &'a Path,
    pub zsre_target: Option<ZsreTarget>,
    /// Evaluate only the first `limit` records.
    pub limit: Option<usize>,
    pub format: DatasetFormat,
    pub records: usize,
}

impl StreamedDataset<'_> {
    fn reader(&self) -> Result<RecordReader> {
        Ok(RecordReader::open(self.path, self.zsre_target)?.with_limit(self.limit))
    }
}

/// The batches of the records to evaluate, `n` at a time.
fn batches(data: &StreamedDataset, n: usize) -> Result<impl Iterator<Item = Result<Dataset>>> {
    let mut reader = data.reader()?;
    Ok(std::iter::from_fn(move || reader.next_batch(n).transpose()))
}

/// Reads every record of `path` to evaluate (the first `limit`) once, checking each as
/// [`Dataset::check`] does (case ids unique across the file); every problem is listed at once.
pub fn check<'a>(path: &'a Path, zsre_target: Option<ZsreTarget>, limit: Option<usize>, tok: &Tokenizer, n_ctx: usize) -> Result<StreamedDataset<'a>> {
    let mut reader = RecordReader::open(path, zsre_target)?.with_limit(limit);
    let source = path.display().to_string();
    let (mut seen, mut problems, mut records) = (HashSet::new(), Vec::new(), 0usize);
    while let Some((offset, values)) = reader.next_values(CHECK_BATCH)? {
        records += values.len();
        // A record of the wrong shape is listed and the rest still read.
        match reader.parse(offset, &values) {
            Ok(batch) => {
                if let Err(e) = batch.check_with(tok, n_ctx, &source, &mut seen) {
                    problems.push(e.to_string());
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Input(problems.join("\n")));
    }
    Ok(StreamedDataset { path, zsre_target: reader.zsre_target, limit, format: reader.format, records })
}

/// The unedited predictions a case's `final` scores are compared with (its groups scored
/// against the unedited model), if it has any.
fn unedited_predictions(pre: &CaseScores) -> Option<CaseScores> {
    let groups: std::collections::BTreeMap<String, Vec<ProbeResult>> =
        pre.groups.iter().filter(|(_, r)| ProbeResult::against_unedited(r)).map(|(k, v)| (k.clone(), v.clone())).collect();
    (!groups.is_empty()).then(|| CaseScores { groups, ..Default::default() })
}

/// Runs the protocol on the streamed records (as [`check`] found them): `plan` says how (its
/// one `num_edits` value, sequential or not, the scoring; its dataset holds no records).
pub fn evaluate_stream(
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    mut editor: Option<&mut Editor>,
    plan: &EvalPlan,
    data: &StreamedDataset,
    mut dir: Option<&mut RunDir>,
    progress: &mut dyn EvalProgress,
) -> Result<NumEditsRun> {
    let n = match plan.num_edits[..] {
        [0] => return Err(Error::Input("--num-edits must be at least 1".into())),
        [n] => n,
        _ => return Err(Error::Input("a streamed run takes one --num-edits value (the file is read chunk by chunk)".into())),
    };
    let total = data.records;
    let scoring = plan.score_options();
    let mut snapshot = Snapshot::new();
    let mut summary = Summarizer::default();
    let mut chunk_summaries = Vec::new();
    let mut unedited: HashMap<u64, CaseScores> = HashMap::new();
    let mut failed: HashSet<u64> = HashSet::new();
    let mut order = Vec::with_capacity(total);
    progress.start(&format!("{n} edit(s) per chunk, streamed"), total, 0);
    for (k, batch) in batches(data, n)?.enumerate() {
        let chunk = batch?.records;
        let refs: Vec<_> = chunk.iter().collect();
        let pre = score_all(&*model, tok, &refs, &scoring, &mut Silent)?;
        let (deltas, time, error): (Deltas, f64, Option<String>) = match editor.as_deref_mut() {
            None => (Deltas::new(), 0.0, None),
            Some(ed) => {
                edit_chunk(ed, model, tok, &chunk, ChunkEdit { k, sequential: plan.sequential, delta_path: None, max_update_ratio: plan.max_update_ratio })?
            }
        };
        snapshot.apply(model, &deltas)?;
        let post: Vec<Option<CaseScores>> = match (&error, editor.is_some()) {
            (Some(_), _) => vec![None; chunk.len()],
            (None, false) => pre.iter().cloned().map(Some).collect(),
            (None, true) => score_all(&*model, tok, &refs, &scoring, &mut Silent)?.into_iter().map(Some).collect(),
        };
        let grouped: Vec<u64> = chunk.iter().map(|r| r.case_id).collect();
        let mut cases = Vec::with_capacity(chunk.len());
        for ((r, pre), post) in chunk.iter().zip(pre).zip(post) {
            if let Some(p) = unedited_predictions(&pre) {
                unedited.insert(r.case_id, p);
            }
            if error.is_some() {
                failed.insert(r.case_id);
            }
            let c = CaseResult::new(r, n, &grouped, time, Some(pre), post, &error);
            if let Some(d) = dir.as_deref_mut() {
                d.append(&c)?;
            }
            summary.add(&c, None);
            order.push(r.case_id);
            cases.push(c);
        }
        chunk_summaries.push(summarize(cases.iter().map(|c| (c, None))));
        progress.advance(chunk.len());
        if !plan.sequential {
            snapshot.restore(model)?;
        }
    }
    progress.finish();
    if let Some(d) = dir.as_deref() {
        d.write_json(ORDER_FILE, &order)?;
    }

    // Retention: the file read again, every edit that took scored on the final model.
    let mut finals = 0usize;
    if plan.sequential && editor.is_some() {
        progress.start("re-scoring every edit on the final model", total - failed.len(), 0);
        let mut writer = match dir.as_deref() {
            Some(d) => Some(d.lines_writer(&format!("{n}-edits-{FINAL_FILE}"))?),
            None => None,
        };
        for batch in batches(data, n)? {
            let chunk: Vec<_> = batch?.records.into_iter().filter(|r| !failed.contains(&r.case_id)).collect();
            let refs: Vec<_> = chunk.iter().collect();
            for (r, s) in chunk.iter().zip(score_all(&*model, tok, &refs, &scoring, &mut Silent)?) {
                summary.add_final(unedited.get(&r.case_id), &s);
                if let Some(w) = writer.as_mut() {
                    w.push(&json!({"case_id": r.case_id, "num_edits": n, "final": s}))?;
                }
                finals += 1;
            }
            progress.advance(chunk.len());
        }
        if let Some(w) = writer {
            w.finish()?;
        }
        progress.finish();
    }
    snapshot.restore(model)?;
    let mut summary: Map<String, Value> = summary.finish();
    summary.insert("num_edits".into(), json!(n));
    summary.insert("num_failed".into(), json!(failed.len()));
    tracing::debug!("streamed {} record(s), {finals} re-scored at the end", order.len());
    Ok(NumEditsRun { num_edits: n, cases: Vec::new(), finals: Vec::new(), summary, chunk_summaries })
}
