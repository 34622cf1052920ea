//! The model's tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt`), and the one rule every
//! method and evaluation uses to find tokens, whatever the tokenizer:
//!
//! - **Model inputs** are a text's pieces behind the tokens the tokenizer puts before every
//!   sequence (Llama 2/3.1+, Mistral and Gemma add a BOS token; GPT-2, GPT-J, NeoX, Qwen and the
//!   first Llama 3 files add none), as `tokenizer(text)` gives them in transformers
//!   ([`Tokenizer::encode_input`]). Tokens a tokenizer appends (an EOS) are left out: prompts are
//!   continued, not closed.
//! - **A continuation's tokens** (an edit's target, an evaluated answer) are exactly the ids that
//!   follow the prompt's ids in the tokenization of `prompt + continuation`
//!   ([`Tokenizer::continuation`]). This is right for byte-level BPE (`" Paris"` after a prompt) and
//!   for SentencePiece-style tokenizers, which tokenize a leading space differently at the start
//!   of a text (Mistral's `▁` is prepended to every encoded text).
//! - **A span of the text** (the subject) is at the tokens whose characters overlap it in the
//!   prompt's own tokenization ([`Tokenizer::span`]), BOS or not.
//!
//! [`Tokenizer::encode`] gives the bare pieces without special tokens.

use std::ops::Range;
use std::path::Path;

use tokenizers::Tokenizer as HfTokenizer;

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: HfTokenizer,
    /// What the tokenizer puts before every sequence (its BOS), from its post-processor and
    /// `tokenizer_config.json`'s `add_bos_token`.
    prefix: Vec<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json`, with `tokenizer_config.json` beside it when there is one.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = HfTokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        let config = path.parent().map(|d| d.join("tokenizer_config.json")).filter(|p| p.is_file());
        let config: Option<serde_json::Value> = match config {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
                Some(serde_json::from_str(&text).map_err(|e| Error::Tokenizer(format!("{} is not valid JSON: {e}", p.display())))?)
            }
            None => None,
        };
        Self::with_config(inner, config.as_ref())
    }

    /// Builds a GPT-2 style byte-level BPE tokenizer from the legacy vocabulary files.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| Error::Tokenizer(format!("cannot load {} / {}: {e}", vocab.display(), merges.display())))?;
        let mut inner = HfTokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        Self::with_config(inner, None)
    }

    /// A tokenizer from its `tokenizer.json` contents (tests of real tokenizers).
    pub fn from_bytes(json: &[u8], config: Option<&serde_json::Value>) -> Result<Self> {
        let inner = HfTokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(format!("cannot load a tokenizer: {e}")))?;
        Self::with_config(inner, config)
    }

    fn with_config(inner: HfTokenizer, config: Option<&serde_json::Value>) -> Result<Self> {
        let mut tok = Self { inner, prefix: Vec::new() };
        // What the post-processor puts around a probe text's pieces.
        let probe = "a";
        let with = tok.raw(probe, true)?;
        let bare = tok.raw(probe, false)?;
        let at = (0..=with.len().saturating_sub(bare.len())).find(|&i| with[i..].starts_with(&bare)).unwrap_or(0);
        tok.prefix = with[..at].to_vec();
        if with.len() > at + bare.len() {
            tracing::debug!("the tokenizer appends {} special token(s) to every sequence; prompts are encoded without them", with.len() - at - bare.len());
        }
        // transformers' Llama and Gemma tokenizers rebuild their post-processor from `add_bos_token`.
        if let Some(c) = config {
            let bos = c.get("bos_token").and_then(|b| b.as_str().or_else(|| b.get("content").and_then(|x| x.as_str()))).and_then(|b| tok.inner.token_to_id(b));
            match (c.get("add_bos_token").and_then(|v| v.as_bool()), bos) {
                (Some(true), Some(id)) if tok.prefix.is_empty() => tok.prefix = vec![id],
                (Some(false), Some(id)) if tok.prefix == [id] => tok.prefix.clear(),
                _ => {}
            }
        }
        Ok(tok)
    }

    fn raw(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, special).map_err(|e| Error::Tokenizer(format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text's pieces, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.raw(text, false)
    }

    /// The model input for `text`: the tokens the tokenizer puts before every sequence (a BOS),
    /// then the text's pieces.
    pub fn encode_input(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.prefix.clone();
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// The tokens put before every model input (empty for tokenizers without a BOS).
    pub fn bos(&self) -> &[u32] {
        &self.prefix
    }

    /// The ids of `continuation` as they follow `prompt`: the tail of the tokenization of
    /// `prompt + continuation` after the prompt's own ids. When the two tokenizations do not
    /// share the prompt's ids (a merge across the boundary), the continuation's own pieces.
    pub fn continuation(&self, prompt: &str, continuation: &str) -> Result<Vec<u32>> {
        let p = self.encode(prompt)?;
        let whole = self.encode(&format!("{prompt}{continuation}"))?;
        if whole.len() > p.len() && whole.starts_with(&p) {
            return Ok(whole[p.len()..].to_vec());
        }
        tracing::debug!("{continuation:?} does not tokenize as a continuation of {prompt:?}; using its own pieces");
        self.encode(continuation)
    }

    /// The model input of `text` and the half-open token range (in it, BOS included) of the
    /// tokens overlapping the byte range `span` of `text`; an error naming the problem when no
    /// token does, or when the span's end falls inside a token (its last token runs on into the
    /// text after it).
    pub fn span(&self, text: &str, span: Range<usize>) -> Result<(Vec<u32>, Range<usize>)> {
        let (ids, range, run_on) = self.overlapping(text, span.clone())?;
        if let Some(piece) = run_on {
            return Err(Error::Input(format!(
                "{:?} cannot be located in {text:?}: its last token {piece:?} runs on into the text after it; put a space or \
                 punctuation between it and the text that follows",
                &text[span]
            )));
        }
        Ok((ids, range))
    }

    /// [`Self::span`] without the check of the span's end: also the text of the last token when
    /// it runs on past the span into other (non-blank) text.
    pub fn overlapping(&self, text: &str, span: Range<usize>) -> Result<(Vec<u32>, Range<usize>, Option<String>)> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(format!("cannot encode {text:?}: {e}")))?;
        let offsets = enc.get_offsets();
        let n = self.prefix.len();
        let overlapping: Vec<usize> = offsets.iter().enumerate().filter(|(_, &(a, b))| a < span.end && b > span.start).map(|(i, _)| i).collect();
        let (Some(&first), Some(&last)) = (overlapping.first(), overlapping.last()) else {
            return Err(Error::Input(format!("{:?} in {text:?} has no tokens", &text[span])));
        };
        let end = offsets[last].1.min(text.len());
        let run_on = (end > span.end && text.get(span.end..end).is_some_and(|t| t.chars().any(|c| !c.is_whitespace())))
            .then(|| self.decode(&enc.get_ids()[last..=last]).unwrap_or_default());
        let mut ids = self.prefix.clone();
        ids.extend_from_slice(enc.get_ids());
        Ok((ids, n + first..n + last + 1, run_on))
    }

    /// Text of `ids`, special tokens included (as the reference decodes).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(format!("cannot decode {ids:?}: {e}")))
    }

    /// Text of `ids` without the tokens the tokenizer puts before every input.
    pub fn decode_text(&self, ids: &[u32]) -> Result<String> {
        let ids = ids.strip_prefix(self.prefix.as_slice()).unwrap_or(ids);
        self.decode(ids)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
