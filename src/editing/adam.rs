//! PyTorch's `torch.optim.Adam` over candle `Var`s (defaults β = (0.9, 0.999), ε = 1e-8,
//! coupled L2 weight decay, a step count per parameter), with its state open for checkpoints.
//! candle-nn's `AdamW` decouples the decay and keeps its state private, so neither FT's coupled
//! decay nor an exact resume of MEND training could use it.

use candle_core::{Tensor, Var};

use crate::error::Result;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// One parameter's moments and step count.
#[derive(Clone)]
pub struct AdamSlot {
    pub m: Tensor,
    pub v: Tensor,
    pub step: u64,
}

/// Adam over a fixed list of parameters.
pub struct Adam {
    pub lr: f64,
    pub weight_decay: f64,
    pub slots: Vec<AdamSlot>,
}

impl Adam {
    /// Fresh state (zero moments) for parameters shaped as `params`.
    pub fn new(params: &[&Tensor], lr: f64, weight_decay: f64) -> Result<Self> {
        let slots = params.iter().map(|p| Ok(AdamSlot { m: p.zeros_like()?, v: p.zeros_like()?, step: 0 })).collect::<Result<_>>()?;
        Ok(Self { lr, weight_decay, slots })
    }

    /// One step: `vars[i] -= lr · m̂ / (√v̂ + ε)` with its gradient `grads[i]`; a parameter
    /// without a gradient is left alone and its step count kept, as PyTorch does.
    pub fn step(&mut self, vars: &[&Var], grads: &[Option<Tensor>]) -> Result<()> {
        for ((var, g), slot) in vars.iter().zip(grads).zip(self.slots.iter_mut()) {
            let Some(g) = g else { continue };
            let w = var.as_tensor();
            let g = if self.weight_decay != 0.0 { (g + w.affine(self.weight_decay, 0.0)?)? } else { g.clone() };
            slot.step += 1;
            let t = slot.step as i32;
            let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
            slot.m = ((&slot.m * BETA1)? + (&g * (1.0 - BETA1))?)?;
            slot.v = ((&slot.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let denom = ((&slot.v / bc2)?.sqrt()? + EPS)?;
            let update = (slot.m.broadcast_div(&denom)? * (self.lr / bc1))?;
            var.set(&(w - update)?)?;
        }
        Ok(())
    }
}

/// Adam's step `t` (from 1) on one vector kept as plain numbers: f32 values `x`, f64 moments,
/// the gradient `g` plus the coupled decay `decay · x` (per element, before the update), the
/// update `lr · m̂ / (√v / √(1 − β₂ᵗ) + ε)` in f64. What the v*/z optimisation runs per request,
/// where each request has its own step count and a vector is cheaper than a tensor.
pub fn step_vector(x: &mut [f32], m: &mut [f64], v: &mut [f64], g: &[f32], decay: f64, t: i32, lr: f64) {
    let bc1 = 1.0 - BETA1.powi(t);
    let bc2 = 1.0 - BETA2.powi(t);
    for (i, &gi) in g.iter().enumerate() {
        let gi = f64::from(gi) + decay * f64::from(x[i]);
        m[i] = BETA1 * m[i] + (1.0 - BETA1) * gi;
        v[i] = BETA2 * v[i] + (1.0 - BETA2) * gi * gi;
        let denom = (v[i].sqrt() / bc2.sqrt()) + EPS;
        x[i] -= (lr / bc1 * m[i] / denom) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps by hand: PyTorch's update is lr · m̂/(√v̂ + ε), bias-corrected per step.
    #[test]
    fn two_steps_as_pytorch() {
        let w = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut adam = Adam::new(&[w.as_tensor()], 0.1, 0.0).unwrap();
        let g1 = Tensor::new(&[0.5f64, -1.0], &Device::Cpu).unwrap();
        adam.step(&[&w], &[Some(g1)]).unwrap();
        // Step 1: m̂ = g, v̂ = g², so the update is lr · sign(g) (up to ε).
        let after1 = w.as_tensor().to_vec1::<f64>().unwrap();
        assert!((after1[0] - 0.9).abs() < 1e-7 && (after1[1] + 1.9).abs() < 1e-7, "{after1:?}");
        let g2 = Tensor::new(&[-0.5f64, 3.0], &Device::Cpu).unwrap();
        adam.step(&[&w], &[Some(g2)]).unwrap();
        // Step 2, element 1: m = 0.1·(−1)·0.9 + 0.1·3 = 0.21, m̂ = 0.21/0.19;
        // v = 0.001·(1·0.999) + 0.001·9 = 0.009999, v̂ = 0.009999/0.001999.
        let m_hat = 0.21 / 0.19;
        let v_hat: f64 = (0.000999 + 0.009) / (1.0 - 0.999f64.powi(2));
        let want = after1[1] - 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
        let after2 = w.as_tensor().to_vec1::<f64>().unwrap();
        assert!((after2[1] - want).abs() < 1e-9, "{} vs {want}", after2[1]);
        // No gradient: untouched, its step count kept.
        adam.step(&[&w], &[None]).unwrap();
        assert_eq!(adam.slots[0].step, 2);
    }
}
