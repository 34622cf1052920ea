//! Batched scoring: many (text, positions to read) items in a few right-padded forwards, the
//! logits computed only where they are read.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::models::{Batch, CausalLm, Logits, TraceSpec};

/// One scored text: its tokens, and the positions whose next-token prediction is read, each
/// with the token expected there.
#[derive(Clone, Debug)]
pub struct Item {
    pub ids: Vec<u32>,
    /// `(position, expected token)`: the prediction at `position` is scored against the token.
    pub reads: Vec<(usize, u32)>,
}

/// `prompt` followed by ` target`: the prompt's model input, its length, and the target's tokens
/// as they follow it (see [`crate::tokenizer::Tokenizer`]). The reference tokenizes
/// `"{prompt} {target}"` as one text and reads the target's tokens after the prompt's: the same
/// ids wherever the prompt's tokens are a prefix of the joint ones.
pub fn prompt_with_target(tok: &crate::tokenizer::Tokenizer, prompt: &str, target: &str) -> Result<(Vec<u32>, usize, Vec<u32>)> {
    let mut ids = tok.encode_input(prompt)?;
    let n = ids.len();
    let cand = tok.continuation(prompt, &format!(" {target}"))?;
    ids.extend_from_slice(&cand);
    Ok((ids, n, cand))
}

/// The reads of a target's tokens `cand` (from its `from`-th) in a text `ids` whose first
/// `prefix_len` tokens are the prompt: the reference reads position `prefix_len + j − 1` of the
/// joint tokenization for the target's token j.
pub fn target_reads(ids: &[u32], prefix_len: usize, cand: &[u32], from: usize) -> Vec<(usize, u32)> {
    cand.iter().enumerate().skip(from).map(|(j, &t)| ((prefix_len + j).saturating_sub(1).min(ids.len() - 1), t)).collect()
}

/// What was read for one item, per read position.
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    /// −log p(expected token).
    pub nll: f64,
    /// Whether the expected token is the argmax.
    pub top: bool,
    /// The argmax token.
    pub predicted: u32,
}

/// Scores `items` in forwards of at most `batch` texts (same order out). Reads at the same
/// position of a text share one row of logits.
pub fn score_items(model: &dyn CausalLm, items: &[Item], batch: usize) -> Result<Vec<Vec<Read>>> {
    let pad_id = model.config().pad_id();
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|i| i.ids.clone()).collect();
        // One logits row per distinct (text, position); each read points at its row.
        let mut positions: Vec<(usize, usize)> = Vec::new();
        let mut read_rows: Vec<u32> = Vec::new();
        let mut wanted: Vec<u32> = Vec::new();
        for (row, item) in chunk.iter().enumerate() {
            let first = positions.len();
            for &(p, t) in &item.reads {
                let r = match positions[first..].iter().position(|&(_, q)| q == p) {
                    Some(k) => first + k,
                    None => {
                        positions.push((row, p));
                        positions.len() - 1
                    }
                };
                read_rows.push(r as u32);
                wanted.push(t);
            }
        }
        if positions.is_empty() {
            out.extend(chunk.iter().map(|_| Vec::new()));
            continue;
        }
        let b = Batch::from_sequences(&seqs, pad_id, model.device())?;
        let logits = model.forward(&b, &TraceSpec::logits(Logits::At(positions)), &[])?.logits.expect("logits were asked for");
        let logits = logits.to_dtype(DType::F32)?;
        let vocab = logits.dim(1)? as u32;
        // Only the read log-probabilities and the rows' argmaxes leave the device.
        let flat: Vec<u32> = read_rows.iter().zip(&wanted).map(|(&r, &t)| r * vocab + t).collect();
        let flat = Tensor::from_vec(flat, wanted.len(), logits.device())?;
        let lp = crate::editing::optimize::log_softmax(&logits)?.flatten_all()?.index_select(&flat, 0)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        let top = logits.argmax(1)?.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
        let mut q = 0;
        for item in chunk {
            let mut reads = Vec::with_capacity(item.reads.len());
            for _ in &item.reads {
                let predicted = top[read_rows[q] as usize];
                reads.push(Read { nll: -f64::from(lp[q]), top: predicted == wanted[q], predicted });
                q += 1;
            }
            out.push(reads);
        }
    }
    Ok(out)
}
