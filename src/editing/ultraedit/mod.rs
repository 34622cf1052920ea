//! UltraEdit (Gu et al., TMLR 2026; XiaojieGu/UltraEdit `editor/ultraedit.py`, `nets.py`,
//! `util.py`, `data/*.py`): training-free, subject-free lifelong editing. One turn (one `edit`
//! call, a sequential evaluation's chunk):
//!
//! 1. Each request is `prompt` (the filled prompt, the tokenizer's BOS first) followed by
//!    `" " + answer` tokenized on its own; the requests are sorted by length, longest first (the
//!    reference's collate), and taken `batch_size` at a time.
//! 2. Per sub-batch, one forward/backward of the mean cross-entropy of the answer tokens on the
//!    model before this turn's edit; at each edited module, the input k and the gradient g of the
//!    loss with respect to its output are cached at the positions that predict an answer token
//!    (`token: ans`). The rows [k, g] update the running statistics of the module's weight shape
//!    ([`state`]), sub-batch by sub-batch, module by module.
//! 3. Per module, with the statistics after the whole turn: k̂, ĝ normalised,
//!    vᵢ = −lr·‖k̂ᵢ‖²·ĝᵢ, and the ridge regression ΔW = (KᵀK + λI)⁻¹KᵀV on the raw keys
//!    (λ = 1, the reference's identity), added to the weight as ΔWᵀ (`[out, in]`).
//!
//! The statistics carry across turns (never reset); the keys of earlier turns are not kept.
//! Deviations, each documented: the solve runs in f64 (the reference: f32), and by the
//! push-through identity Kᵀ(KKᵀ + λI)⁻¹V when a turn has fewer rows than the module's input
//! width (`solver`); a one-row sub-batch counts as having zero variance ([`state`]).

pub mod hparams;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use faer::Mat;

pub use hparams::{Positions, UltraEditHparams, UltraSolver};
use state::{RunningNorm, Shape, UltraState};

use super::factors::{factors_and_losses, hidden_before, sequence_losses_from, LabelRanges};
use super::method::{one_step_outcomes, EditInputs, EditMethod, EditOutcome, ModuleUpdate, UpdateSize};
use super::registry::Method;
use super::requests::Request;
use super::{frobenius_norm, Deltas, Snapshot};
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::linalg::{to_mat, to_tensor, SpdFactor};
use crate::models::modules::EditableModule;
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

/// UltraEdit with its config and its running statistics (in memory, or in a state directory).
pub struct UltraEdit {
    pub hp: UltraEditHparams,
    state: Mutex<UltraState>,
    dir: Option<PathBuf>,
}

/// A request as UltraEdit feeds it: the prompt's input ids, then the answer's own tokens.
pub fn request_tokens(tok: &Tokenizer, r: &Request) -> Result<(Vec<u32>, usize)> {
    let mut ids = tok.encode_input(&r.filled_prompt())?;
    let prompt = ids.len();
    let answer = tok.encode(&r.target_new_spaced())?;
    if answer.is_empty() || prompt == 0 {
        return Err(Error::Input(format!("{}: the target {:?} has no tokens to learn", r.label(), r.target_new)));
    }
    ids.extend(answer);
    Ok((ids, prompt))
}

/// The rows (positions) of one sequence whose keys and gradients a turn caches.
fn cached_positions(token: Positions, len: usize, prompt: usize) -> std::ops::Range<usize> {
    match token {
        Positions::Ans => prompt - 1..len - 1,
        Positions::All => 0..len - 1,
    }
}

/// One module's cached rows of a turn.
struct Cached {
    keys: Vec<Mat<f64>>,
    grads: Vec<Mat<f64>>,
}

/// One forward/backward of a turn: its requests (indices), inputs and labels, and the residual
/// stream below the edited modules (unchanged by the edit, so the loss after it resumes there).
struct Pass {
    requests: Vec<usize>,
    ids: Vec<Vec<u32>>,
    labels: LabelRanges,
    below: Option<crate::models::Resume>,
}

/// The ridge regression of one module: X `[in, out]` = (KᵀK + λI)⁻¹KᵀV.
pub fn ridge_solve(k: &Mat<f64>, v: &Mat<f64>, ridge: f64, solver: UltraSolver) -> Result<(Mat<f64>, &'static str)> {
    let (rows, width) = (k.nrows(), k.ncols());
    let push_through = match solver {
        UltraSolver::Direct => false,
        UltraSolver::PushThrough => true,
        UltraSolver::Auto => rows < width,
    };
    if push_through {
        let g = k * k.transpose() + Mat::<f64>::identity(rows, rows) * faer::Scale(ridge);
        let y = SpdFactor::from_owned(g, "KKᵀ + λI")?.solve(v);
        Ok((k.transpose() * y, "push-through (rows×rows, Cholesky)"))
    } else {
        let a = k.transpose() * k + Mat::<f64>::identity(width, width) * faer::Scale(ridge);
        let x = SpdFactor::from_owned(a, "KᵀK + λI")?.solve(&(k.transpose() * v));
        Ok((x, "direct (in×in, Cholesky)"))
    }
}

/// Stacks row blocks.
fn stack(blocks: &[Mat<f64>]) -> Mat<f64> {
    let rows = blocks.iter().map(Mat::nrows).sum();
    let cols = blocks.first().map(Mat::ncols).unwrap_or(0);
    let mut out = Mat::zeros(rows, cols);
    let mut at = 0;
    for b in blocks {
        out.as_mut().submatrix_mut(at, 0, b.nrows(), cols).copy_from(b);
        at += b.nrows();
    }
    out
}

/// The values V `[rows, out]`: vᵢ = −lr·‖k̂ᵢ‖²·ĝᵢ with the statistics `norm` of [k, g].
pub fn pseudo_values(k: &Mat<f64>, g: &Mat<f64>, norm: &RunningNorm, lr: f64) -> Mat<f64> {
    let width = k.ncols();
    let mut v = Mat::zeros(g.nrows(), g.ncols());
    for i in 0..k.nrows() {
        let coeff = -lr * (0..width).map(|c| norm.normalise(c, k[(i, c)]).powi(2)).sum::<f64>();
        for j in 0..g.ncols() {
            v[(i, j)] = coeff * norm.normalise(width + j, g[(i, j)]);
        }
    }
    v
}

impl UltraEdit {
    /// With `dir`, the statistics are read from there (when it exists) and written back by
    /// [`EditMethod::keep`]; `model` (its base weights and the deltas applied to them) must be
    /// the one the state's last kept edit was applied to.
    pub fn open(hp: UltraEditHparams, dir: Option<&Path>, model: Option<&ModelIdentity>) -> Result<Self> {
        let state = match dir {
            Some(d) => UltraState::open(d, &hp, model)?,
            None => UltraState::new(&hp, model),
        };
        Ok(Self { hp, state: Mutex::new(state), dir: dir.map(Path::to_path_buf) })
    }

    /// The running statistics of the edits kept so far, per weight shape (in, out).
    pub fn kept_statistics(&self) -> BTreeMap<Shape, RunningNorm> {
        self.state().norms.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UltraState> {
        // A panic while holding it would have ended the edit; the state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Step 2: every module's cached rows of the turn, the statistics updated with them, each
    /// request's loss before the edit (from the same forwards), and the passes they came from.
    ///
    /// One forward/backward per sub-batch, as the reference; with `sub_batches_per_pass` above
    /// one, several share a pass, its loss the sum of the sub-batches' own mean losses, which
    /// gives every row the same gradient. The blocks below the first edited module run once per
    /// pass without a gradient.
    fn cache(
        &self,
        model: &dyn CausalLm,
        seqs: &[(Vec<u32>, usize)],
        modules: &[EditableModule],
        norms: &mut BTreeMap<Shape, RunningNorm>,
    ) -> Result<(Vec<Cached>, Vec<f64>, Vec<Pass>)> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        // The reference's input omits the last answer token: its length is len − 1.
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].0.len()));
        let first_layer = modules.iter().map(|m| m.layer).min().unwrap_or(0);
        let mut cached: Vec<Cached> = modules.iter().map(|_| Cached { keys: Vec::new(), grads: Vec::new() }).collect();
        let mut before = vec![f64::NAN; seqs.len()];
        let mut passes = Vec::new();
        let bs = self.hp.batch_size;
        let per_pass = self.hp.sub_batches_per_pass.max(1) * bs;
        for pass in order.chunks(per_pass) {
            let ids: Vec<Vec<u32>> = pass.iter().map(|&i| seqs[i].0.clone()).collect();
            let labels: LabelRanges = pass.iter().map(|&i| seqs[i].1..seqs[i].0.len()).collect();
            let groups: Vec<std::ops::Range<usize>> = (0..pass.len()).step_by(bs).map(|a| a..(a + bs).min(pass.len())).collect();
            let below = hidden_before(model, &ids, first_layer)?;
            let (_, factors, losses) = factors_and_losses(model, &ids, &labels, modules, below.clone(), Some(&groups))?;
            for (&i, l) in pass.iter().zip(losses) {
                before[i] = l;
            }
            let width = ids.iter().map(Vec::len).max().unwrap_or(0);
            let device = factors.first().map(|f| f.x.device().clone()).unwrap_or(Device::Cpu);
            // The statistics are updated sub-batch by sub-batch, module by module, as the reference's.
            for g in &groups {
                let rows: Vec<u32> =
                    g.clone().flat_map(|b| cached_positions(self.hp.token, ids[b].len(), labels[b].start).map(move |p| (b * width + p) as u32)).collect();
                let index = Tensor::from_vec(rows.clone(), rows.len(), &device)?;
                for ((m, f), c) in modules.iter().zip(&factors).zip(&mut cached) {
                    let k = to_mat(&f.x.index_select(&index, 0)?)?;
                    let g = to_mat(&f.delta.index_select(&index, 0)?)?;
                    let both = Mat::from_fn(k.nrows(), m.in_dim + m.out_dim, |i, j| if j < m.in_dim { k[(i, j)] } else { g[(i, j - m.in_dim)] });
                    norms.entry((m.in_dim, m.out_dim)).or_insert_with(|| RunningNorm::new(m.in_dim + m.out_dim)).update(&both);
                    c.keys.push(k);
                    c.grads.push(g);
                }
            }
            passes.push(Pass { requests: pass.to_vec(), ids, labels, below });
        }
        Ok((cached, before, passes))
    }
}

/// Each request's loss on the model as it is now, sub-batch by sub-batch from the residual
/// stream below the edited modules.
fn losses_after(model: &dyn CausalLm, batches: Vec<Pass>, n: usize) -> Result<Vec<f64>> {
    let mut after = vec![f64::NAN; n];
    for b in batches {
        for (i, l) in b.requests.into_iter().zip(sequence_losses_from(model, &b.ids, &b.labels, b.below)?) {
            after[i] = l;
        }
    }
    Ok(after)
}

impl EditMethod for UltraEdit {
    fn method(&self) -> Method {
        Method::UltraEdit
    }

    fn edit(&self, model: &mut dyn CausalLm, inputs: EditInputs) -> Result<EditOutcome> {
        let (tok, requests) = (inputs.tok, inputs.requests);
        let modules = self.hp.modules(model.config())?;
        let seqs: Vec<(Vec<u32>, usize)> = requests.iter().map(|r| request_tokens(tok, r)).collect::<Result<_>>()?;
        let mut norms = self.state().norms.clone();
        let t_cache = std::time::Instant::now();
        let (cached, before, batches) = self.cache(&*model, &seqs, &modules, &mut norms)?;
        let t_cache = t_cache.elapsed();
        let t_solve = std::time::Instant::now();
        let mut deltas = Deltas::new();
        let mut reports = Vec::new();
        for (m, c) in modules.iter().zip(cached) {
            let t0 = std::time::Instant::now();
            let (k, g) = (stack(&c.keys), stack(&c.grads));
            let norm = &norms[&(m.in_dim, m.out_dim)];
            let v = pseudo_values(&k, &g, norm, self.hp.lr);
            let (x, how) = ridge_solve(&k, &v, self.hp.ridge, self.hp.solver)?;
            let upd = x.transpose().to_owned(); // [out, in]
            let update_norm = upd.norm_l2();
            if !update_norm.is_finite() {
                return Err(Error::Numerical(format!("{}: the update is not finite; refusing to write it", m.name)));
            }
            tracing::info!("{}: {} rows, solved {how} in {:.1?}, ‖ΔW‖ {update_norm:.3e}", m.name, k.nrows(), t0.elapsed());
            let weight_norm = frobenius_norm(&model.weight(&m.name)?)?;
            reports.push((ModuleUpdate { module: m.name.clone(), update_norm, weight_norm, solver: Some(how) }, k.nrows()));
            deltas.insert(m.name.clone(), to_tensor(&upd, DType::F32)?);
        }

        let t_solve = t_solve.elapsed();
        let t_after = std::time::Instant::now();
        let mut snapshot = Snapshot::new();
        snapshot.apply(model, &deltas)?;
        let after = losses_after(&*model, batches, requests.len());
        snapshot.restore(model)?;
        let after = after?;
        tracing::debug!("UltraEdit turn of {}: keys and gradients {t_cache:.2?}, solves {t_solve:.2?}, loss after {:.2?}", requests.len(), t_after.elapsed());
        self.state().pending = Some((norms, requests.len()));

        let outcomes = one_step_outcomes(requests, &before, &after, &format!("one UltraEdit turn of {}", requests.len()));
        let sizes = reports
            .iter()
            .map(|(u, rows)| UpdateSize {
                what: u.module.clone(),
                update_norm: u.update_norm,
                weight_norm: u.weight_norm,
                detail: format!("{rows} cached rows"),
                hint: "Lower `lr` (--set lr=...) or raise `ridge`".into(),
            })
            .collect();
        Ok(EditOutcome { deltas, requests: outcomes, modules: reports.into_iter().map(|(u, _)| u).collect(), sizes })
    }

    fn remembers_edits(&self) -> bool {
        true
    }

    fn keep(&self, deltas: &Deltas) -> Result<()> {
        let mut state = self.state();
        state.keep(deltas)?;
        if let Some(dir) = &self.dir {
            state.save(dir)?;
        }
        Ok(())
    }
}
