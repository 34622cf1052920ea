//! Accumulating Σ k kᵀ and the token count for several layers in one forward pass.
//!
//! Batching follows the reference (`length_collation`): texts are taken in sample order in
//! chunks of 100, each chunk sorted by length (longest first) and packed greedily into
//! sub-batches with `width × rows ≤ batch_tokens`. Because that order is deterministic and
//! checkpoints are taken between chunks, a resumed job adds exactly the same numbers in
//! exactly the same order as an uninterrupted one.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::Precision;
use crate::error::{Error, Result};
use crate::models::{Batch, CausalLm, TraceSpec};
use crate::tokenizer::Tokenizer;

/// Texts per chunk, as the reference's DataLoader batch.
pub const CHUNK_TEXTS: usize = 100;

#[derive(Clone, Debug)]
pub struct CollectPlan {
    pub layers: Vec<usize>,
    pub precision: Precision,
    /// Upper bound on `width × rows` of one forward batch.
    pub batch_tokens: usize,
    /// Texts are truncated to this many tokens (the model's context, or less).
    pub max_len: usize,
}

/// Running sums; also the checkpoint state.
#[derive(Clone, Debug)]
pub struct Accumulator {
    pub sums: BTreeMap<usize, Tensor>,
    /// Tokens accumulated (the same for every layer).
    pub count: u64,
    /// Non-empty texts consumed.
    pub texts: u64,
    /// Chunks fully processed; resuming starts at this chunk.
    pub next_chunk: usize,
}

impl Accumulator {
    pub fn new(layers: &[usize], d_ff: usize, precision: Precision, device: &Device) -> Result<Self> {
        let mut sums = BTreeMap::new();
        for &l in layers {
            sums.insert(l, Tensor::zeros((d_ff, d_ff), precision.dtype(), device)?);
        }
        Ok(Self { sums, count: 0, texts: 0, next_chunk: 0 })
    }

    /// C = Σ k kᵀ / count per layer, in the accumulation precision.
    pub fn second_moments(&self) -> Result<BTreeMap<usize, Tensor>> {
        self.sums.iter().map(|(&l, s)| Ok((l, (s / self.count as f64)?))).collect()
    }

    /// The sums it holds as a [`SumView`] (none held: an empty view).
    pub fn with_view<T>(&self, f: impl FnOnce(&SumView) -> T) -> T {
        let get = |l: usize| self.sums.get(&l).cloned().ok_or_else(|| Error::Internal(format!("no sum for layer {l}")));
        let (dim, dtype) = self.sums.values().next().map(|t| (t.dim(0).unwrap_or(0), t.dtype())).unwrap_or((0, candle_core::DType::F32));
        f(&SumView { layers: self.sums.keys().copied().collect(), dim, dtype, get: &get })
    }
}

/// The running sums as a checkpoint or a convergence check reads them: each layer's full
/// `dim`×`dim` sum made on request, so that one layer's copy exists at a time (during a CPU
/// collection the sums are held as lower triangles, [`LowerSums`]; at Llama 3 8B's width five
/// layers' copies at once would be another 4 GB in f32).
pub struct SumView<'a> {
    pub layers: Vec<usize>,
    pub dim: usize,
    pub dtype: candle_core::DType,
    pub get: &'a dyn Fn(usize) -> Result<Tensor>,
}

/// What the driver of a collection hears about and decides.
pub trait Observer {
    /// After each chunk; `Ok(true)` asks for a checkpoint to be written now.
    fn chunk_done(&mut self, acc: &Accumulator, texts_seen: usize) -> Result<bool>;
    /// Writes a checkpoint: `acc`'s counts and position, `sums` its sums (`acc.sums` may be empty
    /// while the collection holds them elsewhere).
    fn checkpoint(&mut self, acc: &Accumulator, sums: &SumView) -> Result<()>;
    /// A collection that stops once its estimate has converged (`--samples auto`) watches it
    /// here; the collection stops after the chunk where it says so.
    fn convergence(&mut self) -> Option<&mut super::converge::Convergence> {
        None
    }
}

/// An observer that never checkpoints: for in-memory collections (tests, benchmarks, library use).
pub struct NoProgress;

impl Observer for NoProgress {
    fn chunk_done(&mut self, _: &Accumulator, _: usize) -> Result<bool> {
        Ok(false)
    }
    fn checkpoint(&mut self, _: &Accumulator, _: &SumView) -> Result<()> {
        Ok(())
    }
}

/// Tokenizes (the model input: a BOS first where the tokenizer adds one, as the reference's
/// `tokenizer(text, truncation=True, max_length=...)` does, the BOS counting in the length),
/// truncates, and drops texts without tokens of their own (the reference drops empty ones in
/// collation).
fn encode_chunk(tok: &Tokenizer, texts: &[String], max_len: usize) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for t in texts {
        let mut ids = tok.encode_input(t)?;
        if ids.len() <= tok.bos().len() {
            continue;
        }
        ids.truncate(max_len);
        out.push(ids);
    }
    // Stable sort: equal lengths keep sample order, so batches are reproducible.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    Ok(out)
}

/// Greedy packing of length-sorted sequences into sub-batches with width × rows ≤ budget.
pub fn pack(sorted: &[Vec<u32>], batch_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < sorted.len() {
        let width = sorted[start].len();
        let mut end = start + 1;
        while end < sorted.len() && width * (end - start + 1) <= batch_tokens {
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// One of `count` deterministic parts of a collection: the chunks `c` with `c % count == index`
/// (every `count`-th chunk, so every part sees texts of all lengths).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn holds(&self, chunk: usize) -> bool {
        chunk % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Runs the collection from `acc.next_chunk` to the end of `texts`.
pub fn collect(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    texts: &[String],
    plan: &CollectPlan,
    acc: Accumulator,
    observer: &mut dyn Observer,
) -> Result<Accumulator> {
    collect_shard(model, tok, texts, plan, None, acc, observer)
}

/// [`collect`] over the chunks of `shard` only (all chunks when `None`).
pub fn collect_shard(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    texts: &[String],
    plan: &CollectPlan,
    shard: Option<Shard>,
    mut acc: Accumulator,
    observer: &mut dyn Observer,
) -> Result<Accumulator> {
    let deepest = *plan.layers.iter().max().ok_or_else(|| Error::Input("no layers to collect".into()))?;
    let spec = TraceSpec { keys: plan.layers.iter().copied().collect(), stop_after: Some(deepest), ..TraceSpec::default() };
    let n_chunks = texts.len().div_ceil(CHUNK_TEXTS);
    let layers: Vec<usize> = acc.sums.keys().copied().collect();
    let mut lower = LowerSums::take(&mut acc)?;
    for c in acc.next_chunk..n_chunks {
        if shard.is_some_and(|s| !s.holds(c)) {
            continue;
        }
        let chunk = &texts[c * CHUNK_TEXTS..((c + 1) * CHUNK_TEXTS).min(texts.len())];
        let seqs = encode_chunk(tok, chunk, plan.max_len)?;
        // A text longer than a batch is a batch of its own (`pack`), so the bound is the batch size
        // alone, however long the context.
        for range in pack(&seqs, plan.batch_tokens.max(1)) {
            let batch = Batch::from_sequences(&seqs[range], model.config().pad_id(), model.device())?;
            let trace = model.forward(&batch, &spec, &[])?;
            let real = real_token_index(&batch)?;
            for &l in &layers {
                let keys = &trace.keys[&l];
                let (b, t, f) = keys.dims3()?;
                let k = keys.reshape((b * t, f))?.index_select(&real, 0)?.to_dtype(plan.precision.dtype())?;
                match &mut lower {
                    Some(lower) => lower.add(l, &k)?,
                    None => {
                        let sum = acc.sums.get_mut(&l).expect("a sum per layer");
                        *sum = (&*sum + k.t()?.matmul(&k)?)?;
                    }
                }
            }
            acc.count += batch.n_tokens() as u64;
        }
        acc.texts += seqs.len() as u64;
        acc.next_chunk = c + 1;
        if let Some(conv) = observer.convergence().filter(|conv| conv.due(acc.count)) {
            let converged = with_sums(&lower, &acc, |sums| conv.check_view(sums, acc.count))?;
            if converged {
                tracing::info!("the statistics converged at {} tokens ({} texts)", acc.count, acc.texts);
                break;
            }
        }
        let seen = ((c + 1) * CHUNK_TEXTS).min(texts.len());
        // After the last chunk the final sums are written at once: a checkpoint there would
        // only cost the time to write them and a second copy in memory.
        if observer.chunk_done(&acc, seen)? && c + 1 < n_chunks {
            with_sums(&lower, &acc, |sums| observer.checkpoint(&acc, sums))?;
        }
    }
    if let Some(lower) = lower {
        lower.into_sums(&mut acc)?;
    }
    Ok(acc)
}

/// The collection's sums as a [`SumView`]: from the lower triangles while they are held there,
/// else the accumulator's.
fn with_sums<T>(lower: &Option<LowerSums>, acc: &Accumulator, f: impl FnOnce(&SumView) -> T) -> T {
    match lower {
        Some(lower) => {
            let get = |l: usize| lower.full_layer(l);
            let (dim, dtype) = lower.shape();
            f(&SumView { layers: lower.layers(), dim, dtype, get: &get })
        }
        None => acc.with_view(f),
    }
}

/// On the CPU the sums are updated in place through faer, lower triangle only (Σ k kᵀ is
/// symmetric): half the FLOPs of the full product, and a third of the time of candle's
/// `kᵀ·k`, which also allocates a new d×d matrix per batch. The upper triangle is mirrored when
/// the sums are read (checkpoints, the end), so resumed jobs still add the same numbers. While
/// they are here the accumulator holds no copy (at GPT-2 XL's width each sum is 164 MB in f32),
/// except for the moment of a checkpoint.
enum LowerSums {
    F32(BTreeMap<usize, faer::Mat<f32>>),
    F64(BTreeMap<usize, faer::Mat<f64>>),
}

impl LowerSums {
    /// Moves the accumulator's sums here (CPU only; else `None` and they stay).
    fn take(acc: &mut Accumulator) -> Result<Option<Self>> {
        let Some(first) = acc.sums.values().next() else { return Ok(None) };
        if !first.device().is_cpu() {
            return Ok(None);
        }
        fn mats<T: candle_core::WithDType + faer::traits::ComplexField + Copy>(sums: BTreeMap<usize, Tensor>) -> Result<BTreeMap<usize, faer::Mat<T>>> {
            sums.into_iter()
                .map(|(l, s)| {
                    let (r, c) = s.dims2()?;
                    let v: Vec<T> = s.flatten_all()?.to_vec1()?;
                    drop(s);
                    // A fresh accumulator is all zeros: no copy (a d_ff² element-wise one was a
                    // sixth of a Llama 3.2 1B run over a few texts).
                    if v.iter().all(|x| *x == T::zero()) {
                        return Ok((l, faer::Mat::zeros(r, c)));
                    }
                    // The stored sums are symmetric: column j's part on and below the diagonal is
                    // row j's from the diagonal on, one contiguous copy per column.
                    let mut m = faer::Mat::zeros(r, c);
                    for j in 0..c {
                        m.col_as_slice_mut(j)[j..].copy_from_slice(&v[j * c + j..(j + 1) * c]);
                    }
                    Ok((l, m))
                })
                .collect()
        }
        let dtype = first.dtype();
        let sums = std::mem::take(&mut acc.sums);
        Ok(Some(match dtype {
            candle_core::DType::F32 => Self::F32(mats(sums)?),
            candle_core::DType::F64 => Self::F64(mats(sums)?),
            other => return Err(Error::Internal(format!("statistics sums in {other:?}"))),
        }))
    }

    /// sum[l] += kᵀk on and below the diagonal, for `k` `[n, f]` in the sums' dtype: the lower
    /// triangle's blocks of [`SUM_BLOCK`] columns, each one general product accumulated in place
    /// by the gemm crate (candle's matmul), which runs at its full rate on these shapes where
    /// faer's triangular product ran at a third of it (Llama 3.2 1B's 8192-wide keys: a third of
    /// the statistics' time).
    fn add(&mut self, layer: usize, k: &Tensor) -> Result<()> {
        fn add_lower<T: candle_core::WithDType + faer::traits::ComplexField + Copy + 'static>(sum: &mut faer::Mat<T>, k: &Tensor, one: T) -> Result<()> {
            let (n, f) = k.dims2()?;
            let v: Vec<T> = k.flatten_all()?.to_vec1()?;
            let (rows, cols, ld) = (sum.nrows(), sum.ncols(), sum.col_stride());
            if rows != f || cols != f || sum.row_stride() != 1 {
                return Err(Error::Internal(format!("a {rows}×{cols} sum for {f}-wide keys")));
            }
            let par = match candle_core::utils::get_num_threads() {
                1 => gemm::Parallelism::None,
                t => gemm::Parallelism::Rayon(t),
            };
            let base = sum.as_ptr_mut();
            for j0 in (0..f).step_by(SUM_BLOCK) {
                let nj = SUM_BLOCK.min(f - j0);
                // Rows from the diagonal block down: dst[i0.., j0..j0+nj] += kᵀ[i0.., :] · k[:, j0..j0+nj].
                let (i0, ni) = (j0, f - j0);
                // SAFETY: the block [i0, i0 + ni) × [j0, j0 + nj) lies inside the f×f column-major
                // matrix `sum` (leading dimension `ld`, checked above), borrowed mutably; lhs reads
                // v[t·f + i] for t < n, i < f and rhs v[t·f + j] for j < f, inside `v` (n·f).
                unsafe {
                    gemm::gemm(
                        ni,
                        nj,
                        n,
                        base.offset(ld * j0 as isize + i0 as isize),
                        ld,
                        1,
                        true,
                        v.as_ptr().add(i0),
                        f as isize,
                        1,
                        v.as_ptr().add(j0),
                        1,
                        f as isize,
                        one,
                        one,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
            Ok(())
        }
        match self {
            Self::F32(m) => add_lower(m.get_mut(&layer).expect("a sum per layer"), k, 1.0f32),
            Self::F64(m) => add_lower(m.get_mut(&layer).expect("a sum per layer"), k, 1.0f64),
        }
    }

    /// One layer's full symmetric sum (its lower triangle mirrored), a copy; kept here too.
    fn full_layer(&self, layer: usize) -> Result<Tensor> {
        let missing = || Error::Internal(format!("no sum for layer {layer}"));
        match self {
            Self::F32(m) => full(m.get(&layer).ok_or_else(missing)?),
            Self::F64(m) => full(m.get(&layer).ok_or_else(missing)?),
        }
    }

    fn layers(&self) -> Vec<usize> {
        match self {
            Self::F32(m) => m.keys().copied().collect(),
            Self::F64(m) => m.keys().copied().collect(),
        }
    }

    /// Each sum's width and dtype.
    fn shape(&self) -> (usize, candle_core::DType) {
        match self {
            Self::F32(m) => (m.values().next().map_or(0, |m| m.nrows()), candle_core::DType::F32),
            Self::F64(m) => (m.values().next().map_or(0, |m| m.nrows()), candle_core::DType::F64),
        }
    }

    /// The full symmetric sums moved into `acc`, one layer's copy at a time.
    fn into_sums(self, acc: &mut Accumulator) -> Result<()> {
        match self {
            Self::F32(m) => m.into_iter().try_for_each(|(l, m)| {
                acc.sums.insert(l, full(&m)?);
                Ok(())
            }),
            Self::F64(m) => m.into_iter().try_for_each(|(l, m)| {
                acc.sums.insert(l, full(&m)?);
                Ok(())
            }),
        }
    }
}

/// A lower-triangular sum as the full symmetric matrix. Tile by tile: a column of the lower
/// triangle is a row of the upper one (one contiguous copy), and the tile's transpose for the
/// lower triangle goes through a small buffer, so every write is a contiguous run of a row. (The
/// element-wise mirror wrote one value per row and cache line at a stride of the width, which at
/// power-of-two widths (GPT-J's 16,384: 64 KiB rows) evicted itself: 17 s per layer, 96 % of a
/// 5-layer job's time.)
fn full<T: candle_core::WithDType + Copy>(m: &faer::Mat<T>) -> Result<Tensor> {
    const TILE: usize = 64;
    let d = m.nrows();
    let mut v: Vec<T> = vec![T::zero(); d * d];
    let mut buf: Vec<T> = vec![T::zero(); TILE * TILE];
    for bj in (0..d).step_by(TILE) {
        let nj = TILE.min(d - bj);
        for bi in (bj..d).step_by(TILE) {
            let ni = TILE.min(d - bi);
            for j in bj..bj + nj {
                // Rows i ≥ j of column j within the tile (the diagonal tile starts at j).
                let from = bi.max(j);
                if from >= bi + ni {
                    continue;
                }
                let col = &m.col_as_slice(j)[from..bi + ni];
                v[j * d + from..j * d + bi + ni].copy_from_slice(col);
                for (k, &x) in col.iter().enumerate() {
                    buf[(from + k - bi) * TILE + (j - bj)] = x;
                }
            }
            for i in bi..bi + ni {
                // Row i, columns j < i of the tile (the diagonal itself is written above).
                let to = (i.min(bj + nj)).max(bj);
                v[i * d + bj..i * d + to].copy_from_slice(&buf[(i - bi) * TILE..(i - bi) * TILE + to - bj]);
            }
        }
    }
    Ok(Tensor::from_vec(v, (d, d), &Device::Cpu)?)
}

/// Columns of the lower triangle accumulated per product (see [`LowerSums::add`]): the products
/// skip most of the upper triangle and stay large enough for the GEMM kernels' full rate.
const SUM_BLOCK: usize = 1024;

/// One uninterrupted collection over `texts` in memory, with no cache and no checkpoints.
pub fn collect_in_memory(model: &dyn CausalLm, tok: &Tokenizer, texts: &[String], plan: &CollectPlan) -> Result<Accumulator> {
    let acc = Accumulator::new(&plan.layers, model.config().d_ff, plan.precision, model.device())?;
    collect(model, tok, texts, plan, acc, &mut NoProgress)
}

/// Flat `[b·t]` indices of the real (non-padding) tokens.
fn real_token_index(batch: &Batch) -> Result<Tensor> {
    let t = batch.seq_len();
    let idx: Vec<u32> = batch.lengths().iter().enumerate().flat_map(|(r, &n)| (0..n).map(move |p| (r * t + p) as u32)).collect();
    let n = idx.len();
    Ok(Tensor::from_vec(idx, n, batch.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_respects_the_token_budget() {
        let seqs: Vec<Vec<u32>> = [5, 4, 4, 3, 1, 1].iter().map(|&n| vec![0; n]).collect();
        assert_eq!(pack(&seqs, 10), vec![0..2, 2..4, 4..6]);
        assert_eq!(pack(&seqs, 5), vec![0..1, 1..2, 2..3, 3..4, 4..6]);
        assert_eq!(pack(&seqs, 100), vec![0..6]);
    }

    /// The mirrored matrix, element by element, against the lower triangle it came from, at
    /// widths around the tile size; and back: a saved symmetric sum read into a lower triangle.
    #[test]
    fn lower_triangles_become_full_symmetric_matrices_and_back() {
        for d in [1, 5, 63, 64, 65, 150] {
            let mut m = faer::Mat::<f64>::zeros(d, d);
            for j in 0..d {
                for i in j..d {
                    m[(i, j)] = (i * 1000 + j) as f64;
                }
            }
            let v: Vec<f64> = full(&m).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..d {
                for j in 0..d {
                    let (a, b) = if i >= j { (i, j) } else { (j, i) };
                    assert_eq!(v[i * d + j], (a * 1000 + b) as f64, "d {d}, ({i}, {j})");
                }
            }
            let t = Tensor::from_vec(v, (d, d), &Device::Cpu).unwrap();
            let mut acc = Accumulator { sums: [(3, t)].into(), count: 1, texts: 1, next_chunk: 1 };
            let Some(LowerSums::F64(back)) = LowerSums::take(&mut acc).unwrap() else { panic!("f64 sums on the CPU") };
            for j in 0..d {
                for i in j..d {
                    assert_eq!(back[&3][(i, j)], m[(i, j)]);
                }
            }
        }
    }
}
