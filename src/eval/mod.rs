//! Evaluation (reference spec §6): datasets ([`records`]), the per-record tests ([`probes`],
//! batched by [`score`]), the protocol over chunks of edits ([`run`]) with its output directory
//! ([`rundir`]), and the reference's summary ([`summary`]). [`score_pairs`] and
//! [`case_success`] are the single-record CounterFact tests the method tests use.

pub mod consistency;
pub mod generation;
pub mod merge;
pub mod plot;
pub mod probes;
pub mod report;
pub mod run;
pub mod rundir;
pub mod score;
pub mod stream;
pub mod summary;

use serde::Serialize;

use crate::error::Result;
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

/// Per-token average NLL of `target_new` and `target_true` after one prompt.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PairNll {
    pub new: f64,
    pub true_: f64,
}

/// Scores both targets after every prefix, one text per (prefix, target) as the reference
/// does: `"{prefix} {target}"`, the target's tokens read after the prefix's
/// ([`score::prompt_with_target`]).
pub fn score_pairs(model: &dyn CausalLm, tok: &Tokenizer, prefixes: &[String], target_new: &str, target_true: &str) -> Result<Vec<PairNll>> {
    let targets = [target_new.trim_start(), target_true.trim_start()];
    let mut items = Vec::with_capacity(2 * prefixes.len());
    for p in prefixes {
        for target in targets {
            let (ids, prefix_len, cand) = score::prompt_with_target(tok, p, target)?;
            items.push(score::Item { reads: score::target_reads(&ids, prefix_len, &cand, 0), ids });
        }
    }
    let reads = score::score_items(model, &items, items.len())?;
    let nll = |r: &[score::Read]| r.iter().map(|x| x.nll).sum::<f64>() / r.len() as f64;
    Ok(reads.chunks(2).map(|pair| PairNll { new: nll(&pair[0]), true_: nll(&pair[1]) }).collect())
}

/// One case's success rates: rewrite/paraphrase succeed when the new target is more likely than
/// the true one; neighbourhood prompts succeed when the true target stays more likely.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CaseSuccess {
    pub rewrite: f64,
    pub paraphrase: f64,
    pub neighborhood: f64,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

pub fn case_success(rewrite: &[PairNll], paraphrase: &[PairNll], neighborhood: &[PairNll]) -> CaseSuccess {
    let ind = |b: bool| if b { 1.0 } else { 0.0 };
    CaseSuccess {
        rewrite: mean(rewrite.iter().map(|p| ind(p.true_ > p.new))),
        paraphrase: mean(paraphrase.iter().map(|p| ind(p.true_ > p.new))),
        neighborhood: mean(neighborhood.iter().map(|p| ind(p.true_ < p.new))),
    }
}
