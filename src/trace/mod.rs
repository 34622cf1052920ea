//! Causal tracing (Meng et al., 2022; kmeng01/rome `experiments/causal_trace.py`): where in
//! the network a model keeps what it recalls about a subject.
//!
//! A prompt runs clean, then `samples` times with noise on the subject's token embeddings;
//! for every (token, layer) the clean state is restored in the corrupted runs and the answer's
//! probability at the last position, averaged over the runs, is the score. `Kind::Hidden`
//! restores one block output; `Mlp`/`Attn` restore the MLP or attention outputs of a window of
//! layers centred on the layer. As in the reference, the noise is numpy's `RandomState(seed)`
//! drawn afresh for each run, so every restoration of a prompt sees the same noise.
//!
//! The reference runs one forward per (token, layer). Here all tokens of one layer (× the
//! samples) are rows of one batch, and a run starts from the corrupted run's residual stream
//! after the block below the first restored state (recorded once): nothing below it differs.

pub mod facts;
mod hooks;
pub mod noise;
pub mod plot;
pub mod run;
pub mod summary;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

pub use facts::{read_facts, subject_range, Fact};
pub use noise::NoiseRule;

use crate::error::{Error, Result};
use crate::models::{Batch, CausalLm, ForwardOpts, HookPoint, Logits, ModuleKind, Resume};
use crate::tokenizer::Tokenizer;
use hooks::{place_mask, Corruption, PatchHooks, Restore};

/// Which states are restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The residual stream after one block.
    Hidden,
    /// The MLP outputs of a window of layers.
    Mlp,
    /// The attention outputs (after the output projection) of a window of layers.
    Attn,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Hidden, Kind::Mlp, Kind::Attn];

    /// The reference's `kind` field: "" for hidden states.
    pub fn reference_name(self) -> &'static str {
        match self {
            Kind::Hidden => "",
            Kind::Mlp => "mlp",
            Kind::Attn => "attn",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hidden => "hidden",
            Kind::Mlp => "mlp",
            Kind::Attn => "attn",
        }
    }

    fn point(self, layer: usize) -> HookPoint {
        match self {
            Kind::Hidden => HookPoint::BlockOut(layer),
            Kind::Mlp => HookPoint::MlpOut(layer),
            Kind::Attn => HookPoint::LinearOut(layer, ModuleKind::AttnOut),
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hidden" => Ok(Kind::Hidden),
            "mlp" => Ok(Kind::Mlp),
            "attn" => Ok(Kind::Attn),
            _ => Err(Error::Input(format!("unknown trace kind `{s}`: use hidden, mlp or attn"))),
        }
    }
}

/// How a fact is traced.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// Corrupted runs per restoration (the reference: 10).
    pub samples: usize,
    /// Layers restored together by the MLP/attention traces (the reference: 10).
    pub window: usize,
    /// The noise's scale: a standard deviation, or the half-width of uniform noise.
    pub noise_level: f64,
    pub uniform: bool,
    /// Replace the subject's embeddings by the noise instead of adding it.
    pub replace: bool,
    /// numpy `RandomState` seed of the noise (the reference: 1).
    pub seed: u32,
    /// With `replace`, compute `low_score` with the replacing corruption too. The reference
    /// computes it with added noise whatever `replace` says.
    pub consistent_low_score: bool,
    /// Trace the expected answer's first token even when the model predicts another (the
    /// reference traces only facts whose prediction is the expected answer).
    pub trace_expected: bool,
    /// Upper bound on rows × tokens of one restoration forward.
    pub batch_tokens: usize,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            samples: 10,
            window: 10,
            noise_level: 0.1,
            uniform: false,
            replace: false,
            seed: 1,
            consistent_low_score: false,
            trace_expected: false,
            batch_tokens: 8192,
        }
    }
}

/// One trace, in the reference's fields (`calculate_hidden_flow`'s dictionary) with the fact's
/// identity. A fact whose prediction is not the expected answer has `correct_prediction`
/// false and no scores.
#[derive(Clone, Debug, Serialize)]
pub struct FactTrace {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    pub prompt: String,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    pub kind: &'static str,
    pub correct_prediction: bool,
    /// The traced token, decoded (the model's prediction, or the expected answer's first token).
    pub answer: String,
    /// `[tokens][layers]`: the answer's probability with the state (or window) restored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Vec<f64>>,
    pub low_score: Option<f64>,
    pub high_score: f64,
    pub input_ids: Vec<u32>,
    pub input_tokens: Vec<String>,
    pub subject_range: (usize, usize),
    pub window: usize,
}

impl FactTrace {
    fn kind(&self) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.reference_name() == self.kind)
    }
}

/// What every kind of trace of one fact shares: the clean run, the corrupted run.
pub struct Prepared {
    fact: Fact,
    ids: Vec<u32>,
    tokens: Vec<String>,
    range: (usize, usize),
    answer_t: u32,
    answer: String,
    predicted: bool,
    high_score: f64,
    low_score: f64,
    /// `[samples, e − b, d]` f64, the noise of every corrupted run.
    noise: Tensor,
    /// Per layer, the corrupted runs' block outputs `[samples, t, d]`.
    corrupted: Vec<Tensor>,
    /// Per kind and layer, the clean run's state `[t, d]`.
    clean: BTreeMap<Kind, Vec<Tensor>>,
}

impl Prepared {
    /// Whether the model predicts the expected answer (always, without one).
    pub fn predicted(&self) -> bool {
        self.predicted
    }
    pub fn high_score(&self) -> f64 {
        self.high_score
    }
    pub fn low_score(&self) -> f64 {
        self.low_score
    }
    pub fn n_tokens(&self) -> usize {
        self.ids.len()
    }
    pub fn subject_range(&self) -> (usize, usize) {
        self.range
    }
}

/// The answer's probability in each row of `logits` (`[rows, vocab]`), from f32 logits in f64.
fn answer_probs(logits: &Tensor, answer: u32) -> Result<Vec<f64>> {
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows
        .iter()
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            (row[answer as usize] as f64 - max).exp() / sum
        })
        .collect())
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn rows_of(ids: &[u32], rows: usize, pad: u32, device: &Device) -> Result<Batch> {
    Batch::from_sequences(&vec![ids.to_vec(); rows], pad, device)
}

/// The last position's logits `[rows, vocab]` of `rows` copies of `ids` run with `hooks`,
/// from the embeddings or from `resume`.
fn last_logits(model: &dyn CausalLm, ids: &[u32], rows: usize, resume: Option<Resume>, hooks: &mut PatchHooks) -> Result<Tensor> {
    let pad = model.config().pad_id();
    let opts = ForwardOpts { logits: Logits::Last, resume, ..ForwardOpts::default() };
    model.forward_hooked(&rows_of(ids, rows, pad, model.device())?, &opts, hooks)?.ok_or_else(|| Error::Internal("a traced run returned no logits".into()))
}

fn check_options(opts: &TraceOptions) -> Result<()> {
    if opts.samples == 0 {
        return Err(Error::Input("--samples must be at least 1".into()));
    }
    if opts.window == 0 {
        return Err(Error::Input("--window must be at least 1".into()));
    }
    if !opts.noise_level.is_finite() || opts.noise_level < 0.0 {
        return Err(Error::Input(format!("the noise level {} must be a finite number ≥ 0", opts.noise_level)));
    }
    Ok(())
}

/// The corruption of `rows` rows of `t` tokens, row r getting sample `sample(r)`'s noise.
fn corruption(p: &Prepared, rows: usize, sample: impl Fn(usize) -> usize, replace: bool, device: &Device) -> Result<Corruption> {
    let (b, e) = p.range;
    let t = p.ids.len();
    let d = p.noise.dim(2)?;
    let idx = Tensor::from_vec((0..rows).map(|r| sample(r) as u32).collect::<Vec<_>>(), rows, device)?;
    let subject = p.noise.index_select(&idx, 0)?;
    let before = Tensor::zeros((rows, b, d), DType::F64, device)?;
    let after = Tensor::zeros((rows, t - e, d), DType::F64, device)?;
    let noise = Tensor::cat(&[&before, &subject, &after], 1)?;
    let mask = place_mask(rows, t, (0..rows).flat_map(|r| (b..e).map(move |p| (r, p))), device)?;
    Ok(Corruption { noise, mask, replace })
}

/// Runs the clean and the corrupted forwards of `fact` and records what the `kinds` traces
/// restore from.
pub fn prepare(model: &dyn CausalLm, tok: &Tokenizer, fact: &Fact, opts: &TraceOptions, kinds: &[Kind]) -> Result<Prepared> {
    check_options(opts)?;
    let cfg = model.config();
    let device = model.device();
    let (ids, range) = facts::subject_tokens(tok, &fact.prompt, &fact.subject)?;
    if ids.is_empty() || ids.len() > cfg.n_ctx {
        return Err(Error::Input(format!("the prompt {:?} has {} tokens: it needs 1 to {} (the model's context)", fact.prompt, ids.len(), cfg.n_ctx)));
    }
    let tokens = facts::decode_each(tok, &ids)?;
    let n_layer = cfg.n_layer;

    // The clean run, recording the states the traces restore.
    let mut clean_hooks = PatchHooks::default();
    for k in kinds {
        clean_hooks.record.extend((0..n_layer).map(|l| k.point(l)));
    }
    let logits = last_logits(model, &ids, 1, None, &mut clean_hooks)?;
    let row: Vec<f32> = logits.to_dtype(DType::F32)?.get(0)?.to_vec1()?;
    // The first of equal maxima, as torch.max.
    let top = row.iter().enumerate().fold(0, |best, (i, &x)| if x > row[best] { i } else { best }) as u32;
    let answer_top = tok.decode(&[top])?;
    let predicted = fact.expect.as_deref().is_none_or(|want| answer_top.trim() == want);
    let answer_t = match (&fact.expect, predicted, opts.trace_expected) {
        (Some(want), false, true) => *tok
            .continuation(&fact.prompt, &format!(" {}", want.trim_start()))?
            .first()
            .ok_or_else(|| Error::Input(format!("the expected answer of {:?} is empty", fact.prompt)))?,
        _ => top,
    };
    let high_score = answer_probs(&logits, answer_t)?[0];
    let mut clean = BTreeMap::new();
    for &k in kinds {
        let states = (0..n_layer)
            .map(|l| {
                let h = clean_hooks
                    .recorded
                    .get(&k.point(l))
                    .ok_or_else(|| Error::Internal(format!("the clean run recorded no {} state at layer {l}", k.name())))?;
                Ok(h.get(0)?.to_dtype(DType::F32)?)
            })
            .collect::<Result<Vec<_>>>()?;
        clean.insert(k, states);
    }

    let s = opts.samples;
    let d = cfg.d_model;
    let noise = noise::draw(opts.seed, s, range.1 - range.0, d, opts.noise_level, opts.uniform);
    let noise = Tensor::from_vec(noise, (s, range.1 - range.0, d), device)?;
    let mut p = Prepared {
        fact: fact.clone(),
        ids,
        tokens,
        range,
        answer_t,
        answer: tok.decode(&[answer_t])?,
        predicted,
        high_score,
        low_score: f64::NAN,
        noise,
        corrupted: Vec::new(),
        clean,
    };
    if !predicted && !opts.trace_expected {
        return Ok(p);
    }

    // The corrupted runs, recording every block output (where restorations resume).
    let mut hooks = PatchHooks { corrupt: Some(corruption(&p, s, |r| r, opts.replace, device)?), ..PatchHooks::default() };
    hooks.record.extend((0..n_layer).map(HookPoint::BlockOut));
    let logits = last_logits(model, &p.ids, s, None, &mut hooks)?;
    p.corrupted = (0..n_layer)
        .map(|l| hooks.recorded.remove(&HookPoint::BlockOut(l)).ok_or_else(|| Error::Internal(format!("no corrupted block output at layer {l}"))))
        .collect::<Result<_>>()?;
    p.low_score = mean(&answer_probs(&logits, p.answer_t)?);
    if opts.replace && !opts.consistent_low_score {
        // The reference's low score ignores `replace`: it adds the noise.
        let mut added = PatchHooks { corrupt: Some(corruption(&p, s, |r| r, false, device)?), ..PatchHooks::default() };
        let logits = last_logits(model, &p.ids, s, None, &mut added)?;
        p.low_score = mean(&answer_probs(&logits, p.answer_t)?);
    }
    Ok(p)
}

/// The layers a restoration centred on `layer` covers: one for hidden states, the reference's
/// window `[layer − ⌊w/2⌋, layer + ⌈w/2⌉)` clipped to the model otherwise.
pub fn window(kind: Kind, layer: usize, w: usize, n_layer: usize) -> std::ops::Range<usize> {
    match kind {
        Kind::Hidden => layer..layer + 1,
        _ => layer.saturating_sub(w / 2)..(layer + w.div_ceil(2)).min(n_layer),
    }
}

/// The trace of one kind: the answer's probability with each (token, layer) restored.
pub fn trace_kind(model: &dyn CausalLm, p: &Prepared, kind: Kind, opts: &TraceOptions) -> Result<FactTrace> {
    let n_layer = model.config().n_layer;
    let mut out = FactTrace {
        id: p.fact.id.clone(),
        prompt: p.fact.prompt.clone(),
        subject: p.fact.subject.clone(),
        expect: p.fact.expect.clone(),
        kind: kind.reference_name(),
        correct_prediction: p.predicted,
        answer: p.answer.clone(),
        scores: Vec::new(),
        low_score: None,
        high_score: p.high_score,
        input_ids: p.ids.clone(),
        input_tokens: p.tokens.clone(),
        subject_range: p.range,
        window: opts.window,
    };
    if !p.predicted && !opts.trace_expected {
        return Ok(out);
    }
    let clean = p.clean.get(&kind).ok_or_else(|| Error::Internal(format!("the {} trace was not prepared", kind.name())))?;
    let (t, s) = (p.ids.len(), opts.samples);
    let device = model.device();
    let mut scores = vec![vec![0.0; n_layer]; t];
    // Token groups per forward: all t tokens × s samples, or fewer to stay within the budget.
    let per_forward = (opts.batch_tokens / (s * t)).clamp(1, t);
    for layer in 0..n_layer {
        let span = window(kind, layer, opts.window, n_layer);
        for first in (0..t).step_by(per_forward) {
            let tokens: Vec<usize> = (first..(first + per_forward).min(t)).collect();
            let rows = tokens.len() * s;
            // Row r restores token tokens[r / s] in sample r % s.
            let places = |r: usize| (r, tokens[r / s]);
            let mask = place_mask(rows, t, (0..rows).map(places), device)?;
            let samples = Tensor::from_vec((0..rows).map(|r| (r % s) as u32).collect::<Vec<_>>(), rows, device)?;
            let mut hooks = PatchHooks::default();
            let resume = match kind {
                Kind::Hidden => {
                    // Restoring a block output is the corrupted stream after that block with
                    // the clean state at the token.
                    let corrupted = p.corrupted[layer].index_select(&samples, 0)?;
                    let shape = corrupted.shape().clone();
                    let clean = clean[layer].to_dtype(corrupted.dtype())?.unsqueeze(0)?.broadcast_as(&shape)?;
                    Some(Resume { after: layer, hidden: mask.broadcast_as(&shape)?.where_cond(&clean, &corrupted)?, prefix: None })
                }
                _ => {
                    for l in span.clone() {
                        hooks.restore.insert(kind.point(l), Restore { mask: mask.clone(), clean: clean[l].clone() });
                    }
                    match span.start {
                        0 => {
                            hooks.corrupt = Some(corruption(p, rows, |r| r % s, opts.replace, device)?);
                            None
                        }
                        l0 => Some(Resume { after: l0 - 1, hidden: p.corrupted[l0 - 1].index_select(&samples, 0)?, prefix: None }),
                    }
                }
            };
            let logits = last_logits(model, &p.ids, rows, resume, &mut hooks)?;
            let probs = answer_probs(&logits, p.answer_t)?;
            for (i, &tok) in tokens.iter().enumerate() {
                scores[tok][layer] = mean(&probs[i * s..(i + 1) * s]);
            }
        }
    }
    out.scores = scores;
    out.low_score = Some(p.low_score);
    Ok(out)
}

/// The answer's probability, averaged over the corrupted runs, with the clean `kind` states at
/// the given (token, layer) places restored, in one forward from the embeddings: the
/// reference's `trace_with_patch` for any set of states.
pub fn restored_probability(model: &dyn CausalLm, p: &Prepared, kind: Kind, places: &[(usize, usize)], opts: &TraceOptions) -> Result<f64> {
    let clean = p.clean.get(&kind).ok_or_else(|| Error::Internal(format!("the {} trace was not prepared", kind.name())))?;
    let (t, s) = (p.ids.len(), opts.samples);
    let device = model.device();
    if let Some(&(tok, l)) = places.iter().find(|&&(tok, l)| tok >= t || l >= clean.len()) {
        return Err(Error::Input(format!("cannot restore token {tok} at layer {l}: the prompt has {t} tokens, the model {} layers", clean.len())));
    }
    let mut hooks = PatchHooks { corrupt: Some(corruption(p, s, |r| r, opts.replace, device)?), ..PatchHooks::default() };
    for (layer, state) in clean.iter().enumerate() {
        let tokens: Vec<usize> = places.iter().filter(|&&(_, l)| l == layer).map(|&(tok, _)| tok).collect();
        if !tokens.is_empty() {
            let mask = place_mask(s, t, (0..s).flat_map(|r| tokens.iter().map(move |&tok| (r, tok))), device)?;
            hooks.restore.insert(kind.point(layer), Restore { mask, clean: state.clone() });
        }
    }
    let logits = last_logits(model, &p.ids, s, None, &mut hooks)?;
    Ok(mean(&answer_probs(&logits, p.answer_t)?))
}

/// The standard deviation of the token embeddings of `subjects`, each tokenized on its own
/// (the reference's `collect_embedding_std`, the scale of the `s<k>` noise rule).
pub fn embedding_std(model: &dyn CausalLm, tok: &Tokenizer, subjects: &[&str]) -> Result<f64> {
    let pad = model.config().pad_id();
    let mut values = Vec::new();
    for chunk in subjects.chunks(64) {
        let seqs = chunk.iter().map(|s| tok.encode_input(s)).collect::<Result<Vec<_>>>()?;
        let seqs: Vec<Vec<u32>> = seqs
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|mut s| {
                s.truncate(model.config().n_ctx);
                s
            })
            .collect();
        if seqs.is_empty() {
            continue;
        }
        let batch = Batch::from_sequences(&seqs, pad, model.device())?;
        let mut hooks = PatchHooks::default();
        hooks.record.insert(HookPoint::TokenEmbeddings);
        let opts = ForwardOpts { stop_after: Some(0), ..ForwardOpts::default() };
        model.forward_hooked(&batch, &opts, &mut hooks)?;
        let emb: Vec<Vec<Vec<f32>>> = hooks.recorded[&HookPoint::TokenEmbeddings].to_dtype(DType::F32)?.to_vec3()?;
        for (row, s) in emb.iter().zip(&seqs) {
            values.extend(row[..s.len()].iter().flatten().map(|&x| x as f64));
        }
    }
    noise::std_dev(&values)
}
