//! Llama (`LlamaForCausalLM`: Llama 2, 3, 3.1, 3.2) and the decoders built the same way:
//! Mistral (a sliding window), Qwen2/2.5 (q/k/v biases, optional sliding layers), Qwen3
//! (per-head q/k RMSNorm, an explicit head size). Pre-norm blocks:
//! h ← h + attn(norm₁(h)); h ← h + mlp(norm₂(h)).

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
    mlp: GatedMlp,
}

decoder::gated_block_linears!(Block);

pub struct Llama {
    cfg: ModelConfig,
    rotary: Rotary,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
    device: Device,
    dtype: DType,
}

impl Llama {
    pub fn load(cfg: &ModelConfig, vb: &WeightBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let (embed_tokens, head) = decoder::embeddings_and_head(vb, cfg)?;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let b = vb.pp("model").pp("layers").pp(i);
                Ok(Block {
                    input_layernorm: decoder::rms_norm(&b.pp("input_layernorm"), d, cfg)?,
                    attn: SelfAttention::load(&b.pp("self_attn"), cfg)?,
                    post_attention_layernorm: decoder::rms_norm(&b.pp("post_attention_layernorm"), d, cfg)?,
                    mlp: GatedMlp::load(&b.pp("mlp"), cfg)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = decoder::rms_norm(&vb.pp("model").pp("norm"), d, cfg)?;
        let rotary = cfg.rotary.expect("Llama-style configs always carry rotary settings");
        Ok(Self { cfg: cfg.clone(), rotary, device: embed_tokens.device().clone(), dtype: embed_tokens.dtype(), embed_tokens, blocks, norm, head })
    }
}

impl CausalLm for Llama {
    super::model_basics!();

    fn forward_hooked(&self, batch: &Batch, opts: &ForwardOpts, hk: &mut dyn Hooks) -> Result<Option<Tensor>> {
        let ctx = ForwardCtx::new(&self.cfg, batch, opts)?;
        let (cos, sin) = ctx.rotary(&self.rotary, batch, self.dtype)?;
        let (mut h, first) = opts.start(hk, |hk| hooks::hook(hk, HookPoint::TokenEmbeddings, layers::embed(&self.embed_tokens, batch.input_ids())?))?;
        for (l, blk) in self.blocks.iter().enumerate().take(ctx.last_layer + 1).skip(first) {
            let x = blk.input_layernorm.forward(&h, ctx.grad)?;
            let a = blk.attn.forward(hk, l, &x, &self.cfg, (&self.rotary, &cos, &sin), &ctx, decoder::attn_spec(&self.cfg, l))?;
            h = (h + a)?;
            let x = blk.post_attention_layernorm.forward(&h, ctx.grad)?;
            let m = blk.mlp.forward(hk, l, &x, self.cfg.activation)?;
            h = (m + h)?;
            h = hooks::hook(hk, HookPoint::BlockOut(l), h)?;
        }
        if ctx.last_layer + 1 < self.cfg.n_layer {
            return Ok(None);
        }
        super::head_logits(&h, batch, &opts.logits, &self.norm, &self.head, ctx.grad)
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
        }
        self.norm.visit("model.norm", f)
    }
}
