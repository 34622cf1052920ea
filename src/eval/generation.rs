//! The CounterFact generation test's fluency (spec §6.3): texts sampled from the generation
//! prompts as the reference's `generate_fast` does (top-5, 100 tokens including the prompt;
//! seeded here), scored by the weighted n-gram entropy `mean(2/3·H₂, 4/3·H₃)` in bits, averaged
//! over the texts.
//!
//! Deviation: the reference splits words with NLTK's `word_tokenize` (a trained Punkt sentence
//! model, then the Treebank rules); here [`word_tokenize`] applies Treebank-style rules to
//! whitespace-separated words (punctuation and clitics split off) without the sentence model.
//! The entropies are close to, not identical with, the reference's.

use std::collections::BTreeMap;

use crate::editing::templates::sample;
use crate::error::Result;
use crate::models::CausalLm;
use crate::pyrandom::PyRandom;
use crate::tokenizer::Tokenizer;

/// Tokens per generated text, prompt included (the reference's `max_out_len`).
pub const GENERATION_LENGTH: usize = 100;

/// One text per prompt, each from its own generator seeded with `seed` (so a text does not
/// depend on which other records were generated before it).
pub fn generate(model: &dyn CausalLm, tok: &Tokenizer, prompts: &[String], seed: u64) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let ids = tok.encode_input(p)?;
        let mut rng = PyRandom::new(seed.wrapping_add(i as u64));
        out.extend(sample(model, tok, &ids, 1, GENERATION_LENGTH, &mut rng)?);
    }
    Ok(out)
}

const OPENING: &[char] = &['"', '\'', '(', '[', '{', '<', '`'];
const CLOSING: &[char] = &['"', '\'', ')', ']', '}', '>', '.', ',', ';', ':', '!', '?'];
const CLITICS: &[&str] = &["n't", "'s", "'re", "'ve", "'ll", "'d", "'m"];

/// Words and punctuation, Treebank-style: opening quotes and brackets and closing punctuation
/// split off each whitespace-separated word (a run of dots stays one token), then the clitics
/// `n't 's 're 've 'll 'd 'm`.
pub fn word_tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let mut w = word;
        while let Some(c) = w.chars().next().filter(|c| OPENING.contains(c) && w.chars().count() > 1) {
            out.push(c.to_string());
            w = &w[c.len_utf8()..];
        }
        let mut tail = Vec::new();
        while let Some(c) = w.chars().last().filter(|c| CLOSING.contains(c) && w.chars().count() > 1) {
            let cut = if c == '.' { w.len() - w.trim_end_matches('.').len() } else { c.len_utf8() };
            if cut == w.len() {
                break;
            }
            tail.push(w[w.len() - cut..].to_string());
            w = &w[..w.len() - cut];
        }
        let lower = w.to_lowercase();
        match CLITICS.iter().find(|c| lower.ends_with(*c) && lower.len() > c.len()) {
            Some(c) => {
                out.push(w[..w.len() - c.len()].to_string());
                out.push(w[w.len() - c.len()..].to_string());
            }
            None if !w.is_empty() => out.push(w.to_string()),
            None => {}
        }
        out.extend(tail.into_iter().rev());
    }
    out
}

/// Entropy in bits of the frequency distribution of a text's word n-grams (0 without any).
fn ngram_bits(tokens: &[String], n: usize) -> f64 {
    // Ordered, so the sum (and the result, bit for bit) does not depend on hashing.
    let mut counts: BTreeMap<&[String], usize> = BTreeMap::new();
    for g in tokens.windows(n) {
        *counts.entry(g).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    counts.values().map(|&c| c as f64 / total as f64).map(|f| -f * f.log2()).sum()
}

/// The reference's `compute_n_gram_entropy` of one text: `mean(2/3·H₂, 4/3·H₃)`.
pub fn text_entropy(text: &str) -> f64 {
    let tokens = word_tokenize(text);
    (2.0 / 3.0 * ngram_bits(&tokens, 2) + 4.0 / 3.0 * ngram_bits(&tokens, 3)) / 2.0
}

/// The reference's `n_gram_entropy`: the mean over texts.
pub fn ngram_entropy(texts: &[String]) -> f64 {
    texts.iter().map(|t| text_entropy(t)).sum::<f64>() / texts.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn treebank_style_words() {
        assert_eq!(
            word_tokenize("He said, \"it isn't (really) mine.\" Then..."),
            ["He", "said", ",", "\"", "it", "is", "n't", "(", "really", ")", "mine", ".", "\"", "Then", "..."]
        );
        assert_eq!(word_tokenize("Danielle Darrieux's tongue"), ["Danielle", "Darrieux", "'s", "tongue"]);
    }

    #[test]
    fn entropy_by_hand() {
        // "a b a b": bigrams ab, ba, ab → p = 2/3, 1/3: H₂ = 0.918296 bits; trigrams aba, bab →
        // H₃ = 1 bit. mean(2/3·0.918296, 4/3·1) = 0.972765.
        let h2 = -(2.0f64 / 3.0 * (2.0f64 / 3.0).log2() + 1.0 / 3.0 * (1.0f64 / 3.0).log2());
        let want = (2.0 / 3.0 * h2 + 4.0 / 3.0) / 2.0;
        assert!((text_entropy("a b a b") - want).abs() < 1e-12);
        assert!((want - 0.972765).abs() < 1e-6);
        // A repeated word has no entropy; one word has no n-grams at all.
        assert_eq!(text_entropy("the the the the"), 0.0);
        assert_eq!(text_entropy("word"), 0.0);
        assert!((ngram_entropy(&["a b a b".into(), "word".into()]) - want / 2.0).abs() < 1e-12);
    }
}
