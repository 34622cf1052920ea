//! GPT-J (`GPTJForCausalLM`): one LayerNorm feeding parallel attention and MLP, interleaved
//! rotary on the first `rotary_dim` features of each head, `nn.Linear` `[out, in]` weights.

use candle_core::{DType, Device, Tensor};

use super::gpt2::layer_norm;
use super::hooks::{self, HookPoint, Hooks};
use super::layers::{self, LayerNorm, Linear, Orientation};
use super::{Batch, CausalLm, ForwardCtx, ForwardOpts, ModuleKind};
use crate::checkpoint::WeightBuilder;
use crate::config::{ModelConfig, Rotary};
use crate::error::Result;

struct Block {
    ln_1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    fc_in: Linear,
    fc_out: Linear,
}

pub struct GptJ {
    cfg: ModelConfig,
    rotary: Rotary,
    wte: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    device: Device,
    dtype: DType,
}

pub(crate) fn linear(vb: &WeightBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
    let w = vb.get(&[d_out, d_in], "weight")?;
    let b = if bias { Some(vb.get(&[d_out], "bias")?) } else { None };
    Ok(Linear::new(w, b, Orientation::OutIn))
}

impl GptJ {
    pub fn load(cfg: &ModelConfig, vb: &WeightBuilder) -> Result<Self> {
        let (d, f, eps) = (cfg.d_model, cfg.d_ff, cfg.layer_norm_eps);
        let tr = vb.pp("transformer");
        let wte = tr.pp("wte").get(&[cfg.vocab_size, d], "weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let b = tr.pp("h").pp(i);
                let attn = b.pp("attn");
                Ok(Block {
                    ln_1: layer_norm(&b.pp("ln_1"), d, eps)?,
                    q_proj: linear(&attn.pp("q_proj"), d, d, false)?,
                    k_proj: linear(&attn.pp("k_proj"), d, d, false)?,
                    v_proj: linear(&attn.pp("v_proj"), d, d, false)?,
                    out_proj: linear(&attn.pp("out_proj"), d, d, false)?,
                    fc_in: linear(&b.pp("mlp").pp("fc_in"), d, f, true)?,
                    fc_out: linear(&b.pp("mlp").pp("fc_out"), f, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = layer_norm(&tr.pp("ln_f"), d, eps)?;
        let head = if cfg.tie_word_embeddings {
            Linear::new(wte.clone(), None, Orientation::OutIn)
        } else {
            let lm = vb.pp("lm_head");
            let bias = lm.contains("bias");
            linear(&lm, d, cfg.vocab_size, bias)?
        };
        let rotary = cfg.rotary.expect("GPT-J configs always carry rotary settings");
        Ok(Self { cfg: cfg.clone(), rotary, device: wte.device().clone(), dtype: wte.dtype(), wte, blocks, ln_f, head })
    }

    #[allow(clippy::too_many_arguments)]
    fn attn(&self, blk: &Block, l: usize, x: &Tensor, cos: &Tensor, sin: &Tensor, ctx: &ForwardCtx, hk: &mut dyn Hooks) -> Result<Tensor> {
        let nh = self.cfg.n_head;
        let q = layers::split_heads(&hooks::linear(hk, l, ModuleKind::AttnQ, &blk.q_proj, x)?, nh)?;
        let k = layers::split_heads(&hooks::linear(hk, l, ModuleKind::AttnK, &blk.k_proj, x)?, nh)?;
        let v = layers::split_heads(&hooks::linear(hk, l, ModuleKind::AttnV, &blk.v_proj, x)?, nh)?;
        let q = layers::apply_rotary(&q, &self.rotary, cos, sin, ctx.grad)?;
        let k = layers::apply_rotary(&k, &self.rotary, cos, sin, ctx.grad)?;
        let scale = 1.0 / (self.cfg.head_dim() as f64).sqrt();
        let a = ctx.attend(hk, l, &q, k, v, scale)?;
        hooks::linear(hk, l, ModuleKind::AttnOut, &blk.out_proj, &a)
    }
}

super::block_linears!(Block { AttnQ => q_proj, AttnK => k_proj, AttnV => v_proj, AttnOut => out_proj, MlpUp => fc_in, MlpDown => fc_out });

impl CausalLm for GptJ {
    super::model_basics!();

    fn forward_hooked(&self, batch: &Batch, opts: &ForwardOpts, hk: &mut dyn Hooks) -> Result<Option<Tensor>> {
        let ctx = ForwardCtx::new(&self.cfg, batch, opts)?;
        let (cos, sin) = ctx.rotary(&self.rotary, batch, self.dtype)?;
        let (mut h, first) = opts.start(hk, |hk| hooks::hook(hk, HookPoint::TokenEmbeddings, layers::embed(&self.wte, batch.input_ids())?))?;
        for (l, blk) in self.blocks.iter().enumerate().take(ctx.last_layer + 1).skip(first) {
            // Parallel residual: attention and MLP both read the same normed block input.
            let x = blk.ln_1.forward(&h, ctx.grad)?;
            let a = self.attn(blk, l, &x, &cos, &sin, &ctx, hk)?;
            let up = hooks::linear(hk, l, ModuleKind::MlpUp, &blk.fc_in, &x)?;
            let key = layers::activation(&up, self.cfg.activation)?;
            let m = hooks::linear(hk, l, ModuleKind::MlpDown, &blk.fc_out, &key)?;
            let m = hooks::hook(hk, HookPoint::MlpOut(l), m)?;
            h = ((a + m)? + h)?;
            h = hooks::hook(hk, HookPoint::BlockOut(l), h)?;
        }
        if ctx.last_layer + 1 < self.cfg.n_layer {
            return Ok(None);
        }
        super::head_logits(&h, batch, &opts.logits, &self.ln_f, &self.head, ctx.grad)
    }

    fn visit_parameters(&mut self, f: &mut super::ParamVisitor) -> Result<()> {
        super::visit_embedding("transformer.wte.weight", &mut self.wte, &mut self.head, "lm_head", f)?;
        for (l, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("transformer.h.{l}");
            b.ln_1.visit(&format!("{p}.ln_1"), f)?;
            b.q_proj.visit(&format!("{p}.attn.q_proj"), f)?;
            b.k_proj.visit(&format!("{p}.attn.k_proj"), f)?;
            b.v_proj.visit(&format!("{p}.attn.v_proj"), f)?;
            b.out_proj.visit(&format!("{p}.attn.out_proj"), f)?;
            b.fc_in.visit(&format!("{p}.mlp.fc_in"), f)?;
            b.fc_out.visit(&format!("{p}.mlp.fc_out"), f)?;
        }
        self.ln_f.visit("transformer.ln_f", f)
    }
}
