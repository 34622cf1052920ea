//! The model's byte-level BPE tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt`).
//!
//! Text is encoded without special tokens: GPT-2, GPT-J and NeoX prompts carry no BOS in the
//! reference code.

use std::path::Path;

use tokenizers::Tokenizer as HfTokenizer;

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: HfTokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = HfTokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        Ok(Self { inner })
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
        Ok(Self { inner })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(format!("cannot decode {ids:?}: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
