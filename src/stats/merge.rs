//! `edit stats merge`: the shards of one statistics job (`edit stats --shard I/N`, run on many
//! machines) added into the files a single run would have written.
//!
//! The sums are added in shard order in the job's precision. Float addition is not associative,
//! so a merged sum equals a single run's to rounding (about 1e-16 relative in f64, 1e-7 in f32),
//! not bit for bit; token and text counts are exact.

use std::path::{Path, PathBuf};

use super::cache::{self, JobKey, ShardHeader, StatsMeta};
use super::ensure::LayerReport;
use crate::error::{Error, Result};

/// What differs between two jobs' keys, for the error message.
fn differences(a: &JobKey, b: &JobKey) -> Vec<&'static str> {
    let mut d = Vec::new();
    if a.identity != b.identity {
        d.push("model weights");
    }
    if a.dataset != b.dataset {
        d.push("corpus");
    }
    if a.samples != b.samples {
        d.push("samples");
    }
    if a.layers != b.layers {
        d.push("layers");
    }
    if a.precision != b.precision {
        d.push("precision");
    }
    if a.max_len != b.max_len || a.batch_tokens != b.batch_tokens {
        d.push("batching (--max-len / --batch-tokens)");
    }
    if a.shard.map(|s| s.count) != b.shard.map(|s| s.count) {
        d.push("number of shards");
    }
    d
}

/// Checks that `files` are every shard of one job, once each, from their headers; returns them
/// in shard order.
fn check(files: &[PathBuf]) -> Result<Vec<(PathBuf, ShardHeader)>> {
    if files.is_empty() {
        return Err(Error::Input("no shard files given: pass every `layers-…shard-I-of-N.safetensors` of the job".into()));
    }
    let mut shards: Vec<(PathBuf, ShardHeader)> = files.iter().map(|p| Ok((p.clone(), cache::read_shard_header(p)?))).collect::<Result<_>>()?;
    let (first_path, first) = (&shards[0].0.clone(), shards[0].1.key.clone());
    for (p, s) in &shards[1..] {
        let d = differences(&first, &s.key);
        if !d.is_empty() {
            return Err(Error::Input(format!(
                "{} and {} are shards of different jobs ({} differ): merge the shards of one `edit stats` command line",
                first_path.display(),
                p.display(),
                d.join(", ")
            )));
        }
    }
    let n = first.shard.expect("read_shard_header reads shards").count;
    shards.sort_by_key(|(_, s)| s.key.shard.expect("a shard").index);
    let mut seen = vec![Vec::new(); n];
    for (p, s) in &shards {
        seen[s.key.shard.expect("a shard").index].push(p.display().to_string());
    }
    if let Some((i, paths)) = seen.iter().enumerate().find(|(_, v)| v.len() > 1) {
        return Err(Error::Input(format!("shard {i}/{n} is given {} times: {}", paths.len(), paths.join(", "))));
    }
    let missing: Vec<String> = seen.iter().enumerate().filter(|(_, v)| v.is_empty()).map(|(i, _)| format!("{i}/{n}")).collect();
    if !missing.is_empty() {
        return Err(Error::Input(format!(
            "shard(s) {} of this job are missing: run `edit stats … --shard I/N` for each and pass all {n} files",
            missing.join(", ")
        )));
    }
    Ok(shards)
}

/// Merges the shard `files` of one job and files the statistics under `stats_dir` as a single
/// run would (same paths and metadata, apart from `source`). One layer at a time: its sums are
/// read from every shard, added, written and dropped before the next layer's are read, so a merge
/// holds one layer's sum (and one shard's copy of it) whatever the number of layers. Nothing is
/// filed if any check fails: every layer is staged, and all are moved into place together.
pub fn merge(files: &[PathBuf], stats_dir: &Path) -> Result<Vec<LayerReport>> {
    let shards = check(files)?;
    let n = shards.len();
    let key = JobKey { shard: None, ..shards[0].1.key.clone() };
    let info = shards[0].1.info.clone();
    let count: u64 = shards.iter().map(|(_, s)| s.count).sum();
    let texts: u64 = shards.iter().map(|(_, s)| s.texts).sum();
    if count == 0 {
        return Err(Error::Input("the shards hold no tokens: every sampled text was empty".into()));
    }
    let mut reports = Vec::new();
    let mut outputs = crate::fsutil::Outputs::new();
    for &l in &key.layers {
        let module = info.modules.get(&l).ok_or_else(|| Error::Internal(format!("shard file names no module for layer {l}")))?;
        let mut sum = cache::load_shard_sum(&shards[0].0, l)?;
        for (p, _) in &shards[1..] {
            sum = (&sum + cache::load_shard_sum(p, l)?)?;
        }
        let meta = StatsMeta {
            format: 1,
            identity: key.identity.clone(),
            module: module.clone(),
            layer: l,
            d_ff: info.d_ff,
            dataset: key.dataset.clone(),
            samples: key.samples,
            corpus_rows: info.corpus_rows,
            texts,
            tokens: count,
            precision: key.precision,
            max_len: key.max_len,
            batch_tokens: key.batch_tokens,
            source: format!("{}, merged from {n} shards", info.source),
            corpus_digest: info.corpus_digest.clone(),
            sampling: info.sampling.clone(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            auto: None,
        };
        let path = cache::stats_path(stats_dir, &key.identity, &key.dataset, module, key.precision, key.samples);
        cache::save(&outputs.stage(&path)?, &sum, count, &meta)?;
        reports.push(LayerReport { layer: l, module: module.clone(), file: path, tokens: count, cached: false });
    }
    outputs.commit()?;
    Ok(reports)
}
