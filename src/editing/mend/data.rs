//! MEND's training examples (spec §5.4): an edit (edit_inner) with its equivalents (edit_outer:
//! a record's paraphrases), each a token sequence labelled on its target tokens, and locality
//! texts whose every token the KL term reads.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::eval::records::EvalRecord;
use crate::tokenizer::Tokenizer;

/// Tokens labelled on `labels` (each predicted from the position before).
#[derive(Clone, Debug, PartialEq)]
pub struct Labelled {
    pub ids: Vec<u32>,
    pub labels: Range<usize>,
}

/// One training example: the edit and the texts it should carry over to.
#[derive(Clone, Debug)]
pub struct EditExample {
    pub inner: Labelled,
    /// At least one: the paraphrases, or the edit itself when a record has none.
    pub outer: Vec<Labelled>,
    /// The record's own locality texts (its neighbourhood prompts with their true object),
    /// when training draws locality from the records; empty otherwise.
    pub loc: Vec<Vec<u32>>,
}

/// `prompt + " " + target`, labelled on the target's tokens (as the executor labels an edit).
fn labelled(tok: &Tokenizer, prompt: &str, target: &str) -> Result<Labelled> {
    let ids = tok.encode(&format!("{prompt}{target}"))?;
    let n = tok.encode(target)?.len().min(ids.len().saturating_sub(1));
    if n == 0 {
        return Err(Error::Input(format!("{prompt:?} + {target:?} leaves no target token to learn")));
    }
    Ok(Labelled { labels: ids.len() - n..ids.len(), ids })
}

/// Examples from evaluation records (CounterFact, zsRE, requests): edit_inner is the rewrite
/// prompt with target_new, edit_outer each paraphrase with target_new. With `neighbours`, each
/// example also carries its record's locality texts: CounterFact's neighbourhood prompts
/// followed by the record's true object (EasyEdit's CounterFact training layout,
/// `locality_prompt` + `locality_ground_truth`), zsRE's NQ question with its answer.
pub fn record_examples(tok: &Tokenizer, records: &[EvalRecord], neighbours: bool) -> Result<Vec<EditExample>> {
    records
        .iter()
        .map(|r| {
            let target = r.request.target_new_spaced();
            let inner = labelled(tok, &r.request.filled_prompt(), &target)?;
            let mut outer = r.request.paraphrase_prompts.iter().map(|p| labelled(tok, p, &target)).collect::<Result<Vec<_>>>()?;
            if outer.is_empty() {
                outer.push(inner.clone());
            }
            let mut loc = Vec::new();
            if neighbours {
                let texts: Vec<String> = match (&r.request.target_true, r.zsre_neighborhood.iter().max_by_key(|(p, _)| p.len())) {
                    (_, Some((p, t))) => vec![format!("{p}{t}")],
                    (Some(truth), None) => r.request.neighborhood_prompts.iter().map(|p| format!("{p} {}", truth.trim_start())).collect(),
                    (None, None) => Vec::new(),
                };
                loc = locality_sequences(tok, &texts, usize::MAX)?;
                if loc.is_empty() {
                    return Err(Error::Input(format!(
                        "{}: no neighbourhood prompts (with a true object) to draw locality from; use --locality FILE",
                        r.request.label()
                    )));
                }
            }
            Ok(EditExample { inner, outer, loc })
        })
        .collect()
}

/// Locality texts as token sequences, each cut to `max_tokens`; texts of fewer than two tokens
/// (blank lines) are dropped.
pub fn locality_sequences(tok: &Tokenizer, texts: &[String], max_tokens: usize) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    for t in texts {
        if t.trim().is_empty() {
            continue;
        }
        let mut ids = tok.encode(t)?;
        ids.truncate(max_tokens);
        if ids.len() >= 2 {
            out.push(ids);
        }
    }
    Ok(out)
}
