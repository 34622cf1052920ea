//! MEND's hypernetwork (reference spec §5.3, eric-mitchell/mend `algs/mend.py`, `nn.py`): one
//! `GradientTransform` per inner-weight shape. It takes the rank-one factors of a weight's
//! gradient — the module's inputs x and output gradients δ, one row per token — and returns
//! edited factors x̃, δ̃, whose outer products sum to the pseudo-gradient.
//!
//! Per call: rows where x or δ is all zero are dropped (pads, prompt tokens); x and δ are
//! normalised by running statistics (updated, Welford-style, only in training mode); the
//! concatenation [x̂, δ̂] goes through an `IDMLP`: `n_hidden + 1` low-rank residual layers
//! `z + max(0, (U V z + b) · scale[mode] + shift[mode])` — the ReLU in every layer, as the code
//! does (its `relu=idx < n_hidden` argument is never used) — and is split back.
//!
//! Parameters are read through a name-scoped builder that mirrors the reference checkpoint's
//! keys (`mend.<shape>.mlp.layers.<i>.{u, v, bias, mode_scale.weight, mode_shift.weight}`), so
//! an imported checkpoint and a `VarMap` being trained are loaded the same way.

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// One low-rank residual layer with per-mode scale and shift (`nn.py:LRLinear`, init "id").
pub struct LrLinear {
    /// `[D, r]`.
    u: Tensor,
    /// `[r, D]`.
    v: Tensor,
    bias: Tensor,
    /// `[n_modes, D]` each.
    mode_scale: Tensor,
    mode_shift: Tensor,
}

impl LrLinear {
    pub fn load(vb: VarBuilder, dim: usize, rank: usize, n_modes: usize) -> Result<Self> {
        let mid = rank.min(dim);
        Ok(Self {
            u: vb.get_with_hints((dim, mid), "u", candle_nn::Init::Const(0.0))?,
            v: vb.get_with_hints((mid, dim), "v", candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 })?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
            mode_scale: vb.pp("mode_scale").get_with_hints((n_modes, dim), "weight", candle_nn::Init::Const(1.0))?,
            mode_shift: vb.pp("mode_shift").get_with_hints((n_modes, dim), "weight", candle_nn::Init::Const(0.0))?,
        })
    }

    /// `z + max(0, (z Vᵀ Uᵀ + b) · scale[mode] + shift[mode])` for rows `z` (`[n, D]`).
    pub fn forward(&self, z: &Tensor, mode: usize) -> Result<Tensor> {
        let pre = z.matmul(&self.v.t()?)?.matmul(&self.u.t()?)?.broadcast_add(&self.bias)?;
        let pre = pre.broadcast_mul(&self.mode_scale.i(mode)?)?.broadcast_add(&self.mode_shift.i(mode)?)?;
        // The reference's `clamp(min=0)`, whose gradient is 1 at 0 (a ReLU's is 0, and with the
        // "id" init every pre-activation starts at exactly 0: nothing would ever train).
        let open = pre.ge(0f32)?.to_dtype(pre.dtype())?;
        Ok(((pre * open)? + z)?)
    }
}

/// Running mean and sum of squared deviations of one side's rows, and the count.
#[derive(Clone, Debug)]
pub struct RunningStats {
    pub mean: Tensor,
    /// Σ (x − mean)², the reference's `u_s` / `v_s`.
    pub s: Tensor,
    pub std: Tensor,
}

impl RunningStats {
    /// The statistics after adding `rows` (`[n, d]`) to those of `count` rows (Chan et al.'s
    /// combination; the same values as the reference's row-by-row Welford update, up to
    /// rounding). With `count` 0 the rows' own statistics start them, as the reference's first
    /// row does.
    fn updated(&self, rows: &Tensor, count: usize) -> Result<(Tensor, Tensor)> {
        let n = rows.dim(0)? as f64;
        let mean_b = rows.mean_keepdim(0)?.squeeze(0)?;
        let m2_b = rows.broadcast_sub(&mean_b)?.sqr()?.sum(0)?;
        if count == 0 {
            return Ok((mean_b, m2_b));
        }
        let k = count as f64;
        let total = k + n;
        let delta = (&mean_b - &self.mean)?;
        let mean = (&self.mean + (&delta * (n / total))?)?;
        let s = ((&self.s + m2_b)? + (delta.sqr()? * (k * n / total))?)?;
        Ok((mean, s))
    }
}

/// Whether the transform's normalisation statistics are used as they are (evaluation mode,
/// the MEND authors' own behaviour), or updated by every call (training mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormMode {
    Frozen,
    Running,
}

/// One shape's hypernetwork (`algs/mend.py:GradientTransform`, `combine=True`).
pub struct GradientTransform {
    pub x_dim: usize,
    pub delta_dim: usize,
    layers: Vec<LrLinear>,
    pub u: RunningStats,
    pub v: RunningStats,
    /// Rows the statistics were computed over (`k`); 0 = not started.
    pub count: usize,
    /// Normalise x and δ (the shipped `norm: True`).
    pub norm: bool,
}

/// What a transform is built with (the shipped `config/alg/mend.yaml`: rank 1920, n_hidden 1).
#[derive(Clone, Copy, Debug)]
pub struct TransformShape {
    pub x_dim: usize,
    pub delta_dim: usize,
    pub n_modes: usize,
    pub rank: usize,
    pub n_hidden: usize,
}

/// `[n, d]` rows of `t` where `keep` holds.
fn select_rows(t: &Tensor, keep: &[u32]) -> Result<Tensor> {
    let idx = Tensor::from_vec(keep.to_vec(), keep.len(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// The rows (f32) of `x` and `delta` where neither is all zero (pads, prompt positions).
pub fn kept_rows(x: &Tensor, delta: &Tensor) -> Result<(Tensor, Tensor)> {
    let (x, delta) = (x.to_dtype(DType::F32)?, delta.to_dtype(DType::F32)?);
    let keep = nonzero_rows(&x, &delta)?;
    Ok((select_rows(&x, &keep)?, select_rows(&delta, &keep)?))
}

/// Indices of the rows of `[n, d]` tensors where neither is all zero.
fn nonzero_rows(x: &Tensor, delta: &Tensor) -> Result<Vec<u32>> {
    let nz = |t: &Tensor| -> Result<Vec<u8>> { Ok(t.ne(0f32)?.max(D::Minus1)?.to_device(&Device::Cpu)?.to_vec1::<u8>()?) };
    let (a, b) = (nz(x)?, nz(delta)?);
    Ok(a.iter().zip(&b).enumerate().filter(|(_, (p, q))| **p != 0 && **q != 0).map(|(i, _)| i as u32).collect())
}

impl GradientTransform {
    /// Loads (or, from a `VarMap` builder, creates) the network; the statistics are given
    /// separately (a checkpoint's buffers, or none yet).
    pub fn load(vb: VarBuilder, shape: TransformShape, stats: Option<(RunningStats, RunningStats, usize)>) -> Result<Self> {
        let dim = shape.x_dim + shape.delta_dim;
        let layers = (0..shape.n_hidden + 1)
            .map(|i| LrLinear::load(vb.pp("mlp").pp("layers").pp(i.to_string()), dim, shape.rank, shape.n_modes))
            .collect::<Result<_>>()?;
        let dev = vb.device().clone();
        let nan = |d: usize| Tensor::full(f32::NAN, d, &dev);
        let (u, v, count) = match stats {
            Some(s) => s,
            None => (
                RunningStats { mean: nan(shape.x_dim)?, s: nan(shape.x_dim)?, std: nan(shape.x_dim)? },
                RunningStats { mean: nan(shape.delta_dim)?, s: nan(shape.delta_dim)?, std: nan(shape.delta_dim)? },
                0,
            ),
        };
        Ok(Self { x_dim: shape.x_dim, delta_dim: shape.delta_dim, layers, u, v, count, norm: true })
    }

    /// The edited factors `(x̃, δ̃)` of `x` (`[n, x_dim]`) and `delta` (`[n, delta_dim]`) for the
    /// inner parameter of index `mode` among those of this shape; rows where either is zero are
    /// dropped first. With [`NormMode::Running`] the statistics are updated by these rows first.
    pub fn forward(&mut self, x: &Tensor, delta: &Tensor, mode: usize, norm_mode: NormMode) -> Result<(Tensor, Tensor)> {
        let (x, delta) = kept_rows(x, delta)?;
        if norm_mode == NormMode::Running && x.dim(0)? > 0 {
            self.observe(&x, &delta)?;
            if self.count < 2 {
                return Err(Error::Numerical(format!("MEND cannot normalise with only {} row(s) of gradient so far", self.count)));
            }
        }
        self.transform(&x, &delta, mode)
    }

    /// Adds kept rows to the running statistics (the training-mode update).
    pub fn observe(&mut self, x: &Tensor, delta: &Tensor) -> Result<()> {
        if x.dim(0)? == 0 {
            return Ok(());
        }
        let (um, us) = self.u.updated(x, self.count)?;
        let (vm, vs) = self.v.updated(delta, self.count)?;
        self.count += x.dim(0)?;
        let k1 = (self.count.max(2) - 1) as f64;
        self.u = RunningStats { std: (&us / k1)?.sqrt()?, mean: um, s: us };
        self.v = RunningStats { std: (&vs / k1)?.sqrt()?, mean: vm, s: vs };
        Ok(())
    }

    /// The edited factors of kept rows with the statistics as they are.
    pub fn transform(&self, x: &Tensor, delta: &Tensor, mode: usize) -> Result<(Tensor, Tensor)> {
        let (xn, dn) = if self.norm {
            let normed = |t: &Tensor, s: &RunningStats| -> Result<Tensor> { Ok(t.broadcast_sub(&s.mean)?.broadcast_div(&(&s.std + 1e-7)?)?) };
            (normed(x, &self.u)?, normed(delta, &self.v)?)
        } else {
            (x.clone(), delta.clone())
        };
        let mut z = Tensor::cat(&[&xn, &dn], 1)?;
        for layer in &self.layers {
            z = layer.forward(&z, mode)?;
        }
        Ok((z.narrow(1, 0, self.x_dim)?, z.narrow(1, self.x_dim, self.delta_dim)?))
    }
}

/// The pseudo-gradient `Σ_rows x̃ᵀ δ̃`, `[x_dim, delta_dim]` (the `[in, out]` layout; transpose
/// for an `[out, in]` weight).
pub fn pseudo_gradient(x: &Tensor, delta: &Tensor) -> Result<Tensor> {
    Ok(x.t()?.matmul(delta)?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vb(tensors: &[(&str, Tensor)]) -> VarBuilder<'static> {
        let map: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
    }

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn lr_linear_by_hand() {
        // D = 2, rank 1: u = [[1], [2]], v = [[1, -1]], b = [0.5, -10]; mode 1 scales by [2, 1].
        let layer = LrLinear::load(
            vb(&[
                ("u", t(&[1.0, 2.0], &[2, 1])),
                ("v", t(&[1.0, -1.0], &[1, 2])),
                ("bias", t(&[0.5, -10.0], &[2])),
                ("mode_scale.weight", t(&[1.0, 1.0, 2.0, 1.0], &[2, 2])),
                ("mode_shift.weight", t(&[0.0, 0.0, 0.0, 0.0], &[2, 2])),
            ]),
            2,
            1,
            2,
        )
        .unwrap();
        // z = [3, 1]: v z = 2; u (v z) = [2, 4]; + b = [2.5, -6]; × [2, 1] = [5, -6]; relu = [5, 0]; + z = [8, 1].
        let out = layer.forward(&t(&[3.0, 1.0], &[1, 2]), 1).unwrap();
        assert_eq!(out.to_vec2::<f32>().unwrap(), vec![vec![8.0, 1.0]]);
        // Mode 0 (scale 1): [2.5, -6] → [2.5, 0] + z = [5.5, 1].
        assert_eq!(layer.forward(&t(&[3.0, 1.0], &[1, 2]), 0).unwrap().to_vec2::<f32>().unwrap(), vec![vec![5.5, 1.0]]);
    }

    /// A transform with x_dim 1, delta_dim 1 whose layers are the identity (u = 0).
    fn identity_transform() -> GradientTransform {
        let mut tensors = Vec::new();
        for i in 0..2 {
            let p = |n: &str| format!("mlp.layers.{i}.{n}");
            tensors.push((p("u"), t(&[0.0, 0.0], &[2, 1])));
            tensors.push((p("v"), t(&[1.0, 1.0], &[1, 2])));
            tensors.push((p("bias"), t(&[0.0, 0.0], &[2])));
            tensors.push((p("mode_scale.weight"), t(&[1.0, 1.0], &[1, 2])));
            tensors.push((p("mode_shift.weight"), t(&[0.0, 0.0], &[1, 2])));
        }
        let named: Vec<(&str, Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        GradientTransform::load(vb(&named), TransformShape { x_dim: 1, delta_dim: 1, n_modes: 1, rank: 1, n_hidden: 1 }, None).unwrap()
    }

    #[test]
    fn running_normalisation_by_hand_and_zero_rows_dropped() {
        let mut g = identity_transform();
        // Rows (x, δ): (1, 2), (3, 4), (5, 0) — the last has δ = 0 and is dropped; (0, 7) too.
        let x = t(&[1.0, 3.0, 5.0, 0.0], &[4, 1]);
        let d = t(&[2.0, 4.0, 0.0, 7.0], &[4, 1]);
        let (xt, dt) = g.forward(&x, &d, 0, NormMode::Running).unwrap();
        // x: mean 2, sample std √2; δ: mean 3, std √2. x̂ = (±1)/√2; the identity layers keep them.
        let r = 1.0 / 2f32.sqrt();
        let close = |a: Vec<Vec<f32>>, b: [f32; 2]| a.iter().zip(b).all(|(x, y)| (x[0] - y).abs() < 1e-5);
        assert!(close(xt.to_vec2().unwrap(), [-r, r]), "{xt}");
        assert!(close(dt.to_vec2().unwrap(), [-r, r]), "{dt}");
        assert_eq!(g.count, 2);
        // Two more rows: the statistics combine as one Welford pass over all four would.
        g.forward(&t(&[6.0, 10.0], &[2, 1]), &t(&[1.0, 1.0], &[2, 1]), 0, NormMode::Running).unwrap();
        let xs = [1.0f32, 3.0, 6.0, 10.0];
        let mean = xs.iter().sum::<f32>() / 4.0;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 3.0;
        assert!((g.u.mean.to_vec1::<f32>().unwrap()[0] - mean).abs() < 1e-5);
        assert!((g.u.std.to_vec1::<f32>().unwrap()[0] - var.sqrt()).abs() < 1e-5);
        // Frozen: the statistics stay as they are.
        let before = g.u.mean.to_vec1::<f32>().unwrap();
        g.forward(&t(&[100.0], &[1, 1]), &t(&[1.0], &[1, 1]), 0, NormMode::Frozen).unwrap();
        assert_eq!(g.u.mean.to_vec1::<f32>().unwrap(), before);
        assert_eq!(g.count, 4);
    }

    #[test]
    fn a_new_network_starts_as_the_identity() {
        // The reference's "id" init: u = 0, so every layer returns its input (as normalised).
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let mut g = GradientTransform::load(vb, TransformShape { x_dim: 3, delta_dim: 2, n_modes: 2, rank: 4, n_hidden: 1 }, None).unwrap();
        assert_eq!(vm.all_vars().len(), 10, "u, v, bias, scale, shift × 2 layers");
        g.norm = false;
        let x = t(&[1.0, -2.0, 3.0, 0.5, 0.0, 1.0], &[2, 3]);
        let d = t(&[4.0, 5.0, -1.0, 2.0], &[2, 2]);
        let (xt, dt) = g.forward(&x, &d, 1, NormMode::Frozen).unwrap();
        assert_eq!(xt.to_vec2::<f32>().unwrap(), x.to_vec2::<f32>().unwrap());
        assert_eq!(dt.to_vec2::<f32>().unwrap(), d.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn pseudo_gradient_sums_outer_products() {
        let x = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let d = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[2, 3]);
        // [1,2]ᵀ[1,0,0] + [3,4]ᵀ[1,1,1] = [[4,3,3],[6,4,4]].
        assert_eq!(pseudo_gradient(&x, &d).unwrap().to_vec2::<f32>().unwrap(), vec![vec![4.0, 3.0, 3.0], vec![6.0, 4.0, 4.0]]);
    }
}
