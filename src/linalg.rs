//! Dense linear algebra in f64 on the CPU (faer): the Cholesky factor of a layer's second
//! moment C, ROME's C⁻¹k, and MEMIT's (λC + KKᵀ)⁻¹K by a direct solve or by the push-through
//! identity over a cached factor of C.

use candle_core::{DType, Device, Tensor};
use faer::linalg::solvers::Solve;
use faer::Mat;

use crate::error::{Error, Result};

/// Copies a 2-d tensor (any float dtype, any device) into an f64 matrix.
pub fn to_mat(t: &Tensor) -> Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    // Widened element by element: no f64 copy of an f32 matrix besides the result.
    Ok(match t.dtype() {
        DType::F64 => {
            let v: Vec<f64> = t.to_vec1()?;
            Mat::from_fn(r, c, |i, j| v[i * c + j])
        }
        _ => {
            let v: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
            Mat::from_fn(r, c, |i, j| v[i * c + j] as f64)
        }
    })
}

/// Copies an f64 matrix into a CPU tensor of `dtype`.
pub fn to_tensor(m: &Mat<f64>, dtype: DType) -> Result<Tensor> {
    let (r, c) = (m.nrows(), m.ncols());
    let mut v = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            v.push(m[(i, j)]);
        }
    }
    Ok(Tensor::from_vec(v, (r, c), &Device::Cpu)?.to_dtype(dtype)?)
}

/// A symmetric positive-definite matrix's Cholesky factor L (A = L Lᵀ), factored once and
/// reused for every solve (ROME requests and MEMIT batches on the same layer). Computed by
/// faer's in-place factorisation, as its `Llt` does, but in the matrix's own storage when the
/// matrix is handed over ([`SpdFactor::from_owned`]): at GPT-2 XL's width a copy is 328 MB.
pub struct SpdFactor {
    l: Mat<f64>,
}

impl SpdFactor {
    /// Factors `a` (read on and below the diagonal); `what` names the matrix in the error when
    /// it is not positive definite.
    pub fn new(a: &Mat<f64>, what: &str) -> Result<Self> {
        Self::from_owned(a.clone(), what)
    }

    /// Factors `a` in its own storage (read on and below the diagonal).
    pub fn from_owned(mut a: Mat<f64>, what: &str) -> Result<Self> {
        use faer::linalg::cholesky::llt::factor;
        let n = a.nrows();
        let par = faer::get_global_parallelism();
        let mut mem = faer::dyn_stack::MemBuffer::new(factor::cholesky_in_place_scratch::<f64>(n, par, Default::default()));
        let stack = faer::dyn_stack::MemStack::new(&mut mem);
        factor::cholesky_in_place(a.as_mut(), Default::default(), par, stack, Default::default()).map_err(|e| {
            Error::Numerical(format!(
                "{what} is not positive definite ({e:?}): the statistics cover too few tokens for this layer's {n}-wide keys; \
                 collect them over more text (`edit stats --samples`)"
            ))
        })?;
        for j in 1..n {
            for i in 0..j {
                a[(i, j)] = 0.0;
            }
        }
        Ok(Self { l: a })
    }

    pub fn dim(&self) -> usize {
        self.l.nrows()
    }

    /// A⁻¹ B.
    pub fn solve(&self, b: &Mat<f64>) -> Mat<f64> {
        use faer::linalg::cholesky::llt::solve;
        let mut x = b.clone();
        let par = faer::get_global_parallelism();
        let mut mem = faer::dyn_stack::MemBuffer::new(solve::solve_in_place_scratch::<f64>(self.dim(), x.ncols(), par));
        let stack = faer::dyn_stack::MemStack::new(&mut mem);
        solve::solve_in_place_with_conj(self.l.as_ref(), faer::Conj::No, x.as_mut(), par, stack);
        x
    }
}

/// MEMIT's `solve(λC + K Kᵀ, K)` with a fresh LU factorisation of the d×d system, as the
/// reference does (`k` is `[d_ff, n]`).
pub fn memit_solve_direct(c: &Mat<f64>, lambda: f64, k: &Mat<f64>) -> Mat<f64> {
    let lu = lambda_c_plus_kkt(c, lambda, k).partial_piv_lu();
    let mut x = k.clone();
    lu.solve_in_place(&mut x);
    x
}

/// `solve(λC + K Kᵀ, K)` by a Cholesky factorisation of the d×d system (symmetric positive
/// definite: half the work of LU); the cheaper form once there are more edits than key
/// dimensions, where the push-through form's n×n system is the larger.
pub fn memit_solve_spd(c: &Mat<f64>, lambda: f64, k: &Mat<f64>) -> Result<Mat<f64>> {
    Ok(SpdFactor::new(&lambda_c_plus_kkt(c, lambda, k), "λC + KKᵀ")?.solve(k))
}

/// MEMIT's d×d system matrix λC + K Kᵀ.
fn lambda_c_plus_kkt(c: &Mat<f64>, lambda: f64, k: &Mat<f64>) -> Mat<f64> {
    Mat::from_fn(c.nrows(), c.ncols(), |i, j| lambda * c[(i, j)]) + k * k.transpose()
}

/// The same solve through the push-through identity
/// `(λC + KKᵀ)⁻¹K = (λC)⁻¹K (I + Kᵀ(λC)⁻¹K)⁻¹`: triangular solves against the cached factor of C
/// plus an n×n system, instead of a new d×d factorisation per batch.
pub fn memit_solve_push_through(c_factor: &SpdFactor, lambda: f64, k: &Mat<f64>) -> Result<Mat<f64>> {
    let n = k.ncols();
    let a = c_factor.solve(k) * faer::Scale(1.0 / lambda);
    let m = Mat::<f64>::identity(n, n) + k.transpose() * &a;
    // M is symmetric positive definite in exact arithmetic; symmetrise against rounding.
    let m = Mat::from_fn(n, n, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let m_factor = SpdFactor::new(&m, "I + Kᵀ(λC)⁻¹K")?;
    // X = A M⁻¹  ⇔  Xᵀ = M⁻¹ Aᵀ (M symmetric).
    let xt = m_factor.solve(&a.transpose().to_owned());
    Ok(xt.transpose().to_owned())
}

/// A layer's second moment C = E[k kᵀ] (normalised by the token count, as the reference uses
/// it) in f64, with its Cholesky factor computed on first use and then kept.
///
/// Statistics read from a file are read when first used (after the target-vector
/// optimisation, whose graph is the other large allocation of an edit), and once factored,
/// C itself is dropped (ROME and MEMIT's push-through solve read only the factor; C is read
/// again if a direct solve asks for it). Unless they are to be kept between edits (the
/// default; an evaluation edits many times), [`LayerStats::done`] drops both: MEMIT in a
/// one-shot `edit apply` holds one layer's at a time. At GPT-2 XL's 6400-wide keys each of C
/// and its factor is 328 MB.
pub struct LayerStats {
    /// The statistics file C is read from, if it came from one (else C is never dropped).
    file: Option<std::path::PathBuf>,
    c: Option<Mat<f64>>,
    factor: Option<SpdFactor>,
    what: String,
    keep: bool,
}

impl LayerStats {
    pub fn from_matrix(c: Mat<f64>, what: &str) -> Self {
        Self { file: None, c: Some(c), factor: None, what: what.to_string(), keep: true }
    }

    /// Statistics to be read from `file` when first used (check them first:
    /// [`crate::stats::cache::load_meta`]).
    pub fn from_file(file: &std::path::Path, module: &str) -> Self {
        Self { file: Some(file.to_path_buf()), c: None, factor: None, what: format!("the second moment of `{module}`"), keep: true }
    }

    /// The statistics file C is read from, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// C, read from the statistics file if it is not in memory.
    pub fn c(&mut self) -> Result<&Mat<f64>> {
        if self.c.is_none() {
            let file = self.file.as_ref().ok_or_else(|| Error::Internal(format!("{} was dropped and has no file to be read from", self.what)))?;
            let started = std::time::Instant::now();
            self.c = Some(crate::stats::cache::read_sum(file, sum_to_mat)?);
            tracing::debug!("read {} from {} in {:.2?}", self.what, file.display(), started.elapsed());
        }
        Ok(self.c.as_ref().expect("just set"))
    }

    pub fn factor(&mut self) -> Result<&SpdFactor> {
        if self.factor.is_none() {
            let started = std::time::Instant::now();
            self.c()?;
            // From a file, C is factored in its own storage (read again if a solve asks for it).
            let factor = match self.file {
                Some(_) => SpdFactor::from_owned(self.c.take().expect("just read"), &self.what)?,
                None => SpdFactor::new(self.c.as_ref().expect("just read"), &self.what)?,
            };
            tracing::debug!("factored {} ({n}x{n}) in {:.2?}", self.what, started.elapsed(), n = factor.dim());
            self.factor = Some(factor);
        }
        Ok(self.factor.as_ref().expect("just set"))
    }

    /// Whether C and its factor stay in memory after [`LayerStats::done`] (for later edits).
    pub fn keep_between_edits(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// The edit is done with this layer: unless kept, C and its factor are dropped (when they
    /// can be read again from the statistics file).
    pub fn done(&mut self) {
        if !self.keep && self.file.is_some() {
            self.c = None;
            self.factor = None;
        }
    }
}

/// C = Σ k kᵀ / count in f64 from a statistics file's stored sum, scaled in the stored
/// precision as the reference does (bit for bit [`crate::stats::cache::Moments::second_moment`]),
/// straight from its mapped bytes into the f64 matrix (no tensor and no vector in between: at
/// GPT-2 XL's width each would be 164 MB).
fn sum_to_mat(sum: crate::stats::cache::SumBytes<'_>) -> Mat<f64> {
    use crate::stats::cache::SumBytes;
    match sum {
        SumBytes::F32 { bytes, rows, cols, count } => {
            // f32 sums are divided in f32, as the reference divides its f32 tensor.
            let scale = (1.0 / count as f64) as f32;
            let at = |x: usize| f32::from_le_bytes(bytes[4 * x..4 * x + 4].try_into().expect("4 bytes"));
            Mat::from_fn(rows, cols, |i, j| f64::from(at(i * cols + j) * scale))
        }
        SumBytes::F64 { bytes, rows, cols, count } => {
            let scale = 1.0 / count as f64;
            let at = |x: usize| f64::from_le_bytes(bytes[8 * x..8 * x + 8].try_into().expect("8 bytes"));
            Mat::from_fn(rows, cols, |i, j| at(i * cols + j) * scale)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Mat<f64> {
        let b = Mat::from_fn(n, n + 3, |i, j| (((i * 7 + j * 13) % 11) as f64 - 5.0) / 7.0 + if i == j { 1.0 } else { 0.0 });
        &b * b.transpose() + Mat::<f64>::identity(n, n) * faer::Scale(0.1)
    }

    #[test]
    fn cholesky_solve_inverts() {
        let a = spd(12);
        let f = SpdFactor::new(&a, "test").unwrap();
        let b = Mat::from_fn(12, 2, |i, j| (i + 2 * j) as f64);
        let x = f.solve(&b);
        let r = &a * &x - &b;
        assert!(r.norm_l2() < 1e-9 * b.norm_l2());
    }

    #[test]
    fn in_place_factor_is_faers_llt_to_the_bit() {
        use faer::linalg::solvers::Llt;
        let a = spd(40);
        let b = Mat::from_fn(40, 3, |i, j| (i * 3 + j) as f64 - 7.0);
        let llt = Llt::new(a.as_ref(), faer::Side::Lower).unwrap();
        let ours = SpdFactor::from_owned(a.clone(), "A").unwrap();
        assert_eq!(ours.l, llt.L().to_owned());
        assert_eq!(ours.solve(&b), llt.solve(&b));
    }

    #[test]
    fn push_through_matches_direct() {
        let c = spd(20);
        let k = Mat::from_fn(20, 4, |i, j| ((i * 3 + j * 5) % 7) as f64 - 3.0);
        let direct = memit_solve_direct(&c, 3.0, &k);
        let f = SpdFactor::new(&c, "C").unwrap();
        let pt = memit_solve_push_through(&f, 3.0, &k).unwrap();
        assert!((&direct - &pt).norm_l2() < 1e-12 * direct.norm_l2());
    }

    #[test]
    fn spd_form_matches_direct_with_more_edits_than_dimensions() {
        let c = spd(6);
        let k = Mat::from_fn(6, 15, |i, j| ((i * 5 + j * 3) % 11) as f64 - 5.0);
        let direct = memit_solve_direct(&c, 2.0, &k);
        let spd_form = memit_solve_spd(&c, 2.0, &k).unwrap();
        let pt = memit_solve_push_through(&SpdFactor::new(&c, "C").unwrap(), 2.0, &k).unwrap();
        assert!((&direct - &spd_form).norm_l2() < 1e-10 * direct.norm_l2());
        assert!((&direct - &pt).norm_l2() < 1e-8 * direct.norm_l2());
    }

    fn stats_file(dir: &std::path::Path, dtype: DType, count: u64) -> (std::path::PathBuf, crate::stats::cache::Moments) {
        use crate::identity::ModelIdentity;
        use crate::stats::cache::{self, Moments, StatsMeta};
        let n = 9;
        let c = spd(n) * faer::Scale(count as f64);
        let flat: Vec<f64> = (0..n * n).map(|i| c[(i / n, i % n)]).collect();
        let sum = Tensor::from_vec(flat, (n, n), &candle_core::Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let precision = if dtype == DType::F64 { crate::stats::Precision::F64 } else { crate::stats::Precision::F32 };
        let meta = StatsMeta {
            format: 1,
            identity: ModelIdentity::default(),
            module: "m".into(),
            layer: 0,
            d_ff: n,
            dataset: "test".into(),
            samples: 1,
            corpus_rows: None,
            texts: 1,
            tokens: count,
            precision,
            max_len: 1,
            batch_tokens: 1,
            source: "collected".into(),
            corpus_digest: None,
            sampling: None,
            tool_version: "test".into(),
            auto: None,
        };
        let path = dir.join(format!("{dtype:?}.safetensors"));
        cache::save(&path, &sum, count, &meta).unwrap();
        (path, Moments { sum, count, meta })
    }

    #[test]
    fn statistics_from_a_file_are_read_on_use_dropped_when_done_and_read_again_alike() {
        let dir = tempfile::tempdir().unwrap();
        for dtype in [DType::F32, DType::F64] {
            let (path, moments) = stats_file(dir.path(), dtype, 7);
            // The same values as the tensor path the reference's scaling takes, bit for bit.
            let expected = to_mat(&moments.second_moment().unwrap()).unwrap();
            let mut st = LayerStats::from_file(&path, "m");
            assert!(st.c.is_none() && st.factor.is_none(), "nothing is read before use");
            assert_eq!(st.c().unwrap(), &expected, "{dtype:?}");
            let k = Mat::from_fn(9, 2, |i, j| (i * 2 + j) as f64 - 4.0);
            let first = st.factor().unwrap().solve(&k);
            assert!(st.c.is_none(), "C is dropped once factored");
            st.done();
            assert!(st.factor.is_some(), "kept between edits by default");
            st.keep_between_edits(false);
            st.done();
            assert!(st.c.is_none() && st.factor.is_none(), "dropped when not kept");
            assert_eq!(st.factor().unwrap().solve(&k), first, "read again, the same solve");
            assert_eq!(st.c().unwrap(), &expected, "C read again after the factor dropped it");
        }
        // Statistics built in memory have no file to be read again from: never dropped.
        let mut st = LayerStats::from_matrix(spd(4), "C");
        st.keep_between_edits(false);
        st.factor().unwrap();
        st.done();
        assert!(st.c.is_some() && st.factor.is_some());
    }

    #[test]
    fn singular_matrix_is_refused_with_a_fix() {
        let a = Mat::<f64>::zeros(3, 3);
        let err = SpdFactor::new(&a, "C").err().unwrap().to_string();
        assert!(err.contains("edit stats"), "{err}");
    }
}
