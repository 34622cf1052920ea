//! `edit eval merge`: the output directories of the shards of one evaluation (`--shard i/n`,
//! i = 0..n) combined into the directory a single run would have written: `cases.jsonl` in a
//! single run's order, `summary.json` recomputed from all cases, `run.json` without the shard.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::rundir::{read_cases, CASES_FILE, ORDER_FILE, RUN_FILE, SUMMARY_FILE};
use super::summary::{is_metric, summary_of, CaseResult};
use crate::error::{Error, Result};

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Input(format!("{}: not valid JSON ({e})", path.display())))
}

/// One shard's directory, read.
struct Shard {
    dir: PathBuf,
    index: usize,
    count: usize,
    run: Value,
    cases: Vec<CaseResult>,
    summaries: Vec<Value>,
}

fn read_shard(dir: &Path) -> Result<Shard> {
    let run = read_json(&dir.join(RUN_FILE)).map_err(|e| Error::Input(format!("{} is not an `edit eval` output directory: {e}", dir.display())))?;
    let Some([i, n]) = run["shard"].as_array().and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>()).and_then(|v| <[u64; 2]>::try_from(v).ok())
    else {
        return Err(Error::Input(format!(
            "{} holds an unsharded run (no `shard` in its {RUN_FILE}); merge the directories of `edit eval --shard I/N` runs",
            dir.display()
        )));
    };
    let summaries = match read_json(&dir.join(SUMMARY_FILE)) {
        Ok(Value::Array(v)) => v,
        _ => return Err(Error::Input(format!("{}: no {SUMMARY_FILE}; the shard has not finished (rerun its command to complete it)", dir.display()))),
    };
    Ok(Shard { dir: dir.to_path_buf(), index: i as usize, count: n as usize, cases: read_cases(&dir.join(CASES_FILE))?, run, summaries })
}

/// Merges the shard directories into `out` (created; replaced only with `force`) and returns
/// the summaries written.
pub fn merge(dirs: &[PathBuf], out: &Path, force: bool) -> Result<Vec<Value>> {
    let shards: Vec<Shard> = dirs.iter().map(|d| read_shard(d)).collect::<Result<_>>()?;
    let Some(first) = shards.first() else {
        return Err(Error::Input("give the output directories of the shards to merge".into()));
    };
    let count = first.count;
    let without_shard = |run: &Value| {
        let mut r = run.clone();
        r.as_object_mut().map(|m| m.insert("shard".into(), Value::Null));
        r
    };
    let run = without_shard(&first.run);
    let mut seen = BTreeSet::new();
    for s in &shards {
        if without_shard(&s.run) != run || s.count != count {
            return Err(Error::Input(format!("{} and {} are shards of different evaluations (their {RUN_FILE} differ)", first.dir.display(), s.dir.display())));
        }
        if !seen.insert(s.index) {
            return Err(Error::Input(format!("shard {}/{count} is given twice ({})", s.index, s.dir.display())));
        }
    }
    let missing: Vec<String> = (0..count).filter(|i| !seen.contains(i)).map(|i| format!("{i}/{count}")).collect();
    if !missing.is_empty() {
        return Err(Error::Input(format!("shard(s) {} missing; give the output directory of every shard", missing.join(", "))));
    }
    let order: Vec<u64> = serde_json::from_value(read_json(&first.dir.join(ORDER_FILE))?)
        .map_err(|e| Error::Input(format!("{}: unreadable ({e})", first.dir.join(ORDER_FILE).display())))?;
    let num_edits: Vec<usize> = serde_json::from_value(run["num_edits"].clone()).map_err(|e| Error::Input(format!("{RUN_FILE}: bad num_edits ({e})")))?;

    let mut by_key: HashMap<(usize, u64), CaseResult> = HashMap::new();
    for s in &shards {
        for c in &s.cases {
            by_key.insert((c.num_edits, c.case_id), c.clone());
        }
    }
    let mut merged = Vec::new();
    let mut summaries = Vec::new();
    for (j, &n) in num_edits.iter().enumerate() {
        let mut cases = Vec::with_capacity(order.len());
        for (p, id) in order.iter().enumerate() {
            let shard = (p / n) % count;
            match by_key.remove(&(n, *id)) {
                Some(c) => cases.push(c),
                None => {
                    return Err(Error::Input(format!(
                        "shard {shard}/{count} has not scored case_id {id} ({n} edits per chunk); rerun that shard's command to finish it"
                    )))
                }
            }
        }
        let mut summary: Map<String, Value> = first.summaries.get(j).and_then(Value::as_object).cloned().unwrap_or_default();
        summary.retain(|k, _| !is_metric(k));
        let seconds: f64 = shards.iter().filter_map(|s| s.summaries.get(j)?.get("seconds")?.as_f64()).sum();
        summary.insert("seconds".into(), json!(seconds));
        summary.extend(summary_of(n, &cases, &[]));
        summaries.push(Value::Object(summary));
        merged.extend(cases);
    }
    let mut dir = super::rundir::RunDir::open(out, &run, force)?;
    if !dir.done.is_empty() {
        return Err(Error::Input(format!("--out {} already holds results; pass --force to replace them", out.display())));
    }
    dir.write_json(ORDER_FILE, &order)?;
    for c in &merged {
        dir.append(c)?;
    }
    dir.write_json(SUMMARY_FILE, &summaries)?;
    Ok(summaries)
}
