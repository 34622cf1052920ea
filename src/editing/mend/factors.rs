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

impl Capture<'_> {
    fn index(&self, p: HookPoint) -> Option<usize> {
        let (layer, kind) = match p {
            HookPoint::LinearIn(l, k) | HookPoint::LinearOut(l, k) => (l, k),
            _ => return None,
        };
        self.modules.iter().position(|m| m.layer == layer && m.kind == kind)
    }
}

impl Hooks for Capture<'_> {
    fn wants(&self, p: HookPoint) -> bool {
        self.index(p).is_some()
    }

    fn at(&mut self, p: HookPoint, h: Tensor) -> Result<Tensor> {
        let i = self.index(p).expect("wanted points only");
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
        let target = r.target_new_spaced();
        let ids = tok.encode(&format!("{}{target}", r.filled_prompt()))?;
        let n = tok.encode(&target)?.len().min(ids.len().saturating_sub(1));
        if n == 0 {
            return Err(Error::Input(format!("{}: the target {:?} has no tokens to learn", r.label(), r.target_new)));
        }
        labels.push(ids.len() - n..ids.len());
        seqs.push(ids);
    }
    Ok((seqs, labels))
}

/// The edit loss of `requests` and every module's factors, in `modules` order.
pub fn edit_factors(model: &dyn CausalLm, tok: &Tokenizer, requests: &[Request], modules: &[EditableModule], pad_id: u32) -> Result<(f64, Vec<Factors>)> {
    let (seqs, labels) = edit_batch(tok, requests)?;
    let batch = Batch::from_sequences(&seqs, pad_id, model.device())?;
    // Logits only where a label is predicted: position p - 1 for a labelled token at p.
    let mut positions = Vec::new();
    let mut wanted = Vec::new();
    for (row, (ids, range)) in seqs.iter().zip(&labels).enumerate() {
        for p in range.clone() {
            positions.push((row, p - 1));
            wanted.push(ids[p]);
        }
    }
    let mut hooks = Capture { modules, x: vec![None; modules.len()], dy: (0..modules.len()).map(|_| None).collect() };
    let opts = ForwardOpts { logits: Logits::At(positions), differentiable: true, ..ForwardOpts::default() };
    let logits = model.forward_hooked(&batch, &opts, &mut hooks)?.expect("logits were asked for");
    let logp = crate::editing::optimize::log_softmax(&logits.to_dtype(DType::F32)?)?;
    let idx = Tensor::from_vec(wanted, (positions_len(&labels), 1), logp.device())?;
    let loss = (logp.gather(&idx, 1)?.mean_all()? * -1.0)?;
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

fn positions_len(labels: &[std::ops::Range<usize>]) -> usize {
    labels.iter().map(|r| r.len()).sum()
}
