//! MEND's edit batches (reference spec §5.2, §5.6): the factors ([`crate::editing::factors`])
//! of the edit loss at the inner linear modules.
//!
//! The edit batch is the reference executor's: per request the text `prompt.format(subject) +
//! " " + target_new` tokenized as one, labelled on its last |tokens(" " + target_new)| tokens;
//! the loss is the mean NLL over every labelled token of the batch (`losses.py`).

use candle_core::Tensor;

use crate::editing::factors::{factors_of, sequence_losses, Factors, LabelRanges};
use crate::editing::requests::Request;
use crate::error::{Error, Result};
use crate::models::modules::EditableModule;
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

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

/// The edit loss of `requests` and every module's factors, in `modules` order.
pub fn edit_factors(model: &dyn CausalLm, tok: &Tokenizer, requests: &[Request], modules: &[EditableModule]) -> Result<(f64, Vec<Factors>)> {
    let (seqs, labels) = edit_batch(tok, requests)?;
    factors_of(model, &seqs, &labels, modules)
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
    let (seqs, labels) = edit_batch(tok, requests)?;
    sequence_losses(model, &seqs, &labels)
}
