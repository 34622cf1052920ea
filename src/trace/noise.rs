//! The corruption of causal tracing: numpy's legacy `RandomState` draws, as the reference
//! re-creates `RandomState(1)` for every traced run (so every restoration of a prompt sees the
//! same noise), and the `--noise` rules (a number, or `s<k>`: k × the standard deviation of the
//! subjects' token embeddings).

use crate::error::{Error, Result};
use crate::pyrandom::PyRandom;

/// numpy's legacy `RandomState`: MT19937 seeded by `init_genrand`, Gaussians by the Marsaglia
/// polar method with the second value of each pair kept for the next call.
pub struct NumpyRandom {
    mt: PyRandom,
    cached: Option<f64>,
}

impl NumpyRandom {
    pub fn new(seed: u32) -> Self {
        Self { mt: PyRandom::numpy(seed), cached: None }
    }

    /// `randn()`.
    pub fn gauss(&mut self) -> f64 {
        if let Some(g) = self.cached.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.mt.random() - 1.0;
            let x2 = 2.0 * self.mt.random() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.cached = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// `uniform(-1, 1)`.
    pub fn uniform_pm1(&mut self) -> f64 {
        -1.0 + 2.0 * self.mt.random()
    }
}

/// How the subject's embeddings are corrupted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseRule {
    /// Gaussian noise of this standard deviation.
    Fixed(f64),
    /// Gaussian noise of k × the standard deviation of the subjects' token embeddings (`s3`,
    /// the reference's default).
    SubjectStd(f64),
    /// Uniform noise in [−x, x] (`u<x>`).
    Uniform(f64),
}

impl std::str::FromStr for NoiseRule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Input(format!("--noise {s}: give a standard deviation (0.1), s<k> for k times the subjects' embedding std (s3, the reference's default), or u<x> for uniform noise in [-x, x]"))
        };
        let number = |t: &str| t.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0);
        if let Some(k) = s.strip_prefix('s') {
            return Ok(Self::SubjectStd(if k.is_empty() { 1.0 } else { number(k).ok_or_else(bad)? }));
        }
        if let Some(x) = s.strip_prefix('u') {
            return Ok(Self::Uniform(number(x).ok_or_else(bad)?));
        }
        Ok(Self::Fixed(number(s).ok_or_else(bad)?))
    }
}

impl std::fmt::Display for NoiseRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(x) => write!(f, "{x}"),
            Self::SubjectStd(k) => write!(f, "s{k}"),
            Self::Uniform(x) => write!(f, "u{x}"),
        }
    }
}

/// `level × draw` for `rows × tokens × d` values in C order (rows, then tokens, then features),
/// as the reference draws `prng(rows, tokens, d)` from a fresh `RandomState(seed)`.
pub fn draw(seed: u32, rows: usize, tokens: usize, d: usize, level: f64, uniform: bool) -> Vec<f64> {
    let mut rng = NumpyRandom::new(seed);
    (0..rows * tokens * d).map(|_| level * if uniform { rng.uniform_pm1() } else { rng.gauss() }).collect()
}

/// The unbiased (N − 1) standard deviation of all values, computed in f64.
pub fn std_dev(values: &[f64]) -> Result<f64> {
    if values.len() < 2 {
        return Err(Error::Input("the embedding noise rule s<k> needs at least two embedding values".into()));
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    Ok((values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussians_match_numpy_randomstate() {
        // numpy: RandomState(1).randn(6)
        let mut r = NumpyRandom::new(1);
        let got: Vec<f64> = (0..6).map(|_| r.gauss()).collect();
        assert_eq!(got, vec![1.6243453636632417, -0.6117564136500754, -0.5281717522634557, -1.0729686221561705, 0.8654076293246785, -2.3015386968802827]);
    }

    #[test]
    fn uniforms_match_numpy_randomstate() {
        // numpy: RandomState(1).uniform(-1, 1, 3)
        let mut r = NumpyRandom::new(1);
        let got: Vec<f64> = (0..3).map(|_| r.uniform_pm1()).collect();
        assert_eq!(got, vec![-0.165955990594852, 0.4406489868843162, -0.9997712503653102]);
    }

    #[test]
    fn noise_rules_parse_as_the_reference_reads_them() {
        assert_eq!("s3".parse::<NoiseRule>().unwrap(), NoiseRule::SubjectStd(3.0));
        assert_eq!("s".parse::<NoiseRule>().unwrap(), NoiseRule::SubjectStd(1.0));
        assert_eq!("0.1".parse::<NoiseRule>().unwrap(), NoiseRule::Fixed(0.1));
        assert_eq!("u0.05".parse::<NoiseRule>().unwrap(), NoiseRule::Uniform(0.05));
        for bad in ["x", "s-1", "-0.1", "u", "nan"] {
            assert!(bad.parse::<NoiseRule>().is_err(), "{bad}");
        }
    }
}
