//! Evaluation (reference spec §6): datasets ([`records`]), the per-record tests ([`probes`],
//! batched by [`score`]), the protocol over chunks of edits ([`run`]) with its output directory
//! ([`rundir`]), and the reference's summary ([`summary`]). [`score_pairs`] and
//! [`case_success`] are the single-record CounterFact tests the method tests use.

pub mod consistency;
pub mod generation;
pub mod merge;
pub mod plot;
pub mod probes;
pub mod records;
pub mod run;
pub mod rundir;
pub mod score;
pub mod summary;

use candle_core::{DType, Device};
use serde::Serialize;

use crate::error::Result;
use crate::models::{Batch, CausalLm, Logits, TraceSpec};
use crate::tokenizer::Tokenizer;

/// Per-token average NLL of `target_new` and `target_true` after one prompt.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PairNll {
    pub new: f64,
    pub true_: f64,
}

/// Scores both targets after every prefix: `"{prefix} {target}"` is tokenized as one text and
/// the target's tokens (` target` tokenized alone) are read after the prefix's tokens.
pub fn score_pairs(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    prefixes: &[String],
    target_new: &str,
    target_true: &str,
    pad_id: u32,
) -> Result<Vec<PairNll>> {
    let cands = [tok.encode(&format!(" {}", target_new.trim_start()))?, tok.encode(&format!(" {}", target_true.trim_start()))?];
    let mut seqs = Vec::new();
    let mut positions = Vec::new();
    let mut wanted = Vec::new();
    for p in prefixes {
        let prefix_len = tok.encode(p)?.len();
        for (c, cand) in cands.iter().enumerate() {
            let row = seqs.len();
            let ids = tok.encode(&format!("{p} {}", [target_new, target_true][c].trim_start()))?;
            for (j, &t) in cand.iter().enumerate() {
                let pos = (prefix_len + j).saturating_sub(1).min(ids.len() - 1);
                positions.push((row, pos));
                wanted.push(t);
            }
            seqs.push(ids);
        }
    }
    let batch = Batch::from_sequences(&seqs, pad_id, model.device())?;
    let logits = model.forward(&batch, &TraceSpec::logits(Logits::At(positions)), &[])?.logits.expect("logits");
    let lp = crate::editing::optimize::log_softmax(&logits.to_dtype(DType::F32)?)?.to_device(&Device::Cpu)?;
    let lp: Vec<Vec<f32>> = lp.to_vec2()?;
    let mut out = Vec::with_capacity(prefixes.len());
    let mut q = 0;
    for _ in prefixes {
        let mut nll = [0f64; 2];
        for (c, cand) in cands.iter().enumerate() {
            let mut s = 0.0;
            for _ in cand {
                s -= f64::from(lp[q][wanted[q] as usize]);
                q += 1;
            }
            nll[c] = s / cand.len() as f64;
        }
        out.push(PairNll { new: nll[0], true_: nll[1] });
    }
    Ok(out)
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
