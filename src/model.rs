//! Load a model end to end: files → config → checkpoint → family implementation (+ tokenizer).

use candle_core::{DType, Device};

use crate::checkpoint::{Checkpoint, WeightBuilder, WeightSource};
use crate::config::{Family, ModelConfig};
use crate::error::{Error, Result};
use crate::hub::{ModelFiles, TokenizerFiles};
use crate::models::{gemma::Gemma, gpt2::Gpt2, gpt_neox::GptNeoX, gptj::GptJ, llama::Llama, CausalLm};
use crate::tokenizer::Tokenizer;

pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Option<Tokenizer>,
    pub files: ModelFiles,
    /// Dtype the checkpoint stores (most of) its weights in.
    pub storage_dtype: Option<String>,
}

impl LoadedModel {
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| no_tokenizer(&self.files))
    }

    /// The token used to right-pad batches: the reference sets `pad_token = eos_token`.
    pub fn pad_id(&self) -> u32 {
        self.config().pad_id()
    }
}

/// The error for a model directory without tokenizer files.
pub fn no_tokenizer(files: &ModelFiles) -> Error {
    Error::Tokenizer(format!(
        "{} has no tokenizer.json (nor vocab.json + merges.txt); copy the tokenizer files of the base model next to config.json",
        files.dir().display()
    ))
}

/// Builds the family's model from already-opened weights.
pub fn build_model(cfg: &ModelConfig, source: &WeightSource, dtype: DType, device: &Device) -> Result<Box<dyn CausalLm>> {
    let vb = WeightBuilder::new(source, cfg.family.prefix(), dtype, device);
    Ok(match cfg.family {
        Family::Gpt2 => Box::new(Gpt2::load(cfg, &vb)?),
        Family::GptJ => Box::new(GptJ::load(cfg, &vb)?),
        Family::GptNeoX => Box::new(GptNeoX::load(cfg, &vb)?),
        Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3 => Box::new(Llama::load(cfg, &vb)?),
        Family::Gemma2 | Family::Gemma3 => Box::new(Gemma::load(cfg, &vb)?),
    })
}

pub fn load_model(files: ModelFiles, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let cfg = ModelConfig::from_file(&files.config)?;
    tracing::debug!(?cfg, "model config");
    let ckpt = Checkpoint::open_files(files.weights.clone())?;
    let storage_dtype = ckpt.storage_dtype().map(|d| format!("{d:?}").to_ascii_lowercase());
    let source = WeightSource::Checkpoint(ckpt);
    let model = build_model(&cfg, &source, dtype, device)?;
    let tokenizer = load_tokenizer(&files)?;
    Ok(LoadedModel { model, tokenizer, files, storage_dtype })
}

/// The model's tokenizer, if its directory has one (cheap: no weights are read).
pub fn load_tokenizer(files: &ModelFiles) -> Result<Option<Tokenizer>> {
    Ok(match &files.tokenizer {
        Some(TokenizerFiles::Json(p)) => Some(Tokenizer::from_file(p)?),
        Some(TokenizerFiles::VocabMerges { vocab, merges }) => Some(Tokenizer::from_vocab_merges(vocab, merges)?),
        None => None,
    })
}
