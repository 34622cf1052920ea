//! Model configuration, read from a Hugging Face `config.json` of any supported family.
//!
//! Each family names the same quantities differently (GPT-2 `n_embd`, NeoX `hidden_size`, …),
//! NeoX has two generations of rotary field names and the Llama-style families two generations of
//! RoPE fields (`rope_theta` + `rope_scaling`, transformers 5's `rope_parameters`); everything is
//! normalised into [`ModelConfig`]. The GPT families are read in `gpt.rs`, the decoder families
//! (Llama, Mistral, Qwen 2/3, Gemma 2/3) in `decoder.rs`, their RoPE settings in `rope.rs`.

mod decoder;
mod gpt;
mod rope;

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

pub use decoder::{AttentionKind, DecoderConfig, NormStyle};
pub use rope::{RopeScaling, Rotary, RotaryStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Gpt2,
    GptJ,
    GptNeoX,
    /// `LlamaForCausalLM`: Llama 2, 3, 3.1, 3.2 and the fine-tunes that reuse the class.
    Llama,
    Mistral,
    /// Qwen2 and Qwen2.5.
    Qwen2,
    Qwen3,
    Gemma2,
    /// Gemma 3's text model (`gemma3_text`).
    Gemma3,
}

/// The `model_type`s `edit` reads, for messages.
pub const SUPPORTED_MODEL_TYPES: &str = "gpt2, gptj, gpt_neox, llama, mistral, qwen2, qwen3, gemma2, gemma3_text";

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::GptJ => "gptj",
            Family::GptNeoX => "gpt_neox",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3",
        }
    }

    /// The prefix the reference module names carry (`transformer.h.17.mlp.c_proj`,
    /// `model.layers.5.mlp.down_proj`).
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Gpt2 | Family::GptJ => "transformer.",
            Family::GptNeoX => "gpt_neox.",
            _ => "model.",
        }
    }

    /// Whether the family is one of the Llama-style decoders (RMSNorm, gated MLP, `model.layers`).
    pub fn is_decoder(self) -> bool {
        !matches!(self, Family::Gpt2 | Family::GptJ | Family::GptNeoX)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
    Relu,
    /// `silu` / `swish`: x·σ(x) (Llama's SwiGLU gate).
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_accurate" => Some(Self::GeluTanh),
            "gelu" | "gelu_python" => Some(Self::GeluErf),
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub family: Family,
    pub model_type: String,
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    /// Key/value heads (grouped-query attention); `n_head` where every head has its own.
    pub n_kv_head: usize,
    /// Width of one attention head (`d_model / n_head` unless the config names one).
    pub head_dim: usize,
    /// The MLP's inner width: the ROME/MEMIT key width.
    pub d_ff: usize,
    pub vocab_size: usize,
    /// Context length (`n_positions` / `max_position_embeddings`).
    pub n_ctx: usize,
    /// LayerNorm's or RMSNorm's ε.
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// The rotary embedding (of the global-attention layers where local ones differ).
    pub rotary: Option<Rotary>,
    /// Attention and MLP read the same block input (GPT-J; NeoX with `use_parallel_residual`).
    pub parallel_residual: bool,
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections (NeoX `attention_bias`; GPT-2 always; GPT-J never).
    pub attention_bias: bool,
    /// GPT-2 `scale_attn_by_inverse_layer_idx`.
    pub scale_attn_by_inverse_layer_idx: bool,
    pub eos_token_id: Option<u32>,
    /// What the Llama-style families add (None for GPT-2, GPT-J, NeoX).
    pub decoder: Option<DecoderConfig>,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Width of all query heads together (`d_model` except where the config names a head size).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// The token batches are right-padded with: the end-of-text token, as the reference sets
    /// `pad_token = eos_token` (0 when the config names none). Padded positions are masked, so
    /// every function that runs a model takes it from the model's config.
    pub fn pad_id(&self) -> u32 {
        self.eos_token_id.unwrap_or(0)
    }

    /// Whether a vector added to a layer's MLP output reaches the block output unchanged (every
    /// family but Gemma, which norms the MLP output before the residual sum).
    pub fn mlp_out_joins_residual(&self) -> bool {
        !self.decoder.as_ref().is_some_and(|d| d.sandwich_norms)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), reason: format!("not valid JSON: {e}") })?;
        Self::from_json(&value, path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let r = Reader { v, path };
        let model_type = match v.get("model_type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => {
                // Very old configs lack model_type; fall back to the architecture name.
                let arch = v.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str).unwrap_or("");
                match arch {
                    "GPT2LMHeadModel" => "gpt2".into(),
                    "GPTJForCausalLM" => "gptj".into(),
                    "GPTNeoXForCausalLM" => "gpt_neox".into(),
                    "LlamaForCausalLM" => "llama".into(),
                    _ => return Err(r.err("no `model_type` field".into())),
                }
            }
        };
        let cfg = match model_type.as_str() {
            "gpt2" => r.gpt2(model_type)?,
            "gptj" => r.gptj(model_type)?,
            "gpt_neox" => r.neox(model_type)?,
            "llama" => r.decoder(Family::Llama, model_type)?,
            "mistral" => r.decoder(Family::Mistral, model_type)?,
            "qwen2" => r.decoder(Family::Qwen2, model_type)?,
            "qwen3" => r.decoder(Family::Qwen3, model_type)?,
            "gemma2" => r.decoder(Family::Gemma2, model_type)?,
            "gemma3_text" => r.decoder(Family::Gemma3, model_type)?,
            "gemma3" => {
                return Err(r.err(
                    "this is a Gemma 3 vision-language checkpoint (`Gemma3ForConditionalGeneration`); edit reads Gemma 3's text \
                     models (`model_type` gemma3_text, e.g. google/gemma-3-1b-it); the multimodal 4B-27B checkpoints are not supported yet"
                        .into(),
                ))
            }
            _ => return Err(Error::UnsupportedArchitecture { model_type, path: path.to_path_buf(), supported: SUPPORTED_MODEL_TYPES }),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::Config { path: path.to_path_buf(), reason };
        if self.n_layer == 0 || self.d_model == 0 || self.n_head == 0 || self.vocab_size == 0 || self.head_dim == 0 || self.d_ff == 0 {
            return Err(bad("layer count, width, MLP width, head count, head size and vocabulary size must be positive".into()));
        }
        if self.decoder.is_none() && !self.d_model.is_multiple_of(self.n_head) {
            return Err(bad(format!("hidden size {} is not divisible by the head count {}", self.d_model, self.n_head)));
        }
        if self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return Err(bad(format!(
                "the attention head count {} is not a multiple of the key/value head count {} (num_key_value_heads)",
                self.n_head, self.n_kv_head
            )));
        }
        if let Some(rot) = self.rotary {
            if rot.dims % 2 != 0 || rot.dims > self.head_dim {
                return Err(bad(format!("rotary dimension {} must be even and at most the head dimension {}", rot.dims, self.head_dim)));
            }
        }
        if let Some(d) = &self.decoder {
            if d.layer_kinds.len() != self.n_layer {
                return Err(bad(format!("`layer_types` lists {} layers, but the model has {}", d.layer_kinds.len(), self.n_layer)));
            }
        }
        Ok(())
    }
}

struct Reader<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl Reader<'_> {
    fn err(&self, reason: String) -> Error {
        Error::Config { path: self.path.to_path_buf(), reason }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| self.err(format!("`{key}` must be a non-negative integer, found {x}"))),
        }
    }

    fn usize_any(&self, keys: &[&str]) -> Result<usize> {
        for k in keys {
            if let Some(n) = self.opt_usize(k)? {
                return Ok(n);
            }
        }
        Err(self.err(format!("missing field `{}`", keys.join("` / `"))))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_f64().map(Some).ok_or_else(|| self.err(format!("`{key}` must be a number, found {x}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_bool().map(Some).ok_or_else(|| self.err(format!("`{key}` must be true or false, found {x}"))),
        }
    }

    fn activation(&self, keys: &[&str], default: &str) -> Result<Activation> {
        let name = keys.iter().find_map(|k| self.v.get(*k).and_then(Value::as_str)).unwrap_or(default);
        Activation::parse(name)
            .ok_or_else(|| self.err(format!("unsupported activation `{name}` (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu, silu)")))
    }

    fn eos(&self) -> Option<u32> {
        match self.v.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as u32),
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|n| n as u32),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    #[test]
    fn neox_legacy_and_new_rotary_fields_agree() {
        let base = json!({"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 256, "vocab_size": 100, "max_position_embeddings": 32});
        let mut legacy = base.clone();
        legacy["rotary_pct"] = json!(0.25);
        legacy["rotary_emb_base"] = json!(500.0);
        let mut newer = base.clone();
        newer["rope_parameters"] = json!({"rope_type": "default", "partial_rotary_factor": 0.25, "rope_theta": 500.0});
        let a = parse(legacy).unwrap();
        let b = parse(newer).unwrap();
        assert_eq!(a.rotary, b.rotary);
        assert_eq!(a.rotary.unwrap().dims, 4);
        assert_eq!(a.rotary.unwrap().base, 500.0);
        let mut seq = base;
        seq["use_parallel_residual"] = json!(false);
        assert!(!parse(seq).unwrap().parallel_residual);
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let err = parse(json!({"model_type": "mamba"})).unwrap_err().to_string();
        assert!(err.contains("mamba") && err.contains("gpt2") && err.contains("llama") && err.contains("gemma3_text"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse(json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "vocab_size": 10, "n_positions": 4})).unwrap_err().to_string();
        assert!(err.contains("n_layer"), "{err}");
    }
}
