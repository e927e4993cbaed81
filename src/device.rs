//! Device selection: `auto` (CUDA when usable, else CPU), `cpu`, `cuda`, `cuda:N`.

use tch::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: use auto, cpu, cuda or cuda:N")]
    Unknown(String),
    #[error("device `{0}` asked for, but CUDA is not available on this machine (use --device cpu or auto)")]
    NoCuda(String),
    #[error("device `{spec}` asked for, but only {count} CUDA device(s) exist")]
    NoSuchGpu { spec: String, count: usize },
}

/// A device as written in flags and settings, before checking this machine has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N` without touching the hardware.
pub fn parse_device_spec(spec: &str) -> Result<DeviceSpec, DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "auto" | "" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        _ => match s.strip_prefix("cuda") {
            Some("") => Ok(DeviceSpec::Cuda(0)),
            Some(rest) => rest
                .strip_prefix(':')
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Unknown(spec.into())),
            None => Err(DeviceError::Unknown(spec.into())),
        },
    }
}

/// Parses a device spec and checks it is usable here.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    match parse_device_spec(spec)? {
        DeviceSpec::Auto => Ok(Device::cuda_if_available()),
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(idx) => {
            if !tch::Cuda::is_available() {
                return Err(DeviceError::NoCuda(spec.into()));
            }
            let count = tch::Cuda::device_count() as usize;
            if idx >= count {
                return Err(DeviceError::NoSuchGpu { spec: spec.into(), count });
            }
            Ok(Device::Cuda(idx))
        }
    }
}

/// A short human description (for logs and reports).
pub fn describe(d: Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// Runs a tiny computation on `d`: whether the device works right now (health checks).
pub fn probe(d: Device) -> Result<String, String> {
    let t = tch::Tensor::f_ones([8], (tch::Kind::Float, d)).map_err(|e| e.to_string())?;
    let s = t.f_sum(tch::Kind::Float).and_then(|s| s.f_double_value(&[])).map_err(|e| e.to_string())?;
    if s == 8.0 {
        Ok(describe(d))
    } else {
        Err(format!("{} computed 8 ones to sum {s}", describe(d)))
    }
}
