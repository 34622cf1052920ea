//! Device and dtype selection from user-facing strings.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA needs a binary built with `--features cuda`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.as_str() {
        "cuda" | "gpu" => Some(0),
        s => s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()),
    };
    let Some(ordinal) = ordinal else {
        return Err(Error::Input(format!("unknown device `{spec}`: use `cpu`, `cuda` or `cuda:N`")));
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Input(format!(
            "device `{spec}` requested but this binary was built without CUDA; rebuild with `cargo build --release --features cuda`"
        )));
    }
    Ok(Device::new_cuda(ordinal)?)
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        DType::U8 => "u8",
        DType::U32 => "u32",
        DType::I64 => "i64",
        _ => "other",
    }
}
