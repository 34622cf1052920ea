//! When a second-moment estimate has converged (issue 28, `--samples auto`): what an edit does
//! with C is solve against it (ROME's C⁻¹k*, MEMIT's and AlphaEdit's systems), so the measure is
//! that directly: for a fixed set of probe keys K (held out of the estimate), the relative change
//! ‖C₂⁻¹K − C₁⁻¹K‖_F / ‖C₂⁻¹K‖_F between two checkpoints, the second at twice the tokens of the
//! first. With the token count doubling, the change between checkpoints has the spread of the
//! newer estimate's own error (Var(Ĉ₂ − Ĉ₁) = σ²(1/n₁ − 1/n₂) = σ²/n₂ for n₂ = 2n₁), so stopping
//! once every layer's change is below the tolerance leaves C⁻¹K about that far from its limit.
//! Checks start at the floor (at least as many tokens as the keys are wide: below it C is
//! singular) and a checkpoint where C is not yet positive definite counts as not converged.

use std::collections::BTreeMap;

use candle_core::Tensor;
use faer::Mat;

use crate::error::Result;
use crate::linalg::{to_mat, SpdFactor};

/// One checkpoint of the convergence curve.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Tokens in the estimate.
    pub tokens: u64,
    /// Per layer, the relative change of C⁻¹K since the previous checkpoint (`None` at the first,
    /// or where C was not positive definite).
    pub change: BTreeMap<usize, Option<f64>>,
}

impl Checkpoint {
    /// The largest change over the layers; `None` unless every layer has one.
    pub fn worst(&self) -> Option<f64> {
        self.change.values().try_fold(0.0f64, |w, c| c.map(|c| w.max(c)))
    }
}

/// What a checkpoint of an interrupted collection keeps of its [`Convergence`] (with each
/// layer's C⁻¹K at the last check, as tensors), so that a resumed job checks at the same token
/// counts against the same previous solutions and stops where an uninterrupted one would.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvergenceState {
    pub next: u64,
    pub curve: Vec<Checkpoint>,
}

/// Watches a collection and says when to stop.
pub struct Convergence {
    tolerance: f64,
    /// Per layer, the probe keys as columns `[d, h]`.
    probes: BTreeMap<usize, Mat<f64>>,
    /// Tokens at which the next check is due.
    next: u64,
    /// Per layer, C⁻¹K at the previous check (where C was positive definite).
    last: BTreeMap<usize, Option<Mat<f64>>>,
    pub curve: Vec<Checkpoint>,
}

impl Convergence {
    /// `probes`: per layer, held-out keys `[h, d]` (rows are keys); checks from the widest
    /// layer's key width in tokens on, then at every doubling.
    pub fn new(probes: &BTreeMap<usize, Tensor>, tolerance: f64) -> Result<Self> {
        let mut mats = BTreeMap::new();
        let mut width = 0;
        for (&l, k) in probes {
            let k = to_mat(&k.t()?.contiguous()?)?;
            width = width.max(k.nrows());
            mats.insert(l, k);
        }
        let last = mats.keys().map(|&l| (l, None)).collect();
        Ok(Self { tolerance, probes: mats, next: (width as u64).max(1), last, curve: Vec::new() })
    }

    /// Whether a check is due at `tokens`.
    pub fn due(&self, tokens: u64) -> bool {
        tokens >= self.next
    }

    /// Checks the estimates `c` (per layer, C = Σkkᵀ/n at `tokens` tokens); `true` when every
    /// layer's C⁻¹K moved less than the tolerance since the previous check.
    pub fn check(&mut self, c: &BTreeMap<usize, Tensor>, tokens: u64) -> Result<bool> {
        self.check_each(&|l| Ok(c.get(&l).cloned()), tokens)
    }

    /// [`Self::check`] of a collection's running sums at `tokens` tokens, one layer's C at a time.
    pub fn check_view(&mut self, sums: &super::collect::SumView, tokens: u64) -> Result<bool> {
        let count = tokens.max(1) as f64;
        self.check_each(&|l| if sums.layers.contains(&l) { Ok(Some(((sums.get)(l)? / count)?)) } else { Ok(None) }, tokens)
    }

    /// The check, with each layer's C made by `c` as it is needed and dropped after.
    fn check_each(&mut self, c: &dyn Fn(usize) -> Result<Option<Tensor>>, tokens: u64) -> Result<bool> {
        let mut change = BTreeMap::new();
        for (l, k) in &self.probes {
            let Some(cl) = c(*l)? else { continue };
            let now = SpdFactor::from_owned(to_mat(&cl)?, "C").ok().map(|f| f.solve(k));
            drop(cl);
            let moved = match (&self.last[l], &now) {
                (Some(before), Some(now)) => Some((now - before).norm_l2() / now.norm_l2().max(f64::MIN_POSITIVE)),
                _ => None,
            };
            change.insert(*l, moved);
            self.last.insert(*l, now);
        }
        let point = Checkpoint { tokens, change };
        let done = point.worst().is_some_and(|w| w < self.tolerance);
        tracing::debug!("statistics at {tokens} tokens: C⁻¹k moved {:?} since the last check", point.change);
        self.curve.push(point);
        self.next = tokens.saturating_mul(2);
        Ok(done)
    }

    pub fn tolerance(&self) -> f64 {
        self.tolerance
    }

    /// The state to checkpoint, and each layer's last C⁻¹K (`[d, h]`, f64).
    pub fn state(&self) -> Result<(ConvergenceState, BTreeMap<usize, Tensor>)> {
        let mut last = BTreeMap::new();
        for (&l, m) in &self.last {
            if let Some(m) = m {
                last.insert(l, crate::linalg::to_tensor(m, candle_core::DType::F64)?);
            }
        }
        Ok((ConvergenceState { next: self.next, curve: self.curve.clone() }, last))
    }

    /// Continues from a checkpointed [`Convergence::state`].
    pub fn restore(&mut self, state: ConvergenceState, last: &BTreeMap<usize, Tensor>) -> Result<()> {
        for (l, slot) in self.last.iter_mut() {
            *slot = match last.get(l) {
                Some(t) => Some(to_mat(t)?),
                None => None,
            };
        }
        self.next = state.next;
        self.curve = state.curve;
        Ok(())
    }

    /// Whether the last check met the tolerance.
    pub fn converged(&self) -> bool {
        self.curve.last().and_then(Checkpoint::worst).is_some_and(|w| w < self.tolerance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Keys drawn from N(0, Σ) with a known Σ = A Aᵀ + I (d = 24), fed in chunks of 500: `auto`
    /// stops well before the cap, and C⁻¹k at the stop is within the tolerance of Σ⁻¹k.
    #[test]
    fn stops_once_c_inverse_k_is_within_the_tolerance_of_the_exact_one() {
        let d = 24;
        let mut rng = crate::pyrandom::PyRandom::new(7);
        let mut normal = move || -> f64 {
            // Box-Muller: no distribution crate needed for a test.
            let (u, v) = (rng.random().max(1e-300), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let a = Mat::<f64>::from_fn(d, d, |_, _| normal() * 0.5);
        let sigma = &a * a.transpose() + Mat::<f64>::identity(d, d);
        let root = SpdFactor::new(&sigma, "Σ").unwrap();
        // A key is L z with L Lᵀ = Σ and z standard normal.
        let l = root_factor(&sigma);
        let mut draw = |n: usize| -> Mat<f64> { &l * Mat::<f64>::from_fn(d, n, |_, _| normal()) };
        let probes_m = draw(16);
        let to_tensor = |m: &Mat<f64>| -> Tensor {
            let (r, c) = (m.nrows(), m.ncols());
            Tensor::from_vec((0..r * c).map(|i| m[(i / c, i % c)]).collect::<Vec<_>>(), (r, c), &Device::Cpu).unwrap()
        };
        let probes = BTreeMap::from([(3usize, to_tensor(&probes_m.transpose().to_owned()))]);
        let tolerance = 0.05;
        let mut conv = Convergence::new(&probes, tolerance).unwrap();
        let (mut sum, mut n, cap) = (Mat::<f64>::zeros(d, d), 0u64, 2_000_000u64);
        let mut stopped = None;
        while n < cap {
            let k = draw(500);
            sum += &k * k.transpose();
            n += 500;
            if conv.due(n) {
                let c = BTreeMap::from([(3usize, to_tensor(&(&sum * faer::Scale(1.0 / n as f64))).to_dtype(DType::F64).unwrap())]);
                if conv.check(&c, n).unwrap() {
                    stopped = Some(n);
                    break;
                }
            }
        }
        let n = stopped.expect("converged before the cap");
        assert!(n < cap / 10, "stopped at {n} tokens");
        assert!(conv.curve.len() >= 3 && conv.curve[0].worst().is_none(), "{:?}", conv.curve);
        let c = &sum * faer::Scale(1.0 / n as f64);
        let got = SpdFactor::new(&c, "C").unwrap().solve(&probes_m);
        let exact = root.solve(&probes_m);
        let err = (&got - &exact).norm_l2() / exact.norm_l2();
        eprintln!("stopped at {n} tokens, C⁻¹k {err:.4} from Σ⁻¹k; curve {:?}", conv.curve.iter().map(|p| (p.tokens, p.worst())).collect::<Vec<_>>());
        assert!(err < tolerance, "C⁻¹k is {err} from Σ⁻¹k at {n} tokens");
        // Stopping one check earlier would not have met the tolerance: the rule is not loose by a factor.
        assert!(conv.curve[conv.curve.len() - 2].worst().is_none_or(|w| w >= tolerance));
    }

    /// The lower Cholesky factor of an SPD matrix (by the textbook recurrence; d is small).
    fn root_factor(s: &Mat<f64>) -> Mat<f64> {
        let d = s.nrows();
        let mut l = Mat::<f64>::zeros(d, d);
        for j in 0..d {
            let diag = s[(j, j)] - (0..j).map(|k| l[(j, k)] * l[(j, k)]).sum::<f64>();
            l[(j, j)] = diag.sqrt();
            for i in j + 1..d {
                l[(i, j)] = (s[(i, j)] - (0..j).map(|k| l[(i, k)] * l[(j, k)]).sum::<f64>()) / l[(j, j)];
            }
        }
        l
    }
}
