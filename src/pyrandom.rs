//! A bit-exact port of the sampling that Python's `random` module performs, so that
//! dataset subsets chosen by the reference implementation (which shuffles indices with
//! `random.Random(seed).shuffle`) can be reproduced here without a Python runtime.
//!
//! Written from the published MT19937 algorithm (Matsumoto & Nishimura, 1998) and the
//! documented behaviour of `random.Random`; only the seeding and bit-extraction rules
//! that Python layers on top are mirrored.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// CPython's Mersenne Twister, seeded as `random.Random(seed)`.
#[derive(Clone)]
pub struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    // The 624-word state is noise in debug output; the position is what helps.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom").field("index", &self.index).finish_non_exhaustive()
    }
}

impl PyRandom {
    pub fn new(seed: u64) -> Self {
        // Python seeds from the integer's 32-bit words, least significant first, and
        // keeps at least one word so that seed 0 still yields key [0] (not an empty key).
        let lo = seed as u32;
        let hi = (seed >> 32) as u32;
        let key: &[u32] = if hi == 0 { &[lo] } else { &[lo, hi] };
        let mut rng = PyRandom { state: [0; N], index: N };
        rng.init_by_array(key);
        rng
    }

    /// The generator as numpy's legacy `RandomState(seed)` seeds it (`init_genrand`, not
    /// Python's `init_by_array`); its `random()` is numpy's `random_sample`.
    pub fn numpy(seed: u32) -> Self {
        let mut rng = PyRandom { state: [0; N], index: N };
        rng.init_genrand(seed);
        rng
    }

    fn init_genrand(&mut self, s: u32) {
        self.state[0] = s;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mt = &mut self.state;
        let mut i = 1usize;
        let mut j = 0usize;
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        // Guarantees a non-zero state even if every other word came out zero.
        mt[0] = 0x8000_0000;
        self.index = N;
    }

    fn twist(&mut self) {
        let mt = &mut self.state;
        for k in 0..N {
            let y = (mt[k] & UPPER_MASK) | (mt[(k + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 0 { 0 } else { MATRIX_A };
            mt[k] = mt[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    fn genrand_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// Same stream consumption as Python's `getrandbits(k)`: one 32-bit draw per started
    /// word, with the low word drawn first. `k == 0` returns 0 without drawing, as Python does.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports at most 64 bits, got {k}");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.genrand_u32() >> (32 - k));
        }
        let low = u64::from(self.genrand_u32());
        let high = u64::from(self.genrand_u32() >> (64 - k));
        (high << 32) | low
    }

    /// Python's `_randbelow` (getrandbits variant): rejection sampling on `n.bit_length()`
    /// bits. The exact rejection loop matters, since it decides how many draws are consumed.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n >= 1, "randbelow requires n >= 1");
        let k = u64::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// Python's `random()`: a double in [0, 1) from 53 random bits of two draws.
    pub fn random(&mut self) -> f64 {
        let a = self.genrand_u32() >> 5;
        let b = self.genrand_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Python's `shuffle`: Fisher–Yates walking from the end, so the same seed permutes a
    /// list exactly as the reference code does.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// `random.Random(seed).shuffle(list(range(n)))`, as the reference code samples its dataset.
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    PyRandom::new(seed).shuffle(&mut idx);
    idx
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_matches_cpython() {
        // python3 -c "import random; r=random.Random(7); print([r.random() for _ in range(3)])"
        let mut r = PyRandom::new(7);
        let got: Vec<f64> = (0..3).map(|_| r.random()).collect();
        assert_eq!(got, vec![0.32383276483316237, 0.15084917392450192, 0.6509344730398537]);
    }

    // Every expected vector below was produced with CPython 3.11's `random` module, e.g.
    // `idx = list(range(20)); random.Random(1).shuffle(idx)`.
    use super::*;

    #[test]
    fn getrandbits_32_matches_cpython() {
        let mut r = PyRandom::new(1);
        let got: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, [577_090_037, 2_444_712_010, 3_639_700_191]);
    }

    #[test]
    fn seed_zero_uses_single_zero_word_key() {
        let mut r = PyRandom::new(0);
        let got: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, [3_626_764_237, 1_654_615_998, 3_255_389_356]);
    }

    #[test]
    fn seeds_above_32_bits_use_two_key_words() {
        let mut r = PyRandom::new(12_345_678_901_234);
        let got: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, [107_551_873, 2_403_399_316, 624_174_316]);
        assert_eq!(shuffled_indices(10, 12_345_678_901_234), [9, 1, 7, 5, 4, 3, 6, 2, 8, 0]);

        let mut r = PyRandom::new(u64::MAX);
        let got: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, [93_740_670, 1_068_495_656, 1_452_108_352]);
    }

    #[test]
    fn wide_and_narrow_getrandbits_match_cpython() {
        // Python: r = random.Random(1); [r.getrandbits(64) for _ in range(2)];
        // r.getrandbits(40); [r.getrandbits(1) for _ in range(5)]
        let mut r = PyRandom::new(1);
        assert_eq!(r.getrandbits(64), 10_499_958_131_665_514_997);
        assert_eq!(r.getrandbits(64), 14_799_178_230_035_213_023);
        assert_eq!(r.getrandbits(40), 71_999_863_748);
        let bits: Vec<u64> = (0..5).map(|_| r.getrandbits(1)).collect();
        assert_eq!(bits, [0, 0, 0, 1, 0]);
    }

    #[test]
    fn randbelow_matches_cpython() {
        // Python: r = random.Random(1); [r._randbelow(1000) for _ in range(5)];
        // [r._randbelow(1) for _ in range(2)]; r._randbelow(2**63 + 5)
        let mut r = PyRandom::new(1);
        let got: Vec<u64> = (0..5).map(|_| r.randbelow(1000)).collect();
        assert_eq!(got, [137, 582, 867, 821, 782]);
        assert_eq!([r.randbelow(1), r.randbelow(1)], [0, 0]);
        assert_eq!(r.randbelow((1u64 << 63) + 5), 9_139_164_268_605_729_673);
    }

    #[test]
    fn shuffled_indices_small() {
        assert_eq!(shuffled_indices(20, 1), [11, 5, 17, 19, 9, 0, 16, 1, 15, 6, 10, 13, 14, 12, 7, 3, 8, 2, 18, 4]);
        assert!(shuffled_indices(0, 1).is_empty());
        assert_eq!(shuffled_indices(1, 1), [0]);
    }

    #[test]
    fn shuffled_indices_large_crosses_many_twists() {
        let idx = shuffled_indices(100_000, 1);
        assert_eq!(idx[..10], [63229, 7871, 74587, 59445, 71381, 5404, 56721, 41863, 62960, 42424]);
        assert_eq!(idx[idx.len() - 3..], [8271, 74606, 17611]);
        let mut sorted = idx.clone();
        sorted.sort_unstable();
        assert!(sorted.iter().enumerate().all(|(i, &v)| i == v));
    }
}
