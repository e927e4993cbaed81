//! A cpsam network with its variables, and its files both ways with cellpose 4
//! (`CPSAM().save_model(path)` = `torch.save(state_dict)`; `CellposeModel(pretrained_model=path)`).
//!
//! Loading streams the file tensor by tensor into the `VarStore` (a ViT-L file is ~1.2 GB; it is
//! never held twice), accepts fp32/bf16/fp16 tensors and DataParallel's `module.` prefix, and
//! sizes the network from the file's shapes. Saving streams too and writes fp32, as cellpose does.

use std::collections::HashSet;
use std::path::Path;

use tch::{nn, Device, Kind};

use super::blocks::BlockShape;
use super::net::{Cpsam, CpsamConfig};
use crate::model::family::{FamilyError, ModelFamily};
use crate::model::torch_file::{self, DType, RawTensor, TensorMeta};
use crate::model::weights::{check_family, raw_to_tensor, tensor_to_raw, ModelError};

/// A CPSAM and the `VarStore` that owns its tensors.
pub struct CpsamModel {
    pub vs: nn::VarStore,
    pub net: Cpsam,
}

fn strip(name: &str) -> &str {
    name.strip_prefix("module.").unwrap_or(name)
}

impl CpsamModel {
    /// A freshly initialised network (`model init --family cpsam`). An allocation libtorch cannot
    /// make (a file claiming a huge network) is an error, not a panic.
    pub fn new(config: CpsamConfig, device: Device) -> Result<CpsamModel, ModelError> {
        let vs = nn::VarStore::new(device);
        let net = Cpsam::new(&vs.root(), config).map_err(|source| ModelError::Torch {
            context: "creating the network's weights".into(),
            source,
        })?;
        Ok(CpsamModel { vs, net })
    }

    /// Loads a cellpose 4 file onto `device` (fp32 weights; see [`CpsamModel::to_kind`]).
    pub fn load(path: &Path, device: Device) -> Result<CpsamModel, ModelError> {
        let origin = path.display().to_string();
        let metas = torch_file::read_tensor_metas(path)?;
        check_family(metas.iter().map(|m| m.name.as_str()), ModelFamily::Cpsam, &origin)?;
        let config = infer_cpsam_config(&metas, &origin)?;
        // the network is allocated from the shapes the pickle claims, before any tensor's data
        // is read: their size is held to the model-file budget first
        let claimed: u128 =
            metas.iter().map(|m| m.shape.iter().map(|&d| d.max(0) as u128).product::<u128>() * 4).sum();
        if claimed > torch_file::MAX_MODEL_BYTES as u128 {
            return Err(ModelError::File(torch_file::ModelFileError {
                path: path.to_path_buf(),
                kind: torch_file::ModelFileErrorKind::TooLarge {
                    what: "the tensors its pickle declares (as float32)".into(),
                    bytes: claimed.min(u64::MAX as u128) as u64,
                },
            }));
        }
        let model = CpsamModel::new(config, device)?;
        let vars = model.vs.variables();
        let mut seen = HashSet::new();
        torch_file::for_each_tensor(path, |name, raw| -> Result<(), ModelError> {
            let key = strip(&name);
            // extra tensors are ignored, as cellpose loads with strict=False
            let Some(var) = vars.get(key) else { return Ok(()) };
            copy_checked(var, &raw, &origin, key, |d| {
                matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
            })?;
            seen.insert(key.to_string());
            Ok(())
        })?;
        // cellpose would keep random weights for a missing tensor; here it is an error
        if let Some(name) = state_dict_keys(&model.net.config).into_iter().find(|k| !seen.contains(k)) {
            return Err(ModelError::MissingTensor { origin, name });
        }
        Ok(model)
    }

    /// Converts every weight to `kind` (cellpose 4 runs in bf16 by default: `use_bfloat16=True`).
    pub fn to_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }

    /// Writes the state_dict in PyTorch's key order as fp32, streaming one tensor at a time.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let vars = self.vs.variables();
        let keys = state_dict_keys(&self.net.config);
        let mut metas = Vec::with_capacity(keys.len());
        for k in &keys {
            let v = vars
                .get(k)
                .ok_or_else(|| ModelError::MissingTensor { origin: "the network".into(), name: k.clone() })?;
            metas.push(TensorMeta { name: k.clone(), dtype: DType::F32, shape: v.size() });
        }
        torch_file::write_tensors(path, &metas, |i| {
            let t = vars
                .get(&keys[i])
                .ok_or_else(|| std::io::Error::other(format!("no variable {}", keys[i])))?;
            Ok(tensor_to_raw(&t.to_kind(Kind::Float)).data)
        })?;
        Ok(())
    }

    /// Number of parameters (ViT-L: 304.6 M).
    pub fn num_params(&self) -> i64 {
        self.vs.variables().values().map(|t| t.numel() as i64).sum()
    }
}

/// Copies stored tensor `name` of `origin` into `var` after checking its shape and that
/// `dtype_ok` accepts its element type (a model file takes any float; a checkpoint only fp32).
pub(crate) fn copy_checked(
    var: &tch::Tensor,
    raw: &RawTensor,
    origin: &str,
    name: &str,
    dtype_ok: impl Fn(DType) -> bool,
) -> Result<(), ModelError> {
    if raw.shape != var.size() {
        return Err(ModelError::WrongShape {
            origin: origin.to_string(),
            name: name.to_string(),
            expected: var.size(),
            found: raw.shape.clone(),
        });
    }
    if !dtype_ok(raw.dtype) {
        return Err(ModelError::WrongDtype {
            origin: origin.to_string(),
            name: name.to_string(),
            found: raw.dtype,
        });
    }
    let copy = || -> Result<(), tch::TchError> {
        let src = raw_to_tensor(raw)?;
        tch::no_grad(|| var.shallow_clone().f_copy_(&src))
    };
    copy().map_err(|source| ModelError::Torch { context: format!("copying `{name}` from {origin}"), source })
}

/// The state_dict keys of a CPSAM in PyTorch's order: `CPSAM`'s own parameters (`diam_labels`,
/// `diam_mean` from `BaseModel`, then `W2`), then `encoder` (its `pos_embed`, then `patch_embed`,
/// `blocks`, `neck`), then `out`.
pub fn state_dict_keys(c: &CpsamConfig) -> Vec<String> {
    let mut k: Vec<String> =
        ["diam_labels", "diam_mean", "W2", "encoder.pos_embed"].map(String::from).to_vec();
    k.push("encoder.patch_embed.proj.weight".into());
    k.push("encoder.patch_embed.proj.bias".into());
    for i in 0..c.blocks.len() {
        for leaf in [
            "norm1.weight",
            "norm1.bias",
            "attn.rel_pos_h",
            "attn.rel_pos_w",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm2.weight",
            "norm2.bias",
            "mlp.lin1.weight",
            "mlp.lin1.bias",
            "mlp.lin2.weight",
            "mlp.lin2.bias",
        ] {
            k.push(format!("encoder.blocks.{i}.{leaf}"));
        }
    }
    for leaf in ["0.weight", "1.weight", "1.bias", "2.weight", "3.weight", "3.bias"] {
        k.push(format!("encoder.neck.{leaf}"));
    }
    k.push("out.weight".into());
    k.push("out.bias".into());
    k
}

/// Width, depth, heads, MLP width, table sizes, neck width, patch size, grid and nout from the
/// file's shapes (heads = width / rows of `rel_pos_h`'s head dimension).
pub fn infer_cpsam_config(metas: &[TensorMeta], origin: &str) -> Result<CpsamConfig, ModelError> {
    let shape = |name: &str, rank: usize| -> Result<&Vec<i64>, ModelError> {
        let m = metas
            .iter()
            .find(|m| strip(&m.name) == name)
            .ok_or_else(|| ModelError::MissingTensor { origin: origin.into(), name: name.into() })?;
        if m.shape.len() != rank || m.shape.iter().any(|&d| d <= 0) {
            return Err(ModelError::WrongShape {
                origin: origin.into(),
                name: name.into(),
                expected: vec![-1; rank],
                found: m.shape.clone(),
            });
        }
        Ok(&m.shape)
    };
    let proj = shape("encoder.patch_embed.proj.weight", 4)?;
    let (dim, in_chans, ps) = (proj[0], proj[1], proj[2]);
    let pos = shape("encoder.pos_embed", 4)?;
    let w2 = shape("W2", 4)?;
    let neck = shape("encoder.neck.0.weight", 4)?[0];
    let mut blocks = Vec::new();
    while metas.iter().any(|m| strip(&m.name) == format!("encoder.blocks.{}.norm1.weight", blocks.len())) {
        let i = blocks.len();
        let rh = shape(&format!("encoder.blocks.{i}.attn.rel_pos_h"), 2)?;
        let rw = shape(&format!("encoder.blocks.{i}.attn.rel_pos_w"), 2)?;
        let mlp_dim = shape(&format!("encoder.blocks.{i}.mlp.lin1.weight"), 2)?[0];
        let head_dim = rh[1];
        if dim % head_dim != 0 {
            return Err(ModelError::WrongShape {
                origin: origin.into(),
                name: format!("encoder.blocks.{i}.attn.rel_pos_h"),
                expected: vec![-1, dim],
                found: rh.clone(),
            });
        }
        blocks.push(BlockShape { dim, heads: dim / head_dim, mlp_dim, rel_len: (rh[0], rw[0]) });
    }
    let nout = w2[1];
    let config =
        CpsamConfig { in_chans, dim, blocks, ps, grid: (pos[1], pos[2]), neck, nout, ..Default::default() };
    // cellpose 4 reads dY, dX and cellprob from the last three maps: fewer is no cpsam
    let nmap = nout.checked_mul(ps).and_then(|n| n.checked_mul(ps));
    if nout < 3 || nmap != Some(w2[0]) || pos[3] != dim {
        return Err(ModelError::WrongShape {
            origin: origin.into(),
            name: "W2".into(),
            expected: vec![nmap.unwrap_or(-1), nout.max(3), ps, ps],
            found: w2.clone(),
        });
    }
    Ok(config)
}

impl From<FamilyError> for ModelError {
    fn from(e: FamilyError) -> Self {
        match e {
            FamilyError::File(f) => ModelError::File(f),
            FamilyError::Unknown { path, tensors } => ModelError::NoFamily { path, tensors },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_l_has_350_keys_and_304_6_m_parameters() {
        let m = CpsamModel::new(CpsamConfig::default(), Device::Cpu).unwrap();
        let keys = state_dict_keys(&m.net.config);
        assert_eq!(keys.len(), 350);
        let vars = m.vs.variables();
        assert_eq!(vars.len(), 350);
        assert!(keys.iter().all(|k| vars.contains_key(k)));
        let p = m.num_params();
        assert!((304_000_000..305_000_000).contains(&p), "{p}");
    }

    #[test]
    fn save_then_load_round_trips_and_infers_the_shape() {
        let dir = tempfile::tempdir().unwrap();
        let b = BlockShape { dim: 16, heads: 4, mlp_dim: 24, rel_len: (7, 9) };
        let cfg = CpsamConfig { dim: 16, blocks: vec![b; 3], grid: (4, 4), neck: 8, ..Default::default() };
        tch::manual_seed(3);
        let m = CpsamModel::new(cfg.clone(), Device::Cpu).unwrap();
        let path = dir.path().join("m");
        m.save(&path).unwrap();
        let names: Vec<_> =
            torch_file::read_tensor_metas(&path).unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, state_dict_keys(&cfg));
        let back = CpsamModel::load(&path, Device::Cpu).unwrap();
        assert_eq!(back.net.config, cfg);
        let x = tch::Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        let (a, c) = tch::no_grad(|| (m.net.forward_t(&x, false), back.net.forward_t(&x, false)));
        let (a, c) = (a.unwrap(), c.unwrap());
        assert!(a.allclose(&c, 0.0, 0.0, false));
    }
}
