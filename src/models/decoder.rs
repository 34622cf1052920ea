//! The layers the Llama-style families share (`llama.rs`: Llama, Mistral, Qwen2, Qwen3;
//! `gemma.rs`: Gemma 2 and 3): grouped-query self-attention with half-split RoPE and optional
//! per-head q/k norms, and the gated MLP `down(act(gate(x)) ⊙ up(x))`, whose down-projection input
//! is the ROME/MEMIT key. Weights are `nn.Linear` `[out, in]` under `model.layers.N.`.

use candle_core::Tensor;

use super::gptj::linear;
use super::hooks::{self, HookPoint, Hooks};
use super::layers::{self, Linear, RmsNorm};
use super::{AttnSpec, ForwardCtx, ModuleKind};
use crate::checkpoint::WeightBuilder;
use crate::config::{Activation, DecoderConfig, ModelConfig, Rotary};
use crate::error::Result;

pub(crate) fn rms_norm(vb: &WeightBuilder, dim: usize, cfg: &ModelConfig) -> Result<RmsNorm> {
    let style = decoder(cfg).norm;
    Ok(RmsNorm { weight: vb.get(&[dim], "weight")?, eps: cfg.layer_norm_eps, style })
}

pub(crate) fn decoder(cfg: &ModelConfig) -> &DecoderConfig {
    cfg.decoder.as_ref().expect("the Llama-style families carry a decoder config")
}

pub(crate) struct SelfAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
}

impl SelfAttention {
    /// Loads `self_attn.*` from `vb` (the `self_attn` scope).
    pub fn load(vb: &WeightBuilder, cfg: &ModelConfig) -> Result<Self> {
        let dec = decoder(cfg);
        let (d, q, kv) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim());
        let norm = |name: &str| -> Result<Option<RmsNorm>> { dec.qk_norm.then(|| rms_norm(&vb.pp(name), cfg.head_dim, cfg)).transpose() };
        Ok(Self {
            q_proj: linear(&vb.pp("q_proj"), d, q, dec.qkv_bias)?,
            k_proj: linear(&vb.pp("k_proj"), d, kv, dec.qkv_bias)?,
            v_proj: linear(&vb.pp("v_proj"), d, kv, dec.qkv_bias)?,
            o_proj: linear(&vb.pp("o_proj"), q, d, dec.o_bias)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
        })
    }

    /// Attention of layer `l` over `x` (`[b, t, d_model]`, normed), through the projections' hook
    /// points; returns the output projection's output.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        hk: &mut dyn Hooks,
        l: usize,
        x: &Tensor,
        cfg: &ModelConfig,
        rot: (&Rotary, &Tensor, &Tensor),
        ctx: &ForwardCtx,
        spec: AttnSpec,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
        let q = hooks::linear(hk, l, ModuleKind::AttnQ, &self.q_proj, x)?.reshape((b, t, nh, hd))?;
        let k = hooks::linear(hk, l, ModuleKind::AttnK, &self.k_proj, x)?.reshape((b, t, nkv, hd))?;
        let v = hooks::linear(hk, l, ModuleKind::AttnV, &self.v_proj, x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        // Qwen3 and Gemma 3 norm each head's queries and keys before RoPE.
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(&q, ctx.grad)?, kn.forward(&k, ctx.grad)?),
            _ => (q, k),
        };
        let (rotary, cos, sin) = rot;
        let q = layers::apply_rotary(&q.transpose(1, 2)?, rotary, cos, sin, ctx.grad)?;
        let k = layers::apply_rotary(&k.transpose(1, 2)?, rotary, cos, sin, ctx.grad)?;
        let a = ctx.attend_with(hk, l, &q, k, v, spec)?;
        hooks::linear(hk, l, ModuleKind::AttnOut, &self.o_proj, &a)
    }

    pub fn visit(&mut self, prefix: &str, f: &mut super::ParamVisitor) -> Result<()> {
        self.q_proj.visit(&format!("{prefix}.q_proj"), f)?;
        self.k_proj.visit(&format!("{prefix}.k_proj"), f)?;
        self.v_proj.visit(&format!("{prefix}.v_proj"), f)?;
        self.o_proj.visit(&format!("{prefix}.o_proj"), f)?;
        if let Some(n) = &mut self.q_norm {
            n.visit(&format!("{prefix}.q_norm"), f)?;
        }
        if let Some(n) = &mut self.k_norm {
            n.visit(&format!("{prefix}.k_norm"), f)?;
        }
        Ok(())
    }
}

pub(crate) struct GatedMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl GatedMlp {
    /// Loads `mlp.*` from `vb` (the `mlp` scope).
    pub fn load(vb: &WeightBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (d, f, bias) = (cfg.d_model, cfg.d_ff, decoder(cfg).mlp_bias);
        Ok(Self {
            gate_proj: linear(&vb.pp("gate_proj"), d, f, bias)?,
            up_proj: linear(&vb.pp("up_proj"), d, f, bias)?,
            down_proj: linear(&vb.pp("down_proj"), f, d, bias)?,
        })
    }

    /// `down(act(gate(x)) ⊙ up(x))`, with the down-projection's input (the key) and output (the
    /// MLP output, ROME's v) at their hook points.
    pub fn forward(&self, hk: &mut dyn Hooks, l: usize, x: &Tensor, act: Activation) -> Result<Tensor> {
        let gate = hooks::linear(hk, l, ModuleKind::MlpGate, &self.gate_proj, x)?;
        let up = hooks::linear(hk, l, ModuleKind::MlpUp, &self.up_proj, x)?;
        let key = (layers::activation(&gate, act)? * up)?;
        let m = hooks::linear(hk, l, ModuleKind::MlpDown, &self.down_proj, &key)?;
        hooks::hook(hk, HookPoint::MlpOut(l), m)
    }

    pub fn visit(&mut self, prefix: &str, f: &mut super::ParamVisitor) -> Result<()> {
        self.gate_proj.visit(&format!("{prefix}.gate_proj"), f)?;
        self.up_proj.visit(&format!("{prefix}.up_proj"), f)?;
        self.down_proj.visit(&format!("{prefix}.down_proj"), f)
    }
}

/// Implements [`super::BlockLinears`] for a decoder block with `attn` and `mlp` fields.
macro_rules! gated_block_linears {
    ($block:ty) => {
        impl $crate::models::BlockLinears for $block {
            fn linear(&self, kind: $crate::models::ModuleKind) -> Option<&$crate::models::layers::Linear> {
                $crate::models::decoder::block_linear(&self.attn, &self.mlp, kind)
            }
            fn linear_mut(&mut self, kind: $crate::models::ModuleKind) -> Option<&mut $crate::models::layers::Linear> {
                $crate::models::decoder::block_linear_mut(&mut self.attn, &mut self.mlp, kind)
            }
        }
    };
}
pub(crate) use gated_block_linears;

/// A decoder block's linear module of `kind`.
pub(crate) fn block_linear<'a>(attn: &'a SelfAttention, mlp: &'a GatedMlp, kind: ModuleKind) -> Option<&'a Linear> {
    Some(match kind {
        ModuleKind::AttnQ => &attn.q_proj,
        ModuleKind::AttnK => &attn.k_proj,
        ModuleKind::AttnV => &attn.v_proj,
        ModuleKind::AttnOut => &attn.o_proj,
        ModuleKind::MlpGate => &mlp.gate_proj,
        ModuleKind::MlpUp => &mlp.up_proj,
        ModuleKind::MlpDown => &mlp.down_proj,
        ModuleKind::AttnQkv => return None,
    })
}

/// [`block_linear`], mutably.
pub(crate) fn block_linear_mut<'a>(attn: &'a mut SelfAttention, mlp: &'a mut GatedMlp, kind: ModuleKind) -> Option<&'a mut Linear> {
    Some(match kind {
        ModuleKind::AttnQ => &mut attn.q_proj,
        ModuleKind::AttnK => &mut attn.k_proj,
        ModuleKind::AttnV => &mut attn.v_proj,
        ModuleKind::AttnOut => &mut attn.o_proj,
        ModuleKind::MlpGate => &mut mlp.gate_proj,
        ModuleKind::MlpUp => &mut mlp.up_proj,
        ModuleKind::MlpDown => &mut mlp.down_proj,
        ModuleKind::AttnQkv => return None,
    })
}

/// The token embeddings and the vocabulary head (`lm_head`, or the embeddings when tied).
pub(crate) fn embeddings_and_head(vb: &WeightBuilder, cfg: &ModelConfig) -> Result<(Tensor, Linear)> {
    let embed = vb.pp("model").pp("embed_tokens").get(&[cfg.vocab_size, cfg.d_model], "weight")?;
    let head = if cfg.tie_word_embeddings {
        Linear::new(embed.clone(), None, layers::Orientation::OutIn)
    } else {
        linear(&vb.pp("lm_head"), cfg.d_model, cfg.vocab_size, false)?
    };
    Ok((embed, head))
}

/// The layer's attention settings: its scale, Gemma 2's soft-capping, its window.
pub(crate) fn attn_spec(cfg: &ModelConfig, layer: usize) -> AttnSpec {
    let dec = decoder(cfg);
    AttnSpec { scale: dec.attn_scale, softcap: dec.attn_softcap, window: dec.window(layer) }
}

/// `x · c` with the constant rounded to `x`'s dtype first (Gemma's `√d_model` embedding scale is
/// a tensor in the weights' dtype in transformers).
pub(crate) fn scale_in_dtype(x: &Tensor, c: f64) -> Result<Tensor> {
    let c = Tensor::new(c as f32, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&c)?)
}
