//! A linear module's gradient factors (MEND, UltraEdit): one forward/backward of an edit loss,
//! capturing at each chosen linear module its input x (`LinearIn`) and the gradient δ of the
//! loss with respect to its output (a zero `Var` added at `LinearOut`); the outer product δxᵀ
//! summed over rows is the weight's gradient.

use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::models::modules::EditableModule;
use crate::models::{Batch, CausalLm, ForwardOpts, HookPoint, Hooks, Logits, Resume};

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
pub fn module_at(modules: &[EditableModule], p: HookPoint) -> Option<usize> {
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

/// The mean NLL of the labelled tokens of `seqs` and every module's factors, in `modules` order.
pub fn factors_of(model: &dyn CausalLm, seqs: &[Vec<u32>], labels: &LabelRanges, modules: &[EditableModule]) -> Result<(f64, Vec<Factors>)> {
    factors_and_losses(model, seqs, labels, modules, None, None).map(|(loss, f, _)| (loss, f))
}

/// [`factors_of`], and each sequence's own mean NLL of its labels (from the same forward);
/// with `resume` (the residual stream below every module, [`hidden_before`]), the forward
/// starts there. With `groups` (ranges of sequences), the loss is the sum over the groups of
/// each group's mean NLL: since rows do not interact, every row's gradient is then the one its
/// group's own forward/backward would give, from one pass over the weights.
pub fn factors_and_losses(
    model: &dyn CausalLm,
    seqs: &[Vec<u32>],
    labels: &LabelRanges,
    modules: &[EditableModule],
    resume: Option<Resume>,
    groups: Option<&[std::ops::Range<usize>]>,
) -> Result<(f64, Vec<Factors>, Vec<f64>)> {
    let pad_id = model.config().pad_id();
    let batch = Batch::from_sequences(seqs, pad_id, model.device())?;
    // Logits only where a label is predicted: position p - 1 for a labelled token at p.
    let (positions, wanted) = label_positions(seqs, labels);
    let mut hooks = Capture { modules, x: vec![None; modules.len()], dy: (0..modules.len()).map(|_| None).collect() };
    let opts = ForwardOpts { logits: Logits::At(positions), differentiable: true, resume, ..ForwardOpts::default() };
    let logits = model.forward_hooked(&batch, &opts, &mut hooks)?.expect("logits were asked for");
    let lp = label_logprobs(&logits, wanted)?;
    let per_sequence = mean_nll_per_sequence(&lp.to_device(&candle_core::Device::Cpu)?.to_vec1()?, labels);
    let loss = match groups {
        None => (lp.mean_all()? * -1.0)?,
        Some(groups) => {
            // Each label weighted by 1 / (labels in its group).
            let mut w = Vec::with_capacity(lp.dim(0)?);
            for g in groups {
                let n: usize = labels[g.clone()].iter().map(|r| r.len()).sum();
                w.extend(std::iter::repeat_n(-1.0 / n as f32, n));
            }
            (&lp * Tensor::from_vec(w, lp.dim(0)?, lp.device())?)?.sum_all()?
        }
    };
    let value = f64::from(loss.to_scalar::<f32>()?);
    if !value.is_finite() {
        return Err(Error::Numerical(format!("the edit loss is {value}")));
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
    Ok((value, out, per_sequence))
}

/// Per sequence, the mean NLL of its labels, from the labels' log-probabilities in batch order.
fn mean_nll_per_sequence(lp: &[f32], labels: &LabelRanges) -> Vec<f64> {
    let mut out = Vec::with_capacity(labels.len());
    let mut at = 0;
    for r in labels {
        let row = &lp[at..at + r.len()];
        out.push(-row.iter().map(|&v| f64::from(v)).sum::<f64>() / r.len() as f64);
        at += r.len();
    }
    out
}

/// Each sequence's mean NLL of its labelled tokens, on the model as it is.
pub fn sequence_losses(model: &dyn CausalLm, seqs: &[Vec<u32>], labels: &LabelRanges) -> Result<Vec<f64>> {
    sequence_losses_from(model, seqs, labels, None)
}

/// [`sequence_losses`], the forward starting from `resume` when given.
pub fn sequence_losses_from(model: &dyn CausalLm, seqs: &[Vec<u32>], labels: &LabelRanges, resume: Option<Resume>) -> Result<Vec<f64>> {
    let batch = Batch::from_sequences(seqs, model.config().pad_id(), model.device())?;
    let (positions, wanted) = label_positions(seqs, labels);
    let opts = ForwardOpts { logits: Logits::At(positions), resume, ..ForwardOpts::default() };
    let logits = model.forward_hooked(&batch, &opts, &mut crate::models::NoHooks)?.expect("logits were asked for");
    let lp: Vec<f32> = label_logprobs(&logits, wanted)?.to_device(&candle_core::Device::Cpu)?.to_vec1()?;
    Ok(mean_nll_per_sequence(&lp, labels))
}

/// The residual stream of `seqs` entering block `layer` (nothing when it is the first), to
/// resume forwards from: the blocks below a method's edited modules see the same inputs before
/// and after its edit, so they run once.
pub fn hidden_before(model: &dyn CausalLm, seqs: &[Vec<u32>], layer: usize) -> Result<Option<Resume>> {
    let Some(after) = layer.checked_sub(1) else { return Ok(None) };
    struct Keep {
        after: usize,
        hidden: Option<Tensor>,
    }
    impl Hooks for Keep {
        fn wants(&self, p: HookPoint) -> bool {
            p == HookPoint::BlockOut(self.after)
        }
        fn at(&mut self, _: HookPoint, h: Tensor) -> Result<Tensor> {
            self.hidden = Some(h.clone());
            Ok(h)
        }
    }
    let batch = Batch::from_sequences(seqs, model.config().pad_id(), model.device())?;
    let mut keep = Keep { after, hidden: None };
    let opts = ForwardOpts { logits: Logits::None, stop_after: Some(after), ..ForwardOpts::default() };
    model.forward_hooked(&batch, &opts, &mut keep)?;
    let hidden = keep.hidden.ok_or_else(|| Error::Internal(format!("the forward pass never reached block {after}")))?;
    Ok(Some(Resume { after, hidden, prefix: None }))
}
