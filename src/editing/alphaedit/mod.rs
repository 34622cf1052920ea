//! AlphaEdit (Fang et al., ICLR 2025; jianghoucheng/AlphaEdit `AlphaEdit_main.py` and
//! `experiments/evaluate.py`; docs/reference-trace-alphaedit.md §2): MEMIT's target vectors and
//! residual spreading, with each layer's update confined to the null space of the keys the model
//! already depends on, and of the keys of earlier edits.
//!
//! - P = U Uᵀ, U the eigenvectors of the layer's second moment C = E[kkᵀ] (the statistics MEMIT
//!   reads) whose eigenvalues are below `nullspace_threshold`: built once from the unedited
//!   model's statistics and never refreshed.
//! - Per layer, with K the batch's keys `[d_ff, n]`, R its share of the residuals `[d, n]` and
//!   K_pK_pᵀ the sum over the earlier kept batches' keys (the reference's `cache_c`):
//!   X = (P(KKᵀ + K_pK_pᵀ) + L2·I)⁻¹ P K Rᵀ `[d_ff, d]`, ΔW = Xᵀ (`[out, in]`).
//! - Once an edit is kept (a sequential evaluation's chunk, `edit apply --state DIR`), its keys
//!   join K_pK_pᵀ. The reference recomputes them on the edited model after all layers are
//!   updated; a layer's keys do not depend on its own or later layers' weights, so those are the
//!   keys the layer's solve used, which are kept instead.
//!
//! Deviations, each documented: the solve runs in f64 (the reference: f32 on the GPU); the
//! null space's basis is rounded to f32 as the reference's P is, so a cached basis and a fresh
//! one give the same edit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use faer::linalg::solvers::Solve;
use faer::Mat;

use super::memit::{check_stats, edit_by_layers};
use super::method::{EditInputs, EditOutcome};
use super::registry::Method;
use super::templates::ContextTemplates;
use super::Deltas;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;
use crate::linalg::{LayerStats, SpdFactor};
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

pub mod hparams;
mod state;

pub use hparams::{AlphaEditHparams, AlphaSolver};
use state::AlphaState;

/// A layer's preserved-knowledge null space: the orthonormal basis U `[d_ff, r]` of
/// P = U Uᵀ (f32 values held in f64).
#[derive(Clone, Debug)]
pub struct NullSpace {
    pub basis: Mat<f64>,
}

impl NullSpace {
    /// The eigenvectors of `c` (symmetric) whose eigenvalues are below `threshold` in absolute
    /// value (the reference takes an SVD's singular values, |λ| for a symmetric matrix, and
    /// keeps those `< threshold`), rounded to f32.
    pub fn of(c: &Mat<f64>, threshold: f64) -> Result<Self> {
        let n = c.nrows();
        let evd = c.self_adjoint_eigen(faer::Side::Lower).map_err(|e| Error::Numerical(format!("the eigendecomposition of C ({n}×{n}) failed: {e:?}")))?;
        let (u, s) = (evd.U(), evd.S());
        let keep: Vec<usize> = (0..n).filter(|&i| s[i].abs() < threshold).collect();
        Ok(Self { basis: Mat::from_fn(n, keep.len(), |i, j| f64::from(u[(i, keep[j])] as f32)) })
    }

    /// The eigenvalues of C found below the threshold.
    pub fn rank(&self) -> usize {
        self.basis.ncols()
    }

    /// C's width.
    pub fn width(&self) -> usize {
        self.basis.nrows()
    }

    /// P x.
    pub fn project(&self, x: &Mat<f64>) -> Mat<f64> {
        &self.basis * (self.basis.transpose() * x)
    }
}

/// The update X `[d_ff, d]` of one layer: `(P M + l2·I)⁻¹ P K Rᵀ` with M = KKᵀ + K_pK_pᵀ
/// (`kkt` = K Kᵀ, which the caller keeps too).
pub fn solve_update(ns: &NullSpace, k: &Mat<f64>, kkt: &Mat<f64>, resid: &Mat<f64>, kept: Option<&Mat<f64>>, l2: f64, solver: AlphaSolver) -> Result<Mat<f64>> {
    let d_ff = k.nrows();
    let m = match kept {
        Some(kp) => kkt + kp,
        None => kkt.clone(),
    };
    let pkr = ns.project(&(k * resid.transpose()));
    match solver {
        AlphaSolver::Direct => {
            let a = ns.project(&m) + Mat::<f64>::identity(d_ff, d_ff) * faer::Scale(l2);
            Ok(a.partial_piv_lu().solve(&pkr))
        }
        AlphaSolver::Reduced => {
            let u = &ns.basis;
            let r = u.ncols();
            if r == 0 {
                return Ok(Mat::zeros(d_ff, resid.nrows()));
            }
            let g = u.transpose() * &m * u + Mat::<f64>::identity(r, r) * faer::Scale(l2);
            let g = Mat::from_fn(r, r, |i, j| 0.5 * (g[(i, j)] + g[(j, i)]));
            let y = SpdFactor::new(&g, "Uᵀ(KKᵀ + K_pK_pᵀ)U + L2·I")?.solve(&(u.transpose() * k * resid.transpose()));
            Ok(u * y)
        }
    }
}

/// AlphaEdit behind the common method interface: its config, and what it remembers between
/// edits (the null spaces, the kept edits' keys), in memory or in a state directory.
pub struct AlphaEdit {
    pub hp: AlphaEditHparams,
    state: Mutex<AlphaState>,
    dir: Option<PathBuf>,
}

impl AlphaEdit {
    /// With `dir`, the state is read from there (when it exists) and written back by
    /// [`super::method::EditMethod::keep`]; `model` (its base weights and the deltas
    /// applied to them) must be the one the state's last kept edit was applied to.
    pub fn open(hp: AlphaEditHparams, dir: Option<&Path>, model: Option<&ModelIdentity>) -> Result<Self> {
        let state = match dir {
            Some(d) => AlphaState::open(d, &hp, model)?,
            None => AlphaState::default(),
        };
        Ok(Self { hp, state: Mutex::new(state), dir: dir.map(Path::to_path_buf) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AlphaState> {
        // A panic while holding it would have ended the edit; the state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The layer's null space: remembered, or from the statistics file's cache, or computed.
    fn null_space(&self, layer: usize, stats: &mut LayerStats) -> Result<Arc<NullSpace>> {
        if let Some(ns) = self.state().null_spaces.get(&layer) {
            return Ok(ns.clone());
        }
        let thr = self.hp.nullspace_threshold;
        let file = stats.file().map(Path::to_path_buf);
        let ns = match file.as_deref().map(|f| state::read_null_space(f, thr)).transpose()?.flatten() {
            Some(ns) => ns,
            None => {
                let t0 = std::time::Instant::now();
                let ns = NullSpace::of(stats.c()?, thr)?;
                tracing::info!("layer {layer}: null space of C below {thr}: {} of {} dimensions ({:.1?})", ns.rank(), ns.width(), t0.elapsed());
                if let Some(f) = &file {
                    // A cache that cannot be written costs only the time to compute it again.
                    if let Err(e) = state::write_null_space(f, thr, &ns) {
                        tracing::warn!("cannot cache the null space beside {}: {e}", f.display());
                    }
                }
                ns
            }
        };
        if ns.rank() == 0 {
            tracing::warn!(
                "layer {layer}: no eigenvalue of C is below nullspace_threshold {thr}: the update is zero; raise the threshold (--set nullspace_threshold=...)"
            );
        }
        let ns = Arc::new(ns);
        self.state().null_spaces.insert(layer, ns.clone());
        Ok(ns)
    }
}

impl super::method::EditMethod for AlphaEdit {
    fn method(&self) -> Method {
        Method::AlphaEdit
    }

    fn stats_need(&self) -> Option<crate::stats::ensure::StatsNeed> {
        Some(self.hp.stats_need())
    }

    fn default_seed(&self) -> u64 {
        self.hp.seed
    }

    fn context_templates(&self, model: &dyn CausalLm, tok: &Tokenizer, seed: u64) -> Result<Option<ContextTemplates>> {
        super::memit::memit_context_templates(&self.hp, model, tok, seed).map(Some)
    }

    fn edit(&self, model: &mut dyn CausalLm, inputs: EditInputs) -> Result<EditOutcome> {
        let templates = inputs.templates()?;
        let stats = inputs.stats;
        check_stats(&self.hp.layers, stats)?;
        let mut batch_keys = BTreeMap::new();
        let z_batch = self.hp.z_batch(model.device());
        let out = edit_by_layers(model, inputs.tok, inputs.requests, &self.hp, z_batch, templates, &mut |layer, k, resid| {
            let st = stats.get_mut(&layer).ok_or_else(|| Error::Internal(format!("layer {layer}'s statistics vanished")))?;
            let ns = self.null_space(layer, st)?;
            st.done();
            let kkt = k * k.transpose();
            let x = {
                let state = self.state();
                solve_update(&ns, k, &kkt, resid, state.kept_keys.get(&layer), self.hp.l2, self.hp.solver)?
            };
            batch_keys.insert(layer, kkt);
            let how = match self.hp.solver {
                AlphaSolver::Direct => "projected, d_ff×d_ff by LU",
                AlphaSolver::Reduced => "projected, in the null space's basis by Cholesky",
            };
            Ok((x.transpose().to_owned(), how))
        })?;
        {
            let mut state = self.state();
            state.pending = Some(batch_keys);
            state.pending_requests = inputs.requests.len();
        }
        Ok(super::memit::outcome_of(out))
    }

    fn remembers_edits(&self) -> bool {
        true
    }

    fn keep(&self, deltas: &Deltas) -> Result<()> {
        let mut state = self.state();
        state.keep(deltas)?;
        if let Some(dir) = &self.dir {
            state.save(dir, &self.hp)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symmetric matrix with eigenvalues `eig` in a random-looking orthonormal basis, and
    /// that basis.
    fn with_spectrum(eig: &[f64]) -> (Mat<f64>, Mat<f64>) {
        let n = eig.len();
        let a = Mat::from_fn(n, n, |i, j| (((i * 31 + j * 17 + i * j) % 23) as f64 - 11.0) / 7.0 + if i == j { 3.0 } else { 0.0 });
        let q = a.qr().compute_Q();
        let c = &q * Mat::from_fn(n, n, |i, j| if i == j { eig[i] } else { 0.0 }) * q.transpose();
        (Mat::from_fn(n, n, |i, j| 0.5 * (c[(i, j)] + c[(j, i)])), q)
    }

    fn keys(n: usize, m: usize, seed: usize) -> Mat<f64> {
        Mat::from_fn(n, m, |i, j| (((i * 13 + j * 7 + seed * 5) % 17) as f64 - 8.0) / 5.0)
    }

    #[test]
    fn the_update_leaves_the_preserved_keys_alone() {
        // 12 dimensions: 5 below the threshold (the null space), 7 well above (preserved).
        let eig = [1e-4, 3e-3, 5e-3, 1e-2, 1.9e-2, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0];
        let (c, q) = with_spectrum(&eig);
        let ns = NullSpace::of(&c, 2e-2).unwrap();
        assert_eq!((ns.rank(), ns.width()), (5, 12));
        let (k, r) = (keys(12, 3, 1), keys(4, 3, 2));
        let kept = {
            let kp = keys(12, 6, 3);
            &kp * kp.transpose()
        };
        for kept in [None, Some(&kept)] {
            let kkt = &k * k.transpose();
            let x = solve_update(&ns, &k, &kkt, &r, kept, 10.0, AlphaSolver::Direct).unwrap();
            let dw = x.transpose(); // [d, d_ff]
            let scale = dw.norm_l2();
            assert!(scale > 1e-3, "a real update");
            // Every preserved direction (eigenvalue ≥ 0.5) is mapped to ~0.
            for (j, lambda) in eig.iter().enumerate().skip(5) {
                let k0 = q.col(j).to_owned();
                let moved = (dw * &k0).norm_l2();
                assert!(moved <= 1e-6 * scale, "eigenvector {j} (λ = {lambda}) moves by {moved:e} (‖ΔW‖ {scale:e})");
            }
            // The reduced form is the same solution.
            let reduced = solve_update(&ns, &k, &kkt, &r, kept, 10.0, AlphaSolver::Reduced).unwrap();
            assert!((&reduced - &x).norm_l2() <= 1e-9 * x.norm_l2());
        }
    }

    #[test]
    fn the_solve_is_the_papers_closed_form() {
        // Δ = R Kᵀ P (K_pK_pᵀ P + K Kᵀ P + L2·I)⁻¹ (Fang et al., eq. 13), here with P explicit.
        let eig = [1e-3, 1e-2, 2e-3, 0.4, 0.9, 1.5, 2.5, 4.0];
        let (c, _) = with_spectrum(&eig);
        let ns = NullSpace::of(&c, 2e-2).unwrap();
        let p = &ns.basis * ns.basis.transpose();
        let (k, r, kp) = (keys(8, 2, 4), keys(3, 2, 5), keys(8, 4, 6));
        let kept = &kp * kp.transpose();
        let x = solve_update(&ns, &k, &(&k * k.transpose()), &r, Some(&kept), 10.0, AlphaSolver::Direct).unwrap();
        let inner = &kept * &p + &k * k.transpose() * &p + Mat::<f64>::identity(8, 8) * faer::Scale(10.0);
        let inv = inner.partial_piv_lu().solve(Mat::<f64>::identity(8, 8));
        let paper = &r * k.transpose() * &p * inv;
        assert!((x.transpose() - &paper).norm_l2() <= 1e-10 * paper.norm_l2());
    }
}
