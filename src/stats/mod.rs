//! Second-moment statistics of MLP keys, C = E[k kᵀ] over a text corpus: collection (all
//! requested layers in one forward pass, resumable), the on-disk cache, import of the
//! reference's `.npz` files, and sharing through the Hub (`export`, `pull`).

pub mod cache;
pub mod collect;
pub mod converge;
pub mod ensure;
pub mod export;
pub mod import;
pub mod merge;
pub mod pull;
pub mod resolve;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many texts statistics are collected over: a number of sampled texts (the reference's
/// `mom2_n_samples`), or `auto`: from the reference's sample of [`AUTO_SAMPLE`] texts, only until
/// the estimate has converged ([`converge`]). In configs and on the command line `auto` is the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Samples {
    Count(usize),
    Auto,
}

/// The sample `auto` draws from and stops within: the reference's 100,000 texts.
pub const AUTO_SAMPLE: usize = 100_000;

/// `auto`'s default tolerance on the relative change of C⁻¹K between doublings of the tokens: on
/// fact-gpt2 the edit scores of ROME, MEMIT and AlphaEdit settle where it is near 0.3
/// (benches/README.md, "Statistics: how many tokens an edit needs"); 0.2 leaves a margin, at
/// about twice the tokens.
pub const DEFAULT_TOLERANCE: f64 = 0.2;

impl Samples {
    /// The texts sampled: the count, or the sample `auto` stops within.
    pub fn sample(self) -> usize {
        match self {
            Samples::Count(n) => n,
            Samples::Auto => AUTO_SAMPLE,
        }
    }

    /// `auto`'s tolerance, for a collection plan.
    pub fn auto_tolerance(self) -> Option<f64> {
        (self == Samples::Auto).then_some(DEFAULT_TOLERANCE)
    }
}

impl std::str::FromStr for Samples {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "auto" {
            return Ok(Samples::Auto);
        }
        s.parse().map(Samples::Count).map_err(|_| format!("`{s}` is neither a number of texts nor `auto`"))
    }
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Samples::Count(n) => write!(f, "{n}"),
            Samples::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for Samples {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Samples::Count(n) => s.serialize_u64(*n as u64),
            Samples::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "auto" => Ok(Samples::Auto),
            v => {
                v.as_u64().map(|n| Samples::Count(n as usize)).ok_or_else(|| serde::de::Error::custom(format!("{v} is neither a number of texts nor \"auto\"")))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::F64];

    /// The name options take (`--precision f64`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
    }

    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F64 => candle_core::DType::F64,
        }
    }
    /// The reference's name (`float32` in `..._float32_mom2_100000.npz`).
    pub fn reference_name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::F64 => "float64",
        }
    }
}

/// Parses a layer list: `17`, `3-8`, `3,5,7`, `1-3,9` (spaces after commas allowed). Sorted,
/// deduplicated. Every malformed part is named with the reason.
pub fn parse_layers(spec: &str) -> Result<Vec<usize>> {
    let bad = |why: String| Error::Input(format!("invalid layer list `{spec}`: {why}; write e.g. `17`, `3-8` or `3,5,7`"));
    let number = |s: &str| -> Result<usize> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("`{s}` is not a layer number")));
        }
        s.parse().map_err(|_| bad(format!("`{s}` is too large")))
    };
    if spec.trim().is_empty() {
        return Err(bad("it is empty".into()));
    }
    let mut out = Vec::new();
    for raw in spec.split(',') {
        let part = raw.trim();
        if part.is_empty() {
            return Err(bad("an empty item between commas".into()));
        }
        match part.split_once('-') {
            Some((a, b)) => {
                if a != a.trim_end() || b != b.trim_start() {
                    return Err(bad(format!("`{part}` has spaces inside the range (write `{}-{}`)", a.trim(), b.trim())));
                }
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(bad(format!("the range `{part}` runs backwards (write `{b}-{a}`)")));
                }
                out.extend(a..=b);
            }
            None => {
                if part.contains(char::is_whitespace) {
                    return Err(bad(format!("`{part}` holds a space; separate layers with commas")));
                }
                out.push(number(part)?)
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A layer list as [`parse_layers`] reads it, runs written as ranges: `[1, 2, 3, 7]` → `1-3,7`.
pub fn format_layers(layers: &[usize]) -> String {
    let mut sorted = layers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if j == i { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists_are_written_as_they_are_read() {
        assert_eq!(format_layers(&[17]), "17");
        assert_eq!(format_layers(&[7, 1, 2, 3, 3]), "1-3,7");
        assert_eq!(format_layers(&[0, 2, 4, 5]), "0,2,4-5");
        for l in [vec![13, 14, 15, 16, 17], vec![0, 2, 3, 9], vec![5]] {
            assert_eq!(parse_layers(&format_layers(&l)).unwrap(), l);
        }
    }

    #[test]
    fn layer_lists() {
        assert_eq!(parse_layers("17").unwrap(), vec![17]);
        assert_eq!(parse_layers("3-8").unwrap(), vec![3, 4, 5, 6, 7, 8]);
        assert_eq!(parse_layers("7,3,5,3").unwrap(), vec![3, 5, 7]);
        assert_eq!(parse_layers("1-2, 9").unwrap(), vec![1, 2, 9]);
        assert!(parse_layers("8-3").unwrap_err().to_string().contains("backwards (write `3-8`)"));
        assert!(parse_layers("x").is_err());
        assert!(parse_layers("").is_err());
        assert!(parse_layers("1 - 2").unwrap_err().to_string().contains("spaces inside the range"));
        assert!(parse_layers("1,,2").unwrap_err().to_string().contains("empty item"));
        assert!(parse_layers("1,").unwrap_err().to_string().contains("empty item"));
        assert!(parse_layers("1 2").unwrap_err().to_string().contains("commas"));
        assert!(parse_layers("-1").is_err());
    }
}
