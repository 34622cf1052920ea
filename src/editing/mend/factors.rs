//! The gradient factors MEND edits (reference spec §5.2, §5.6): one forward/backward of the
//! edit loss, capturing at each inner linear module its input x (`LinearIn`) and the gradient
//! δ of the loss with respect to its output (a zero `Var` added at `LinearOut`).
//!
//! The edit batch is the reference executor's: per request the text `prompt.format(subject) +
//! " " + target_new` tokenized as one, labelled on its last |tokens(" " + target_new)| tokens;
//! the loss is the mean NLL over every labelled token of the batch (`losses.py`).

use candle_core::{DType, Tensor, Var};

use crate::editing::requests::Request;
use crate::error::{Error, Result};
use crate::models::modules::EditableModule;
use crate::models::{Batch, CausalLm, ForwardOpts, HookPoint, Hooks, Logits};
use crate::tokenizer::Tokenizer;

/// One module's factors: rows (batch × positions) of its input and output gradient, f32.
pub struct Factors {
    /// `[rows, in]`.
    pub x: Tensor,
    /// `[rows, out]`.
    pub delta: Tensor,
}

struct Capture<'a> {
    modules: &'a [EditableModule],
    x: Vec<Option<Tensor>>,
    dy: Vec<Option<Var>>,
}

/// Which of `modules` a linear module's input or output hook point belongs to.
pub(super) fn module_at(modules: &[EditableModule], p: HookPoint) -> Option<usize> {
    let (HookPoint::LinearIn(l, k) | HookPoint::LinearOut(l, k)) = p else { return None };
    modules.iter().position(|m| m.layer == l && m.kind == k)
}

impl Hooks for Capture<'_> {
    fn wants(&self, p: HookPoint) -> bool {
        module_at(self.modules, p).is_some()
    }

    fn at(&mut self, p: HookPoint, h: Tensor) -> Result<Tensor> {
        let i = module_at(self.modules, p).expect("wanted points only");
        Ok(match p {
            HookPoint::LinearIn(..) => {
                self.x[i] = Some(h.detach());
                h
            }
            _ => {
                let v = Var::zeros(h.shape(), h.dtype(), h.device())?;
                let out = (h + v.as_tensor())?;
                self.dy[i] = Some(v);
                out
            }
        })
    }
}

/// Per row of an edit batch, the positions whose tokens are labels (each predicted from the
/// position before).
pub type LabelRanges = Vec<std::ops::Range<usize>>;

/// The edit batch of `requests`: token ids and each row's labelled positions.
pub fn edit_batch(tok: &Tokenizer, requests: &[Request]) -> Result<(Vec<Vec<u32>>, LabelRanges)> {
    let mut seqs = Vec::with_capacity(requests.len());
    let mut labels = Vec::with_capacity(requests.len());
    for r in requests {
        let (ids, range) = super::data::labelled_ids(tok, &r.filled_prompt(), &r.target_new_spaced())
            .map_err(|_| Error::Input(format!("{}: the target {:?} has no tokens to learn", r.label(), r.target_new)))?;
        labels.push(range);
        seqs.push(ids);
    }
    Ok((seqs, labels))
}

/// Each label's (row, predicting position) and token id, in batch order.
pub fn label_positions(seqs: &[Vec<u32>], labels: &LabelRanges) -> (Vec<(usize, usize)>, Vec<u32>) {
    let mut positions = Vec::new();
    let mut wanted = Vec::new();
    for (row, (ids, range)) in seqs.iter().zip(labels).enumerate() {
        for p in range.clone() {
            positions.push((row, p - 1));
            wanted.push(ids[p]);
        }
    }
    (positions, wanted)
}

/// Log-probabilities of the labels (`[labels]`), from logits at their predicting positions.
pub fn label_logprobs(logits: &Tensor, wanted: Vec<u32>) -> Result<Tensor> {
    let logp = crate::editing::optimize::log_softmax(&logits.to_dtype(DType::F32)?)?;
    let n = wanted.len();
    let idx = Tensor::from_vec(wanted, (n, 1), logp.device())?;
    Ok(logp.gather(&idx, 1)?.squeeze(1)?)
}

/// The edit loss of `requests` and every module's factors, in `modules` order.
pub fn edit_factors(model: &dyn CausalLm, tok: &Tokenizer, requests: &[Request], modules: &[EditableModule]) -> Result<(f64, Vec<Factors>)> {
    let (seqs, labels) = edit_batch(tok, requests)?;
    factors_of(model, &seqs, &labels, modules)
}

/// The mean NLL of the labelled tokens of `seqs` and every module's factors, in `modules` order.
pub fn factors_of(model: &dyn CausalLm, seqs: &[Vec<u32>], labels: &LabelRanges, modules: &[EditableModule]) -> Result<(f64, Vec<Factors>)> {
    let pad_id = model.config().pad_id();
    let batch = Batch::from_sequences(seqs, pad_id, model.device())?;
    // Logits only where a label is predicted: position p - 1 for a labelled token at p.
    let (positions, wanted) = label_positions(seqs, labels);
    let mut hooks = Capture { modules, x: vec![None; modules.len()], dy: (0..modules.len()).map(|_| None).collect() };
    let opts = ForwardOpts { logits: Logits::At(positions), differentiable: true, ..ForwardOpts::default() };
    let logits = model.forward_hooked(&batch, &opts, &mut hooks)?.expect("logits were asked for");
    let loss = (label_logprobs(&logits, wanted)?.mean_all()? * -1.0)?;
    let value = f64::from(loss.to_scalar::<f32>()?);
    if !value.is_finite() {
        return Err(Error::Numerical(format!("the MEND edit loss is {value}")));
    }
    let grads = loss.backward()?;
    let mut out = Vec::with_capacity(modules.len());
    for (i, m) in modules.iter().enumerate() {
        let (Some(x), Some(v)) = (hooks.x[i].take(), hooks.dy[i].take()) else {
            return Err(Error::Internal(format!("the forward pass never reached {}", m.name)));
        };
        let delta = match grads.get(v.as_tensor()) {
            Some(g) => g.clone(),
            // No path from the module to the loss (e.g. a layer past the last labelled token).
            None => v.as_tensor().zeros_like()?,
        };
        let rows = |t: &Tensor| -> Result<Tensor> {
            let (b, s, d) = t.dims3()?;
            Ok(t.to_dtype(DType::F32)?.reshape((b * s, d))?)
        };
        out.push(Factors { x: rows(&x)?, delta: rows(&delta)? });
    }
    Ok((value, out))
}

/// The factors of `requests` taken `chunk` requests at a time (one forward/backward each, the
/// loss each chunk's own mean, as the executor's `max_batch_size` loop), every chunk's rows
/// together — or, with `last_only`, only the last chunk's (the executor's hooks overwrite the
/// factors at every backward, so that is what it edits with).
pub fn chunked_factors(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    requests: &[Request],
    modules: &[EditableModule],
    chunk: usize,
    last_only: bool,
) -> Result<Vec<Factors>> {
    let chunks: Vec<&[Request]> = requests.chunks(chunk.max(1)).collect();
    let used = if last_only { &chunks[chunks.len().saturating_sub(1)..] } else { &chunks[..] };
    let mut per_chunk = Vec::with_capacity(used.len());
    for c in used {
        per_chunk.push(edit_factors(model, tok, c, modules)?.1);
    }
    if per_chunk.len() == 1 {
        return Ok(per_chunk.pop().expect("one chunk"));
    }
    (0..modules.len())
        .map(|i| {
            let xs: Vec<&Tensor> = per_chunk.iter().map(|f| &f[i].x).collect();
            let ds: Vec<&Tensor> = per_chunk.iter().map(|f| &f[i].delta).collect();
            Ok(Factors { x: Tensor::cat(&xs, 0)?, delta: Tensor::cat(&ds, 0)? })
        })
        .collect()
}

/// Each request's edit loss on the model as it is: the mean NLL of its labelled tokens.
pub fn request_losses(model: &dyn CausalLm, tok: &Tokenizer, requests: &[Request]) -> Result<Vec<f64>> {
    let pad_id = model.config().pad_id();
    let (seqs, labels) = edit_batch(tok, requests)?;
    let batch = Batch::from_sequences(&seqs, pad_id, model.device())?;
    let (positions, wanted) = label_positions(&seqs, &labels);
    let opts = ForwardOpts { logits: Logits::At(positions), ..ForwardOpts::default() };
    let logits = model.forward_hooked(&batch, &opts, &mut crate::models::NoHooks)?.expect("logits were asked for");
    let lp: Vec<f32> = label_logprobs(&logits, wanted)?.to_device(&candle_core::Device::Cpu)?.to_vec1()?;
    let mut out = Vec::with_capacity(labels.len());
    let mut at = 0;
    for r in &labels {
        let row = &lp[at..at + r.len()];
        out.push(-row.iter().map(|&v| f64::from(v)).sum::<f64>() / r.len() as f64);
        at += r.len();
    }
    Ok(out)
}
