//! The hooks of a traced forward: the subject's embeddings corrupted, clean states restored at
//! chosen (row, token) places, states recorded. Restoring selects the clean value (no
//! arithmetic), so a state restored everywhere is the clean one bit for bit.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::models::{HookPoint, Hooks};

/// Noise on the subject's token embeddings of every row.
pub struct Corruption {
    /// `[rows, t, d]` f64, zero outside the subject.
    pub noise: Tensor,
    /// `[rows, t, 1]` u8, 1 at the subject's tokens.
    pub mask: Tensor,
    /// Replace the embeddings by the noise instead of adding it.
    pub replace: bool,
}

impl Corruption {
    fn apply(&self, h: Tensor) -> Result<Tensor> {
        if self.replace {
            let noise = self.noise.to_dtype(h.dtype())?;
            return Ok(self.mask.broadcast_as(h.shape())?.where_cond(&noise, &h)?);
        }
        // As the reference's in-place `x += noise` with f64 noise: the sum in f64, rounded once
        // to the embeddings' dtype (tokens outside the subject add an exact 0).
        Ok((h.to_dtype(DType::F64)? + &self.noise)?.to_dtype(h.dtype())?)
    }
}

/// Where clean values replace a state: `mask` `[rows, t, 1]` u8 (1 where restored), `clean`
/// `[t, d]` (the clean run's state at that point).
pub struct Restore {
    pub mask: Tensor,
    pub clean: Tensor,
}

#[derive(Default)]
pub struct PatchHooks {
    pub corrupt: Option<Corruption>,
    pub restore: BTreeMap<HookPoint, Restore>,
    pub record: BTreeSet<HookPoint>,
    pub recorded: BTreeMap<HookPoint, Tensor>,
}

impl Hooks for PatchHooks {
    fn wants(&self, point: HookPoint) -> bool {
        (point == HookPoint::TokenEmbeddings && self.corrupt.is_some()) || self.restore.contains_key(&point) || self.record.contains(&point)
    }

    fn at(&mut self, point: HookPoint, h: Tensor) -> Result<Tensor> {
        let mut h = h;
        if point == HookPoint::TokenEmbeddings {
            if let Some(c) = &self.corrupt {
                h = c.apply(h)?;
            }
        }
        if let Some(r) = self.restore.get(&point) {
            let shape = h.shape().clone();
            let clean = r.clean.to_dtype(h.dtype())?.unsqueeze(0)?.broadcast_as(&shape)?;
            h = r.mask.broadcast_as(&shape)?.where_cond(&clean, &h)?;
        }
        if self.record.contains(&point) {
            self.recorded.insert(point, h.clone());
        }
        Ok(h)
    }
}

/// `[rows, t, 1]` u8 with a 1 at each (row, token) of `places`.
pub fn place_mask(rows: usize, t: usize, places: impl IntoIterator<Item = (usize, usize)>, device: &candle_core::Device) -> Result<Tensor> {
    let mut m = vec![0u8; rows * t];
    for (r, p) in places {
        m[r * t + p] = 1;
    }
    Ok(Tensor::from_vec(m, (rows, t, 1), device)?)
}
