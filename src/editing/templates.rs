//! Context templates: short texts sampled from the model and put in front of the edit prompt,
//! so the edit holds in many contexts (ROME §1.2, MEMIT §2.2 of the reference spec).
//!
//! The reference samples them without a seed; here the sampler draws from a seeded Mersenne
//! Twister, so the same seed on the same model gives the same templates (and the same edit).

use candle_core::{DType, IndexOp};

use crate::error::{Error, Result};
use crate::models::{Batch, CausalLm, Logits, TraceSpec};
use crate::pyrandom::PyRandom;
use crate::tokenizer::Tokenizer;

/// Template groups. ROME averages over all templates flatly; MEMIT averages within each group,
/// then over the groups (so the bare `"{}"` group gets half the weight).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ContextTemplates {
    pub groups: Vec<Vec<String>>,
}

impl ContextTemplates {
    pub fn flat(&self) -> Vec<String> {
        self.groups.iter().flatten().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Templates given in the config. For MEMIT a flat list is split as the reference groups its
/// own: the bare `"{}"` entries, then the rest.
pub fn from_config(t: &super::hparams::ContextTemplates, method: super::registry::Method) -> ContextTemplates {
    use super::hparams::ContextTemplates as Given;
    use super::registry::Method;
    match (t, method) {
        (Given::Flat(list), Method::Memit) => {
            let (bare, rest): (Vec<String>, Vec<String>) = list.iter().cloned().partition(|s| s == "{}");
            ContextTemplates { groups: [bare, rest].into_iter().filter(|g| !g.is_empty()).collect() }
        }
        _ => ContextTemplates { groups: t.groups() },
    }
}

/// Top-k sampling parameters of the reference's `generate_fast`.
const TOP_K: usize = 5;

/// MEMIT's seed words, one sampled continuation of 10 tokens each.
const MEMIT_SEEDS: [&str; 5] = ["The", "Therefore", "Because", "I", "You"];

/// The tokens ROME's context texts are sampled after: the model input of the text
/// `<|endoftext|>` (the reference: one token in GPT-2's vocabulary, several pieces behind a BOS in
/// others), or the tokenizer's BOS (its end-of-text token where it has none).
pub fn rome_start(model: &dyn CausalLm, tok: &Tokenizer, prompt: super::rome::TemplatePrompt) -> Result<Vec<u32>> {
    use super::rome::TemplatePrompt;
    match prompt {
        TemplatePrompt::Endoftext => tok.encode_input("<|endoftext|>"),
        TemplatePrompt::Bos if !tok.bos().is_empty() => Ok(tok.bos().to_vec()),
        TemplatePrompt::Bos => Ok(vec![tok.token_id("<|endoftext|>").or(model.config().eos_token_id).unwrap_or(0)]),
    }
}

/// ROME: `"{}"` plus, for each `(length, n)`, `n` texts of `length` tokens (the `start` tokens
/// included) sampled after `start` ([`rome_start`]), each followed by `". {}"`. A start as long as
/// the length samples nothing: its text is its decoded start without `<|endoftext|>`.
pub fn rome_templates(model: &dyn CausalLm, tok: &Tokenizer, length_params: &[(usize, usize)], start: &[u32], seed: u64) -> Result<ContextTemplates> {
    let mut rng = PyRandom::new(seed);
    let mut generated = Vec::new();
    for &(length, n) in length_params {
        if n == 0 {
            continue;
        }
        for text in sample(model, tok, start, n, length, &mut rng)? {
            generated.push(template_from(&text));
        }
    }
    Ok(ContextTemplates { groups: vec![vec!["{}".into()], generated] })
}

/// MEMIT: `[["{}"], [one 10-token continuation of each seed word + ". {}"]]`.
pub fn memit_templates(model: &dyn CausalLm, tok: &Tokenizer, seed: u64) -> Result<ContextTemplates> {
    let mut rng = PyRandom::new(seed);
    let mut generated = Vec::new();
    for word in MEMIT_SEEDS {
        let ids = tok.encode_input(word)?;
        for text in sample(model, tok, &ids, 1, 10, &mut rng)? {
            generated.push(template_from(&text));
        }
    }
    Ok(ContextTemplates { groups: vec![vec!["{}".into()], generated] })
}

/// `text + ". {}"`, with braces blanked so the text cannot add a slot. (MEMIT blanks them; ROME
/// does not, and then fails on `.format` — blanking is the only behaviour that works.)
fn template_from(text: &str) -> String {
    format!("{}. {{}}", text.replace(['{', '}'], " "))
}

/// Samples `n` continuations of `prompt` to a total of `length` tokens (prompt included) by
/// top-5 sampling, decoded as the reference does: NFKD, blank lines joined, end-of-text removed;
/// a leading BOS is not decoded (the reference keeps its text, which the methods then tokenize
/// as a second BOS).
pub(crate) fn sample(model: &dyn CausalLm, tok: &Tokenizer, prompt: &[u32], n: usize, length: usize, rng: &mut PyRandom) -> Result<Vec<String>> {
    if prompt.is_empty() {
        return Err(Error::Input("cannot sample templates from an empty prompt".into()));
    }
    let length = length.min(model.config().n_ctx);
    let mut seqs: Vec<Vec<u32>> = vec![prompt.to_vec(); n];
    let spec = TraceSpec::logits(Logits::Last);
    while seqs[0].len() < length {
        // Equal lengths: no padding, one forward for all n sequences.
        let batch = Batch::from_sequences(&seqs, 0, model.device())?;
        let logits = model.forward(&batch, &spec, &[])?.logits.expect("logits requested");
        let logits = logits.to_dtype(DType::F32)?;
        for (r, seq) in seqs.iter_mut().enumerate() {
            let row: Vec<f32> = logits.i(r)?.to_vec1()?;
            seq.push(top_k_draw(&row, TOP_K, rng));
        }
    }
    seqs.iter()
        .map(|s| {
            let text = tok.decode_text(s)?;
            Ok(nfkd(&text).replace("\n\n", " ").replace("<|endoftext|>", ""))
        })
        .collect()
}

/// Softmax over the logits, keep the k most probable, renormalise, draw one.
fn top_k_draw(logits: &[f32], k: usize, rng: &mut PyRandom) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // Descending by logit; ties by index, like a stable top-k.
    idx.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.truncate(k.min(logits.len()));
    let weights: Vec<f64> = idx.iter().map(|&i| f64::from(logits[i] - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.random() * total;
    for (w, &i) in weights.iter().zip(&idx) {
        if r < *w {
            return i as u32;
        }
        r -= w;
    }
    *idx.last().expect("k >= 1") as u32
}

fn nfkd(s: &str) -> String {
    let mut n = tokenizers::NormalizedString::from(s);
    n.nfkd();
    n.get().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_only_draws_the_k_best() {
        let logits = [0.0f32, 5.0, 1.0, 4.0, -3.0, 3.0, 2.0];
        let mut rng = PyRandom::new(1);
        for _ in 0..200 {
            let t = top_k_draw(&logits, 2, &mut rng);
            assert!(t == 1 || t == 3, "{t}");
        }
        // With k = 1 the draw is the argmax.
        assert_eq!(top_k_draw(&logits, 1, &mut rng), 1);
    }

    #[test]
    fn templates_have_one_slot() {
        assert_eq!(template_from("a {b} c"), "a  b  c. {}");
        assert_eq!(nfkd("ﬁ"), "fi");
    }
}
