//! Representations at the subject's last token (the reference's `repr_tools`): MLP keys (the
//! down-projection's input), MLP outputs and block outputs, over many prompts in batches.

use candle_core::{DType, Device, Tensor};

use super::positions::subject_input;
use crate::error::Result;
use crate::models::{layers::select_positions, Batch, CausalLm, TraceSpec};
use crate::tokenizer::Tokenizer;

/// Rows per forward, as the reference (MEMIT's copy) batches its contexts.
const BATCH_ROWS: usize = 128;

/// What to read at the subject's last token.
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    /// Keys (input of the MLP down-projection) of this layer.
    pub keys: Option<usize>,
    /// MLP output (W k + b) of this layer.
    pub mlp_out: Option<usize>,
    /// Block output of this layer.
    pub block_out: Option<usize>,
}

/// `[n, dim]` f32 CPU tensors, one row per (template, subject) item.
#[derive(Debug, Default)]
pub struct Reprs {
    pub keys: Option<Tensor>,
    pub mlp_out: Option<Tensor>,
    pub block_out: Option<Tensor>,
}

/// Runs every `template.replace("{}", subject)` through the model and reads `wanted` at the
/// subject's last token (located by the reference's separate-tokenization rule).
pub fn at_subject_last(model: &dyn CausalLm, tok: &Tokenizer, items: &[(String, String)], wanted: &Wanted) -> Result<Reprs> {
    let pad_id = model.config().pad_id();
    let mut spec = TraceSpec::default();
    spec.keys.extend(wanted.keys);
    spec.mlp_out.extend(wanted.mlp_out);
    spec.block_out.extend(wanted.block_out);
    spec.stop_after = spec.deepest_layer();
    let mut seqs = Vec::with_capacity(items.len());
    let mut idxs = Vec::with_capacity(items.len());
    for (tmpl, subject) in items {
        let (ids, idx) = subject_input(tok, tmpl, subject)?;
        seqs.push(ids);
        idxs.push(idx);
    }
    let (mut keys, mut mlp, mut block) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..seqs.len()).step_by(BATCH_ROWS) {
        let end = (start + BATCH_ROWS).min(seqs.len());
        let batch = Batch::from_sequences(&seqs[start..end], pad_id, model.device())?;
        let pos: Vec<(usize, usize)> = (start..end).map(|i| (i - start, idxs[i])).collect();
        let trace = model.forward(&batch, &spec, &[])?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(select_positions(t, &pos)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?) };
        if let Some(l) = wanted.keys {
            keys.push(pick(&trace.keys[&l])?);
        }
        if let Some(l) = wanted.mlp_out {
            mlp.push(pick(&trace.mlp_out[&l])?);
        }
        if let Some(l) = wanted.block_out {
            block.push(pick(&trace.block_out[&l])?);
        }
    }
    let cat = |v: Vec<Tensor>| -> Result<Option<Tensor>> {
        if v.is_empty() {
            Ok(None)
        } else {
            Ok(Some(Tensor::cat(&v, 0)?))
        }
    };
    Ok(Reprs { keys: cat(keys)?, mlp_out: cat(mlp)?, block_out: cat(block)? })
}
