//! GPT-NeoX / Pythia (`GPTNeoXForCausalLM`): fused per-head `[q|k|v]` projection, half-split
//! rotary on a fraction of each head, two LayerNorms, parallel or sequential residual.

use candle_core::{DType, Device, Tensor};

use super::gpt2::layer_norm;
use super::gptj::linear;
use super::hooks::{self, HookPoint, Hooks};
use super::layers::{self, LayerNorm, Linear, Orientation};
use super::{Batch, CausalLm, ForwardCtx, ForwardOpts, ModuleKind};
use crate::checkpoint::WeightBuilder;
use crate::config::{ModelConfig, Rotary};
use crate::error::Result;

struct Block {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    query_key_value: Linear,
    dense: Linear,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

pub struct GptNeoX {
    cfg: ModelConfig,
    rotary: Rotary,
    embed_in: Tensor,
    blocks: Vec<Block>,
    final_layer_norm: LayerNorm,
    head: Linear,
    device: Device,
    dtype: DType,
}

impl GptNeoX {
    pub fn load(cfg: &ModelConfig, vb: &WeightBuilder) -> Result<Self> {
        let (d, f, eps) = (cfg.d_model, cfg.d_ff, cfg.layer_norm_eps);
        let nx = vb.pp("gpt_neox");
        let embed_in = nx.pp("embed_in").get(&[cfg.vocab_size, d], "weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let b = nx.pp("layers").pp(i);
                let attn = b.pp("attention");
                Ok(Block {
                    input_layernorm: layer_norm(&b.pp("input_layernorm"), d, eps)?,
                    post_attention_layernorm: layer_norm(&b.pp("post_attention_layernorm"), d, eps)?,
                    query_key_value: linear(&attn.pp("query_key_value"), d, 3 * d, cfg.attention_bias)?,
                    dense: linear(&attn.pp("dense"), d, d, cfg.attention_bias)?,
                    dense_h_to_4h: linear(&b.pp("mlp").pp("dense_h_to_4h"), d, f, true)?,
                    dense_4h_to_h: linear(&b.pp("mlp").pp("dense_4h_to_h"), f, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(&nx.pp("final_layer_norm"), d, eps)?;
        let head = if cfg.tie_word_embeddings {
            Linear::new(embed_in.clone(), None, Orientation::OutIn)
        } else {
            linear(&vb.pp("embed_out"), d, cfg.vocab_size, false)?
        };
        let rotary = cfg.rotary.expect("NeoX configs always carry rotary settings");
        Ok(Self { cfg: cfg.clone(), rotary, device: embed_in.device().clone(), dtype: embed_in.dtype(), embed_in, blocks, final_layer_norm, head })
    }

    #[allow(clippy::too_many_arguments)]
    fn attn(&self, blk: &Block, l: usize, x: &Tensor, cos: &Tensor, sin: &Tensor, ctx: &ForwardCtx, hk: &mut dyn Hooks) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, hd) = (self.cfg.n_head, self.cfg.head_dim());
        // The fused projection is laid out per head as [q | k | v].
        let qkv = hooks::linear(hk, l, ModuleKind::AttnQkv, &blk.query_key_value, x)?.reshape((b, t, nh, 3 * hd))?.transpose(1, 2)?;
        let q = layers::apply_rotary(&qkv.narrow(3, 0, hd)?, &self.rotary, cos, sin, ctx.grad)?;
        let k = layers::apply_rotary(&qkv.narrow(3, hd, hd)?, &self.rotary, cos, sin, ctx.grad)?;
        let v = qkv.narrow(3, 2 * hd, hd)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let a = ctx.attend(hk, l, &q, k, v, scale)?;
        hooks::linear(hk, l, ModuleKind::AttnOut, &blk.dense, &a)
    }
}

super::block_linears!(Block { AttnQkv => query_key_value, AttnOut => dense, MlpUp => dense_h_to_4h, MlpDown => dense_4h_to_h });

impl CausalLm for GptNeoX {
    super::model_basics!();

    fn forward_hooked(&self, batch: &Batch, opts: &ForwardOpts, hk: &mut dyn Hooks) -> Result<Option<Tensor>> {
        let ctx = ForwardCtx::new(&self.cfg, batch, opts)?;
        let (cos, sin) = ctx.rotary(&self.rotary, batch, self.dtype)?;
        let (mut h, first) = opts.start(hk, |hk| hooks::hook(hk, HookPoint::TokenEmbeddings, layers::embed(&self.embed_in, batch.input_ids())?))?;
        for (l, blk) in self.blocks.iter().enumerate().take(ctx.last_layer + 1).skip(first) {
            let a = self.attn(blk, l, &blk.input_layernorm.forward(&h, ctx.grad)?, &cos, &sin, &ctx, hk)?;
            // Parallel: the MLP reads the block input; sequential: it reads input + attention.
            let (mlp_in, residual) = if self.cfg.parallel_residual {
                (h.clone(), (a + &h)?)
            } else {
                let ha = (a + &h)?;
                (ha.clone(), ha)
            };
            let x = blk.post_attention_layernorm.forward(&mlp_in, ctx.grad)?;
            let up = hooks::linear(hk, l, ModuleKind::MlpUp, &blk.dense_h_to_4h, &x)?;
            let key = layers::activation(&up, self.cfg.activation)?;
            let m = hooks::linear(hk, l, ModuleKind::MlpDown, &blk.dense_4h_to_h, &key)?;
            let m = hooks::hook(hk, HookPoint::MlpOut(l), m)?;
            h = (m + residual)?;
            h = hooks::hook(hk, HookPoint::BlockOut(l), h)?;
        }
        if ctx.last_layer + 1 < self.cfg.n_layer {
            return Ok(None);
        }
        super::head_logits(&h, batch, &opts.logits, &self.final_layer_norm, &self.head, ctx.grad)
    }

    fn visit_parameters(&mut self, f: &mut super::ParamVisitor) -> Result<()> {
        super::visit_embedding("gpt_neox.embed_in.weight", &mut self.embed_in, &mut self.head, "embed_out", f)?;
        for (l, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("gpt_neox.layers.{l}");
            b.input_layernorm.visit(&format!("{p}.input_layernorm"), f)?;
            b.post_attention_layernorm.visit(&format!("{p}.post_attention_layernorm"), f)?;
            b.query_key_value.visit(&format!("{p}.attention.query_key_value"), f)?;
            b.dense.visit(&format!("{p}.attention.dense"), f)?;
            b.dense_h_to_4h.visit(&format!("{p}.mlp.dense_h_to_4h"), f)?;
            b.dense_4h_to_h.visit(&format!("{p}.mlp.dense_4h_to_h"), f)?;
        }
        self.final_layer_norm.visit("gpt_neox.final_layer_norm", f)
    }
}
