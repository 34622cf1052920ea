//! MEND's training examples (spec §5.4): an edit (edit_inner) with its equivalents (edit_outer:
//! a record's paraphrases), each a token sequence labelled on its target tokens, and locality
//! texts whose every token the KL term reads.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::editing::records::EvalRecord;
use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::pyrandom::PyRandom;
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
    let (ids, labels) = labelled_ids(tok, prompt, target)?;
    Ok(Labelled { labels, ids })
}

/// The model input of `prompt` followed by `target`'s tokens, and the target's positions.
pub(crate) fn labelled_ids(tok: &Tokenizer, prompt: &str, target: &str) -> Result<(Vec<u32>, std::ops::Range<usize>)> {
    let mut ids = tok.encode_input(prompt)?;
    let goal = tok.continuation(prompt, target)?;
    if goal.is_empty() || ids.is_empty() {
        return Err(Error::Input(format!("{prompt:?} + {target:?} leaves no target token to learn")));
    }
    let start = ids.len();
    ids.extend(goal);
    Ok((ids.clone(), start..ids.len()))
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
                let texts: Vec<String> = match (&r.request.target_true, &r.zsre_locality) {
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
        let mut ids = tok.encode_input(t)?;
        ids.truncate(max_tokens);
        if ids.len() >= 2 {
            out.push(ids);
        }
    }
    Ok(out)
}

/// A self-sampled edit text (MEND's "gen" data, `edit mend sample`): a text whose last
/// `n_tokens` tokens the model itself continued it with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledText {
    pub text: String,
    pub n_tokens: usize,
}

/// Continues a prefix of each of `n` texts (drawn with `seed`; blank ones skipped) by
/// `n_tokens` tokens of the model's own top-5 sampling (as the reference's `generate_fast`).
pub fn sample_texts(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    texts: &[String],
    n: usize,
    prefix_tokens: usize,
    n_tokens: usize,
    seed: u64,
) -> Result<Vec<SampledText>> {
    let usable: Vec<Vec<u32>> = locality_sequences(tok, texts, prefix_tokens)?;
    if usable.is_empty() {
        return Err(Error::Input("no non-blank texts to sample prefixes from".into()));
    }
    let mut rng = PyRandom::new(seed);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let prefix = &usable[rng.randbelow(usable.len() as u64) as usize];
        let text = crate::editing::templates::sample(model, tok, prefix, 1, prefix.len() + n_tokens, &mut rng)?.remove(0);
        out.push(SampledText { text, n_tokens });
    }
    Ok(out)
}

/// Examples from self-sampled texts: edit_inner the text labelled on its last `n_tokens`
/// tokens; edit_outer the same with `t` tokens cut from the left, for every `t` the reference's
/// `randint(0, (len − n_tokens) // 2)` can draw.
pub fn sampled_examples(tok: &Tokenizer, texts: &[SampledText]) -> Result<Vec<EditExample>> {
    texts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ids = tok.encode_input(&s.text)?;
            if s.n_tokens == 0 || ids.len() <= s.n_tokens {
                return Err(Error::Input(format!("sampled text {i} has {} tokens, not more than its n_tokens {}", ids.len(), s.n_tokens)));
            }
            // Tokens are cut from the left after the BOS, which every input keeps.
            let bos = tok.bos();
            let body = &ids[bos.len()..];
            let at = |cut: usize| {
                let ids: Vec<u32> = bos.iter().chain(&body[cut..]).copied().collect();
                Labelled { labels: ids.len() - s.n_tokens..ids.len(), ids }
            };
            let outer = (0..=(body.len().saturating_sub(s.n_tokens)) / 2).filter(|&c| body.len() - c > s.n_tokens).map(at).collect();
            Ok(EditExample { inner: at(0), outer, loc: Vec::new() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_texts_label_their_last_tokens_and_truncate_from_the_left() {
        let tok = Tokenizer::from_file(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gpt2/tokenizer.json"))).unwrap();
        let text = SampledText { text: "one two three four five six seven".into(), n_tokens: 2 };
        let ids = tok.encode(&text.text).unwrap();
        assert_eq!(ids.len(), 7);
        let ex = sampled_examples(&tok, &[text]).unwrap().remove(0);
        assert_eq!(ex.inner, Labelled { ids: ids.clone(), labels: 5..7 });
        // randint(0, (7 - 2) // 2): cuts of 0, 1 or 2 tokens, the labels always the last two.
        assert_eq!(ex.outer.len(), 3);
        assert_eq!(ex.outer[2], Labelled { ids: ids[2..].to_vec(), labels: 3..5 });
        let short = SampledText { text: "one two".into(), n_tokens: 2 };
        assert!(sampled_examples(&tok, &[short]).is_err());
    }
}
