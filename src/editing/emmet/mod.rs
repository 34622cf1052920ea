//! EMMET (Gupta et al. 2024, "A unified framework for model editing"; zjunlp/EasyEdit
//! `easyeditor/models/emmet/emmet_main.py`): MEMIT's target vectors, keys and residual
//! spreading (EasyEdit's `compute_z`/`compute_ks` are MEMIT's), with each layer's batched update
//! solved under equality constraints instead of MEMIT's least squares:
//!
//!   C' = mom2_update_weight·C + update_norm_lambda·I,
//!   D  = Kᵀ C'⁻¹ K + emmet_lambda·I   (n×n),
//!   ΔW = R D⁻¹ Kᵀ C'⁻¹               (`[out, in]`), in f64 as the reference.
//!
//! With `update_norm_lambda` 0 (every published file) C'⁻¹K is C⁻¹K / mom2_update_weight,
//! solved against the statistics' cached Cholesky factor; otherwise C' is factored afresh.
//! The reference inverts C' and D explicitly (`torch.inverse`, a pseudo-inverse should D be
//! singular); these are solves with the same matrices.

pub mod hparams;

use std::collections::BTreeMap;

use faer::Mat;

pub use hparams::EmmetHparams;

use super::memit::{check_stats, edit_by_layers, memit_context_templates, outcome_of};
use super::method::{EditInputs, EditMethod, EditOutcome};
use super::registry::Method;
use super::templates::ContextTemplates;
use crate::error::{Error, Result};
use crate::linalg::{LayerStats, SpdFactor};
use crate::models::CausalLm;
use crate::stats::ensure::StatsNeed;
use crate::tokenizer::Tokenizer;

/// EMMET behind the common method interface, with its config.
pub struct Emmet {
    pub hp: EmmetHparams,
}

/// One layer's update `[d, d_ff]` from its keys K `[d_ff, n]` and residual share R `[d, n]`,
/// with `c_inv_k` = C'⁻¹K.
pub fn emmet_update(k: &Mat<f64>, c_inv_k: &Mat<f64>, resid: &Mat<f64>, emmet_lambda: f64) -> Result<Mat<f64>> {
    let n = k.ncols();
    let d = k.transpose() * c_inv_k + Mat::<f64>::identity(n, n) * faer::Scale(emmet_lambda);
    // D is symmetric positive definite in exact arithmetic; symmetrise against rounding.
    let d = Mat::from_fn(n, n, |i, j| 0.5 * (d[(i, j)] + d[(j, i)]));
    let factor = SpdFactor::new(&d, "KᵀC'⁻¹K + emmet_lambda·I").map_err(|e| {
        Error::Numerical(format!(
            "{e}; the edits' keys are (nearly) linearly dependent: raise `emmet_lambda` (--set emmet_lambda=...) or edit fewer requests at once"
        ))
    })?;
    // ΔW = R D⁻¹ (C'⁻¹K)ᵀ, D symmetric.
    let rd = factor.solve(&resid.transpose().to_owned()).transpose().to_owned();
    Ok(rd * c_inv_k.transpose())
}

/// C'⁻¹K for the layer's statistics.
fn c_inv_k(st: &mut LayerStats, hp: &EmmetHparams, k: &Mat<f64>) -> Result<Mat<f64>> {
    let w = hp.mom2_update_weight;
    if hp.update_norm_lambda == 0.0 {
        return Ok(st.factor()?.solve(k) * faer::Scale(1.0 / w));
    }
    let c = st.c()?;
    let lam = hp.update_norm_lambda;
    let cp = Mat::from_fn(c.nrows(), c.ncols(), |i, j| w * c[(i, j)] + if i == j { lam } else { 0.0 });
    Ok(SpdFactor::from_owned(cp, "mom2_update_weight·C + update_norm_lambda·I")?.solve(k))
}

impl EditMethod for Emmet {
    fn method(&self) -> Method {
        Method::Emmet
    }

    fn stats_need(&self) -> Option<StatsNeed> {
        Some(self.hp.stats_need())
    }

    fn default_seed(&self) -> u64 {
        self.hp.seed
    }

    fn context_templates(&self, model: &dyn CausalLm, tok: &Tokenizer, seed: u64) -> Result<Option<ContextTemplates>> {
        memit_context_templates(&self.hp, model, tok, seed).map(Some)
    }

    fn edit(&self, model: &mut dyn CausalLm, inputs: EditInputs) -> Result<EditOutcome> {
        let templates = inputs.templates()?;
        let stats: &mut BTreeMap<usize, LayerStats> = inputs.stats;
        check_stats(&self.hp.layers, stats)?;
        let z_batch = self.hp.z_batch(model.device());
        let out = edit_by_layers(model, inputs.tok, inputs.requests, &self.hp, z_batch, templates, &mut |layer, k, resid| {
            let st = stats.get_mut(&layer).ok_or_else(|| Error::Internal(format!("layer {layer}'s statistics vanished")))?;
            let a = c_inv_k(st, &self.hp, k)?;
            st.done();
            Ok((emmet_update(k, &a, resid, self.hp.emmet_lambda)?, "equality-constrained (n×n, Cholesky)"))
        })?;
        Ok(outcome_of(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::linalg::solvers::Solve;

    fn mat(r: usize, c: usize, seed: usize) -> Mat<f64> {
        Mat::from_fn(r, c, |i, j| (((i * 13 + j * 7 + seed * 5) % 17) as f64 - 8.0) / 5.0)
    }

    #[test]
    fn the_update_is_the_references_closed_form() {
        // EasyEdit: D = Kᵀ C⁻¹ K + λI, adj_k = (D⁻¹ Kᵀ C⁻¹)ᵀ, ΔW = R adj_kᵀ, with explicit inverses.
        let (dff, d, n) = (9, 4, 3);
        let a = mat(dff, dff + 2, 1);
        let c = &a * a.transpose() * faer::Scale(0.1) + Mat::<f64>::identity(dff, dff);
        let (k, r) = (mat(dff, n, 2), mat(d, n, 3));
        let (w, lam) = (50.0, 0.1);
        let cw = &c * faer::Scale(w);
        let c_inv = cw.partial_piv_lu().solve(Mat::<f64>::identity(dff, dff));
        let dm = k.transpose() * &c_inv * &k + Mat::<f64>::identity(n, n) * faer::Scale(lam);
        let d_inv = dm.partial_piv_lu().solve(Mat::<f64>::identity(n, n));
        let want = &r * (d_inv * k.transpose() * &c_inv);
        let mut st = LayerStats::from_matrix(c.clone(), "C");
        let cik = st.factor().unwrap().solve(&k) * faer::Scale(1.0 / w);
        let got = emmet_update(&k, &cik, &r, lam).unwrap();
        assert!((&got - &want).norm_l2() <= 1e-10 * want.norm_l2(), "{:e}", (&got - &want).norm_l2());
        // The constraint it is named for: with λ → 0 the edited keys map exactly to R.
        let exact = emmet_update(&k, &cik, &r, 0.0).unwrap();
        assert!((&exact * &k - &r).norm_l2() <= 1e-9 * r.norm_l2());
    }
}
