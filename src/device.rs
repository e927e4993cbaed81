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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_device_spec(s)
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Settings files hold the spelling of flags (`auto`, `cpu`, `cuda:1`); a bad one is refused at
/// load with the accepted spellings.
impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_device_spec(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N` without touching the hardware.
pub(crate) fn parse_device_spec(spec: &str) -> Result<DeviceSpec, DeviceError> {
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
    open(parse_device_spec(spec)?)
}

/// The device `spec` names, checked to exist on this machine.
pub fn open(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Auto => Ok(Device::cuda_if_available()),
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(idx) => {
            if !tch::Cuda::is_available() {
                return Err(DeviceError::NoCuda(spec.to_string()));
            }
            let count = tch::Cuda::device_count() as usize;
            if idx >= count {
                return Err(DeviceError::NoSuchGpu { spec: spec.to_string(), count });
            }
            Ok(Device::Cuda(idx))
        }
    }
}

/// A short human description (for logs and reports).
pub(crate) fn describe(d: Device) -> String {
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
