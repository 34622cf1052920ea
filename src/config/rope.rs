//! Rotary position embeddings: how a config names them and the inverse frequencies they give.
//!
//! transformers reads RoPE settings from two generations of fields: `rope_theta` beside a
//! `rope_scaling` object (`type` or `rope_type`, the Hub's Llama 3.1 files), and transformers 5's
//! `rope_parameters` object holding `rope_theta` itself. A `rope_scaling` object, when present,
//! takes the place of `rope_parameters`. Gemma 3 nests one object per attention kind
//! (`full_attention`, `sliding_attention`), or names the local base `rope_local_base_freq`.

use serde::Serialize;
use serde_json::Value;

use super::Reader;
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RotaryStyle {
    /// GPT-J `rotate_every_two`: pairs (x0,x1), (x2,x3), …
    Interleaved,
    /// GPT-NeoX / Llama `rotate_half`: pairs (x_i, x_{i+d/2}).
    HalfSplit,
}

/// How the inverse frequencies are scaled (transformers' `rope_type`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// `default`: θ^(−2i/d).
    None,
    /// `linear`: every frequency divided by `factor` (positions interpolated).
    Linear { factor: f64 },
    /// `dynamic` (NTK-aware): for a forward reaching `seq_len` > `max_position_embeddings` positions the
    /// base grows to θ·(factor·seq_len/max − (factor − 1))^(d/(d−2)); unchanged up to `max`.
    Dynamic { factor: f64, max_position_embeddings: usize },
    /// `llama3` (Llama 3.1/3.2): wavelengths above `original_max / low_freq_factor` divided by
    /// `factor`, below `original_max / high_freq_factor` kept, interpolated in between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rotary {
    /// Number of leading dimensions of each head that are rotated.
    pub dims: usize,
    pub base: f64,
    pub style: RotaryStyle,
    pub scaling: RopeScaling,
}

impl Rotary {
    /// The inverse frequencies `[dims/2]` for a forward whose positions go up to `seq_len`
    /// (only `dynamic` scaling depends on it), as transformers' RoPE initialisers compute them.
    pub fn inv_freq(&self, seq_len: usize) -> Vec<f32> {
        let d = self.dims as f64;
        let base = match self.scaling {
            RopeScaling::Dynamic { factor, max_position_embeddings: max } if seq_len > max => {
                self.base * ((factor * seq_len as f64 / max as f64) - (factor - 1.0)).powf(d / (d - 2.0))
            }
            _ => self.base,
        };
        let plain = (0..self.dims / 2).map(|i| 1.0 / base.powf(2.0 * i as f64 / d));
        match self.scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => plain.map(|f| f as f32).collect(),
            RopeScaling::Linear { factor } => plain.map(|f| (f / factor) as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: old } => plain
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < old / high {
                        f
                    } else if wavelen > old / low {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .map(|f| f as f32)
                .collect(),
        }
    }
}

/// The supported `rope_type`s, for messages.
const SUPPORTED: &str = "default, linear, dynamic, llama3";

impl Reader<'_> {
    /// The RoPE settings object: `rope_scaling` when it is one (it replaces `rope_parameters`,
    /// as in transformers), else `rope_parameters`.
    fn rope_object(&self) -> Option<&Value> {
        ["rope_scaling", "rope_parameters"].iter().find_map(|k| self.v.get(*k).filter(|p| p.is_object()))
    }

    /// A Llama-style family's rotary embedding over whole heads of `head_dim`.
    pub(super) fn llama_rotary(&self, head_dim: usize, default_theta: f64) -> Result<Rotary> {
        let params = self.rope_object();
        if let Some(p) = params.and_then(|p| p.get("full_attention")).filter(|p| p.is_object()) {
            return self.rotary_from(Some(p), head_dim, default_theta);
        }
        self.rotary_from(params, head_dim, default_theta)
    }

    /// Gemma 3's (global, local) rotary embeddings: nested per attention kind, or `rope_theta` +
    /// `rope_scaling` for the global layers and `rope_local_base_freq` for the local ones.
    pub(super) fn gemma3_rotary(&self, head_dim: usize) -> Result<(Rotary, Rotary)> {
        let nested = |kind: &str| self.v.get("rope_parameters").and_then(|p| p.get(kind)).filter(|p| p.is_object());
        let global = match (self.v.get("rope_scaling").filter(|p| p.is_object()), nested("full_attention")) {
            (Some(scaling), _) => self.rotary_from(Some(scaling), head_dim, 1e6)?,
            (None, Some(p)) => self.rotary_from(Some(p), head_dim, 1e6)?,
            (None, None) => self.rotary_from(None, head_dim, 1e6)?,
        };
        let local = match nested("sliding_attention") {
            Some(p) => self.rotary_from(Some(p), head_dim, self.opt_f64("rope_local_base_freq")?.unwrap_or(1e4))?,
            None => Rotary { base: self.opt_f64("rope_local_base_freq")?.unwrap_or(1e4), scaling: RopeScaling::None, ..global },
        };
        Ok((global, local))
    }

    fn rotary_from(&self, params: Option<&Value>, head_dim: usize, default_theta: f64) -> Result<Rotary> {
        let field = |key: &str| -> Result<Option<f64>> {
            match params.and_then(|p| p.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_f64().map(Some).ok_or_else(|| self.err(format!("rope setting `{key}` must be a number, found {x}"))),
            }
        };
        let need =
            |key: &str, kind: &str| -> Result<f64> { field(key)?.ok_or_else(|| self.err(format!("rope type `{kind}` needs `{key}` in its rope settings"))) };
        let base = match field("rope_theta")? {
            Some(t) => t,
            None => self.opt_f64("rope_theta")?.unwrap_or(default_theta),
        };
        let partial = match field("partial_rotary_factor")? {
            Some(p) => Some(p),
            None => self.opt_f64("partial_rotary_factor")?,
        };
        if partial.is_some_and(|p| p != 1.0) {
            return Err(self.err(format!(
                "partial_rotary_factor {} is not supported for {} models (their RoPE rotates whole heads)",
                partial.unwrap_or(1.0),
                self.v.get("model_type").and_then(Value::as_str).unwrap_or("these")
            )));
        }
        let kind = params.and_then(|p| p.get("rope_type").or_else(|| p.get("type"))).and_then(Value::as_str).unwrap_or("default");
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need("factor", kind)? },
            "dynamic" => RopeScaling::Dynamic { factor: need("factor", kind)?, max_position_embeddings: self.usize_any(&["max_position_embeddings"])? },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor", kind)?,
                low_freq_factor: need("low_freq_factor", kind)?,
                high_freq_factor: need("high_freq_factor", kind)?,
                original_max_position_embeddings: match field("original_max_position_embeddings")? {
                    Some(n) => n,
                    None => self.usize_any(&["original_max_position_embeddings", "max_position_embeddings"])? as f64,
                },
            },
            other => {
                return Err(self.err(format!("rope type `{other}` is not supported (supported: {SUPPORTED}); the model's positions would be computed wrongly")))
            }
        };
        if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = scaling {
            if high_freq_factor <= low_freq_factor {
                return Err(self.err(format!("llama3 rope scaling needs high_freq_factor > low_freq_factor, found {high_freq_factor} and {low_freq_factor}")));
            }
        }
        Ok(Rotary { dims: head_dim, base, style: RotaryStyle::HalfSplit, scaling })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot(scaling: RopeScaling) -> Rotary {
        Rotary { dims: 8, base: 10000.0, style: RotaryStyle::HalfSplit, scaling }
    }

    #[test]
    fn scalings_by_hand() {
        let plain = rot(RopeScaling::None).inv_freq(10);
        let want: Vec<f32> = (0..4).map(|i| 10000f64.powf(-(2.0 * i as f64) / 8.0) as f32).collect();
        assert_eq!(plain, want);
        let lin = rot(RopeScaling::Linear { factor: 4.0 }).inv_freq(10);
        assert!(lin.iter().zip(&plain).all(|(a, b)| (a * 4.0 - b).abs() < 1e-7));
        // Dynamic is the default up to max positions, a larger base beyond.
        let dynamic = rot(RopeScaling::Dynamic { factor: 2.0, max_position_embeddings: 32 });
        assert_eq!(dynamic.inv_freq(32), plain);
        let base = 10000.0 * (2.0f64 * 64.0 / 32.0 - 1.0).powf(8.0 / 6.0);
        assert!((dynamic.inv_freq(64)[1] as f64 / base.powf(-0.25) - 1.0).abs() < 1e-6);
        // llama3 with original 16: wavelengths 2π·θ^(2i/8) = 6.28, 62.8, 628, 6283 against 16/4 = 4 and 16/1 = 16:
        // the first between (interpolated), the others above 16 (divided by the factor).
        let l3 = rot(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 16.0 });
        let f = l3.inv_freq(10);
        let smooth = (16.0 / (2.0 * std::f64::consts::PI) - 1.0) / 3.0;
        assert!((f[0] as f64 - ((1.0 - smooth) / 8.0 + smooth)).abs() < 1e-7);
        assert!(f[1..].iter().zip(&plain[1..]).all(|(a, b)| (a * 8.0 - b).abs() < 1e-9));
        // original 100: 6.28 < 25 kept, 62.8 in between, 628 and 6283 > 100 divided.
        let l3 = rot(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 100.0 });
        let f = l3.inv_freq(10);
        assert_eq!(f[0], plain[0]);
        let smooth = (100.0 / (2.0 * std::f64::consts::PI / plain[1] as f64) - 1.0) / 3.0;
        let mid = (1.0 - smooth) * plain[1] as f64 / 8.0 + smooth * plain[1] as f64;
        assert!((f[1] as f64 - mid).abs() < 1e-7);
        assert!((f[2] * 8.0 - plain[2]).abs() < 1e-9 && (f[3] * 8.0 - plain[3]).abs() < 1e-9);
    }
}
