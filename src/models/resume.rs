//! Resuming a forward part-way. ROME's v* and MEMIT's z optimisations run the same rows through
//! the model at every step with only a vector added at one layer: nothing below that layer
//! changes, and (attention being causal) nothing at a row's positions before the vector does
//! either. The first step records the residual stream after the layer and every higher layer's
//! attention keys and values; later steps start there and compute only the positions from each
//! row's first changed one, attending to the recorded keys and values of the earlier positions.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::{Batch, CausalLm, Intervention, Logits, Trace, TraceSpec};
use crate::error::{Error, Result};

/// The residual stream after block `after` (`[b, t, d_model]`), from which a forward continues
/// with block `after + 1`. The `BlockOut(after)` hook point is called on it, so interventions
/// there still apply.
///
/// With `prefix`, the forward's batch holds only each row's later positions (row `r` starting at
/// original position `prefix.offsets[r]`): `hidden`, positions, interventions, traces and logits
/// all refer to that shortened batch.
#[derive(Clone, Debug)]
pub struct Resume {
    pub after: usize,
    pub hidden: Tensor,
    pub prefix: Option<KvPrefix>,
}

/// The earlier positions of a shortened batch: their attention keys and values at every layer
/// above the resumed one, as attention sees them (after rotary), `[b, heads, S, head_dim]` with
/// `S` the largest offset; in row `r` only the first `offsets[r]` are read.
#[derive(Clone, Debug)]
pub struct KvPrefix {
    pub offsets: Vec<usize>,
    pub keys: BTreeMap<usize, Tensor>,
    pub values: BTreeMap<usize, Tensor>,
}

impl KvPrefix {
    /// How many cached positions a row may see at most.
    pub fn width(&self) -> usize {
        self.offsets.iter().copied().max().unwrap_or(0)
    }

    /// Additive attention bias `[b, 1, t, width]` (f32) over the cached positions: 0 for the
    /// positions before the row's offset, −∞ after.
    pub(crate) fn bias(&self, t: usize, device: &Device) -> Result<Tensor> {
        let (b, s) = (self.offsets.len(), self.width());
        let mut bias = vec![f32::NEG_INFINITY; b * t * s];
        for (r, &o) in self.offsets.iter().enumerate() {
            for i in 0..t {
                bias[(r * t + i) * s..(r * t + i) * s + o].fill(0.0);
            }
        }
        Ok(Tensor::from_vec(bias, (b, 1, t, s), device)?)
    }

    /// The original position of every token of a shortened batch of `t` columns, row-major.
    pub(crate) fn positions(&self, t: usize) -> Vec<u32> {
        self.offsets.iter().flat_map(|&o| (o..o + t).map(|p| p as u32)).collect()
    }

    pub(crate) fn check(&self, batch: &Batch, layers: std::ops::RangeInclusive<usize>, n_ctx: usize) -> Result<()> {
        let b = batch.batch_size();
        let s = self.width();
        let shaped = |t: Option<&Tensor>| t.is_some_and(|t| t.rank() == 4 && t.dim(0).ok() == Some(b) && t.dim(2).ok() == Some(s));
        let bad = if self.offsets.len() != b {
            Some(format!("{} offsets for {b} rows", self.offsets.len()))
        } else if s + batch.seq_len() > n_ctx {
            Some(format!("positions up to {} exceed the model's context of {n_ctx}", s + batch.seq_len()))
        } else if s == 0 {
            None
        } else {
            layers.clone().find(|l| !shaped(self.keys.get(l)) || !shaped(self.values.get(l))).map(|l| format!("no keys/values of {s} positions for layer {l}"))
        };
        match bad {
            Some(why) => Err(Error::Internal(format!("a forward resumed with cached keys and values: {why}"))),
            None => Ok(()),
        }
    }
}

/// What a first forward records so that later forwards of the same rows, or of some of them,
/// resume after layer `after` from per-row offsets.
#[derive(Clone, Debug)]
pub struct ResumeCache {
    after: usize,
    hidden: Tensor,
    keys: BTreeMap<usize, Tensor>,
    values: BTreeMap<usize, Tensor>,
}

impl ResumeCache {
    /// Adds what [`ResumeCache::from_trace`] needs to `spec`.
    pub fn request(spec: &mut TraceSpec, after: usize, n_layer: usize) {
        spec.block_out.insert(after);
        spec.attn_kv.extend(after + 1..n_layer);
    }

    /// The recorded tensors of the trace of a forward run with [`ResumeCache::request`].
    pub fn from_trace(trace: &Trace, after: usize) -> Result<Self> {
        let missing = || Error::Internal(format!("the forward did not record what resuming after layer {after} needs"));
        let hidden = trace.block_out.get(&after).ok_or_else(missing)?.detach();
        // Contiguous copies: the recorded heads are views into each layer's projection output.
        let own = |m: &BTreeMap<usize, Tensor>| -> Result<BTreeMap<usize, Tensor>> {
            m.iter().filter(|(&l, _)| l > after).map(|(&l, t)| Ok((l, t.detach().contiguous()?))).collect()
        };
        Ok(Self { after, hidden, keys: own(&trace.attn_keys)?, values: own(&trace.attn_values)? })
    }

    /// The shortened batch and resume for rows `rows` of the recorded batch (`batch` holds
    /// those rows' tokens, as recorded, possibly with less padding), recomputing from
    /// `offsets[r]` in row `r`: every position a loss reads or an intervention writes in that row
    /// must be at or after its offset (see [`first_positions`]).
    pub fn resume(&self, batch: &Batch, rows: &[usize], offsets: &[usize]) -> Result<(Batch, Resume)> {
        let (b0, t0, d) = self.hidden.dims3()?;
        if rows.len() != batch.batch_size() || offsets.len() != rows.len() || rows.iter().any(|&r| r >= b0) || batch.seq_len() > t0 {
            return Err(Error::Internal("resume: rows, offsets and batch disagree with the recorded forward".into()));
        }
        let short = batch.suffix(offsets)?;
        let t = short.seq_len();
        let dev = self.hidden.device();
        // Padding columns of the shortened rows read any recorded position: they are masked.
        let flat: Vec<u32> = rows.iter().zip(offsets).flat_map(|(&r, &o)| (o..o + t).map(move |p| (r * t0 + p.min(t0 - 1)) as u32)).collect();
        let idx = Tensor::from_vec(flat, rows.len() * t, dev)?;
        let hidden = self.hidden.reshape((b0 * t0, d))?.index_select(&idx, 0)?.reshape((rows.len(), t, d))?;
        let rows_t = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), dev)?;
        let s = offsets.iter().copied().max().unwrap_or(0);
        let take = |m: &BTreeMap<usize, Tensor>| -> Result<BTreeMap<usize, Tensor>> {
            m.iter().map(|(&l, kv)| Ok((l, kv.index_select(&rows_t, 0)?.narrow(2, 0, s)?))).collect()
        };
        let prefix = KvPrefix { offsets: offsets.to_vec(), keys: take(&self.keys)?, values: take(&self.values)? };
        Ok((short, Resume { after: self.after, hidden, prefix: Some(prefix) }))
    }
}

/// Per row of `batch`, the first position that must be recomputed: the smallest among
/// `positions` in that row (its last real token when none is).
pub fn first_positions(batch: &Batch, positions: &[(usize, usize)]) -> Vec<usize> {
    let mut first: Vec<usize> = batch.lengths().iter().map(|&n| n - 1).collect();
    for &(r, p) in positions {
        first[r] = first[r].min(p);
    }
    first
}

/// (row, position) pairs of a full batch as pairs of the batch shortened by `offsets`.
pub fn shift_positions(positions: &[(usize, usize)], offsets: &[usize]) -> Vec<(usize, usize)> {
    positions.iter().map(|&(r, p)| (r, p - offsets[r])).collect()
}

/// The gradient of `loss` (a function of the logits `logits` of the forward resumed at
/// `resume`, with `interventions` at its block output) w.r.t. the variables behind the
/// interventions, taken one block at a time. `recorded` holds the outputs of blocks
/// `resume.after + 1 ..= n_layer − 2` of the same forward, computed without a graph (trace
/// them with `block_out`). From the top, each block is recomputed from its recorded input (a
/// fresh `Var`) with a graph, and the gradient at that input seeds the block below as the
/// gradient of Σ output · seed; the lowest block starts from the resumed stream with the
/// interventions. The graph held at once is one block's (the vocabulary head's with the top
/// one): the same gradient as backpropagating through all the blocks, for one more forward.
pub fn backprop_per_block(
    model: &dyn CausalLm,
    batch: &Batch,
    resume: &Resume,
    logits: &Logits,
    interventions: &[Intervention],
    recorded: &BTreeMap<usize, Tensor>,
    loss: &dyn Fn(&Trace) -> Result<Tensor>,
) -> Result<GradStore> {
    let (after, n) = (resume.after, model.config().n_layer);
    let missing = |l: usize| Error::Internal(format!("per-block backpropagation: block {l}'s output was not recorded"));
    let mut seed: Option<Tensor> = None;
    for b in (after + 1..n).rev() {
        let mut spec = TraceSpec { differentiable: true, ..TraceSpec::default() };
        if b == n - 1 {
            spec.logits = logits.clone();
        } else {
            spec.stop_after = Some(b);
            spec.block_out.insert(b);
        }
        let input = if b > after + 1 { Some(Var::from_tensor(recorded.get(&(b - 1)).ok_or_else(|| missing(b - 1))?)?) } else { None };
        let trace = match &input {
            Some(v) => {
                spec.resume = Some(Resume { after: b - 1, hidden: v.as_tensor().clone(), prefix: resume.prefix.clone() });
                model.forward(batch, &spec, &[])?
            }
            None => {
                spec.resume = Some(resume.clone());
                model.forward(batch, &spec, interventions)?
            }
        };
        let objective = match &seed {
            None => loss(&trace)?,
            Some(g) => (trace.block_out.get(&b).ok_or_else(|| missing(b))? * g)?.sum_all()?,
        };
        let grads = objective.backward()?;
        match input {
            Some(v) => seed = Some(grads.get(v.as_tensor()).ok_or_else(|| missing(b - 1))?.clone()),
            None => return Ok(grads),
        }
    }
    Err(Error::Internal(format!("per-block backpropagation needs a block above layer {after}")))
}
