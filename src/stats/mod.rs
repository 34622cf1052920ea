//! Second-moment statistics of MLP keys, C = E[k kᵀ] over a text corpus: collection (all
//! requested layers in one forward pass, resumable), the on-disk cache, and import of the
//! reference's `.npz` files.

pub mod cache;
pub mod collect;
pub mod converge;
pub mod ensure;
pub mod import;
pub mod merge;
pub mod resolve;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
