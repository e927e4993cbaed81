//! Moving weights between model files ([`StateDict`]) and a live network ([`Model`]).

use std::cmp::Ordering;
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::cpnet::{Cpnet, CpnetConfig};
use super::family::ModelFamily;
use super::torch_file::{self, DType, ModelFileError, RawTensor, StateDict};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("{origin}: not a cellpose CPnet model: tensor `{name}` is missing")]
    MissingTensor { origin: String, name: String },
    #[error("{origin}: tensor `{name}` has shape {found:?}, the network needs {expected:?}")]
    WrongShape { origin: String, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{origin}: tensor `{name}` is {found:?}; {}", if matches!(found, DType::F32 | DType::F64 | DType::F16 | DType::BF16) { "this counter must be an integer tensor" } else { "a floating-point tensor is needed (weights are never stored as integers)" })]
    WrongDtype { origin: String, name: String, found: DType },
    #[error(
        "{origin}: nchan differs: the model takes {model} input channels but {wanted} were asked for; \
         the base model must match the data's channels (choose a base model trained with {wanted} channels)"
    )]
    ChannelMismatch { origin: String, model: i64, wanted: i64 },
    #[error(
        "{origin}: nout differs: the model has {model} output maps but {wanted} are needed; \
         transfer learning needs a base model with the same outputs"
    )]
    OutputMismatch { origin: String, model: i64, wanted: i64 },
    #[error("{origin} is {}, but {} is needed here{}", found.map(|f| format!("a {}", f.describe())).unwrap_or_else(|| "not a cellpose model (no `W2`, no CPnet tensors)".into()), format!("a {}", wanted.describe()), wrong_family_hint(*wanted))]
    WrongFamily { origin: String, found: Option<ModelFamily>, wanted: ModelFamily },
    /// Neither family's tensors, where either would do (`predict`, `segment`, `eval`).
    #[error("{path}: neither a cellpose 3 CPnet nor a cellpose 4 cpsam state_dict ({tensors} tensors, no `W2` and no CPnet tensors); pass a cellpose model file")]
    NoFamily { path: String, tensors: usize },
    #[error("torch error while {context}: {source}")]
    Torch { context: String, source: tch::TchError },
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

fn wrong_family_hint(wanted: ModelFamily) -> &'static str {
    match wanted {
        ModelFamily::Cpnet => " (cellpose 3 cannot read cellpose 4 files; pass a CPnet model such as cyto3)",
        ModelFamily::Cpsam => " (cellpose 4 refuses cellpose 3 files; pass a cpsam model such as cpsam_v2)",
    }
}

/// The loaders' first check, on tensor names only (before any weights are read): a file of the
/// other family is refused with [`ModelError::WrongFamily`]. A file with neither family's marker
/// is refused where a cpsam model is wanted; a CPnet load goes on, so its own shape checks name
/// the tensor the file lacks.
pub(crate) fn check_family<'a>(
    names: impl IntoIterator<Item = &'a str>,
    wanted: ModelFamily,
    origin: &str,
) -> Result<(), ModelError> {
    match (ModelFamily::from_names(names), wanted) {
        (Some(found), _) if found == wanted => Ok(()),
        (None, ModelFamily::Cpnet) => Ok(()),
        (found, _) => Err(ModelError::WrongFamily { origin: origin.into(), found, wanted }),
    }
}

/// A CPnet with its variables. The `VarStore` owns the tensors; `net` holds handles to them.
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Cpnet,
}

impl Model {
    /// A freshly initialised network (training from scratch, `model init`). Its widths are
    /// checked against [`crate::limits::cpnet_widths`] before anything is allocated, and an
    /// allocation libtorch still cannot make is an error, not a panic.
    pub fn new(config: CpnetConfig, device: Device) -> Result<Model, ModelError> {
        crate::limits::cpnet_widths("nbase", &config.nbase, config.nout, config.kernel)?;
        let vs = nn::VarStore::new(device);
        let net = Cpnet::new(&vs.root(), config).map_err(|source| ModelError::Torch {
            context: "creating the network's weights".into(),
            source,
        })?;
        Ok(Model { vs, net })
    }

    /// Loads a model file; nchan, nbase and nout come from the tensor shapes.
    pub fn load(path: &Path, device: Device) -> Result<Model, ModelError> {
        // the index alone tells a cpsam file, before reading ~1.2 GB of weights
        let metas = torch_file::read_tensor_metas(path)?;
        check_family(metas.iter().map(|m| m.name.as_str()), ModelFamily::Cpnet, &path.display().to_string())?;
        let sd = torch_file::read_state_dict(path)?;
        Model::from_state_dict(&sd, device, &path.display().to_string())
    }

    pub fn from_state_dict(sd: &StateDict, device: Device, origin: &str) -> Result<Model, ModelError> {
        check_family(sd.entries.iter().map(|(n, _)| n.as_str()), ModelFamily::Cpnet, origin)?;
        let config = infer_config(sd, origin)?;
        let model = Model::new(config, device).map_err(|e| match e {
            ModelError::Limit(l) => {
                ModelError::Limit(crate::limits::LimitError { option: format!("{origin}: nbase"), ..l })
            }
            e => e,
        })?;
        model.copy_from(sd, origin)?;
        Ok(model)
    }

    /// Copies every tensor of the network from `sd`, checking names and shapes. Extra tensors in
    /// the file are ignored (cellpose loads with strict=False), missing ones are an error (cellpose
    /// would silently keep random weights).
    pub fn copy_from(&self, sd: &StateDict, origin: &str) -> Result<(), ModelError> {
        let vars = self.vs.variables();
        for (name, var) in ordered(&vars) {
            let raw = sd
                .get(name)
                .ok_or_else(|| ModelError::MissingTensor { origin: origin.into(), name: name.clone() })?;
            if raw.shape != var.size() {
                return Err(ModelError::WrongShape {
                    origin: origin.into(),
                    name: name.clone(),
                    expected: var.size(),
                    found: raw.shape.clone(),
                });
            }
            // a weight stored as integers (or a counter stored as floats) is not a cellpose file
            // that was merely saved in another precision: refuse it by name instead of casting
            let float_var = matches!(var.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
            let float_raw = matches!(raw.dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16);
            if float_var != float_raw {
                return Err(ModelError::WrongDtype {
                    origin: origin.into(),
                    name: name.clone(),
                    found: raw.dtype,
                });
            }
            let copy = || -> Result<(), tch::TchError> {
                let src = raw_to_tensor(raw)?.f_to_kind(var.kind())?;
                tch::no_grad(|| var.shallow_clone().f_copy_(&src))
            };
            copy().map_err(|source| ModelError::Torch {
                context: format!("copying `{name}` from {origin}"),
                source,
            })?;
        }
        Ok(())
    }

    /// The weights as a state_dict in PyTorch's key order (what `net.state_dict()` gives).
    pub fn state_dict(&self) -> StateDict {
        let vars = self.vs.variables();
        let entries = ordered(&vars).into_iter().map(|(name, t)| (name.clone(), tensor_to_raw(t))).collect();
        StateDict { entries }
    }

    /// Saves as a `torch.save` file that Python cellpose loads unchanged (written atomically).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        Ok(torch_file::write_state_dict(path, &self.state_dict())?)
    }

    /// Fails before any work when the network cannot take `nchan` inputs or give `nout` outputs.
    pub fn check_io(&self, nchan: i64, nout: i64, origin: &str) -> Result<(), ModelError> {
        let c = &self.net.config;
        if c.nchan() != nchan {
            return Err(ModelError::ChannelMismatch {
                origin: origin.into(),
                model: c.nchan(),
                wanted: nchan,
            });
        }
        if c.nout != nout {
            return Err(ModelError::OutputMismatch { origin: origin.into(), model: c.nout, wanted: nout });
        }
        Ok(())
    }
}

/// Reads nchan, nbase, nout and diam_mean off a state_dict's shapes.
pub fn infer_config(sd: &StateDict, origin: &str) -> Result<CpnetConfig, ModelError> {
    let need = |name: &str| -> Result<&RawTensor, ModelError> {
        sd.get(name).ok_or_else(|| ModelError::MissingTensor { origin: origin.into(), name: name.into() })
    };
    let first = need("downsample.down.res_down_0.conv.conv_0.2.weight")?;
    if first.shape.len() != 4 {
        return Err(ModelError::WrongShape {
            origin: origin.into(),
            name: "downsample.down.res_down_0.conv.conv_0.2.weight".into(),
            expected: vec![-1, -1, -1, -1],
            found: first.shape.clone(),
        });
    }
    let mut nbase = vec![first.shape[1]];
    let kernel = first.shape[2];
    for n in 0.. {
        match sd.get(&format!("downsample.down.res_down_{n}.conv.conv_0.2.weight")) {
            Some(t) if !t.shape.is_empty() => nbase.push(t.shape[0]),
            _ => break,
        }
    }
    let nout = need("output.2.weight")?.shape.first().copied().unwrap_or(0);
    let diam_mean = match sd.get("diam_mean") {
        Some(t) => scalar_f64(t).unwrap_or(30.0),
        None => 30.0,
    };
    Ok(CpnetConfig { nbase, nout, kernel, diam_mean })
}

fn scalar_f64(t: &RawTensor) -> Option<f64> {
    if t.numel() != 1 {
        return None;
    }
    raw_to_tensor(t).and_then(|t| t.f_to_kind(Kind::Double)).ok().and_then(|t| t.f_double_value(&[]).ok())
}

fn kind_of(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

fn dtype_of(k: Kind) -> DType {
    match k {
        Kind::Double => DType::F64,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Int64 => DType::I64,
        Kind::Int => DType::I32,
        Kind::Int16 => DType::I16,
        Kind::Int8 => DType::I8,
        Kind::Uint8 => DType::U8,
        Kind::Bool => DType::Bool,
        _ => DType::F32,
    }
}

/// A stored tensor as a libtorch tensor (a copy). libtorch reads `numel x element size` bytes
/// from the buffer whatever its length, so the length is checked here first.
pub fn raw_to_tensor(raw: &RawTensor) -> Result<Tensor, tch::TchError> {
    let need = raw.numel().checked_mul(raw.dtype.size());
    if raw.shape.iter().any(|&d| d < 0) || need != Some(raw.data.len()) {
        return Err(tch::TchError::Shape(format!(
            "a {:?} tensor of shape {:?} holds {} bytes",
            raw.dtype,
            raw.shape,
            raw.data.len()
        )));
    }
    Tensor::f_from_data_size(&raw.data, &raw.shape, kind_of(raw.dtype))
}

pub fn tensor_to_raw(t: &Tensor) -> RawTensor {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let dtype = dtype_of(t.kind());
    let t = if kind_of(dtype) == t.kind() { t } else { t.to_kind(Kind::Float) };
    let numel = t.numel();
    let mut data = vec![0u8; numel * dtype.size()];
    t.copy_data_u8(&mut data, numel);
    RawTensor { dtype, shape: t.size(), data }
}

/// Variables sorted in PyTorch's `state_dict()` order.
fn ordered(vars: &std::collections::HashMap<String, Tensor>) -> Vec<(&String, &Tensor)> {
    let mut v: Vec<_> = vars.iter().collect();
    v.sort_by(|a, b| state_dict_order(a.0, b.0));
    v
}

/// PyTorch orders a state_dict by module: a module's own parameters and buffers first (in
/// registration order), then its children in registration order, recursively. For CPnet that is
/// `diam_mean`, `diam_labels`, `downsample`, `upsample`, `output`; inside blocks `conv` before
/// `proj`/`full`; numbered children numerically.
pub fn state_dict_order(a: &str, b: &str) -> Ordering {
    let pa: Vec<&str> = a.split('.').collect();
    let pb: Vec<&str> = b.split('.').collect();
    for i in 0..pa.len().min(pb.len()) {
        if pa[i] == pb[i] {
            continue;
        }
        let a_leaf = i == pa.len() - 1;
        let b_leaf = i == pb.len() - 1;
        return match (a_leaf, b_leaf) {
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (true, true) => leaf_rank(pa[i]).cmp(&leaf_rank(pb[i])).then_with(|| pa[i].cmp(pb[i])),
            (false, false) => module_key(pa[i]).cmp(&module_key(pb[i])),
        };
    }
    pa.len().cmp(&pb.len())
}

fn leaf_rank(name: &str) -> usize {
    const LEAVES: [&str; 7] =
        ["diam_mean", "diam_labels", "weight", "bias", "running_mean", "running_var", "num_batches_tracked"];
    LEAVES.iter().position(|l| *l == name).unwrap_or(LEAVES.len())
}

/// Registration order of CPnet's child modules; numbered children sort by their number.
fn module_key(name: &str) -> (usize, u64, String) {
    const MODULES: [&str; 8] = ["downsample", "upsample", "output", "down", "up", "conv", "proj", "full"];
    let digits: String =
        name.chars().rev().take_while(|c| c.is_ascii_digit()).collect::<Vec<_>>().into_iter().rev().collect();
    let stem = &name[..name.len() - digits.len()];
    let rank = MODULES.iter().position(|m| *m == stem).unwrap_or(MODULES.len());
    (rank, digits.parse().unwrap_or(0), stem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_puts_own_params_first_then_children_in_registration_order() {
        let mut names = vec![
            "output.2.weight",
            "upsample.up.res_up_0.proj.0.weight",
            "downsample.down.res_down_10.conv.conv_0.0.weight",
            "diam_labels",
            "downsample.down.res_down_2.proj.1.bias",
            "downsample.down.res_down_2.conv.conv_3.2.weight",
            "upsample.up.res_up_0.conv.conv_1.full.weight",
            "upsample.up.res_up_0.conv.conv_1.conv.2.weight",
            "diam_mean",
            "downsample.down.res_down_2.conv.conv_3.0.num_batches_tracked",
            "downsample.down.res_down_2.conv.conv_3.0.running_var",
        ];
        names.sort_by(|a, b| state_dict_order(a, b));
        assert_eq!(
            names,
            vec![
                "diam_mean",
                "diam_labels",
                "downsample.down.res_down_2.conv.conv_3.0.running_var",
                "downsample.down.res_down_2.conv.conv_3.0.num_batches_tracked",
                "downsample.down.res_down_2.conv.conv_3.2.weight",
                "downsample.down.res_down_2.proj.1.bias",
                "downsample.down.res_down_10.conv.conv_0.0.weight",
                "upsample.up.res_up_0.conv.conv_1.conv.2.weight",
                "upsample.up.res_up_0.conv.conv_1.full.weight",
                "upsample.up.res_up_0.proj.0.weight",
                "output.2.weight",
            ]
        );
    }
}
