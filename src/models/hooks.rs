//! Hook points: the one place where every family calls out during a forward pass. A hook sees
//! the activation at a named point and may replace it, so that tracing activations, adding
//! vectors (ROME/MEMIT), capturing a linear module's input and output gradient (MEND: add a
//! zero `Var` at its output), corrupting embeddings and restoring clean states (causal tracing)
//! need no per-family code.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::modules::ModuleKind;
use super::{Intervention, Logits, Resume, Site, Trace, TraceSpec};
use crate::error::Result;

/// A named point of a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// Token embeddings `[b, t, d_model]`, before any position embedding is added.
    TokenEmbeddings,
    /// The input of one of a layer's linear modules, `[b, t, in]` (for `MlpDown`: the ROME/MEMIT key).
    LinearIn(usize, ModuleKind),
    /// The output of one of a layer's linear modules, bias included, `[b, t, out]`.
    LinearOut(usize, ModuleKind),
    /// The MLP output before it joins the residual stream (ROME's v).
    MlpOut(usize),
    /// The block output, the residual stream after the block (MEMIT's z).
    BlockOut(usize),
    /// Attention keys `[b, heads, t, head_dim]` as the scores read them (after rotary).
    AttnKeys(usize),
    /// Attention values `[b, heads, t, head_dim]`.
    AttnValues(usize),
}

/// What a forward pass calls at every hook point.
pub trait Hooks {
    /// Whether [`Hooks::at`] wants to see `point` (unwanted points cost nothing).
    fn wants(&self, point: HookPoint) -> bool;
    /// Sees (and may replace) the activation at `point`.
    fn at(&mut self, point: HookPoint, h: Tensor) -> Result<Tensor>;
}

/// No hooks: a plain forward.
pub struct NoHooks;

impl Hooks for NoHooks {
    fn wants(&self, _: HookPoint) -> bool {
        false
    }
    fn at(&mut self, _: HookPoint, h: Tensor) -> Result<Tensor> {
        Ok(h)
    }
}

/// How a hooked forward runs, apart from its hooks.
#[derive(Clone, Debug, Default)]
pub struct ForwardOpts {
    pub logits: Logits,
    /// Stop after this layer's block (no logits then).
    pub stop_after: Option<usize>,
    /// Use the differentiable kernels (a hook adds a `Var`, or a weight is one).
    pub differentiable: bool,
    /// Start from a saved residual stream instead of the embeddings.
    pub resume: Option<Resume>,
}

impl ForwardOpts {
    /// The residual stream a forward starts from and the first block to run: `resume`'s (its
    /// `BlockOut` hook called) or the token embeddings through `embed`.
    pub(crate) fn start(&self, hooks: &mut dyn Hooks, embed: impl FnOnce(&mut dyn Hooks) -> Result<Tensor>) -> Result<(Tensor, usize)> {
        match &self.resume {
            Some(r) => Ok((hook(hooks, HookPoint::BlockOut(r.after), r.hidden.clone())?, r.after + 1)),
            None => Ok((embed(hooks)?, 0)),
        }
    }
}

/// Calls `hooks` at `point` when it wants to see it.
pub(crate) fn hook(hooks: &mut dyn Hooks, point: HookPoint, h: Tensor) -> Result<Tensor> {
    if hooks.wants(point) {
        hooks.at(point, h)
    } else {
        Ok(h)
    }
}

/// A layer's linear module with its input and output hook points.
pub(crate) fn linear(hooks: &mut dyn Hooks, layer: usize, kind: ModuleKind, lin: &super::layers::Linear, x: &Tensor) -> Result<Tensor> {
    let x = hook(hooks, HookPoint::LinearIn(layer, kind), x.clone())?;
    let y = lin.forward(&x)?;
    hook(hooks, HookPoint::LinearOut(layer, kind), y)
}

/// [`super::CausalLm::forward`] as hooks: interventions add their vectors at the MLP or block
/// output, and the trace records keys (the MLP down-projection's input), MLP outputs and block
/// outputs, after any intervention there.
pub(crate) struct TraceHooks<'a> {
    pub spec: &'a TraceSpec,
    pub interventions: &'a [Intervention],
    pub trace: Trace,
}

impl TraceHooks<'_> {
    fn intervenes(&self, layer: usize, site: Site) -> bool {
        self.interventions.iter().any(|iv| iv.layer == layer && iv.site == site)
    }
}

fn record(map: &mut BTreeMap<usize, Tensor>, layer: usize, h: &Tensor) {
    map.insert(layer, h.clone());
}

impl Hooks for TraceHooks<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        match point {
            HookPoint::LinearIn(l, ModuleKind::MlpDown) => self.spec.keys.contains(&l),
            HookPoint::MlpOut(l) => self.spec.mlp_out.contains(&l) || self.intervenes(l, Site::MlpOut),
            HookPoint::BlockOut(l) => self.spec.block_out.contains(&l) || self.intervenes(l, Site::BlockOut),
            HookPoint::AttnKeys(l) | HookPoint::AttnValues(l) => self.spec.attn_kv.contains(&l),
            _ => false,
        }
    }

    fn at(&mut self, point: HookPoint, h: Tensor) -> Result<Tensor> {
        match point {
            HookPoint::LinearIn(l, ModuleKind::MlpDown) => {
                record(&mut self.trace.keys, l, &h);
                Ok(h)
            }
            HookPoint::MlpOut(l) => {
                let h = super::intervene(h, l, Site::MlpOut, self.interventions)?;
                if self.spec.mlp_out.contains(&l) {
                    record(&mut self.trace.mlp_out, l, &h);
                }
                Ok(h)
            }
            HookPoint::BlockOut(l) => {
                let h = super::intervene(h, l, Site::BlockOut, self.interventions)?;
                if self.spec.block_out.contains(&l) {
                    record(&mut self.trace.block_out, l, &h);
                }
                Ok(h)
            }
            HookPoint::AttnKeys(l) => {
                record(&mut self.trace.attn_keys, l, &h);
                Ok(h)
            }
            HookPoint::AttnValues(l) => {
                record(&mut self.trace.attn_values, l, &h);
                Ok(h)
            }
            _ => Ok(h),
        }
    }
}
