//! Building blocks shared by the families.
//!
//! Two candle facts shape this file (see the project notes):
//! - the fused `layer_norm`, `softmax_last_dim` and `rope`/`rope_i` kernels record no backward,
//!   so every op takes a `grad` flag and uses the slow, differentiable form when it is set;
//! - candle's matmul backward computes the gradient of *both* operands even when one is a
//!   frozen weight. [`FrozenMatmul`] is a matmul whose backward returns only dL/dx.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::config::{Activation, NormStyle, Rotary, RotaryStyle};
use crate::error::Result;

/// `x @ w` for a 2-d activation `x` `[m, k]` and a frozen weight view `w` `[k, n]`,
/// whose backward yields the gradient of `x` only.
struct FrozenMatmul;

impl FrozenMatmul {
    fn dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen matmul: inner dimensions differ ({k} vs {k2})");
        }
        Ok((m, k, n))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k, n) = Self::dims(l1, l2)?;
        if let Some(out) = super::half_matmul::try_matmul(s1, l1, s2, l2, (m, k, n)) {
            return Ok((out, Shape::from((m, n))));
        }
        let out = s1.matmul(s2, (1, m, n, k), l1, l2)?;
        Ok((out, Shape::from((m, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (m, k, n) = Self::dims(l1, l2)?;
        let out = s1.matmul(s2, (1, m, n, k), l1, l2)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.contiguous()?.apply_op2_no_bwd(&w.t()?, &FrozenMatmul)?), None))
    }
}

/// How a checkpoint stores a linear weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Orientation {
    /// GPT-2 `Conv1D`: `[in, out]`, y = x W + b.
    InOut,
    /// `nn.Linear`: `[out, in]`, y = x Wᵀ + b.
    OutIn,
}

/// A linear map with its weight kept exactly as stored, so edits and saving see checkpoint layout.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub orientation: Orientation,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, orientation: Orientation) -> Self {
        Self { weight, bias, orientation }
    }

    /// Visits `name.weight` and, when there is one, `name.bias`.
    pub(crate) fn visit(&mut self, name: &str, f: &mut super::ParamVisitor) -> Result<()> {
        f(&format!("{name}.weight"), &mut self.weight)?;
        match &mut self.bias {
            Some(b) => f(&format!("{name}.bias"), b),
            None => Ok(()),
        }
    }

    pub fn in_dim(&self) -> usize {
        let d = self.weight.dims();
        match self.orientation {
            Orientation::InOut => d[0],
            Orientation::OutIn => d[1],
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().expect("linear input has a last dimension");
        let m: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((m, k))?;
        let w = match self.orientation {
            Orientation::InOut => self.weight.clone(),
            Orientation::OutIn => self.weight.t()?,
        };
        // A trainable weight (fine-tuning) needs candle's own matmul to get its gradient.
        let y = if self.weight.is_variable() || self.weight.track_op() { x2.matmul(&w)? } else { x2.apply_op2_no_bwd_if_untracked(&w)? };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = y.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }
}

trait FrozenMatmulExt {
    fn apply_op2_no_bwd_if_untracked(&self, w: &Tensor) -> candle_core::Result<Tensor>;
}

impl FrozenMatmulExt for Tensor {
    fn apply_op2_no_bwd_if_untracked(&self, w: &Tensor) -> candle_core::Result<Tensor> {
        if self.track_op() {
            self.apply_op2(w, FrozenMatmul)
        } else {
            // Nothing upstream needs a gradient: skip recording the op at all.
            self.apply_op2_no_bwd(w, &FrozenMatmul)
        }
    }
}

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// Visits `name.weight` and `name.bias`.
    pub(crate) fn visit(&mut self, name: &str, f: &mut super::ParamVisitor) -> Result<()> {
        f(&format!("{name}.weight"), &mut self.weight)?;
        f(&format!("{name}.bias"), &mut self.bias)
    }

    pub fn forward(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        if grad {
            Ok(candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)?)
        } else {
            let x = x.contiguous()?;
            Ok(candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps as f32)?)
        }
    }
}

/// Root-mean-square norm, computed in f32 whatever the compute dtype (as transformers does).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub style: NormStyle,
}

impl RmsNorm {
    /// Visits `name.weight`.
    pub(crate) fn visit(&mut self, name: &str, f: &mut super::ParamVisitor) -> Result<()> {
        f(&format!("{name}.weight"), &mut self.weight)
    }

    pub fn forward(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        let dtype = x.dtype();
        if !grad && dtype == DType::F32 && self.style == NormStyle::Scale {
            // The fused kernel does the same f32 arithmetic but records no backward.
            return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?);
        }
        let x32 = x.to_dtype(DType::F32)?;
        let inv_rms = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let normed = x32.broadcast_mul(&inv_rms)?;
        Ok(match self.style {
            // Llama: `w · x̂.to(dtype)`.
            NormStyle::Scale => normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?,
            // Gemma: `(x̂ · (1 + w)).to(dtype)`, in f32.
            NormStyle::OnePlus => normed.broadcast_mul(&(self.weight.to_dtype(DType::F32)? + 1.0)?)?.to_dtype(dtype)?,
        })
    }
}

/// The final norm before the vocabulary head, whichever kind a family has.
pub(crate) trait Norm {
    fn norm(&self, x: &Tensor, grad: bool) -> Result<Tensor>;
}

impl Norm for LayerNorm {
    fn norm(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        self.forward(x, grad)
    }
}

impl Norm for RmsNorm {
    fn norm(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        self.forward(x, grad)
    }
}

pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::GeluTanh => super::gelu::gelu(x, super::gelu::GeluKind::Tanh)?,
        Activation::GeluErf => super::gelu::gelu(x, super::gelu::GeluKind::Erf)?,
        Activation::Relu => x.relu()?,
        Activation::Silu => super::gelu::gelu(x, super::gelu::GeluKind::Silu)?,
    })
}

/// Token embedding lookup, `[b, t]` ids → `[b, t, d]`.
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let flat = ids.flatten_all()?;
    let d = table.dim(1)?;
    Ok(table.index_select(&flat, 0)?.reshape((b, t, d))?)
}

/// cos/sin tables `[t, dims/2]` for positions 0..t (the frequencies of a forward reaching `t`
/// positions: only `dynamic` RoPE scaling depends on it).
pub fn rotary_tables(rot: &Rotary, t: usize, dtype: DType, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let half = rot.dims / 2;
    let inv_freq = Tensor::from_vec(rot.inv_freq(t), (1, half), device)?;
    let pos = Tensor::arange(0u32, t as u32, device)?.to_dtype(DType::F32)?.reshape((t, 1))?;
    let freqs = pos.broadcast_mul(&inv_freq)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}

/// Rotates the first `rot.dims` features of each head of `x` (`[b, h, t, hd]`); `cos`/`sin` are
/// `[t, rot/2]` (positions shared by the rows) or `[b, t, rot/2]` (one set per row).
pub fn apply_rotary(x: &Tensor, rot: &Rotary, cos: &Tensor, sin: &Tensor, grad: bool) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    if rot.dims == 0 {
        return Ok(x.clone());
    }
    let x_rot = x.narrow(D::Minus1, 0, rot.dims)?.contiguous()?;
    let rotated = match (rot.style, grad) {
        (RotaryStyle::Interleaved, true) => rope_interleaved_slow(&x_rot, cos, sin)?,
        (RotaryStyle::Interleaved, false) => candle_nn::rotary_emb::rope_i(&x_rot, cos, sin)?,
        (RotaryStyle::HalfSplit, true) => rope_half_slow(&x_rot, cos, sin)?,
        (RotaryStyle::HalfSplit, false) => candle_nn::rotary_emb::rope(&x_rot, cos, sin)?,
    };
    if rot.dims == hd {
        return Ok(rotated);
    }
    let x_pass = x.narrow(D::Minus1, rot.dims, hd - rot.dims)?;
    Ok(Tensor::cat(&[&rotated, &x_pass], D::Minus1)?)
}

/// A cos/sin table as `[b or 1, 1, t, half]`, broadcastable over `[b, h, t, half]`.
fn rotary_table_4d(table: &Tensor, t: usize) -> Result<Tensor> {
    Ok(match table.rank() {
        2 => table.narrow(0, 0, t)?.unsqueeze(0)?.unsqueeze(0)?,
        _ => table.narrow(1, 0, t)?.unsqueeze(1)?,
    })
}

/// GPT-J's rotation of feature pairs (2i, 2i+1) from primitive ops, so gradients flow (candle's
/// `rope_i_slow` takes only `[t, half]` tables).
fn rope_interleaved_slow(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let cos = rotary_table_4d(cos, t)?.unsqueeze(4)?;
    let sin = rotary_table_4d(sin, t)?.unsqueeze(4)?;
    let x = x.reshape((b, h, t, d / 2, 2))?;
    let (x0, x1) = (x.narrow(D::Minus1, 0, 1)?, x.narrow(D::Minus1, 1, 1)?);
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Ok(Tensor::cat(&[y0, y1], D::Minus1)?.flatten_from(D::Minus2)?)
}

/// NeoX's rotation of feature i with i + half, from primitive ops (see above).
fn rope_half_slow(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    let cos = rotary_table_4d(&Tensor::cat(&[cos, cos], D::Minus1)?, t)?;
    let sin = rotary_table_4d(&Tensor::cat(&[sin, sin], D::Minus1)?, t)?;
    let half = d / 2;
    let rotated = Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// Scaled dot-product attention for `[b, h, t, hd]` queries over `[b, kv_h, s, hd]` keys and
/// values with an additive `[b, 1, t, s]` f32 bias. With fewer key/value heads than query heads
/// (grouped-query attention) query head `i` reads key/value head `i / (h / kv_h)`, as
/// transformers' `repeat_kv`; the groups are multiplied without copying the keys. Scores and
/// softmax are computed in f32 whatever the compute dtype, as the reference implementations do;
/// `softcap` c turns the scaled scores s into `tanh(s / c) · c` before the bias (Gemma 2).
/// Returns `[b, t, h·hd]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64, softcap: Option<f64>, grad: bool) -> Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let (kv_h, s) = (k.dim(1)?, k.dim(2)?);
    if kv_h == 0 || h % kv_h != 0 {
        return Err(crate::Error::Internal(format!("{h} query heads cannot share {kv_h} key/value heads")));
    }
    let rep = h / kv_h;
    let dtype = v.dtype();
    // Query heads of one group as consecutive rows of one matrix per key/value head.
    let q = q.to_dtype(DType::F32)?.contiguous()?.reshape((b, kv_h, rep * t, hd))?;
    let k = k.to_dtype(DType::F32)?.contiguous()?;
    let mut scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, h, t, s))?;
    if let Some(c) = softcap {
        scores = ((scores / c)?.tanh()? * c)?;
    }
    let scores = scores.broadcast_add(bias)?;
    let probs = if grad { candle_nn::ops::softmax(&scores, D::Minus1)? } else { candle_nn::ops::softmax_last_dim(&scores)? };
    let probs = probs.to_dtype(dtype)?.reshape((b, kv_h, rep * t, s))?;
    let out = probs.matmul(&v.contiguous()?)?.reshape((b, h, t, hd))?;
    Ok(out.transpose(1, 2)?.reshape((b, t, h * hd))?)
}

/// Splits `[b, t, h·hd]` into heads `[b, h, t, hd]`.
pub fn split_heads(x: &Tensor, n_head: usize) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    Ok(x.reshape((b, t, n_head, d / n_head))?.transpose(1, 2)?)
}

fn flat_indices(t: usize, positions: &[(usize, usize)], device: &candle_core::Device) -> Result<Tensor> {
    let idx: Vec<u32> = positions.iter().map(|&(r, p)| (r * t + p) as u32).collect();
    Ok(Tensor::from_vec(idx, positions.len(), device)?)
}

/// `h[r, p] += delta` for each (r, p); `deltas` is `[d]` (shared) or `[n, d]` (one per pair).
pub fn add_at_positions(h: &Tensor, positions: &[(usize, usize)], deltas: &Tensor) -> Result<Tensor> {
    if positions.is_empty() {
        return Ok(h.clone());
    }
    let (b, t, d) = h.dims3()?;
    let n = positions.len();
    let src = match deltas.rank() {
        1 => deltas.reshape((1, d))?.broadcast_as((n, d))?.contiguous()?,
        2 if deltas.dim(0)? == n => deltas.clone(),
        _ => return Err(crate::Error::Input(format!("intervention deltas must be [{d}] or [{n}, {d}], got {:?}", deltas.dims()))),
    };
    let src = src.to_dtype(h.dtype())?;
    let idx = flat_indices(t, positions, h.device())?;
    let flat = h.reshape((b * t, d))?;
    Ok(flat.index_add(&idx, &src, 0)?.reshape((b, t, d))?)
}

/// `h[r, p]` for each (r, p), stacked to `[n, d]`.
pub fn select_positions(h: &Tensor, positions: &[(usize, usize)]) -> Result<Tensor> {
    let (b, t, d) = h.dims3()?;
    let idx = flat_indices(t, positions, h.device())?;
    Ok(h.reshape((b * t, d))?.index_select(&idx, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn frozen_matmul_matches_matmul_and_stores_no_weight_grad() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let x = Var::randn(0f32, 1.0, (4, 5), &dev).unwrap();
        let lin = Linear::new(w.clone(), None, Orientation::InOut);
        let y = lin.forward(x.as_tensor()).unwrap();
        let y_ref = x.as_tensor().matmul(&w).unwrap();
        let diff = (y.clone() - y_ref.clone()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6);
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = y_ref.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        let gx_ref = g_ref.get(x.as_tensor()).unwrap();
        let diff = (gx - gx_ref).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5);
        // candle's matmul keeps a gradient for the frozen weight; ours must not.
        assert!(g_ref.get(&w).is_some());
        assert!(g.get(&w).is_none());
        let weight_shaped = |g: &candle_core::backprop::GradStore| g.get_ids().filter(|id| g.get_id(**id).is_some_and(|t| t.dims() == [5, 3])).count();
        assert_eq!(weight_shaped(&g), 0);
        assert_eq!(weight_shaped(&g_ref), 1);
    }

    #[test]
    fn out_in_orientation_transposes() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &dev).unwrap(); // [out=3, in=2]
        let lin = Linear::new(w, Some(Tensor::new(&[1f32, 0.0, -1.0], &dev).unwrap()), Orientation::OutIn);
        let y = lin.forward(&Tensor::new(&[[1f32, 1.0]], &dev).unwrap()).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![4.0, 7.0, 10.0]]);
    }

    #[test]
    fn add_at_positions_shared_and_per_pair_with_grads() {
        let dev = Device::Cpu;
        let h = Tensor::zeros((2, 3, 2), DType::F32, &dev).unwrap();
        let shared = Var::new(&[1f32, 2.0], &dev).unwrap();
        let out = add_at_positions(&h, &[(0, 1), (1, 2), (1, 2)], shared.as_tensor()).unwrap();
        let v = out.to_vec3::<f32>().unwrap();
        assert_eq!(v[0][1], vec![1.0, 2.0]);
        assert_eq!(v[1][2], vec![2.0, 4.0]);
        assert_eq!(v[0][0], vec![0.0, 0.0]);
        let g = out.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(shared.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![3.0, 3.0]);

        let per = Var::new(&[[1f32, 0.0], [0.0, 5.0]], &dev).unwrap();
        let out = add_at_positions(&h, &[(0, 0), (1, 1)], per.as_tensor()).unwrap();
        let w = Tensor::new(&[2f32, 3.0], &dev).unwrap();
        let loss = out.broadcast_mul(&w).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap().get(per.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, vec![vec![2.0, 3.0], vec![2.0, 3.0]]);
    }
}
