//! The model families behind one trait, and the vocabulary of hook points every editing
//! method speaks: keys (MLP down-projection inputs), MLP outputs, block outputs, and
//! interventions that add vectors at (row, position) pairs.

mod batch;
pub mod causal_attention;
mod decoder;
mod gelu;
pub mod gemma;
pub mod gpt2;
pub mod gpt_neox;
pub mod gptj;
mod half_matmul;
pub mod hooks;
pub mod layers;
pub mod llama;
pub mod modules;
mod resume;

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device, Tensor};

pub use batch::Batch;
pub use hooks::{ForwardOpts, HookPoint, Hooks, NoHooks};
pub use modules::{EditableModule, ModuleKind, WeightLayout};
pub use resume::{backprop_per_block, first_positions, shift_positions, KvPrefix, Resume, ResumeCache};

use crate::config::ModelConfig;
use crate::error::Result;

/// A place in a block where an intervention adds its vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// The MLP output (down-projection incl. bias), before it joins the residual stream: ROME's v.
    MlpOut,
    /// The block output (residual stream after the block): MEMIT's z.
    BlockOut,
}

/// Adds vectors at given (row, position) pairs of one layer's `site`.
///
/// `deltas` is either `[d_model]` (one vector added at every pair, as ROME does for all its
/// context templates) or `[positions.len(), d_model]` (one vector per pair, e.g. one per
/// request in a batched MEMIT optimisation). Gradients w.r.t. `deltas` are exact when it is a
/// `Var` (or derived from one).
#[derive(Clone, Debug)]
pub struct Intervention {
    pub layer: usize,
    pub site: Site,
    pub positions: Vec<(usize, usize)>,
    pub deltas: Tensor,
}

/// Which logits to compute: the vocabulary projection is the largest matmul of a small
/// forward, so callers ask only for what they read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Logits {
    /// None (e.g. statistics collection).
    #[default]
    None,
    /// `[batch, seq, vocab]`.
    All,
    /// `[batch, vocab]` at each row's last real token.
    Last,
    /// `[n, vocab]` at the given (row, position) pairs.
    At(Vec<(usize, usize)>),
}

/// What a forward pass should record and return.
#[derive(Clone, Debug, Default)]
pub struct TraceSpec {
    /// Layers whose MLP down-projection input ("key", `[b, t, d_ff]`) is recorded.
    pub keys: BTreeSet<usize>,
    /// Layers whose MLP output (`[b, t, d_model]`, after any intervention there) is recorded.
    pub mlp_out: BTreeSet<usize>,
    /// Layers whose block output (`[b, t, d_model]`, after any intervention there) is recorded.
    pub block_out: BTreeSet<usize>,
    /// Layers whose attention keys and values (`[b, heads, t, head_dim]`) are recorded.
    pub attn_kv: BTreeSet<usize>,
    /// Stop after this layer's block (no logits are computed then).
    pub stop_after: Option<usize>,
    pub logits: Logits,
    /// Use differentiable kernels even without interventions (e.g. when a weight is a `Var`).
    /// Interventions turn this on by themselves.
    pub differentiable: bool,
    /// Continue from a saved residual stream (see [`Resume`]); traces and interventions must
    /// then be at its block output or above.
    pub resume: Option<Resume>,
}

impl TraceSpec {
    pub fn logits(logits: Logits) -> Self {
        Self { logits, ..Self::default() }
    }

    /// The deepest layer a forward must reach to fill this trace.
    pub fn deepest_layer(&self) -> Option<usize> {
        [&self.keys, &self.mlp_out, &self.block_out, &self.attn_kv].iter().filter_map(|s| s.last().copied()).max()
    }
}

/// What a forward pass returns.
#[derive(Debug, Default)]
pub struct Trace {
    pub keys: BTreeMap<usize, Tensor>,
    pub mlp_out: BTreeMap<usize, Tensor>,
    pub block_out: BTreeMap<usize, Tensor>,
    pub attn_keys: BTreeMap<usize, Tensor>,
    pub attn_values: BTreeMap<usize, Tensor>,
    pub logits: Option<Tensor>,
}

/// A causal language model we can run, trace, intervene on, and edit.
pub trait CausalLm: Send + Sync {
    fn config(&self) -> &ModelConfig;
    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;

    /// One forward pass over a right-padded batch, calling `hooks` at every [`HookPoint`];
    /// returns the logits `opts` asks for. The one forward each family implements.
    fn forward_hooked(&self, batch: &Batch, opts: &ForwardOpts, hooks: &mut dyn Hooks) -> Result<Option<Tensor>>;

    /// One forward pass recording `spec`'s trace, with `interventions` added.
    fn forward(&self, batch: &Batch, spec: &TraceSpec, interventions: &[Intervention]) -> Result<Trace> {
        check_trace_request(self.config(), batch, spec, interventions)?;
        let opts = ForwardOpts {
            logits: spec.logits.clone(),
            stop_after: spec.stop_after,
            differentiable: spec.differentiable || !interventions.is_empty(),
            resume: spec.resume.clone(),
        };
        let mut hooks = hooks::TraceHooks { spec, interventions, trace: Trace::default() };
        let logits = self.forward_hooked(batch, &opts, &mut hooks)?;
        let mut trace = hooks.trace;
        trace.logits = logits;
        Ok(trace)
    }

    /// The stored weight of a linear module (as in the checkpoint: see [`EditableModule::layout`]).
    fn weight(&self, module: &str) -> Result<Tensor>;

    /// Replaces the stored weight of a linear module (same shape and layout as [`Self::weight`]).
    fn set_weight(&mut self, module: &str, weight: Tensor) -> Result<()>;

    /// Visits every parameter, as the reference's `named_parameters()` lists them (checkpoint
    /// names with the family prefix, e.g. `transformer.h.0.mlp.c_proj.bias`; stored layout; a
    /// tied output head is not listed separately). The visitor may replace a tensor (same shape).
    fn visit_parameters(&mut self, f: &mut ParamVisitor) -> Result<()>;

    /// The parameters whose name contains `pattern` (the reference fine-tuning's selection rule:
    /// `transformer.h.0.mlp.c_proj` gives its weight and bias, `transformer.h.3` the whole block).
    fn parameters_matching(&mut self, pattern: &str) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        self.visit_parameters(&mut |name, t| {
            if name.contains(pattern) {
                out.push((name.to_string(), t.clone()));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// One parameter by name.
    fn parameter(&mut self, name: &str) -> Result<Tensor> {
        let mut found = None;
        self.visit_parameters(&mut |n, t| {
            if n == name {
                found = Some(t.clone());
            }
            Ok(())
        })?;
        found.ok_or_else(|| crate::Error::Input(format!("`{name}` is not a parameter of this model")))
    }

    /// Replaces one parameter by name (same shape; converted to the model's dtype and device).
    fn set_parameter(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let mut found = false;
        self.visit_parameters(&mut |n, t| {
            if n == name {
                if t.dims() != value.dims() {
                    return Err(crate::Error::Input(format!("new value for `{name}` has shape {:?}, expected {:?}", value.dims(), t.dims())));
                }
                *t = value.to_dtype(t.dtype())?.to_device(t.device())?;
                found = true;
            }
            Ok(())
        })?;
        if found {
            Ok(())
        } else {
            Err(crate::Error::Input(format!("`{name}` is not a parameter of this model")))
        }
    }
}

/// What [`CausalLm::visit_parameters`] calls for each parameter.
pub type ParamVisitor<'a> = dyn FnMut(&str, &mut Tensor) -> Result<()> + 'a;

/// Visits the token embedding `name`, then re-ties `head` to it when the head shares it.
pub(crate) fn visit_embedding(name: &str, wte: &mut Tensor, head: &mut layers::Linear, head_name: &str, f: &mut ParamVisitor) -> Result<()> {
    let tied = head.weight.id() == wte.id();
    f(name, wte)?;
    if tied {
        head.weight = wte.clone();
        Ok(())
    } else {
        head.visit(head_name, f)
    }
}

/// Refuses interventions and trace points outside the model.
fn check_trace_request(cfg: &ModelConfig, batch: &Batch, spec: &TraceSpec, interventions: &[Intervention]) -> Result<()> {
    let n_layer = cfg.n_layer;
    for iv in interventions {
        if iv.layer >= n_layer {
            return Err(crate::Error::Input(format!("intervention at layer {} but the model has {n_layer} layers", iv.layer)));
        }
        batch.check_positions(&iv.positions)?;
    }
    for l in spec.keys.iter().chain(&spec.mlp_out).chain(&spec.block_out).chain(&spec.attn_kv) {
        if *l >= n_layer {
            return Err(crate::Error::Input(format!("trace requested at layer {l} but the model has {n_layer} layers")));
        }
    }
    if let Some(r) = &spec.resume {
        // Nothing at or below the resumed block runs except its output hook.
        let below = |l: usize| l <= r.after;
        let hidden_ok = r.after < n_layer && r.hidden.dims() == [batch.batch_size(), batch.seq_len(), cfg.d_model];
        if !hidden_ok
            || spec.keys.iter().chain(&spec.mlp_out).chain(&spec.attn_kv).any(|&l| below(l))
            || spec.block_out.iter().any(|&l| l < r.after)
            || interventions.iter().any(|iv| iv.layer < r.after || (iv.layer == r.after && iv.site == Site::MlpOut))
        {
            return Err(crate::Error::Internal(format!(
                "a forward resumed after block {} (hidden {:?}) cannot trace or intervene below it",
                r.after,
                r.hidden.dims()
            )));
        }
        if let Some(p) = &r.prefix {
            let last = spec.stop_after.unwrap_or(n_layer - 1).min(n_layer - 1);
            p.check(batch, r.after + 1..=last, cfg.n_ctx)?;
        }
    }
    Ok(())
}

/// How one layer's attention scores its keys, beyond the causal and padding mask.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnSpec {
    pub scale: f64,
    /// Gemma 2's `tanh(s / c) · c` on the scaled scores.
    pub softcap: Option<f64>,
    /// Only the last `window` positions (the query's own included) are seen.
    pub window: Option<usize>,
}

impl AttnSpec {
    pub fn scaled(scale: f64) -> Self {
        Self { scale, softcap: None, window: None }
    }
}

/// Computes the per-forward inputs every family shares: the additive attention bias
/// (causal + key padding, and the cached positions of a resumed forward's [`KvPrefix`]), the
/// rotary tables, and the flags derived from the options.
pub(crate) struct ForwardCtx {
    pub grad: bool,
    pub attn_bias: Tensor,
    pub last_layer: usize,
    prefix: Option<KvPrefix>,
    lengths: Vec<usize>,
    /// The bias of the sliding-window layers, when their window is shorter than the forward.
    window_bias: Option<(usize, Tensor)>,
}

impl ForwardCtx {
    pub fn new(cfg: &ModelConfig, batch: &Batch, opts: &ForwardOpts) -> Result<Self> {
        let prefix = opts.resume.as_ref().and_then(|r| r.prefix.clone()).filter(|p| p.width() > 0);
        let start = prefix.as_ref().map_or(0, KvPrefix::width);
        if start + batch.seq_len() > cfg.n_ctx {
            return Err(crate::Error::Input(format!("sequence of {} tokens exceeds the model's context of {}", start + batch.seq_len(), cfg.n_ctx)));
        }
        let last_layer = match opts.stop_after {
            Some(l) => l.min(cfg.n_layer - 1),
            None => cfg.n_layer - 1,
        };
        let mut attn_bias = batch.attention_bias()?;
        if let Some(p) = &prefix {
            attn_bias = Tensor::cat(&[&p.bias(batch.seq_len(), batch.device())?, &attn_bias], 3)?;
        }
        let window_bias = match cfg.decoder.as_ref().and_then(|d| d.sliding_window) {
            Some(w) if w < start + batch.seq_len() => Some((w, window_bias(batch, prefix.as_ref(), w)?)),
            _ => None,
        };
        Ok(Self { grad: opts.differentiable, attn_bias, last_layer, prefix, lengths: batch.lengths().to_vec(), window_bias })
    }

    /// cos/sin tables for the batch's positions: `[t, rot/2]`, or `[b, t, rot/2]` when rows
    /// start at different positions (a resumed forward's prefix).
    pub fn rotary(&self, rot: &crate::config::Rotary, batch: &Batch, dtype: DType) -> Result<(Tensor, Tensor)> {
        let t = batch.seq_len();
        let Some(p) = &self.prefix else {
            return layers::rotary_tables(rot, t, dtype, batch.device());
        };
        let (cos, sin) = layers::rotary_tables(rot, p.width() + t, dtype, batch.device())?;
        let idx = Tensor::from_vec(p.positions(t), batch.batch_size() * t, batch.device())?;
        let per_row = |table: Tensor| -> Result<Tensor> { Ok(table.index_select(&idx, 0)?.reshape((batch.batch_size(), t, rot.dims / 2))?) };
        Ok((per_row(cos)?, per_row(sin)?))
    }

    /// Attention of `q` over `k`/`v` (`[b, heads, t, head_dim]`, keys after rotary), through the
    /// keys/values hook points, with a resumed forward's cached positions in front.
    pub fn attend(&self, hk: &mut dyn Hooks, layer: usize, q: &Tensor, k: Tensor, v: Tensor, scale: f64) -> Result<Tensor> {
        self.attend_with(hk, layer, q, k, v, AttnSpec::scaled(scale))
    }

    /// [`Self::attend`] with a layer's soft-capping and sliding window; `k`/`v` may have fewer
    /// heads than `q` (grouped-query attention: they are recorded and cached with their own
    /// heads).
    pub fn attend_with(&self, hk: &mut dyn Hooks, layer: usize, q: &Tensor, k: Tensor, v: Tensor, spec: AttnSpec) -> Result<Tensor> {
        let k = hooks::hook(hk, HookPoint::AttnKeys(layer), k)?;
        let v = hooks::hook(hk, HookPoint::AttnValues(layer), v)?;
        let window = spec.window.and_then(|w| self.window_bias.as_ref().filter(|(ww, _)| *ww == w).map(|(w, bias)| (*w, bias)));
        let (k, v) = match &self.prefix {
            Some(p) => {
                fn cached(m: &BTreeMap<usize, Tensor>, layer: usize) -> Result<&Tensor> {
                    m.get(&layer).ok_or_else(|| crate::Error::Internal(format!("no cached keys/values for layer {layer}")))
                }
                (Tensor::cat(&[cached(&p.keys, layer)?, &k], 2)?, Tensor::cat(&[cached(&p.values, layer)?, &v], 2)?)
            }
            None if spec.softcap.is_none() && causal_attention::applies(q, &k, &v, self.grad) => {
                return causal_attention::attention(q, &k, &v, &self.lengths, spec.scale, window.map(|(w, _)| w))
            }
            None => (k, v),
        };
        let bias = window.map_or(&self.attn_bias, |(_, b)| b);
        layers::attention(q, &k, &v, bias, spec.scale, spec.softcap, self.grad)
    }
}

/// The additive bias `[b, 1, t, S + t]` of a sliding-window layer over a resumed forward's `S`
/// cached positions and the batch: query i of row r (at original position `o_r + i`, `o_r` its
/// prefix offset) sees the keys it sees without a window that are fewer than `window` positions
/// back (transformers' `kv_idx > q_idx − sliding_window`). A padding query sees what its row's
/// last real token sees, as in [`Batch::attention_bias`].
fn window_bias(batch: &Batch, prefix: Option<&KvPrefix>, window: usize) -> Result<Tensor> {
    let (b, t) = (batch.batch_size(), batch.seq_len());
    let s = prefix.map_or(0, KvPrefix::width);
    let width = s + t;
    let mut bias = vec![f32::NEG_INFINITY; b * t * width];
    for (r, &n) in batch.lengths().iter().enumerate() {
        let o = prefix.map_or(0, |p| p.offsets[r]);
        for i in 0..t {
            let qi = i.min(n - 1);
            let pos = o + qi;
            let row = &mut bias[(r * t + i) * width..(r * t + i + 1) * width];
            for (j, x) in row[..s].iter_mut().enumerate() {
                if j < o && pos - j < window {
                    *x = 0.0;
                }
            }
            for (j, x) in row[s..].iter_mut().enumerate() {
                if j <= qi && qi - j < window {
                    *x = 0.0;
                }
            }
        }
    }
    Ok(Tensor::from_vec(bias, (b, 1, t, width), batch.device())?)
}

/// Applies the interventions at (layer, site) to `h` (`[b, t, d]`).
pub(crate) fn intervene(h: Tensor, layer: usize, site: Site, interventions: &[Intervention]) -> Result<Tensor> {
    let mut h = h;
    for iv in interventions.iter().filter(|iv| iv.layer == layer && iv.site == site) {
        h = layers::add_at_positions(&h, &iv.positions, &iv.deltas)?;
    }
    Ok(h)
}

/// Final norm + vocabulary projection for the requested positions.
pub(crate) fn head_logits(
    h: &Tensor,
    batch: &Batch,
    which: &Logits,
    final_norm: &dyn layers::Norm,
    head: &layers::Linear,
    grad: bool,
) -> Result<Option<Tensor>> {
    head_logits_capped(h, batch, which, final_norm, head, None, grad)
}

/// [`head_logits`] with Gemma 2's `tanh(z / c) · c` on the logits.
pub(crate) fn head_logits_capped(
    h: &Tensor,
    batch: &Batch,
    which: &Logits,
    final_norm: &dyn layers::Norm,
    head: &layers::Linear,
    softcap: Option<f64>,
    grad: bool,
) -> Result<Option<Tensor>> {
    let (b, t, d) = h.dims3()?;
    let selected = match which {
        Logits::None => return Ok(None),
        Logits::All => h.clone(),
        Logits::Last => {
            let pos: Vec<(usize, usize)> = batch.lengths().iter().enumerate().map(|(r, &n)| (r, n - 1)).collect();
            layers::select_positions(h, &pos)?
        }
        Logits::At(pos) => {
            batch.check_positions(pos)?;
            layers::select_positions(h, pos)?
        }
    };
    let _ = (b, t, d);
    let normed = final_norm.norm(&selected, grad)?;
    let logits = head.forward(&normed)?;
    Ok(Some(match softcap {
        Some(c) => ((logits / c)?.tanh()? * c)?,
        None => logits,
    }))
}

/// The [`CausalLm`] methods every family implements alike, from its `cfg`, `device`, `dtype` and
/// `blocks` fields: the accessors, and weight access by module name through [`BlockLinears`].
macro_rules! model_basics {
    () => {
        fn config(&self) -> &ModelConfig {
            &self.cfg
        }
        fn device(&self) -> &Device {
            &self.device
        }
        fn dtype(&self) -> DType {
            self.dtype
        }
        fn weight(&self, module: &str) -> Result<Tensor> {
            $crate::models::block_weight(&self.cfg, &self.blocks, module)
        }
        fn set_weight(&mut self, module: &str, weight: Tensor) -> Result<()> {
            $crate::models::set_block_weight(&self.cfg, &mut self.blocks, module, weight)
        }
    };
}
pub(crate) use model_basics;

/// Implements [`BlockLinears`] from a `Kind => field` table.
macro_rules! block_linears {
    ($block:ty { $($kind:ident => $field:ident),* $(,)? }) => {
        impl $crate::models::BlockLinears for $block {
            fn linear(&self, kind: $crate::models::ModuleKind) -> Option<&$crate::models::layers::Linear> {
                match kind {
                    $($crate::models::ModuleKind::$kind => Some(&self.$field),)*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
            fn linear_mut(&mut self, kind: $crate::models::ModuleKind) -> Option<&mut $crate::models::layers::Linear> {
                match kind {
                    $($crate::models::ModuleKind::$kind => Some(&mut self.$field),)*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use block_linears;

/// Blocks expose their linear modules by kind so that weight access by name is shared.
pub(crate) trait BlockLinears {
    fn linear(&self, kind: ModuleKind) -> Option<&layers::Linear>;
    fn linear_mut(&mut self, kind: ModuleKind) -> Option<&mut layers::Linear>;
}

pub(crate) fn block_weight<B: BlockLinears>(cfg: &ModelConfig, blocks: &[B], name: &str) -> Result<Tensor> {
    let m = modules::find(cfg, name)?;
    let lin = blocks[m.layer].linear(m.kind).ok_or_else(|| crate::Error::Input(format!("module `{name}` has no weight in this model")))?;
    Ok(lin.weight.clone())
}

pub(crate) fn set_block_weight<B: BlockLinears>(cfg: &ModelConfig, blocks: &mut [B], name: &str, w: Tensor) -> Result<()> {
    let m = modules::find(cfg, name)?;
    let lin = blocks[m.layer].linear_mut(m.kind).ok_or_else(|| crate::Error::Input(format!("module `{name}` has no weight in this model")))?;
    if w.dims() != lin.weight.dims() {
        return Err(crate::Error::Input(format!("new weight for `{}` has shape {:?}, expected {:?}", m.name, w.dims(), lin.weight.dims())));
    }
    lin.weight = w.to_dtype(lin.weight.dtype())?.to_device(lin.weight.device())?;
    Ok(())
}
