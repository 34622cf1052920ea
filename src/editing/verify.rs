//! Did an edit take? After the deltas are added (in memory), the new target's first token
//! should be the most likely next token at the edit prompt, and the method's own loss should
//! have fallen. An edit that fails either test is reported, not hidden.

use candle_core::{DType, Device};
use serde::Serialize;

use super::requests::Request;
use super::{Deltas, ModelRestorer};
use crate::error::Result;
use crate::models::{Batch, CausalLm, Logits, TraceSpec};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, Serialize)]
pub struct EditCheck {
    /// Both tests passed.
    pub took: bool,
    /// The optimisation's final loss is below its first.
    pub loss_fell: bool,
    /// The new target's first token is the top prediction at the edit prompt after the edit.
    pub target_is_top: bool,
    /// The top prediction after the edit, decoded.
    pub top_token: String,
    /// Probability of the new target's first token after the edit.
    pub target_prob: f64,
    /// Why the edit did not take, in words (empty when it did).
    pub problems: Vec<String>,
}

/// Checks each request of one edit: `losses[i]` is request i's (first, last) optimisation
/// loss. The model is restored exactly afterwards.
pub fn check_edits(model: &mut dyn CausalLm, tok: &Tokenizer, requests: &[Request], deltas: &Deltas, losses: &[(f64, f64)]) -> Result<Vec<EditCheck>> {
    let pad_id = model.config().pad_id();
    let names: Vec<String> = deltas.keys().cloned().collect();
    let mut restorer = ModelRestorer::new(&mut *model, &names)?;
    let result = (|| {
        for (name, d) in deltas {
            restorer.set_from_original(model, name, d)?;
        }
        let seqs: Vec<Vec<u32>> = requests.iter().map(|r| tok.encode_input(&r.filled_prompt())).collect::<Result<_>>()?;
        let batch = Batch::from_sequences(&seqs, pad_id, model.device())?;
        let logits = model.forward(&batch, &TraceSpec::logits(Logits::Last), &[])?.logits.expect("logits");
        let lp: Vec<Vec<f32>> = super::optimize::log_softmax(&logits.to_dtype(DType::F32)?)?.to_device(&Device::Cpu)?.to_vec2()?;
        let mut out = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let target = tok.continuation(&r.filled_prompt(), &r.target_new_spaced())?;
            let first = target.first().copied().unwrap_or(0) as usize;
            let row = &lp[i];
            let top = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j).unwrap_or(0);
            let (l0, l1) = losses.get(i).copied().unwrap_or((f64::NAN, f64::NAN));
            let loss_fell = l1 < l0;
            let target_is_top = top == first;
            let top_token = tok.decode(&[top as u32])?;
            let mut problems = Vec::new();
            if !loss_fell {
                problems.push(format!("the optimisation loss did not fall ({l0:.3} → {l1:.3})"));
            }
            if !target_is_top {
                problems.push(format!(
                    "after the edit the top next token is {top_token:?}, not the new target's first token {:?} (p = {:.3})",
                    tok.decode(&[first as u32])?,
                    f64::from(row[first]).exp()
                ));
            }
            out.push(EditCheck { took: problems.is_empty(), loss_fell, target_is_top, top_token, target_prob: f64::from(row[first]).exp(), problems });
        }
        Ok(out)
    })();
    restorer.restore(model)?;
    result
}
