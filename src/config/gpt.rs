//! The GPT-2, GPT-J and GPT-NeoX config fields.

use serde_json::Value;

use super::{Family, ModelConfig, Reader, RopeScaling, Rotary, RotaryStyle};
use crate::error::Result;

impl Reader<'_> {
    pub(super) fn gpt2(&self, model_type: String) -> Result<ModelConfig> {
        let d_model = self.usize_any(&["n_embd"])?;
        let n_head = self.usize_any(&["n_head"])?;
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
            n_head,
            n_kv_head: n_head,
            head_dim: d_model / n_head.max(1),
            d_ff: self.opt_usize("n_inner")?.unwrap_or(4 * d_model),
            vocab_size: self.usize_any(&["vocab_size"])?,
            n_ctx: self.usize_any(&["n_positions", "n_ctx"])?,
            layer_norm_eps: self.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            activation: self.activation(&["activation_function"], "gelu_new")?,
            rotary: None,
            parallel_residual: false,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            attention_bias: true,
            scale_attn_by_inverse_layer_idx: self.opt_bool("scale_attn_by_inverse_layer_idx")?.unwrap_or(false),
            eos_token_id: self.eos(),
            decoder: None,
        })
    }

    pub(super) fn gptj(&self, model_type: String) -> Result<ModelConfig> {
        let d_model = self.usize_any(&["n_embd"])?;
        let n_head = self.usize_any(&["n_head"])?;
        let head_dim = d_model / n_head.max(1);
        Ok(ModelConfig {
            family: Family::GptJ,
            model_type,
            n_layer: self.usize_any(&["n_layer"])?,
            d_model,
            n_head,
            n_kv_head: n_head,
            head_dim,
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
                scaling: RopeScaling::None,
            }),
            parallel_residual: true,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: false,
            scale_attn_by_inverse_layer_idx: false,
            eos_token_id: self.eos(),
            decoder: None,
        })
    }

    pub(super) fn neox(&self, model_type: String) -> Result<ModelConfig> {
        let d_model = self.usize_any(&["hidden_size"])?;
        let n_head = self.usize_any(&["num_attention_heads"])?;
        let head_dim = d_model / n_head.max(1);
        let rope_params = self.v.get("rope_parameters").or_else(|| self.v.get("rope_scaling"));
        let nested = |key: &str| rope_params.and_then(|p| p.get(key)).and_then(Value::as_f64);
        // Legacy names (Pythia, NeoX-20B) first, then the newer top-level and nested ones.
        let pct = self.opt_f64("rotary_pct")?.or(self.opt_f64("partial_rotary_factor")?).or_else(|| nested("partial_rotary_factor")).unwrap_or(0.25);
        let base = self.opt_f64("rotary_emb_base")?.or(self.opt_f64("rope_theta")?).or_else(|| nested("rope_theta")).unwrap_or(10000.0);
        if let Some(kind) = rope_params.and_then(|p| p.get("rope_type")).and_then(Value::as_str) {
            if kind != "default" {
                return Err(self.err(format!("rope_type `{kind}` is not supported (only the default rotary embedding)")));
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
            n_kv_head: n_head,
            head_dim,
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
                scaling: RopeScaling::None,
            }),
            parallel_residual: self.opt_bool("use_parallel_residual")?.unwrap_or(true),
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: self.opt_bool("attention_bias")?.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: false,
            eos_token_id: self.eos(),
            decoder: None,
        })
    }
}
