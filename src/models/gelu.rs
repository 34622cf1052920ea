//! GELU and SiLU on the CPU as one vectorised pass forward and one backward, split across
//! rayon's threads.
//!
//! candle computes these element by element through libm (`tanhf`/`expm1f`/`powf`/`expf` per
//! element, twice more in the backward) on one thread: on small models GELU was a fifth of an
//! edit's time (benches/README.md, "gelu"), and SiLU's `expf` a twentieth of a Llama 3.2 1B
//! statistics run with the other core idle. Here exp and erf are polynomial forms the compiler
//! vectorises, with errors of a few f32 ulps (tested below against f64), far inside what the
//! golden tests hold against transformers.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

/// Which activation: transformers' `gelu_new` (tanh form; GPT-2, GPT-J, Gemma's
/// `gelu_pytorch_tanh`), the exact erf form (NeoX), or SiLU (Llama, Mistral, Qwen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    Tanh,
    Erf,
    Silu,
}

/// √(2/π), the tanh form's scale.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π), the normal density's constant.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// e^x (Cephes `expf`: x = n·ln2 + r, a degree-5 polynomial on r, 2ⁿ put in the exponent bits).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// For u = √(2/π)(x + 0.044715x³): (1 + tanh u, sech² u), both from e = e^(−2|u|) so that
/// neither is a difference of nearly equal numbers (1 + tanh u → 0 for large negative u).
#[inline(always)]
fn tanh_parts(u: f32) -> (f32, f32) {
    let e = exp(-2.0 * u.abs());
    let s = 1.0 / (1.0 + e);
    let one_plus = if u >= 0.0 { 2.0 * s } else { 2.0 * e * s };
    (one_plus, 4.0 * e * s * s)
}

/// erf (Abramowitz & Stegun 7.1.26, absolute error ≤ 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4_f32;
    p = p * t - 1.453_152;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn forward_one(kind: GeluKind, x: f32) -> f32 {
    match kind {
        GeluKind::Tanh => 0.5 * x * tanh_parts(SQRT_2_OVER_PI * (x + COEF * x * x * x)).0,
        GeluKind::Erf => 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2)),
        GeluKind::Silu => x * sigmoid(x),
    }
}

/// 1 / (1 + e^(−x)); e^(−x) saturates at e^88 for x < −88, where the result is ~0 either way.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// d GELU / dx.
#[inline(always)]
fn derivative_one(kind: GeluKind, x: f32) -> f32 {
    match kind {
        GeluKind::Tanh => {
            let (one_plus, sech2) = tanh_parts(SQRT_2_OVER_PI * (x + COEF * x * x * x));
            0.5 * one_plus + 0.5 * x * sech2 * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x)
        }
        GeluKind::Erf => 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x),
        GeluKind::Silu => {
            let s = sigmoid(x);
            s + x * s * (1.0 - s)
        }
    }
}

/// Above this many elements the pass is split across rayon's threads; below it one thread is
/// faster than waking another (a fact-gpt2 MLP activation is ~2·10⁵ elements, 0.1 ms).
const PARALLEL_MIN: usize = 1 << 20;
const CHUNK: usize = 1 << 16;

fn map_into(out: &mut [f32], f: impl Fn(&mut [f32], usize) + Sync) {
    if out.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| f(c, i * CHUNK));
    } else {
        f(out, 0);
    }
}

macro_rules! dispatch_simd {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

#[inline(always)]
fn forward_body(kind: GeluKind, x: &[f32], out: &mut [f32]) {
    match kind {
        GeluKind::Tanh => out.iter_mut().zip(x).for_each(|(o, &v)| *o = forward_one(GeluKind::Tanh, v)),
        GeluKind::Erf => out.iter_mut().zip(x).for_each(|(o, &v)| *o = forward_one(GeluKind::Erf, v)),
        GeluKind::Silu => out.iter_mut().zip(x).for_each(|(o, &v)| *o = forward_one(GeluKind::Silu, v)),
    }
}

#[inline(always)]
fn backward_body(kind: GeluKind, x: &[f32], g: &[f32], out: &mut [f32]) {
    let it = out.iter_mut().zip(x.iter().zip(g));
    match kind {
        GeluKind::Tanh => it.for_each(|(o, (&v, &gv))| *o = gv * derivative_one(GeluKind::Tanh, v)),
        GeluKind::Erf => it.for_each(|(o, (&v, &gv))| *o = gv * derivative_one(GeluKind::Erf, v)),
        GeluKind::Silu => it.for_each(|(o, (&v, &gv))| *o = gv * derivative_one(GeluKind::Silu, v)),
    }
}

dispatch_simd!(forward_slice, forward_body, (kind: GeluKind, x: &[f32], out: &mut [f32]));
dispatch_simd!(backward_slice, backward_body, (kind: GeluKind, x: &[f32], g: &[f32], out: &mut [f32]));

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("gelu: f32 only, got {:?}", s.dtype()) };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("gelu: input must be contiguous"),
    }
}

struct Gelu(GeluKind);

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-vectorised"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let mut out = vec![0f32; x.len()];
        map_into(&mut out, |o, at| forward_slice(self.0, &x[at..at + o.len()], o));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &GeluGrad(self.0))?))
    }
}

/// (x, dL/dy) → dL/dx.
struct GeluGrad(GeluKind);

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-vectorised-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        if x.len() != g.len() {
            candle_core::bail!("gelu grad: {} inputs, {} gradients", x.len(), g.len());
        }
        let mut out = vec![0f32; x.len()];
        map_into(&mut out, |o, at| backward_slice(self.0, &x[at..at + o.len()], &g[at..at + o.len()], o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The activation of `x`: the vectorised pass for f32 CPU tensors, candle's kernels otherwise
/// (other dtypes, GPUs).
pub fn gelu(x: &Tensor, kind: GeluKind) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1(Gelu(kind));
    }
    match kind {
        GeluKind::Tanh => x.gelu(),
        GeluKind::Erf => x.gelu_erf(),
        GeluKind::Silu => x.silu(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// std has no erf: its Maclaurin series, summed in f64 (converges well for |x| ≤ 3).
    fn erf_series(x: f64) -> f64 {
        let (mut term, mut sum) = (x, x);
        for n in 1..400 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn grid() -> impl Iterator<Item = f32> {
        (-200_000..=200_000).map(|i| i as f32 * 1e-4).chain([-90.0, -30.0, -12.0, 12.0, 30.0, 90.0, 1e-30, -1e-30, 0.0])
    }

    #[test]
    fn primitives_match_f64_libm() {
        let mut worst = [0f64; 3];
        for x in grid() {
            let xd = f64::from(x);
            if x.abs() < 80.0 {
                let rel = (f64::from(exp(x)) - xd.exp()).abs() / xd.exp();
                worst[0] = worst[0].max(rel);
            }
            let (one_plus, sech2) = tanh_parts(x);
            // 1 + tanh x = 2 / (1 + e^(−2x)), exact in f64 where 1 + tanh(x) would cancel.
            let one_plus_ref = 2.0 / (1.0 + (-2.0 * xd).exp());
            if one_plus_ref > 1e-30 {
                worst[1] = worst[1].max((f64::from(one_plus) - one_plus_ref).abs() / one_plus_ref);
            }
            let sech2_ref = 1.0 / xd.cosh().powi(2);
            if sech2_ref > 1e-30 {
                worst[1] = worst[1].max((f64::from(sech2) - sech2_ref).abs() / sech2_ref);
            }
            if x.abs() <= 3.0 {
                worst[2] = worst[2].max((f64::from(erf(x)) - erf_series(xd)).abs());
            }
        }
        assert!(worst[0] < 3e-7, "exp relative error {}", worst[0]);
        assert!(worst[1] < 1e-6, "1 + tanh, sech² relative error {}", worst[1]);
        assert!(worst[2] < 6e-7, "erf absolute error {}", worst[2]);
    }

    fn reference(kind: GeluKind, x: f64) -> (f64, f64) {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        match kind {
            GeluKind::Tanh => {
                let t = (c * (x + 0.044715 * x.powi(3))).tanh();
                (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x))
            }
            GeluKind::Erf => {
                let cdf = 0.5 * (1.0 + erf_series(x / 2f64.sqrt()));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (x * cdf, cdf + x * pdf)
            }
            GeluKind::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                (x * s, s + x * s * (1.0 - s))
            }
        }
    }

    #[test]
    fn forward_and_gradient_match_f64() {
        let dev = Device::Cpu;
        let xs: Vec<f32> = (0..3000).map(|i| (i as f32 - 1500.0) * 4e-3).collect();
        let x = Var::from_tensor(&Tensor::from_vec(xs.clone(), (3, 1000), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 1000), &dev).unwrap();
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for kind in [GeluKind::Tanh, GeluKind::Erf, GeluKind::Silu] {
            let y = gelu(x.as_tensor(), kind).unwrap();
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..xs.len() {
                let (fy, fd) = reference(kind, f64::from(xs[i]));
                let tol = 1e-6 * (1.0 + fy.abs());
                assert!((f64::from(y[i]) - fy).abs() < tol, "{kind:?}({}) = {} vs {fy}", xs[i], y[i]);
                let gd = f64::from(wv[i]) * fd;
                let tol = 1e-6 * (1.0 + gd.abs());
                assert!((f64::from(g[i]) - gd).abs() < tol, "{kind:?}'({}) = {} vs {gd}", xs[i], g[i]);
            }
        }
    }

    #[test]
    fn parallel_split_equals_single_pass() {
        let dev = Device::Cpu;
        let n = PARALLEL_MIN + 12_345;
        let x = Tensor::randn(0f32, 2.0, n, &dev).unwrap();
        let whole = gelu(&x, GeluKind::Tanh).unwrap().to_vec1::<f32>().unwrap();
        let head = gelu(&x.narrow(0, 0, 1000).unwrap(), GeluKind::Tanh).unwrap().to_vec1::<f32>().unwrap();
        let tail = gelu(&x.narrow(0, n - 1000, 1000).unwrap(), GeluKind::Tanh).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&whole[..1000], &head[..]);
        assert_eq!(&whole[n - 1000..], &tail[..]);
    }
}
