//! The target-vector optimisation shared by ROME (`compute_v`: δ at the MLP output) and MEMIT
//! (`compute_z`: δ at the block output of the last edited layer), reference spec §1.5 / §2.3.
//!
//! Several requests are optimised together: their prompts share one right-padded batch and
//! each request owns one row of δ. Every request's loss depends only on its own rows and its
//! own δ, so the gradient of the summed loss w.r.t. δ_j is exactly ∇loss_j, and Adam (being
//! element-wise) takes the same steps as it would alone. Each request keeps the reference's own
//! stopping rules (loss < 5e-2, or the last iteration, which only evaluates); a stopped request
//! leaves the batch.

use std::collections::BTreeMap;
use std::ops::Range;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use serde::Serialize;

use super::hparams::GradCheckpoint;
use super::positions::subject_input;
use super::requests::Request;
use super::vec_norm;
use crate::error::{Error, Result};
use crate::models::{backprop_per_block, first_positions, shift_positions, Batch, CausalLm, Intervention, Logits, Resume, ResumeCache, Site, Trace, TraceSpec};
use crate::tokenizer::Tokenizer;

/// The reference's early-stopping threshold on the total loss.
const STOP_LOSS: f64 = 5e-2;

#[derive(Clone, Debug)]
pub struct OptimizeParams {
    pub site: Site,
    pub layer: usize,
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    pub grad_checkpoint: GradCheckpoint,
    /// The reference's rewriting prompts: `prompt + decode(target[:-1])` re-tokenized.
    pub decoded_target_prefix: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct LossPoint {
    pub nll: f64,
    pub kl: f64,
    pub weight_decay: f64,
    pub total: f64,
}

#[derive(Clone, Debug)]
pub struct OptimizedTarget {
    /// The site's output at the subject's last token of the first template's prompt, δ = 0.
    pub init: Vec<f32>,
    pub delta: Vec<f32>,
    /// init + δ: ROME's v*, MEMIT's z.
    pub target: Vec<f32>,
    pub losses: Vec<LossPoint>,
    /// Adam steps taken.
    pub steps: usize,
}

/// One request's tokenized rows: the rewriting prompts (one per template, each ending in the
/// target minus its last token) and the KL prompt `"{} is a"`.
struct Prepared {
    rows: Vec<Vec<u32>>,
    lookup: Vec<usize>,
    target: Vec<u32>,
    n_rewrite: usize,
}

/// Each rewriting row is the context prompt's model input followed by the target's tokens but the
/// last, the target's tokens being those that follow the bare prompt (see [`Tokenizer`]). The
/// reference re-tokenizes `prompt + decode(target[:-1])` instead, which is the same text for
/// byte-level BPE but drops the space before a second target piece with SentencePiece decoders.
fn prepare(tok: &Tokenizer, req: &Request, templates: &[String], decoded_target_prefix: bool) -> Result<Prepared> {
    let target = tok.continuation(&req.filled_prompt(), &req.target_new_spaced())?;
    if target.is_empty() {
        return Err(Error::Input(format!("request {}: target {:?} has no tokens", req.index, req.target_new)));
    }
    let decoded = if decoded_target_prefix { Some(tok.decode(&target[..target.len() - 1])?) } else { None };
    let mut rows = Vec::with_capacity(templates.len() + 1);
    let mut lookup = Vec::with_capacity(templates.len() + 1);
    let rewriting = templates.iter().map(|ctx| ctx.replacen("{}", &req.prompt, 1));
    for (i, tmpl) in rewriting.chain(std::iter::once("{} is a".to_string())).enumerate() {
        let (mut ids, idx) = subject_input(tok, &tmpl, &req.subject)
            .map_err(|e| Error::Input(format!("request {}: the subject {:?} cannot be located in {:?}: {e}", req.index, req.subject, tmpl)))?;
        if i < templates.len() {
            match &decoded {
                // The loss still reads the row's last |target| positions, as the reference's does.
                Some(text) => ids = tok.encode_input(&format!("{}{text}", tmpl.replacen("{}", &req.subject, 1)))?,
                None => ids.extend_from_slice(&target[..target.len() - 1]),
            }
            if ids.len() < target.len() || idx >= ids.len() {
                return Err(Error::Input(format!("request {}: the prompt {tmpl:?} is shorter than its target", req.index)));
            }
        }
        rows.push(ids);
        lookup.push(idx);
    }
    Ok(Prepared { rows, lookup, target, n_rewrite: templates.len() })
}

struct State {
    prep: Prepared,
    delta: Vec<f32>,
    m: Vec<f64>,
    v: Vec<f64>,
    init: Option<Vec<f32>>,
    kl_init: Option<Tensor>,
    losses: Vec<LossPoint>,
    steps: usize,
    done: bool,
}

impl State {
    /// Records a step's losses (NLL, KL and the weight decay wd·‖δ‖/‖v₀‖²); whether the request
    /// goes on (its total is above the reference's stopping threshold and steps remain). A total
    /// that is not finite is returned as the error.
    fn record_loss(&mut self, nll: f32, kl: f32, it: usize, params: &OptimizeParams) -> std::result::Result<bool, f64> {
        let init_norm = vec_norm(self.init.as_ref().expect("set at it 0"));
        let wd = params.weight_decay * vec_norm(&self.delta) / (init_norm * init_norm);
        let total = f64::from(nll) + f64::from(kl) + wd;
        if !total.is_finite() {
            return Err(total);
        }
        self.losses.push(LossPoint { nll: f64::from(nll), kl: f64::from(kl), weight_decay: wd, total });
        self.done = total < STOP_LOSS || it + 1 == params.steps;
        Ok(!self.done)
    }

    /// One Adam step of δ on its gradient `g`, then δ clamped to `clamp_norm_factor` × ‖v₀‖.
    fn take_step(&mut self, g: &[f32], params: &OptimizeParams) {
        let init_norm = vec_norm(self.init.as_ref().expect("set"));
        // d/dδ of wd·‖δ‖/‖v₀‖² (zero at δ = 0, as PyTorch's norm gradient).
        let dn = vec_norm(&self.delta);
        let wd_scale = if dn > 0.0 { params.weight_decay / (init_norm * init_norm) / dn } else { 0.0 };
        self.steps += 1;
        super::adam::step_vector(&mut self.delta, &mut self.m, &mut self.v, g, wd_scale, self.steps as i32, params.lr);
        let max_norm = params.clamp_norm_factor * init_norm;
        let dn = vec_norm(&self.delta);
        if dn > max_norm {
            let f = (max_norm / dn) as f32;
            self.delta.iter_mut().for_each(|x| *x *= f);
        }
    }
}

/// One step's batch: the active requests' rows, in order, and the positions read from them.
struct StepRows {
    batch: Batch,
    /// Per row, the index (among the active requests) of its request.
    row_owner: Vec<u32>,
    /// Per active request, where its rows start.
    first_row: Vec<usize>,
    /// Where δ is added: (row, position).
    positions: Vec<(usize, usize)>,
    /// NLL positions (row, pos) with their target token and request, then the KL positions.
    nll_pos: Vec<(usize, usize)>,
    nll_tok: Vec<u32>,
    owner_of_nll: Vec<usize>,
    kl_pos: Vec<(usize, usize)>,
    /// `nll_pos` then `kl_pos`: the logits read.
    all_pos: Vec<(usize, usize)>,
}

impl StepRows {
    fn of(states: &[State], active: &[usize], pad_id: u32, dev: &Device) -> Result<Self> {
        let mut seqs = Vec::new();
        let mut row_owner = Vec::new();
        let mut first_row = Vec::new();
        for (a, &j) in active.iter().enumerate() {
            first_row.push(seqs.len());
            for row in &states[j].prep.rows {
                seqs.push(row.clone());
                row_owner.push(a as u32);
            }
        }
        let batch = Batch::from_sequences(&seqs, pad_id, dev)?;
        let mut positions = Vec::new();
        for (a, &j) in active.iter().enumerate() {
            for (i, &p) in states[j].prep.lookup.iter().enumerate() {
                positions.push((first_row[a] + i, p));
            }
        }
        let mut nll_pos = Vec::new();
        let mut nll_tok = Vec::new();
        let mut owner_of_nll = Vec::new();
        for (a, &j) in active.iter().enumerate() {
            let p = &states[j].prep;
            for r in 0..p.n_rewrite {
                let len = p.rows[r].len();
                let start = len - p.target.len();
                for (k, &t) in p.target.iter().enumerate() {
                    // The logit at `start + k` predicts target token k.
                    nll_pos.push((first_row[a] + r, start + k));
                    nll_tok.push(t);
                    owner_of_nll.push(a);
                }
            }
        }
        let kl_pos: Vec<(usize, usize)> =
            active.iter().enumerate().map(|(a, &j)| (first_row[a] + states[j].prep.n_rewrite, *states[j].prep.lookup.last().expect("kl row"))).collect();
        let mut all_pos = nll_pos.clone();
        all_pos.extend_from_slice(&kl_pos);
        Ok(Self { batch, row_owner, first_row, positions, nll_pos, nll_tok, owner_of_nll, kl_pos, all_pos })
    }
}

/// Log-softmax over the last dimension from primitive ops, so gradients flow (candle's fused
/// softmax kernels drop them).
pub(crate) fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Optimises one δ per request at `params.site` of `params.layer`, all requests in one batch.
/// `templates` are the flat context templates; the first one's row gives the initial vector.
pub fn optimize_targets(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    requests: &[&Request],
    templates: &[String],
    params: &OptimizeParams,
) -> Result<Vec<OptimizedTarget>> {
    let pad_id = model.config().pad_id();
    if templates.is_empty() {
        return Err(Error::Input("no context templates: at least \"{}\" is needed".into()));
    }
    let d = model.config().d_model;
    let dev = model.device().clone();
    let mut states: Vec<State> = requests
        .iter()
        .map(|r| {
            Ok(State {
                prep: prepare(tok, r, templates, params.decoded_target_prefix)?,
                delta: vec![0.0; d],
                m: vec![0.0; d],
                v: vec![0.0; d],
                init: None,
                kl_init: None,
                losses: Vec::new(),
                steps: 0,
                done: false,
            })
        })
        .collect::<Result<_>>()?;

    // Nothing below the optimised layer depends on δ, nor anything at a row's positions before
    // its δ: the first step records the residual stream after the layer and the keys/values
    // above it (δ = 0), and later steps resume there, computing each row only from its δ on,
    // with δ added at the block output (where adding it to the MLP output ends up too). Where the
    // MLP output is normed before the residual sum (Gemma), a δ there is resumed from the block
    // below, still at the MLP output; at layer 0 of such a model every step runs whole.
    // Requests only ever leave the batch, so later batches are a subset of these rows.
    let (after, resumed_site) = match params.site {
        Site::MlpOut if !model.config().mlp_out_joins_residual() => (params.layer.checked_sub(1), Site::MlpOut),
        _ => (Some(params.layer), Site::BlockOut),
    };
    let mut resume_from: Option<(Vec<std::ops::Range<usize>>, ResumeCache)> = None;
    for it in 0..params.steps {
        let active: Vec<usize> = (0..states.len()).filter(|&j| !states[j].done).collect();
        if active.is_empty() {
            break;
        }
        let StepRows { batch, row_owner, first_row, positions, nll_pos, nll_tok, owner_of_nll, kl_pos, all_pos } =
            StepRows::of(&states, &active, pad_id, &dev)?;

        let init_delta: Vec<f32> = active.iter().flat_map(|&j| states[j].delta.iter().copied()).collect();
        let var = Var::from_tensor(&Tensor::from_vec(init_delta, (active.len(), d), &dev)?)?;
        // One δ row per intervention position: its row's request's.
        let owners: Vec<u32> = positions.iter().map(|&(r, _)| row_owner[r]).collect();
        let owners = Tensor::from_vec(owners, positions.len(), &dev)?;
        let per_position = var.as_tensor().index_select(&owners, 0)?;
        // A forward of `deltas` over the whole rows (no cache yet) or, resumed, over each row from
        // its δ on, recording the block outputs `record` (per-block backpropagation's inputs).
        let forward = |deltas: &Tensor, from: Option<&Resumed>, record: Range<usize>| -> Result<Trace> {
            let (spec, batch, iv) = match from {
                Some(r) => {
                    let spec = TraceSpec { block_out: record.collect(), logits: r.logits.clone(), resume: Some(r.resume.clone()), ..TraceSpec::default() };
                    (
                        spec,
                        &r.short,
                        Intervention { layer: params.layer, site: resumed_site, positions: r.iv_positions.clone(), deltas: deltas.to_dtype(model.dtype())? },
                    )
                }
                None => {
                    let mut spec = TraceSpec::logits(Logits::At(all_pos.clone()));
                    if let Some(a) = after {
                        ResumeCache::request(&mut spec, a, model.config().n_layer);
                    }
                    if params.site == Site::MlpOut {
                        spec.mlp_out.insert(params.layer);
                    }
                    (
                        spec,
                        &batch,
                        Intervention { layer: params.layer, site: params.site, positions: positions.clone(), deltas: deltas.to_dtype(model.dtype())? },
                    )
                }
            };
            model.forward(batch, &spec, &[iv])
        };
        let resumed = |cache: &(Vec<Range<usize>>, ResumeCache)| -> Result<Resumed> {
            let (rows_of, cache) = cache;
            let rows: Vec<usize> = active.iter().flat_map(|&j| rows_of[j].clone()).collect();
            let offsets = first_positions(&batch, &[positions.as_slice(), all_pos.as_slice()].concat());
            let (short, resume) = cache.resume(&batch, &rows, &offsets)?;
            Ok(Resumed { logits: Logits::At(shift_positions(&all_pos, &offsets)), iv_positions: shift_positions(&positions, &offsets), short, resume })
        };
        let n_nll = nll_pos.len();
        // Per-request NLL: −Σ log p(target) / (|target| · #templates), as a weight matrix.
        let mut wmat = vec![0f32; active.len() * n_nll];
        for (q, &a) in owner_of_nll.iter().enumerate() {
            let p = &states[active[a]].prep;
            wmat[a * n_nll + q] = 1.0 / (p.target.len() as f32 * p.n_rewrite as f32);
        }
        let wmat = Tensor::from_vec(wmat, (active.len(), n_nll), &dev)?;
        let idx = Tensor::from_vec(nll_tok, (n_nll, 1), &dev)?;
        // The NLL per request [n_active] and the KL prompts' log-probabilities.
        let nll_and_kl_logprobs = |trace: &Trace| -> Result<(Tensor, Tensor)> {
            let logits = trace.logits.as_ref().expect("logits requested").to_dtype(DType::F32)?;
            let lp = log_softmax(&logits)?;
            let picked = lp.narrow(0, 0, n_nll)?.gather(&idx, 1)?; // [n_nll, 1]
            Ok((wmat.matmul(&picked)?.squeeze(1)?.neg()?, lp.narrow(0, n_nll, kl_pos.len())?))
        };

        // The first step (δ = 0) records the cache and needs no graph: its gradient comes from a
        // resumed forward below, whose graph covers each row only from its δ on (at GPT-2 XL's
        // size the whole rows' graph was ~6 GB). Backpropagating per block, no step keeps a graph
        // from its first forward.
        let first = it == 0;
        let step_from = resume_from.as_ref().map(&resumed).transpose()?;
        let per_block = step_from.as_ref().zip(after).is_some_and(|(r, a)| per_block_backprop(model, params, a, r));
        let record = match after {
            Some(a) if per_block => a + 1..model.config().n_layer - 1,
            _ => 0..0,
        };
        let mut trace =
            forward(&if (first && after.is_some()) || per_block { per_position.detach() } else { per_position.clone() }, step_from.as_ref(), record)?;
        let (nll, lp_kl) = nll_and_kl_logprobs(&trace)?;
        if first {
            if let Some(a) = after {
                let rows_of = active.iter().enumerate().map(|(a, &j)| first_row[a]..first_row[a] + states[j].prep.rows.len()).collect();
                resume_from = Some((rows_of, ResumeCache::from_trace(&trace, a)?));
            }
            let site_out = match params.site {
                Site::MlpOut => &trace.mlp_out[&params.layer],
                Site::BlockOut => &trace.block_out[&params.layer],
            };
            for (a, &j) in active.iter().enumerate() {
                let p0 = states[j].prep.lookup[0];
                let v: Vec<f32> = site_out.i((first_row[a], p0))?.to_dtype(DType::F32)?.to_vec1()?;
                states[j].init = Some(v);
                states[j].kl_init = Some(lp_kl.i(a)?.detach());
            }
        }
        let recorded_here = if per_block { std::mem::take(&mut trace.block_out) } else { BTreeMap::new() };
        drop(trace);
        let kl_init = Tensor::stack(&active.iter().map(|&j| states[j].kl_init.clone().expect("set at it 0")).collect::<Vec<_>>(), 0)?;
        let kl_of = |lp_kl: &Tensor| -> Result<Tensor> { Ok((lp_kl.exp()? * (lp_kl - &kl_init)?)?.sum(1)?.affine(params.kl_factor, 0.0)?) }; // [n_active]
        let kl = kl_of(&lp_kl)?;

        let (nll_v, kl_v): (Vec<f32>, Vec<f32>) = (nll.to_vec1()?, kl.to_vec1()?);
        let mut keep_going = vec![0f32; active.len()];
        for (a, &j) in active.iter().enumerate() {
            let going = states[j].record_loss(nll_v[a], kl_v[a], it, params).map_err(|total| {
                Error::Input(format!(
                    "request {} ({:?}): the loss became {total} at step {it}; the edit cannot be computed",
                    requests[j].index, requests[j].subject
                ))
            })?;
            keep_going[a] = if going { 1.0 } else { 0.0 };
        }
        if keep_going.iter().all(|&k| k == 0.0) {
            continue;
        }
        let mask = Tensor::from_vec(keep_going.clone(), active.len(), &dev)?;
        let loss_of = |nll: Tensor, kl: Tensor| -> Result<Tensor> { Ok(((nll + kl)? * &mask)?.sum_all()?) };
        let grads = match step_from {
            // The graph of this step's forward.
            Some(_) if !per_block => loss_of(nll, kl)?.backward()?,
            None if after.is_none() => loss_of(nll, kl)?.backward()?,
            _ => {
                let from = match step_from {
                    Some(r) => r,
                    None => resumed(resume_from.as_ref().expect("recorded at the first step"))?,
                };
                let a = after.expect("resumable");
                let by_block = per_block || per_block_backprop(model, params, a, &from);
                if first {
                    tracing::debug!(
                        "v*/z loop: {} rows x {} positions from layer {}, the suffix's graph an estimated {:.0} MB: backpropagating {}",
                        from.short.batch_size(),
                        from.short.seq_len(),
                        params.layer,
                        suffix_graph_bytes(model, a, &from) / 1e6,
                        if by_block { "one block at a time" } else { "through the whole graph" }
                    );
                }
                if by_block {
                    // Inputs of every block above the layer, from this step's forward or (first
                    // step) a resumed one.
                    let recorded =
                        if per_block { recorded_here } else { forward(&per_position.detach(), Some(&from), a + 1..model.config().n_layer - 1)?.block_out };
                    let loss = |t: &Trace| -> Result<Tensor> {
                        let (nll, lp_kl) = nll_and_kl_logprobs(t)?;
                        loss_of(nll, kl_of(&lp_kl)?)
                    };
                    let iv = Intervention {
                        layer: params.layer,
                        site: resumed_site,
                        positions: from.iv_positions.clone(),
                        deltas: per_position.to_dtype(model.dtype())?,
                    };
                    backprop_per_block(model, &from.short, &from.resume, &from.logits, &[iv], &recorded, &loss)?
                } else {
                    let (nll, lp_kl) = nll_and_kl_logprobs(&forward(&per_position, Some(&from), 0..0)?)?;
                    loss_of(nll, kl_of(&lp_kl)?)?.backward()?
                }
            }
        };
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::Input("no gradient reached δ".into()))?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (a, &j) in active.iter().enumerate() {
            if keep_going[a] != 0.0 {
                states[j].take_step(&g[a], params);
            }
        }
    }
    Ok(states
        .into_iter()
        .map(|s| {
            let init = s.init.unwrap_or_default();
            let target = init.iter().zip(&s.delta).map(|(a, b)| a + b).collect();
            OptimizedTarget { init, delta: s.delta, target, losses: s.losses, steps: s.steps }
        })
        .collect())
}

/// A step's resumed forward: each row from its δ on, over the cache of the first step.
struct Resumed {
    short: Batch,
    resume: Resume,
    logits: Logits,
    iv_positions: Vec<(usize, usize)>,
}

/// Below this, a graph is never worth a second forward (fact-gpt2's whole graph is ~10 MB).
const SMALL_GRAPH_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

/// Whether this step backpropagates one block at a time: asked for, or (`auto`) when the
/// whole graph of the blocks above `after` (where the forward resumes) would exceed a tenth of
/// the weights (and 64 MiB).
fn per_block_backprop(model: &dyn CausalLm, params: &OptimizeParams, after: usize, r: &Resumed) -> bool {
    let cfg = model.config();
    let blocks = cfg.n_layer - after - 1;
    // With fewer than two blocks above the layer there is nothing to split.
    if blocks < 2 {
        return false;
    }
    match params.grad_checkpoint {
        GradCheckpoint::Blocks => true,
        GradCheckpoint::Off => false,
        GradCheckpoint::Auto => {
            let width = model.dtype().size_in_bytes() as f64;
            let weights = (cfg.n_layer * (4 * cfg.d_model + 2 * cfg.d_ff) * cfg.d_model + cfg.vocab_size * cfg.d_model) as f64 * width;
            suffix_graph_bytes(model, after, r) > SMALL_GRAPH_BYTES.max(weights / 10.0)
        }
    }
}

/// What the graph of the blocks above the layer holds until the backward pass, estimated from
/// what one block keeps alive: per position its input and the decomposed layer norms,
/// projections, heads and residual sums (~40 × d_model values) and the MLP's up-projection and
/// activation (~3 × d_ff); per row the attention keys and values of the cached prefix and the new
/// positions, concatenated and laid out again for the products (~4 × (prefix + positions) ×
/// d_model). At GPT-2 XL's shape (ROME, 22 rows × 3 positions after a ~20-token prefix, 30
/// blocks) this is ~1.0 GB, where the resident memory measured 1.3-1.6 GB more with the whole
/// graph than one block at a time (benches/README.md, "scale"); a count of only the per-position
/// terms said 0.3 GB and chose the whole graph there.
fn suffix_graph_bytes(model: &dyn CausalLm, after: usize, r: &Resumed) -> f64 {
    let cfg = model.config();
    let blocks = cfg.n_layer.saturating_sub(after + 1) as f64;
    let (rows, positions) = (r.short.batch_size() as f64, r.short.seq_len() as f64);
    let prefix = r.resume.prefix.as_ref().map_or(0, |p| p.width()) as f64;
    let per_position = (40 * cfg.d_model + 3 * cfg.d_ff) as f64;
    let per_row = 4.0 * (prefix + positions) * cfg.d_model as f64;
    blocks * (rows * positions * per_position + rows * per_row) * model.dtype().size_in_bytes() as f64
}
