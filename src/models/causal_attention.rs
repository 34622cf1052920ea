//! Causal attention on the CPU without a graph, one block of queries at a time.
//!
//! The general [`super::layers::attention`] materialises `[b, heads, t, t]` scores (315 MB for
//! three 1024-token rows of GPT-2 XL), passes over them four times (scale, bias, softmax) and
//! multiplies the masked half too; its `q·kᵀ` runs at a quarter of the GEMM rate (k = 64, a
//! fresh 315 MB output). Here each task takes a block of query rows of one batch row, computes
//! their scores against the keys they may see only (j ≤ i, j a real token: the bias is 0 there
//! and −∞ elsewhere, so the skipped terms are exact zeros after the softmax), and writes the
//! heads' outputs straight into `[b, t, heads·hd]`. The same arithmetic per element as the
//! general path (`s·scale`, then `exp(s − max) / Σ`); only the order of the sums differs.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Query rows per task: the block's scores (≤ 64 × 1024 f32) stay in the L2 cache.
const QUERY_BLOCK: usize = 64;

/// Whether [`attention`] applies: no gradient, CPU, one float dtype throughout, and keys exactly
/// as long as the queries (no cached prefix), in as many heads or in groups of heads.
pub fn applies(q: &Tensor, k: &Tensor, v: &Tensor, grad: bool) -> bool {
    let (qd, kd) = (q.dims(), k.dims());
    !grad
        && matches!(q.device(), Device::Cpu)
        && matches!(q.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && [k, v].iter().all(|x| x.dtype() == q.dtype())
        && qd.len() == 4
        && kd.len() == 4
        && (qd[0], qd[2], qd[3]) == (kd[0], kd[2], kd[3])
        && kd[1] > 0
        && qd[1] % kd[1] == 0
        && k.dims() == v.dims()
}

/// A `[b, heads, t, hd]` tensor's f32 data with its offset and strides (last one 1).
struct Strided<'a> {
    data: &'a [f32],
    offset: usize,
    batch: usize,
    head: usize,
    row: usize,
}

impl<'a> Strided<'a> {
    fn of(storage: &'a Storage, layout: &candle_core::Layout) -> Result<Self> {
        let Storage::Cpu(cpu) = storage else { return Err(Error::Internal("CPU attention on a non-CPU tensor".into())) };
        let s = layout.stride();
        Ok(Self { data: cpu.as_slice::<f32>()?, offset: layout.start_offset(), batch: s[0], head: s[1], row: s[2] })
    }

    /// `rows` consecutive positions from `from` of one (batch row, head): `[rows, hd]`.
    fn rows(&self, r: usize, h: usize, from: usize, rows: usize, hd: usize) -> View<'a> {
        let start = self.offset + r * self.batch + h * self.head + from * self.row;
        View { data: &self.data[start..], rows, cols: hd, rs: self.row, cs: 1 }
    }
}

/// A strided matrix in a slice.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl View<'_> {
    fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// Whether every element lies in the slice.
    fn fits(&self, len: usize) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// `dst = lhs · rhs` on this thread, `dst` `[lhs.rows, rhs.cols]` with row stride `dst_rs`,
/// through the gemm crate (candle's CPU matmul; faer 0.24's small-matrix kernels wrote past a
/// row-strided destination here, under valgrind).
fn matmul_into(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: View) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert!(rhs.rows == k && lhs.fits(lhs.data.len()) && rhs.fits(rhs.data.len()));
    assert!(View { data: dst, rows: m, cols: n, rs: dst_rs, cs: 1 }.fits(dst.len()));
    // SAFETY: the asserts above keep every element the call reads or writes inside its slice,
    // and `dst` is borrowed mutably, so nothing else aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Softmax attention of `q` (`[b, heads, t, hd]`) over `k`/`v` (`[b, kv_heads, t, hd]`, query head
/// h reading key/value head h / (heads / kv_heads)), f32, CPU, each query i of row r seeing the keys
/// j ≤ q = min(i, lengths[r] − 1): transformers' causal + right-padding mask, as
/// [`super::Batch::attention_bias`] builds it; with a `window`, only those with q − j < window.
/// Returns `[b, t, heads·hd]`.
///
/// Half-precision inputs are widened to f32 and the output narrowed back: the general path's
/// `[b, heads, t, t]` f32 scores were 2.1 GB for a Llama 3.2 1B statistics batch in bf16 (the
/// scores are f32 there too; its probabilities are rounded to the compute dtype before the
/// product with the values, these are not).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, lengths: &[usize], scale: f64, window: Option<usize>) -> Result<Tensor> {
    let dtype = q.dtype();
    if dtype != DType::F32 {
        let [q, k, v] = [q, k, v].map(|x| x.to_dtype(DType::F32));
        return attention(&q?, &k?, &v?, lengths, scale, window)?.to_dtype(dtype).map_err(Into::into);
    }
    let (b, heads, t, hd) = q.dims4()?;
    let group = heads / k.dim(1)?;
    if lengths.len() != b || lengths.iter().any(|&n| n == 0 || n > t) {
        return Err(Error::Internal(format!("attention over {b} rows of {t} with lengths {lengths:?}")));
    }
    // A last dimension with a stride (rare: the split heads keep it contiguous) is copied.
    let [q, k, v] = [q, k, v].map(|x| if x.stride()[3] == 1 { Ok(x.clone()) } else { x.contiguous() });
    let (q, k, v) = (q?, k?, v?);
    let (qs, ks, vs) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
    let (qd, kd, vd) = (Strided::of(&qs.0, qs.1)?, Strided::of(&ks.0, ks.1)?, Strided::of(&vs.0, vs.1)?);
    let width = heads * hd;
    let scale = scale as f32;
    let mut out = vec![0f32; b * t * width];
    let blocks = t.div_ceil(QUERY_BLOCK);
    let task = |(index, dst): (usize, &mut [f32])| {
        let (r, from) = (index / blocks, (index % blocks) * QUERY_BLOCK);
        let rows = dst.len() / width;
        let n = lengths[r];
        let seen = (from + rows).min(n);
        // The first key any query of the block sees, and each query's own first and last + 1.
        let first = |i: usize| window.map_or(0, |w| ((from + i).min(n - 1) + 1).saturating_sub(w));
        let lo = first(0);
        let cols = seen - lo;
        let mut scores = vec![0f32; rows * cols];
        for h in 0..heads {
            matmul_into(&mut scores, cols, qd.rows(r, h, from, rows, hd), kd.rows(r, h / group, lo, cols, hd).t());
            for (i, row) in scores.chunks_mut(cols).enumerate() {
                let visible = (from + i + 1).min(n) - lo;
                let (row, masked) = row.split_at_mut(visible);
                masked.fill(0.0);
                let (before, row) = row.split_at_mut(first(i) - lo);
                before.fill(0.0);
                let mut max = f32::NEG_INFINITY;
                for x in row.iter_mut() {
                    *x *= scale;
                    max = max.max(*x);
                }
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for x in row.iter_mut() {
                    *x /= sum;
                }
            }
            let p = View { data: &scores, rows, cols, rs: cols, cs: 1 };
            matmul_into(&mut dst[h * hd..], width, p, vd.rows(r, h / group, lo, cols, hd));
        }
    };
    // Rows of `out` in blocks that never straddle two batch rows.
    let chunks: Vec<&mut [f32]> = out.chunks_mut(width * t).flat_map(|row| row.chunks_mut(width * QUERY_BLOCK)).collect();
    // One thread per operation (small models, requests side by side) stays on the caller's.
    if candle_core::utils::get_num_threads() > 1 {
        chunks.into_par_iter().enumerate().for_each(task);
    } else {
        chunks.into_iter().enumerate().for_each(task);
    }
    drop((qs, ks, vs));
    Ok(Tensor::from_vec(out, (b, t, width), q.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Batch;

    #[test]
    fn blocked_attention_matches_the_masked_softmax_over_blocks_and_padding() {
        let dev = Device::Cpu;
        // Two query blocks in the first row; the second row has padding from position 33 on.
        let (b, h, t, hd) = (2, 3, 70, 8);
        let lengths = [70, 33];
        let rows: Vec<Vec<u32>> = lengths.iter().map(|&n| vec![1; n]).collect();
        let batch = Batch::from_sequences(&rows, 0, &dev).unwrap();
        // Heads split from a [b, t, heads·hd] tensor, as the models do (strided, not contiguous).
        let split = || {
            let x = Tensor::randn(0f32, 1.0, (b, t, h * hd), &dev).unwrap();
            crate::models::layers::split_heads(&x, h).unwrap()
        };
        let (q, k, v) = (split(), split(), split());
        assert!(applies(&q, &k, &v, false) && !applies(&q, &k, &v, true));
        let fused = attention(&q, &k, &v, &lengths, 0.3, None).unwrap();
        let general = crate::models::layers::attention(&q, &k, &v, &batch.attention_bias().unwrap(), 0.3, None, false).unwrap();
        let diff = (&fused - &general).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "max difference {diff}");
        // The first query sees only the first key: its output is that key's value, exactly.
        let first = fused.narrow(1, 0, 1).unwrap().reshape((b, h, hd)).unwrap();
        let v0 = v.narrow(2, 0, 1).unwrap().reshape((b, h, hd)).unwrap();
        assert_eq!(first.flatten_all().unwrap().to_vec1::<f32>().unwrap(), v0.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    /// Grouped keys and values (3 query heads per key/value head) and a window of 5, over two
    /// query blocks and padding: the same as the general masked softmax with the window's bias.
    #[test]
    fn grouped_heads_and_sliding_window_match_the_general_path() {
        let dev = Device::Cpu;
        let (b, h, kv, t, hd) = (2, 6, 2, 70, 8);
        let lengths = [70, 33];
        let rows: Vec<Vec<u32>> = lengths.iter().map(|&n| vec![1; n]).collect();
        let batch = Batch::from_sequences(&rows, 0, &dev).unwrap();
        let split = |heads: usize| {
            let x = Tensor::randn(0f32, 1.0, (b, t, heads * hd), &dev).unwrap();
            crate::models::layers::split_heads(&x, heads).unwrap()
        };
        let (q, k, v) = (split(h), split(kv), split(kv));
        assert!(applies(&q, &k, &v, false));
        for window in [None, Some(5), Some(1), Some(200)] {
            let fused = attention(&q, &k, &v, &lengths, 0.3, window).unwrap();
            let bias = match window {
                Some(w) => super::super::window_bias(&batch, None, w).unwrap(),
                None => batch.attention_bias().unwrap(),
            };
            let general = crate::models::layers::attention(&q, &k, &v, &bias, 0.3, None, false).unwrap();
            let diff = (&fused - &general).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "window {window:?}: max difference {diff}");
        }
        // A window of one: each query sees only itself, so its output is its own value.
        let own = attention(&q, &k, &v, &lengths, 0.3, Some(1)).unwrap();
        let got = own.narrow(1, 10, 1).unwrap().reshape((b, h, hd)).unwrap().narrow(1, 4, 1).unwrap();
        let want = v.narrow(2, 10, 1).unwrap().reshape((b, kv, hd)).unwrap().narrow(1, 1, 1).unwrap();
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // Half-precision inputs: the general path to the half type's rounding (it rounds the
        // probabilities too), the output in the inputs' dtype.
        for dtype in [DType::BF16, DType::F16] {
            let [qh, kh, vh] = [&q, &k, &v].map(|x| x.to_dtype(dtype).unwrap());
            assert!(applies(&qh, &kh, &vh, false));
            let fused = attention(&qh, &kh, &vh, &lengths, 0.3, None).unwrap();
            assert_eq!(fused.dtype(), dtype);
            let general = crate::models::layers::attention(&qh, &kh, &vh, &batch.attention_bias().unwrap(), 0.3, None, false).unwrap();
            let diff = (fused.to_dtype(DType::F32).unwrap() - general.to_dtype(DType::F32).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 2e-2, "{dtype:?}: max difference {diff}");
        }
    }
}
