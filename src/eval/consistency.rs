//! The generation test's consistency and essence scores (spec §6.3), from the reference's
//! `attribute_snippets.json` (Wikipedia snippets about subjects that truly have an object):
//! - consistency (`reference_score`): the cosine of the TF-IDF vectors of the generated texts
//!   joined and of the snippets for (relation, target_new) joined, with scikit-learn's
//!   `TfidfVectorizer` defaults (lower case, tokens `\b\w\w+\b`, raw counts × idf, L2 norm) and
//!   the reference's `idf.npy` / `tfidf_vocab.json` — or, without them, idf fitted on all snippet
//!   texts as the reference's fallback does (smooth: ln((1+n)/(1+df)) + 1);
//! - essence (`essence_score`): the model's perplexity on the snippets about the subject itself,
//!   joined and truncated to 100 tokens, `exp(−Σ log p / N)` with N the number of tokens.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device};
use regex::Regex;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::{Batch, CausalLm, Logits, TraceSpec};
use crate::tokenizer::Tokenizer;

/// One snippet: the subject it is about, and its text.
#[derive(Clone, Debug)]
pub struct Snippet {
    pub name: String,
    pub text: String,
}

/// Snippets by relation id, then target id; and the TF-IDF statistics.
pub struct Snippets {
    by_fact: HashMap<String, HashMap<String, Vec<Snippet>>>,
    vocab: HashMap<String, usize>,
    idf: Vec<f64>,
    token: Regex,
}

/// scikit-learn's default analyzer: lower case, then every `\b\w\w+\b`.
fn tokens(re: &Regex, text: &str) -> Vec<String> {
    re.find_iter(&text.to_lowercase()).map(|m| m.as_str().to_string()).collect()
}

impl Snippets {
    /// Reads `attribute_snippets.json` (a list of `{"relation_id", "target_id", "samples":
    /// [{"name", "text"}]}`) and, if `tfidf_dir` is given, its `idf.npy` and `tfidf_vocab.json`.
    pub fn read(snippets: &Path, tfidf_dir: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(snippets).map_err(|e| Error::io(snippets, e))?;
        let list: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| Error::Input(format!("{}: not a JSON list of attribute snippets ({e})", snippets.display())))?;
        let mut by_fact: HashMap<String, HashMap<String, Vec<Snippet>>> = HashMap::new();
        for (i, el) in list.iter().enumerate() {
            let (Some(rid), Some(tid), Some(samples)) = (el["relation_id"].as_str(), el["target_id"].as_str(), el["samples"].as_array()) else {
                return Err(Error::Input(format!("{}: entry {i} needs relation_id, target_id and samples", snippets.display())));
            };
            let list = by_fact.entry(rid.to_string()).or_default().entry(tid.to_string()).or_default();
            for s in samples {
                list.push(Snippet { name: s["name"].as_str().unwrap_or_default().to_string(), text: s["text"].as_str().unwrap_or_default().to_string() });
            }
        }
        let token = Regex::new(r"\b\w\w+\b").expect("valid pattern");
        let (vocab, idf) = match tfidf_dir {
            Some(dir) => read_tfidf(dir)?,
            None => fit_idf(&token, by_fact.values().flat_map(|m| m.values()).flatten().map(|s| s.text.as_str())),
        };
        Ok(Self { by_fact, vocab, idf, token })
    }

    /// The snippets for (relation, target).
    pub fn about(&self, relation: &str, target: &str) -> &[Snippet] {
        self.by_fact.get(relation).and_then(|m| m.get(target)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The L2-normalised TF-IDF vector of `text`, sparse (vocabulary index → weight).
    fn vector(&self, text: &str) -> BTreeMap<usize, f64> {
        let mut v: BTreeMap<usize, f64> = BTreeMap::new();
        for t in tokens(&self.token, text) {
            if let Some(&i) = self.vocab.get(&t) {
                *v.entry(i).or_default() += 1.0;
            }
        }
        for (i, x) in v.iter_mut() {
            *x *= self.idf[*i];
        }
        let norm = v.values().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.values_mut().for_each(|x| *x /= norm);
        }
        v
    }

    /// The cosine of the TF-IDF vectors of two texts (0 when either has no known word).
    pub fn similarity(&self, a: &str, b: &str) -> f64 {
        let (va, vb) = (self.vector(a), self.vector(b));
        let dot: f64 = va.iter().filter_map(|(i, x)| vb.get(i).map(|y| x * y)).sum();
        let n = |v: &BTreeMap<usize, f64>| v.values().map(|x| x * x).sum::<f64>().sqrt();
        let (na, nb) = (n(&va), n(&vb));
        if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            dot / na / nb
        }
    }
}

fn read_tfidf(dir: &Path) -> Result<(HashMap<String, usize>, Vec<f64>)> {
    let idf_path = dir.join("idf.npy");
    let vocab_path = dir.join("tfidf_vocab.json");
    let idf = candle_core::Tensor::read_npy(&idf_path)
        .map_err(|e| Error::Input(format!("{}: not a readable .npy array ({e})", idf_path.display())))?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let text = std::fs::read_to_string(&vocab_path).map_err(|e| Error::io(&vocab_path, e))?;
    let vocab: HashMap<String, usize> =
        serde_json::from_str(&text).map_err(|e| Error::Input(format!("{}: not a JSON object of word → index ({e})", vocab_path.display())))?;
    if let Some((w, &i)) = vocab.iter().find(|(_, &i)| i >= idf.len()) {
        return Err(Error::Input(format!(
            "{}: `{w}` has index {i}, but idf.npy has {} entries; the two files do not belong together",
            vocab_path.display(),
            idf.len()
        )));
    }
    Ok((vocab, idf))
}

/// scikit-learn's smooth idf over `documents`: ln((1 + n) / (1 + df)) + 1, vocabulary sorted.
fn fit_idf<'a>(token: &Regex, documents: impl Iterator<Item = &'a str>) -> (HashMap<String, usize>, Vec<f64>) {
    let mut df: BTreeMap<String, usize> = BTreeMap::new();
    let mut n = 0usize;
    for d in documents {
        n += 1;
        let mut seen: Vec<String> = tokens(token, d);
        seen.sort();
        seen.dedup();
        for t in seen {
            *df.entry(t).or_default() += 1;
        }
    }
    let vocab = df.keys().enumerate().map(|(i, w)| (w.clone(), i)).collect();
    let idf = df.values().map(|&d| ((1 + n) as f64 / (1 + d) as f64).ln() + 1.0).collect();
    (vocab, idf)
}

/// Tokens of the essence text the perplexity is measured on.
pub const ESSENCE_LENGTH: usize = 100;

/// The reference's `perplexity`: `exp(−(1/N) Σ_{i≥1} log p(x_i | x_<i))` over the first
/// [`ESSENCE_LENGTH`] tokens of `text`, N counting every token.
pub fn perplexity(model: &dyn CausalLm, tok: &Tokenizer, text: &str) -> Result<f64> {
    let pad_id = model.config().pad_id();
    let mut ids = tok.encode_input(text)?;
    ids.truncate(ESSENCE_LENGTH.min(model.config().n_ctx));
    if ids.len() < 2 {
        return Ok(f64::NAN);
    }
    let positions: Vec<(usize, usize)> = (0..ids.len() - 1).map(|p| (0, p)).collect();
    let b = Batch::from_sequences(std::slice::from_ref(&ids), pad_id, model.device())?;
    let logits = model.forward(&b, &TraceSpec::logits(Logits::At(positions)), &[])?.logits.expect("logits were asked for");
    let lp: Vec<Vec<f32>> = crate::editing::optimize::log_softmax(&logits.to_dtype(DType::F32)?)?.to_device(&Device::Cpu)?.to_vec2()?;
    let sum: f64 = lp.iter().zip(&ids[1..]).map(|(row, &t)| f64::from(row[t as usize])).sum();
    Ok((-sum / ids.len() as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tfidf_cosine_by_hand() {
        let token = Regex::new(r"\b\w\w+\b").unwrap();
        // Three documents; "the" in all, "cat" in two, "dog" in one (one-letter words are not tokens).
        let docs = ["The cat a", "the cat sat", "the dog"];
        let (vocab, idf) = fit_idf(&token, docs.iter().copied());
        let idx = |w: &str| vocab[w];
        assert_eq!(vocab.len(), 4);
        // smooth idf: ln(4/4)+1 = 1 for "the", ln(4/3)+1 for "cat", ln(4/2)+1 for "dog" and "sat".
        assert!((idf[idx("the")] - 1.0).abs() < 1e-12);
        assert!((idf[idx("cat")] - ((4.0f64 / 3.0).ln() + 1.0)).abs() < 1e-12);
        let s = Snippets { by_fact: HashMap::new(), vocab, idf, token };
        // "cat cat" vs "the cat": vectors (cat: 2·i_c) and (the: 1, cat: i_c); cosine = i_c / sqrt(1 + i_c²).
        let ic = (4.0f64 / 3.0).ln() + 1.0;
        let want = ic / (1.0 + ic * ic).sqrt();
        assert!((s.similarity("Cat cat", "the CAT") - want).abs() < 1e-12);
        assert_eq!(s.similarity("zebra", "the cat"), 0.0, "no known word");
        assert!((s.similarity("the dog", "the dog") - 1.0).abs() < 1e-12);
    }
}
