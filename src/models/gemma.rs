//! Gemma 2 (`Gemma2ForCausalLM`) and Gemma 3's text model (`Gemma3ForCausalLM`, `gemma3_text`):
//! `(1 + w)` RMSNorms, embeddings × √d_model, GeGLU (`gelu_pytorch_tanh`), and "sandwich" blocks
//! whose attention and MLP outputs are normed again before they join the residual stream:
//! h ← h + norm₂(attn(norm₁(h))); h ← h + norm₄(mlp(norm₃(h))). Gemma 2 soft-caps attention scores
//! and logits and alternates sliding and global layers; Gemma 3 norms queries and keys per head
//! and gives its sliding layers their own RoPE base.
//!
//! The MLP output hook point is the down-projection's output, before `post_feedforward_layernorm`
//! (the reference's `mlp` module output): a vector added there is normed with it, so it does not
//! join the residual stream unchanged ([`ModelConfig::mlp_out_joins_residual`]).

use candle_core::{DType, Device, Tensor};

use super::decoder::{self, GatedMlp, SelfAttention};
use super::hooks::{self, HookPoint, Hooks};
use super::layers::{self, Linear, RmsNorm};
use super::{Batch, CausalLm, ForwardCtx, ForwardOpts};
use crate::checkpoint::WeightBuilder;
use crate::config::{ModelConfig, Rotary};
use crate::error::Result;

struct Block {
    input_layernorm: RmsNorm,
    attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    mlp: GatedMlp,
    post_feedforward_layernorm: RmsNorm,
}

decoder::gated_block_linears!(Block);

pub struct Gemma {
    cfg: ModelConfig,
    /// The global layers' rotary embedding, and the sliding layers' where it differs (Gemma 3).
    rotary: Rotary,
    local_rotary: Option<Rotary>,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
    device: Device,
    dtype: DType,
}

impl Gemma {
    pub fn load(cfg: &ModelConfig, vb: &WeightBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let (embed_tokens, head) = decoder::embeddings_and_head(vb, cfg)?;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let b = vb.pp("model").pp("layers").pp(i);
                let norm = |name: &str| decoder::rms_norm(&b.pp(name), d, cfg);
                Ok(Block {
                    input_layernorm: norm("input_layernorm")?,
                    attn: SelfAttention::load(&b.pp("self_attn"), cfg)?,
                    post_attention_layernorm: norm("post_attention_layernorm")?,
                    pre_feedforward_layernorm: norm("pre_feedforward_layernorm")?,
                    mlp: GatedMlp::load(&b.pp("mlp"), cfg)?,
                    post_feedforward_layernorm: norm("post_feedforward_layernorm")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = decoder::rms_norm(&vb.pp("model").pp("norm"), d, cfg)?;
        let rotary = cfg.rotary.expect("Gemma configs always carry rotary settings");
        let local_rotary = decoder::decoder(cfg).local_rotary;
        Ok(Self {
            cfg: cfg.clone(),
            rotary,
            local_rotary,
            device: embed_tokens.device().clone(),
            dtype: embed_tokens.dtype(),
            embed_tokens,
            blocks,
            norm,
            head,
        })
    }
}

impl CausalLm for Gemma {
    super::model_basics!();

    fn forward_hooked(&self, batch: &Batch, opts: &ForwardOpts, hk: &mut dyn Hooks) -> Result<Option<Tensor>> {
        let ctx = ForwardCtx::new(&self.cfg, batch, opts)?;
        let dec = decoder::decoder(&self.cfg);
        let (cos, sin) = ctx.rotary(&self.rotary, batch, self.dtype)?;
        let local = self.local_rotary.map(|r| ctx.rotary(&r, batch, self.dtype).map(|t| (r, t))).transpose()?;
        let (mut h, first) = opts.start(hk, |hk| {
            let e = layers::embed(&self.embed_tokens, batch.input_ids())?;
            hooks::hook(hk, HookPoint::TokenEmbeddings, decoder::scale_in_dtype(&e, (self.cfg.d_model as f64).sqrt())?)
        })?;
        for (l, blk) in self.blocks.iter().enumerate().take(ctx.last_layer + 1).skip(first) {
            let rot = match (&local, dec.window(l)) {
                (Some((r, (c, s))), Some(_)) => (r, c, s),
                _ => (&self.rotary, &cos, &sin),
            };
            let x = blk.input_layernorm.forward(&h, ctx.grad)?;
            let a = blk.attn.forward(hk, l, &x, &self.cfg, rot, &ctx, decoder::attn_spec(&self.cfg, l))?;
            h = (blk.post_attention_layernorm.forward(&a, ctx.grad)? + h)?;
            let x = blk.pre_feedforward_layernorm.forward(&h, ctx.grad)?;
            let m = blk.mlp.forward(hk, l, &x, self.cfg.activation)?;
            h = (blk.post_feedforward_layernorm.forward(&m, ctx.grad)? + h)?;
            h = hooks::hook(hk, HookPoint::BlockOut(l), h)?;
        }
        if ctx.last_layer + 1 < self.cfg.n_layer {
            return Ok(None);
        }
        super::head_logits_capped(&h, batch, &opts.logits, &self.norm, &self.head, dec.final_softcap, ctx.grad)
    }

    fn visit_parameters(&mut self, f: &mut super::ParamVisitor) -> Result<()> {
        super::visit_embedding("model.embed_tokens.weight", &mut self.embed_tokens, &mut self.head, "lm_head", f)?;
        for (l, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            // transformers' registration order: attention, MLP, then the norms.
            b.attn.visit(&format!("{p}.self_attn"), f)?;
            b.mlp.visit(&format!("{p}.mlp"), f)?;
            b.input_layernorm.visit(&format!("{p}.input_layernorm"), f)?;
            b.post_attention_layernorm.visit(&format!("{p}.post_attention_layernorm"), f)?;
            b.pre_feedforward_layernorm.visit(&format!("{p}.pre_feedforward_layernorm"), f)?;
            b.post_feedforward_layernorm.visit(&format!("{p}.post_feedforward_layernorm"), f)?;
        }
        self.norm.visit("model.norm", f)
    }
}
