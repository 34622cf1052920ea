//! The Llama-style decoder families: Llama (2, 3, 3.1, 3.2), Mistral, Qwen2/2.5, Qwen3, Gemma 2
//! and Gemma 3 (text). One block shape — RMSNorm, grouped-query attention with half-split RoPE, a
//! gated MLP `down(act(gate(x)) ⊙ up(x))` — with each family's additions, read here with the
//! defaults transformers 5 gives a missing field.

use serde::Serialize;
use serde_json::Value;

use super::{Family, ModelConfig, Reader, Rotary};
use crate::error::Result;

/// How an RMSNorm applies its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormStyle {
    /// Llama: the normalised input, cast back to the compute dtype, times `w`.
    Scale,
    /// Gemma: the normalised input times `1 + w`, in f32, then cast.
    OnePlus,
}

/// Which keys a layer's attention sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Every earlier position.
    Full,
    /// The last `sliding_window` positions (the query's own included).
    Sliding,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecoderConfig {
    pub norm: NormStyle,
    /// Biases on the query, key and value projections (Qwen2; Llama/Qwen3/Gemma `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the attention output projection (`attention_bias` where it covers all four).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// An RMSNorm over each head's queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma's extra norms: the attention and MLP outputs are normed before joining the residual
    /// stream, and the MLP reads its own pre-norm (`pre_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// Token embeddings times √d_model, rounded to the compute dtype (Gemma).
    pub embed_scale: bool,
    /// The attention scores' scale: 1/√head_dim, or Gemma's 1/√query_pre_attn_scalar.
    pub attn_scale: f64,
    /// `tanh(s / c) · c` on the attention scores before the mask (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// `tanh(z / c) · c` on the logits (Gemma 2).
    pub final_softcap: Option<f64>,
    /// The window of the sliding layers (None: every layer attends to everything).
    pub sliding_window: Option<usize>,
    /// Each layer's attention kind.
    pub layer_kinds: Vec<AttentionKind>,
    /// The rotary embedding of the sliding layers when it differs from the global one (Gemma 3's
    /// local base).
    pub local_rotary: Option<Rotary>,
}

impl DecoderConfig {
    /// The window layer `layer` attends within, if any.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.layer_kinds.get(layer) {
            Some(AttentionKind::Sliding) => self.sliding_window,
            _ => None,
        }
    }
}

impl Reader<'_> {
    fn opt_f64_or_null(&self, key: &str, default: Option<f64>) -> Result<Option<f64>> {
        match self.v.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(_) => self.opt_f64(key),
        }
    }

    /// `layer_types` as attention kinds, if the config lists them.
    fn layer_types(&self) -> Result<Option<Vec<AttentionKind>>> {
        let Some(list) = self.v.get("layer_types").filter(|l| !l.is_null()) else { return Ok(None) };
        let Some(items) = list.as_array() else { return Err(self.err(format!("`layer_types` must be a list, found {list}"))) };
        items
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(AttentionKind::Full),
                Some("sliding_attention") => Ok(AttentionKind::Sliding),
                _ => Err(self.err(format!("layer type {t} is not supported (supported: full_attention, sliding_attention)"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub(super) fn decoder(&self, family: Family, model_type: String) -> Result<ModelConfig> {
        let gemma = matches!(family, Family::Gemma2 | Family::Gemma3);
        let d_model = self.usize_any(&["hidden_size"])?;
        let n_head = self.usize_any(&["num_attention_heads"])?;
        let n_layer = self.usize_any(&["num_hidden_layers"])?;
        let n_kv_head = self.opt_usize("num_key_value_heads")?.unwrap_or(n_head);
        // transformers' class defaults where a config leaves the head size out.
        let head_dim = match (self.opt_usize("head_dim")?, family) {
            (Some(h), _) => h,
            (None, Family::Gemma2 | Family::Gemma3) => 256,
            (None, Family::Qwen3) => 128,
            (None, _) => d_model / n_head.max(1),
        };
        if self.opt_bool("use_bidirectional_attention")? == Some(true) {
            return Err(self.err("use_bidirectional_attention is set: this is an encoder (embedding) model, not a causal language model".into()));
        }
        let attention_bias = self.opt_bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Mistral => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let mlp_bias = family == Family::Llama && self.opt_bool("mlp_bias")?.unwrap_or(false);
        let window = || -> Result<Option<usize>> {
            match self.v.get("sliding_window") {
                None => Ok(Some(4096)),
                Some(Value::Null) => Ok(None),
                Some(_) => self.opt_usize("sliding_window"),
            }
        };
        let all = |kind| vec![kind; n_layer];
        let (sliding_window, layer_kinds) = match family {
            Family::Llama => (None, all(AttentionKind::Full)),
            Family::Mistral => match window()? {
                Some(w) => (Some(w), all(AttentionKind::Sliding)),
                None => (None, all(AttentionKind::Full)),
            },
            Family::Qwen2 | Family::Qwen3 => {
                let window = if self.opt_bool("use_sliding_window")?.unwrap_or(false) { window()? } else { None };
                let kinds = match self.layer_types()? {
                    Some(k) => k,
                    None => {
                        let from = self.opt_usize("max_window_layers")?.unwrap_or(28);
                        (0..n_layer).map(|i| if window.is_some() && i >= from { AttentionKind::Sliding } else { AttentionKind::Full }).collect()
                    }
                };
                (window, kinds)
            }
            Family::Gemma2 | Family::Gemma3 => {
                let pattern = if family == Family::Gemma2 { 2 } else { self.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1) };
                let kinds = match self.layer_types()? {
                    Some(k) => k,
                    None => (0..n_layer).map(|i| if (i + 1) % pattern != 0 { AttentionKind::Sliding } else { AttentionKind::Full }).collect(),
                };
                (window()?, kinds)
            }
            _ => unreachable!("decoder() reads the decoder families only"),
        };
        let (rotary, local_rotary) = match family {
            Family::Gemma3 => {
                let (global, local) = self.gemma3_rotary(head_dim)?;
                (global, (local != global).then_some(local))
            }
            _ => (self.llama_rotary(head_dim, 10000.0)?, None),
        };
        let attn_scale = if gemma { 1.0 / self.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0).sqrt() } else { 1.0 / (head_dim as f64).sqrt() };
        let (attn_softcap, final_softcap) = match family {
            Family::Gemma2 => (self.opt_f64_or_null("attn_logit_softcapping", Some(50.0))?, self.opt_f64_or_null("final_logit_softcapping", Some(30.0))?),
            Family::Gemma3 => (self.opt_f64_or_null("attn_logit_softcapping", None)?, self.opt_f64_or_null("final_logit_softcapping", None)?),
            _ => (None, None),
        };
        let activation =
            if gemma { self.activation(&["hidden_activation", "hidden_act"], "gelu_pytorch_tanh")? } else { self.activation(&["hidden_act"], "silu")? };
        let decoder = DecoderConfig {
            norm: if gemma { super::NormStyle::OnePlus } else { super::NormStyle::Scale },
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            sandwich_norms: gemma,
            embed_scale: gemma,
            attn_scale,
            attn_softcap,
            final_softcap,
            sliding_window,
            layer_kinds,
            local_rotary,
        };
        Ok(ModelConfig {
            family,
            model_type,
            n_layer,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            d_ff: self.usize_any(&["intermediate_size"])?,
            vocab_size: self.usize_any(&["vocab_size"])?,
            n_ctx: self.usize_any(&["max_position_embeddings"])?,
            layer_norm_eps: self.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            activation,
            rotary: Some(rotary),
            parallel_residual: false,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(gemma),
            attention_bias: qkv_bias || o_bias,
            scale_attn_by_inverse_layer_idx: false,
            eos_token_id: self.eos(),
            decoder: Some(decoder),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ModelConfig, RopeScaling};
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    fn llama_3_1_8b() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "tie_word_embeddings": false})
    }

    #[test]
    fn llama_3_1_hub_config() {
        let c = parse(llama_3_1_8b()).unwrap();
        assert_eq!((c.family, c.n_head, c.n_kv_head, c.head_dim, c.d_ff), (Family::Llama, 32, 8, 128, 14336));
        let rot = c.rotary.unwrap();
        assert_eq!(rot.base, 500000.0);
        assert_eq!(rot.dims, 128);
        assert!(
            matches!(rot.scaling, RopeScaling::Llama3 { factor, original_max_position_embeddings, .. } if factor == 8.0 && original_max_position_embeddings == 8192.0)
        );
        let d = c.decoder.unwrap();
        assert!(!d.qkv_bias && !d.qk_norm && d.sliding_window.is_none() && d.window(3).is_none());
        assert_eq!(d.attn_scale, 1.0 / 128f64.sqrt());
        // The transformers 5 spelling gives the same settings.
        let mut v5 = llama_3_1_8b();
        let obj = v5.as_object_mut().unwrap();
        obj.remove("rope_theta");
        let mut params = obj.remove("rope_scaling").unwrap();
        params["rope_theta"] = json!(500000.0);
        obj.insert("rope_parameters".into(), params);
        assert_eq!(parse(v5).unwrap().rotary, c.rotary);
    }

    #[test]
    fn unknown_rope_types_are_refused_by_name() {
        let mut v = llama_3_1_8b();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("`yarn`") && err.contains("llama3"), "{err}");
        let mut v = llama_3_1_8b();
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        assert_eq!(parse(v).unwrap().rotary.unwrap().scaling, RopeScaling::Linear { factor: 2.0 });
        let mut v = llama_3_1_8b();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        assert!(parse(v).unwrap_err().to_string().contains("low_freq_factor"));
    }

    #[test]
    fn family_defaults() {
        let base = json!({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 6, "vocab_size": 100, "max_position_embeddings": 64});
        let with = |t: &str, extra: Value| {
            let mut v = base.clone();
            v["model_type"] = json!(t);
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse(v).unwrap()
        };
        let mistral = with("mistral", json!({}));
        assert_eq!(mistral.decoder.as_ref().unwrap().window(0), Some(4096));
        assert_eq!(with("mistral", json!({"sliding_window": null})).decoder.unwrap().window(0), None);
        let q2 = with("qwen2", json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 4}));
        let d = q2.decoder.unwrap();
        assert!(d.qkv_bias && !d.o_bias);
        assert_eq!((d.window(3), d.window(4)), (None, Some(8)));
        assert_eq!(with("qwen2", json!({})).decoder.unwrap().window(5), None);
        let q3 = with("qwen3", json!({"head_dim": 32}));
        assert_eq!((q3.head_dim, q3.q_dim()), (32, 128));
        assert!(q3.decoder.unwrap().qk_norm);
        let g2 = with("gemma2", json!({"head_dim": 16, "query_pre_attn_scalar": 24}));
        assert!(g2.tie_word_embeddings);
        let d = g2.decoder.unwrap();
        assert_eq!((d.attn_softcap, d.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!((d.window(0), d.window(1)), (Some(4096), None));
        assert_eq!(d.attn_scale, 1.0 / 24f64.sqrt());
        assert_eq!(g2.activation, crate::config::Activation::GeluTanh);
        let g3 = with("gemma3_text", json!({"head_dim": 16, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}));
        let d = g3.decoder.unwrap();
        assert_eq!((d.window(4), d.window(5)), (Some(4096), None));
        assert_eq!(g3.rotary.unwrap().base, 1e6);
        assert_eq!(g3.rotary.unwrap().scaling, RopeScaling::Linear { factor: 8.0 });
        let local = d.local_rotary.unwrap();
        assert_eq!((local.base, local.scaling), (1e4, RopeScaling::None));
        let nested = with(
            "gemma3_text",
            json!({"head_dim": 16, "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}),
        );
        assert_eq!((nested.rotary, nested.decoder.unwrap().local_rotary), (g3.rotary, Some(local)));
        let err = ModelConfig::from_json(&json!({"model_type": "gemma3"}), Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("gemma3_text"), "{err}");
    }

    #[test]
    fn head_counts_must_group() {
        let err = parse(json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 3, "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 64}))
        .unwrap_err()
        .to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }
}
