//! GPT-2 (`GPT2LMHeadModel`): learned positions, sequential residual, Conv1D `[in, out]` weights.

use candle_core::{DType, Device, Tensor};

use super::hooks::{self, HookPoint, Hooks};
use super::layers::{self, LayerNorm, Linear, Orientation};
use super::{Batch, CausalLm, ForwardCtx, ForwardOpts, ModuleKind};
use crate::checkpoint::WeightBuilder;
use crate::config::ModelConfig;
use crate::error::Result;

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
}

pub struct Gpt2 {
    cfg: ModelConfig,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    device: Device,
    dtype: DType,
}

pub(crate) fn layer_norm(vb: &WeightBuilder, d: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm { weight: vb.get(&[d], "weight")?, bias: vb.get(&[d], "bias")?, eps })
}

fn conv1d(vb: &WeightBuilder, d_in: usize, d_out: usize) -> Result<Linear> {
    Ok(Linear::new(vb.get(&[d_in, d_out], "weight")?, Some(vb.get(&[d_out], "bias")?), Orientation::InOut))
}

impl Gpt2 {
    pub fn load(cfg: &ModelConfig, vb: &WeightBuilder) -> Result<Self> {
        let (d, f, eps) = (cfg.d_model, cfg.d_ff, cfg.layer_norm_eps);
        let tr = vb.pp("transformer");
        let wte = tr.pp("wte").get(&[cfg.vocab_size, d], "weight")?;
        let wpe = tr.pp("wpe").get(&[cfg.n_ctx, d], "weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let b = tr.pp("h").pp(i);
                Ok(Block {
                    ln_1: layer_norm(&b.pp("ln_1"), d, eps)?,
                    c_attn: conv1d(&b.pp("attn").pp("c_attn"), d, 3 * d)?,
                    attn_proj: conv1d(&b.pp("attn").pp("c_proj"), d, d)?,
                    ln_2: layer_norm(&b.pp("ln_2"), d, eps)?,
                    c_fc: conv1d(&b.pp("mlp").pp("c_fc"), d, f)?,
                    c_proj: conv1d(&b.pp("mlp").pp("c_proj"), f, d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = layer_norm(&tr.pp("ln_f"), d, eps)?;
        let lm_head = vb.pp("lm_head");
        let head = if !cfg.tie_word_embeddings && lm_head.contains("weight") {
            Linear::new(lm_head.get(&[cfg.vocab_size, d], "weight")?, None, Orientation::OutIn)
        } else {
            Linear::new(wte.clone(), None, Orientation::OutIn)
        };
        Ok(Self { cfg: cfg.clone(), device: wte.device().clone(), dtype: wte.dtype(), wte, wpe, blocks, ln_f, head })
    }

    fn attn(&self, blk: &Block, layer: usize, x: &Tensor, ctx: &ForwardCtx, hk: &mut dyn Hooks) -> Result<Tensor> {
        let d = self.cfg.d_model;
        let qkv = hooks::linear(hk, layer, ModuleKind::AttnQkv, &blk.c_attn, x)?;
        let q = layers::split_heads(&qkv.narrow(2, 0, d)?, self.cfg.n_head)?;
        let k = layers::split_heads(&qkv.narrow(2, d, d)?, self.cfg.n_head)?;
        let v = layers::split_heads(&qkv.narrow(2, 2 * d, d)?, self.cfg.n_head)?;
        let mut scale = 1.0 / (self.cfg.head_dim() as f64).sqrt();
        if self.cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        let a = ctx.attend(hk, layer, &q, k, v, scale)?;
        hooks::linear(hk, layer, ModuleKind::AttnOut, &blk.attn_proj, &a)
    }
}

super::block_linears!(Block { AttnQkv => c_attn, AttnOut => attn_proj, MlpUp => c_fc, MlpDown => c_proj });

impl CausalLm for Gpt2 {
    super::model_basics!();

    fn forward_hooked(&self, batch: &Batch, opts: &ForwardOpts, hk: &mut dyn Hooks) -> Result<Option<Tensor>> {
        let ctx = ForwardCtx::new(&self.cfg, batch, opts)?;
        let (mut h, first) = opts.start(hk, |hk| {
            let pos = Tensor::arange(0u32, batch.seq_len() as u32, &self.device)?;
            let tokens = hooks::hook(hk, HookPoint::TokenEmbeddings, layers::embed(&self.wte, batch.input_ids())?)?;
            Ok(tokens.broadcast_add(&self.wpe.index_select(&pos, 0)?)?)
        })?;
        for (l, blk) in self.blocks.iter().enumerate().take(ctx.last_layer + 1).skip(first) {
            let a = self.attn(blk, l, &blk.ln_1.forward(&h, ctx.grad)?, &ctx, hk)?;
            h = (h + a)?;
            let up = hooks::linear(hk, l, ModuleKind::MlpUp, &blk.c_fc, &blk.ln_2.forward(&h, ctx.grad)?)?;
            let key = layers::activation(&up, self.cfg.activation)?;
            let m = hooks::linear(hk, l, ModuleKind::MlpDown, &blk.c_proj, &key)?;
            let m = hooks::hook(hk, HookPoint::MlpOut(l), m)?;
            h = (h + m)?;
            h = hooks::hook(hk, HookPoint::BlockOut(l), h)?;
        }
        if ctx.last_layer + 1 < self.cfg.n_layer {
            return Ok(None);
        }
        super::head_logits(&h, batch, &opts.logits, &self.ln_f, &self.head, ctx.grad)
    }

    fn visit_parameters(&mut self, f: &mut super::ParamVisitor) -> Result<()> {
        super::visit_embedding("transformer.wte.weight", &mut self.wte, &mut self.head, "lm_head", f)?;
        f("transformer.wpe.weight", &mut self.wpe)?;
        for (l, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("transformer.h.{l}");
            b.ln_1.visit(&format!("{p}.ln_1"), f)?;
            b.c_attn.visit(&format!("{p}.attn.c_attn"), f)?;
            b.attn_proj.visit(&format!("{p}.attn.c_proj"), f)?;
            b.ln_2.visit(&format!("{p}.ln_2"), f)?;
            b.c_fc.visit(&format!("{p}.mlp.c_fc"), f)?;
            b.c_proj.visit(&format!("{p}.mlp.c_proj"), f)?;
        }
        self.ln_f.visit("transformer.ln_f", f)
    }
}
