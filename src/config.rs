//! Model configuration, read from a Hugging Face `config.json` of any supported family.
//!
//! Each family names the same quantities differently (GPT-2 `n_embd`, NeoX `hidden_size`, …) and
//! NeoX has two generations of rotary field names; everything is normalised into [`ModelConfig`].

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Gpt2,
    GptJ,
    GptNeoX,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::GptJ => "gptj",
            Family::GptNeoX => "gpt_neox",
        }
    }

    /// The prefix the reference module names carry (`transformer.h.17.mlp.c_proj`).
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Gpt2 | Family::GptJ => "transformer.",
            Family::GptNeoX => "gpt_neox.",
        }
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
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_accurate" => Some(Self::GeluTanh),
            "gelu" | "gelu_python" => Some(Self::GeluErf),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RotaryStyle {
    /// GPT-J `rotate_every_two`: pairs (x0,x1), (x2,x3), …
    Interleaved,
    /// GPT-NeoX `rotate_half`: pairs (x_i, x_{i+d/2}).
    HalfSplit,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rotary {
    /// Number of leading dimensions of each head that are rotated.
    pub dims: usize,
    pub base: f64,
    pub style: RotaryStyle,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub family: Family,
    pub model_type: String,
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    /// Context length (`n_positions` / `max_position_embeddings`).
    pub n_ctx: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub rotary: Option<Rotary>,
    /// Attention and MLP read the same block input (GPT-J; NeoX with `use_parallel_residual`).
    pub parallel_residual: bool,
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections (NeoX `attention_bias`; GPT-2 always; GPT-J never).
    pub attention_bias: bool,
    /// GPT-2 `scale_attn_by_inverse_layer_idx`.
    pub scale_attn_by_inverse_layer_idx: bool,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })?;
        Self::from_json(&value, path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let r = Reader { v, path };
        let model_type = match v.get("model_type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => {
                // Very old configs lack model_type; fall back to the architecture name.
                let arch = v
                    .get("architectures")
                    .and_then(|a| a.get(0))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match arch {
                    "GPT2LMHeadModel" => "gpt2".into(),
                    "GPTJForCausalLM" => "gptj".into(),
                    "GPTNeoXForCausalLM" => "gpt_neox".into(),
                    _ => return Err(r.err("no `model_type` field".into())),
                }
            }
        };
        let cfg = match model_type.as_str() {
            "gpt2" => r.gpt2(model_type)?,
            "gptj" => r.gptj(model_type)?,
            "gpt_neox" => r.neox(model_type)?,
            _ => {
                return Err(Error::UnsupportedArchitecture {
                    model_type,
                    path: path.to_path_buf(),
                })
            }
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::Config { path: path.to_path_buf(), reason };
        if self.n_layer == 0 || self.d_model == 0 || self.n_head == 0 || self.vocab_size == 0 {
            return Err(bad("layer count, width, head count and vocabulary size must be positive".into()));
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return Err(bad(format!(
                "hidden size {} is not divisible by the head count {}",
                self.d_model, self.n_head
            )));
        }
        if let Some(rot) = self.rotary {
            if rot.dims % 2 != 0 || rot.dims > self.head_dim() {
                return Err(bad(format!(
                    "rotary dimension {} must be even and at most the head dimension {}",
                    rot.dims,
                    self.head_dim()
                )));
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
            Some(x) => x
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(format!("`{key}` must be a non-negative integer, found {x}"))),
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
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, found {x}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, found {x}"))),
        }
    }

    fn activation(&self, keys: &[&str], default: &str) -> Result<Activation> {
        let name = keys
            .iter()
            .find_map(|k| self.v.get(*k).and_then(Value::as_str))
            .unwrap_or(default);
        Activation::parse(name).ok_or_else(|| {
            self.err(format!(
                "unsupported activation `{name}` (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu)"
            ))
        })
    }

    fn eos(&self) -> Option<u32> {
        match self.v.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as u32),
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|n| n as u32),
            _ => None,
        }
    }

    fn gpt2(&self, model_type: String) -> Result<ModelConfig> {
        let d_model = self.usize_any(&["n_embd"])?;
        if self.opt_bool("scale_attn_weights")? == Some(false) {
            return Err(self.err("scale_attn_weights=false is not supported".into()));
        }
        if self.opt_bool("reorder_and_upcast_attn")? == Some(true) {
            tracing::debug!("reorder_and_upcast_attn only changes rounding; attention is computed in f32 anyway");
        }
        Ok(ModelConfig {
            family: Family::Gpt2,
            model_type,
            n_layer: self.usize_any(&["n_layer"])?,
            d_model,
            n_head: self.usize_any(&["n_head"])?,
            d_ff: self.opt_usize("n_inner")?.unwrap_or(4 * d_model),
            vocab_size: self.usize_any(&["vocab_size"])?,
            n_ctx: self.usize_any(&["n_positions", "n_ctx"])?,
            layer_norm_eps: self.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            activation: self.activation(&["activation_function"], "gelu_new")?,
            rotary: None,
            parallel_residual: false,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            attention_bias: true,
            scale_attn_by_inverse_layer_idx: self
                .opt_bool("scale_attn_by_inverse_layer_idx")?
                .unwrap_or(false),
            eos_token_id: self.eos(),
        })
    }

    fn gptj(&self, model_type: String) -> Result<ModelConfig> {
        let d_model = self.usize_any(&["n_embd"])?;
        let n_head = self.usize_any(&["n_head"])?;
        let head_dim = d_model / n_head.max(1);
        Ok(ModelConfig {
            family: Family::GptJ,
            model_type,
            n_layer: self.usize_any(&["n_layer"])?,
            d_model,
            n_head,
            d_ff: self.opt_usize("n_inner")?.unwrap_or(4 * d_model),
            vocab_size: self.usize_any(&["vocab_size"])?,
            n_ctx: self.usize_any(&["n_positions"])?,
            layer_norm_eps: self.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            activation: self.activation(&["activation_function"], "gelu_new")?,
            rotary: Some(Rotary {
                // HF applies rotary to the whole head when rotary_dim is null.
                dims: self.opt_usize("rotary_dim")?.unwrap_or(head_dim),
                base: 10000.0,
                style: RotaryStyle::Interleaved,
            }),
            parallel_residual: true,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: false,
            scale_attn_by_inverse_layer_idx: false,
            eos_token_id: self.eos(),
        })
    }

    fn neox(&self, model_type: String) -> Result<ModelConfig> {
        let d_model = self.usize_any(&["hidden_size"])?;
        let n_head = self.usize_any(&["num_attention_heads"])?;
        let head_dim = d_model / n_head.max(1);
        let rope_params = self.v.get("rope_parameters").or_else(|| self.v.get("rope_scaling"));
        let nested = |key: &str| rope_params.and_then(|p| p.get(key)).and_then(Value::as_f64);
        // Legacy names (Pythia, NeoX-20B) first, then the newer top-level and nested ones.
        let pct = self
            .opt_f64("rotary_pct")?
            .or(self.opt_f64("partial_rotary_factor")?)
            .or_else(|| nested("partial_rotary_factor"))
            .unwrap_or(0.25);
        let base = self
            .opt_f64("rotary_emb_base")?
            .or(self.opt_f64("rope_theta")?)
            .or_else(|| nested("rope_theta"))
            .unwrap_or(10000.0);
        if let Some(kind) = rope_params.and_then(|p| p.get("rope_type")).and_then(Value::as_str) {
            if kind != "default" {
                return Err(self.err(format!(
                    "rope_type `{kind}` is not supported (only the default rotary embedding)"
                )));
            }
        }
        if !(0.0..=1.0).contains(&pct) {
            return Err(self.err(format!("rotary fraction {pct} must be between 0 and 1")));
        }
        Ok(ModelConfig {
            family: Family::GptNeoX,
            model_type,
            n_layer: self.usize_any(&["num_hidden_layers"])?,
            d_model,
            n_head,
            d_ff: self.opt_usize("intermediate_size")?.unwrap_or(4 * d_model),
            vocab_size: self.usize_any(&["vocab_size"])?,
            n_ctx: self.usize_any(&["max_position_embeddings"])?,
            layer_norm_eps: self.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
            activation: self.activation(&["hidden_act"], "gelu")?,
            rotary: Some(Rotary {
                // HF: int(head_size * rotary_pct), truncating.
                dims: (head_dim as f64 * pct) as usize,
                base,
                style: RotaryStyle::HalfSplit,
            }),
            parallel_residual: self.opt_bool("use_parallel_residual")?.unwrap_or(true),
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: self.opt_bool("attention_bias")?.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: false,
            eos_token_id: self.eos(),
        })
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
        let err = parse(json!({"model_type": "llama"})).unwrap_err().to_string();
        assert!(err.contains("llama") && err.contains("gpt2"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse(json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "vocab_size": 10, "n_positions": 4}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("n_layer"), "{err}");
    }
}
