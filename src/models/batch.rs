//! Right-padded token batches, the only layout the reference code (and so this crate) uses:
//! real tokens first, padding after, so every real token keeps its natural position.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Batch {
    input_ids: Tensor,
    lengths: Vec<usize>,
    seq_len: usize,
}

impl Batch {
    /// Right-pads `sequences` with `pad_id`.
    pub fn from_sequences(sequences: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        if sequences.is_empty() {
            return Err(Error::Input("empty batch".into()));
        }
        if let Some(i) = sequences.iter().position(|s| s.is_empty()) {
            return Err(Error::Input(format!("sequence {i} of the batch has no tokens")));
        }
        let seq_len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * seq_len);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, seq_len - s.len()));
        }
        let input_ids = Tensor::from_vec(ids, (sequences.len(), seq_len), device)?;
        Ok(Self { input_ids, lengths: sequences.iter().map(Vec::len).collect(), seq_len })
    }

    /// Builds a batch from ids and a 0/1 attention mask (both `[b, t]`, row-major), checking
    /// that the mask is right padding.
    pub fn from_ids_and_mask(ids: &[u32], mask: &[u8], batch: usize, device: &Device) -> Result<Self> {
        if batch == 0 || ids.len() != mask.len() || !ids.len().is_multiple_of(batch) {
            return Err(Error::Input("ids and attention mask must both be [batch, seq]".into()));
        }
        let t = ids.len() / batch;
        let mut lengths = Vec::with_capacity(batch);
        for r in 0..batch {
            let row = &mask[r * t..(r + 1) * t];
            let n = row.iter().take_while(|&&m| m != 0).count();
            if row[n..].iter().any(|&m| m != 0) || n == 0 {
                return Err(Error::Input(format!("row {r} of the attention mask is not right padding (ones then zeros, at least one real token)")));
            }
            lengths.push(n);
        }
        let input_ids = Tensor::from_vec(ids.to_vec(), (batch, t), device)?;
        Ok(Self { input_ids, lengths, seq_len: t })
    }

    pub fn input_ids(&self) -> &Tensor {
        &self.input_ids
    }

    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn device(&self) -> &Device {
        self.input_ids.device()
    }

    /// Number of real (non-padding) tokens.
    pub fn n_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// `[b, t]` mask as f32 (1 real, 0 padding).
    pub fn mask(&self) -> Result<Tensor> {
        let mut m = vec![0f32; self.batch_size() * self.seq_len];
        for (r, &n) in self.lengths.iter().enumerate() {
            m[r * self.seq_len..r * self.seq_len + n].fill(1.0);
        }
        Ok(Tensor::from_vec(m, (self.batch_size(), self.seq_len), self.device())?)
    }

    /// The same rows without their first `offsets[r]` tokens (each row keeps at least one).
    pub fn suffix(&self, offsets: &[usize]) -> Result<Self> {
        if offsets.len() != self.batch_size() || offsets.iter().zip(&self.lengths).any(|(&o, &n)| o >= n) {
            return Err(Error::Internal(format!("suffix offsets {offsets:?} do not fit rows of lengths {:?}", self.lengths)));
        }
        let ids: Vec<Vec<u32>> = self.input_ids.to_vec2()?;
        let rows: Vec<Vec<u32>> = ids.iter().zip(offsets).zip(&self.lengths).map(|((row, &o), &n)| row[o..n].to_vec()).collect();
        let pad = ids.iter().zip(&self.lengths).find(|(row, &n)| n < row.len()).map_or(0, |(row, &n)| row[n]);
        Self::from_sequences(&rows, pad, self.device())
    }

    pub(crate) fn check_positions(&self, positions: &[(usize, usize)]) -> Result<()> {
        for &(r, p) in positions {
            if r >= self.batch_size() || p >= self.lengths[r] {
                return Err(Error::Input(format!("position (row {r}, token {p}) is outside the batch's real tokens")));
            }
        }
        Ok(())
    }

    /// Additive attention bias `[b, 1, t, t]` (f32): 0 where query i may see key j (j ≤ i and j
    /// is a real token), −∞ elsewhere. Matches transformers' combined causal + padding mask.
    pub fn attention_bias(&self) -> Result<Tensor> {
        let (b, t) = (self.batch_size(), self.seq_len);
        let mut bias = vec![f32::NEG_INFINITY; b * t * t];
        for (r, &n) in self.lengths.iter().enumerate() {
            for i in 0..t {
                let row = &mut bias[(r * t + i) * t..(r * t + i + 1) * t];
                let upto = i.min(n - 1);
                row[..=upto].fill(0.0);
            }
        }
        Ok(Tensor::from_vec(bias, (b, 1, t, t), self.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_and_bias() {
        let b = Batch::from_sequences(&[vec![1, 2, 3], vec![4]], 0, &Device::Cpu).unwrap();
        assert_eq!(b.input_ids().to_vec2::<u32>().unwrap(), vec![vec![1, 2, 3], vec![4, 0, 0]]);
        let bias = b.attention_bias().unwrap().to_vec3::<f32>().ok();
        assert!(bias.is_none()); // 4-d
        let bias: Vec<f32> = b.attention_bias().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let ninf = f32::NEG_INFINITY;
        // row 0: plain causal
        assert_eq!(&bias[0..9], &[0.0, ninf, ninf, 0.0, 0.0, ninf, 0.0, 0.0, 0.0]);
        // row 1: only key 0 is real
        assert_eq!(&bias[9..18], &[0.0, ninf, ninf, 0.0, ninf, ninf, 0.0, ninf, ninf]);
    }

    #[test]
    fn rejects_left_padding() {
        let err = Batch::from_ids_and_mask(&[0, 1, 2], &[0, 1, 1], 1, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("right padding"));
    }
}
