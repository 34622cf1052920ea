//! Half-precision (bf16/f16) matmuls on the CPU with a bounded f32 copy of the weight.
//!
//! candle's CPU backend has no bf16 GEMM: it widens both operands whole to f32, multiplies and
//! narrows the result. For a vocabulary head that is a transient f32 copy of the whole table
//! (1.05 GB for Llama 3.2 1B's tied 128,256 × 2,048 embedding: a third of `edit predict`'s
//! peak), made on one thread. Here the weight is widened in slabs of output columns (at most
//! [`SLAB_ELEMENTS`]) on all threads, each slab multiplied by the gemm crate into its columns of
//! one f32 result, which is narrowed once. The products are f32 products of the same widened
//! values; only the GEMM's blocking (and so the order of its sums) can differ from candle's.

use candle_core::CpuStorage;
use half::{bf16, f16};
use rayon::prelude::*;

/// f32 elements of a widened weight slab: 32 MB.
const SLAB_ELEMENTS: usize = 8 << 20;

/// A half-precision element type.
trait Half: Copy + Send + Sync {
    fn widen(self) -> f32;
    fn narrow(x: f32) -> Self;
}

impl Half for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl Half for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(x: f32) -> Self {
        f16::from_f32(x)
    }
}

/// Where a `[k, n]` operand's element (p, j) lies: `offset + p·rs0 + j·rs1`.
#[derive(Clone, Copy)]
struct View {
    offset: usize,
    rs0: usize,
    rs1: usize,
}

fn widen_into<T: Half>(src: &[T], dst: &mut [f32]) {
    dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d = s.widen()));
}

/// `lhs [m, k]` (contiguous from `lhs_offset`) times `rhs [k, n]` in f32, narrowed to `T`. `rhs`
/// must be one of the layouts weights have: an `nn.Linear` weight seen transposed (`rs0 == 1`,
/// `rs1 == k`) or a row-major matrix (`rs1 == 1`, `rs0 == n`).
fn matmul<T: Half>(lhs: &[T], lhs_offset: usize, rhs: &[T], view: View, (m, k, n): (usize, usize, usize)) -> Vec<T> {
    let mut a = vec![0f32; m * k];
    widen_into(&lhs[lhs_offset..lhs_offset + m * k], &mut a);
    let mut out = vec![0f32; m * n];
    let cols = (SLAB_ELEMENTS / k.max(1)).clamp(1, n.max(1));
    let mut slab = vec![0f32; cols * k];
    let par = match candle_core::utils::get_num_threads() {
        1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    for j0 in (0..n).step_by(cols) {
        let nc = cols.min(n - j0);
        let b = &mut slab[..nc * k];
        // The slab's element (p, j − j0) and its strides.
        let (cs, rs) = if view.rs0 == 1 {
            // Rows j0..j0+nc of the stored [n, k] weight: one contiguous run.
            let at = view.offset + j0 * view.rs1;
            widen_into(&rhs[at..at + nc * k], b);
            (k, 1)
        } else {
            // Columns j0..j0+nc of a row-major [k, n]: one run per row p.
            b.par_chunks_mut(nc).enumerate().for_each(|(p, row)| {
                let at = view.offset + p * view.rs0 + j0;
                row.iter_mut().zip(&rhs[at..at + nc]).for_each(|(d, s)| *d = s.widen());
            });
            (1, nc)
        };
        // SAFETY: dst covers rows 0..m, columns j0..j0+nc of the m×n row-major `out`; lhs reads
        // a[i·k + p] (i < m, p < k) inside `a`; rhs reads the slab within its nc·k elements with
        // the strides set above.
        unsafe {
            gemm::gemm(
                m,
                nc,
                k,
                out.as_mut_ptr().add(j0),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                cs as isize,
                rs as isize,
                0f32,
                1f32,
                false,
                false,
                false,
                par,
            );
        }
    }
    drop(slab);
    out.par_iter().map(|&x| T::narrow(x)).collect()
}

/// The product when both operands are bf16 or both f16, `lhs` contiguous and `rhs` in one of
/// the layouts weights have; `None` otherwise (candle's matmul then does it).
pub fn try_matmul(
    s1: &CpuStorage,
    l1: &candle_core::Layout,
    s2: &CpuStorage,
    l2: &candle_core::Layout,
    (m, k, n): (usize, usize, usize),
) -> Option<CpuStorage> {
    let (lo, _) = l1.contiguous_offsets()?;
    let st = l2.stride();
    let view = View { offset: l2.start_offset(), rs0: st[0], rs1: st[1] };
    let canonical = (view.rs0 == 1 && view.rs1 == k) || (view.rs1 == 1 && view.rs0 == n);
    if !canonical || m == 0 || k == 0 || n == 0 {
        return None;
    }
    match (s1, s2) {
        (CpuStorage::BF16(a), CpuStorage::BF16(b)) => Some(CpuStorage::BF16(matmul(a, lo, b, view, (m, k, n)))),
        (CpuStorage::F16(a), CpuStorage::F16(b)) => Some(CpuStorage::F16(matmul(a, lo, b, view, (m, k, n)))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::models::layers::{Linear, Orientation};

    /// Both weight layouts through [`Linear`], a slab boundary inside the columns, bf16 and f16:
    /// the product of the widened values to the narrowed type's rounding.
    #[test]
    fn matches_the_widened_product() {
        let dev = Device::Cpu;
        let (m, k, n) = (5, 1 << 12, 2100 + (super::SLAB_ELEMENTS >> 12));
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let (xh, wh) = (x.to_dtype(dtype).unwrap(), w.to_dtype(dtype).unwrap());
            let want = xh.to_dtype(DType::F32).unwrap().matmul(&wh.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let linears = [Linear::new(wh.clone(), None, Orientation::OutIn), Linear::new(wh.t().unwrap().contiguous().unwrap(), None, Orientation::InOut)];
            for lin in linears {
                let got = lin.forward(&xh).unwrap();
                assert_eq!(got.dtype(), dtype);
                let err = (got.to_dtype(DType::F32).unwrap() - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(err <= scale * 1e-2, "{dtype:?} {:?}: {err} vs {scale}", lin.orientation);
            }
        }
    }
}
