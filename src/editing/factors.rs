//! A linear module's gradient factors (MEND, UltraEdit): one forward/backward of an edit loss,
//! capturing at each chosen linear module its input x (`LinearIn`) and the gradient δ of the
//! loss with respect to its output (a zero `Var` added at `LinearOut`); the outer product δxᵀ
//! summed over rows is the weight's gradient.

use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::models::modules::EditableModule;
use crate::models::{Batch, CausalLm, ForwardOpts, HookPoint, Hooks, Logits};

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
    Ok((value, out))
}

/// Each sequence's mean NLL of its labelled tokens, on the model as it is.
pub fn sequence_losses(model: &dyn CausalLm, seqs: &[Vec<u32>], labels: &LabelRanges) -> Result<Vec<f64>> {
    let batch = Batch::from_sequences(seqs, model.config().pad_id(), model.device())?;
    let (positions, wanted) = label_positions(seqs, labels);
    let opts = ForwardOpts { logits: Logits::At(positions), ..ForwardOpts::default() };
    let logits = model.forward_hooked(&batch, &opts, &mut crate::models::NoHooks)?.expect("logits were asked for");
    let lp: Vec<f32> = label_logprobs(&logits, wanted)?.to_device(&candle_core::Device::Cpu)?.to_vec1()?;
    let mut out = Vec::with_capacity(labels.len());
    let mut at = 0;
    for r in labels {
        let row = &lp[at..at + r.len()];
        out.push(-row.iter().map(|&v| f64::from(v)).sum::<f64>() / r.len() as f64);
        at += r.len();
    }
    Ok(out)
}
