//! The Cellpose-SAM (cellpose 4) part of a BioImage.IO package: the fp32 state_dict cellpose 4
//! loads as weights, `cellpose_sam.py` (a subclass of cellpose 4.2.1.1's `cellpose.vit.CPSAM`
//! sized by its kwargs) as architecture, and one tile of the network's position grid as input:
//! `[batch, 3, 256, 256]` for cpsam, fixed, since the position embedding is added token by
//! token. cellpose 4 tiles larger images and pads smaller ones; the README says so.

use std::collections::HashSet;
use std::path::Path;

use tch::Device;

use super::assets;
use super::bioimageio::{self, ArchitectureFile, MissingChannels, Network, Sizing, WeightsFile};
use super::rdf::Size;
use super::ExportError;
use crate::model::cpsam::state_dict_keys;
use crate::model::torch_file::{self, DType};
use crate::model::{CpsamConfig, CpsamModel, ModelFamily};

/// The Cellpose-SAM network in `model_path`, its test tensors computed on `sample` (or a
/// synthetic image) cropped or padded to one tile.
pub(super) fn network<'a>(
    model_path: &'a Path,
    sample: Option<&ndarray::Array3<f32>>,
) -> Result<Network<'a>, ExportError> {
    let model = CpsamModel::load(model_path, Device::Cpu)?;
    let cfg = model.net.config.clone();
    let kwargs = architecture_kwargs(&cfg)?;
    let tile = cfg.bsize() as usize;
    let raw = bioimageio::test_image(
        sample,
        cfg.in_chans as usize,
        false,
        MissingChannels::Zeros,
        Sizing::Exact(tile),
    )?;
    let normalized = bioimageio::scale_range(&raw);
    let x = crate::transforms::f_array3_to_tensor(&normalized)?.f_unsqueeze(0)?;
    let maps = bioimageio::tensor_to_array(&tch::no_grad(|| model.net.forward_t(&x, false))?)?;
    let diam = (model.net.diam_mean(), model.net.diam_labels());
    let weights = if is_plain_fp32(model_path, &cfg)? {
        drop(model);
        WeightsFile::Copy(model_path)
    } else {
        // bf16/fp16 tensors, a `module.` prefix or extra tensors: the checker loads strictly,
        // so the package holds the fp32 state_dict cellpose 4's `save_model` would write
        WeightsFile::Write(Box::new(move |path: &Path| Ok(model.save(path)?)))
    };
    let version = assets::CELLPOSE4_VERSION;
    let depth = cfg.depth();
    Ok(Network {
        family: ModelFamily::Cpsam,
        cellpose_version: version,
        weights,
        architecture: ArchitectureFile {
            file: assets::CPSAM_ARCHITECTURE_FILE,
            callable: assets::CPSAM_ARCHITECTURE_CALLABLE,
            source: assets::cpsam_architecture_source(),
            kwargs,
        },
        channel_names: (0..cfg.in_chans).map(|i| format!("channel{i}")).collect(),
        space: Size::Fixed(tile as i64),
        // the checker allows 128 characters
        input_description: format!(
            "One {tile}x{tile} tile, up to {} channels in any order (missing ones are zeros), any \
             intensity scale.",
            cfg.in_chans
        ),
        raw,
        normalized,
        maps,
        diam,
        readme_network: format!(
            "## Network\n\ncellpose {version}'s Cellpose-SAM (`cellpose.vit.CPSAM`): a SAM ViT encoder \
             (width {}, {depth} blocks, {} heads, MLP {}, neck {}) on {}x{} patches, {} outputs; \
             diam_labels {:.2} (mean object diameter of the training labels).\n\n\
             Input `raw` `[batch, {}, {tile}, {tile}]`: one tile, each channel normalised per image as \
             cellpose `normalize99` (1st and 99th percentile to 0 and 1); images with fewer channels \
             get zero channels. Output `flows` `[batch, 3, {tile}, {tile}]`: dY, dX and the \
             cell-probability logit.\n\n\
             ## Masks\n\nThe package holds the network only, on one {tile}x{tile} tile. For masks, \
             load `weights.pt` with cellpose {version} \
             (`cellpose.models.CellposeModel(pretrained_model=\"weights.pt\")`, \
             `eval(img, diameter=...)`), which also rescales images by 30 / diameter, tiles them with \
             overlap and runs the flow dynamics.\n",
            cfg.dim,
            cfg.heads(),
            cfg.blocks.first().map(|b| b.mlp_dim).unwrap_or(0),
            cfg.neck,
            cfg.ps,
            cfg.ps,
            cfg.nout,
            diam.1,
            cfg.in_chans,
        ),
        description: format!(
            "Cellpose-SAM (cellpose {version}) network (flows and cell probability) for 2-D cell \
             segmentation."
        ),
        tags: &[
            "cellpose",
            "cellpose-sam",
            "segmentation",
            "instance-segmentation",
            "2d",
            "pytorch",
            "cells",
        ],
    })
}

/// `CellposeSAMFlows(**kwargs)`: the sizes `cellpose_sam.py` builds the network with. The
/// Python side has one width, head count and MLP width for every block (SAM's encoder), and a
/// relative-position table of `2 * n - 1` rows: a file that differs is refused here, before a
/// package the checker could not load.
fn architecture_kwargs(
    cfg: &CpsamConfig,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, ExportError> {
    let first = cfg.blocks.first().copied();
    let uniform = cfg
        .blocks
        .iter()
        .all(|b| Some((b.dim, b.heads, b.mlp_dim)) == first.map(|f| (f.dim, f.heads, f.mlp_dim)));
    if !uniform {
        return Err(ExportError::Unsupported(
            "its transformer blocks differ in width, heads or MLP width (SAM's encoder has one of each)"
                .into(),
        ));
    }
    if let Some((i, b)) =
        cfg.blocks.iter().enumerate().find(|(_, b)| b.rel_len.0 % 2 == 0 || b.rel_len.1 % 2 == 0)
    {
        return Err(ExportError::Unsupported(format!(
            "block {i}'s relative-position tables have {:?} rows; SAM's have an odd number (2n - 1)",
            b.rel_len
        )));
    }
    if cfg.grid.0 != cfg.grid.1 {
        return Err(ExportError::Unsupported(format!("its position grid is {:?}, not square", cfg.grid)));
    }
    let rel_pos: Vec<[i64; 2]> = cfg.blocks.iter().map(|b| [b.rel_len.0, b.rel_len.1]).collect();
    Ok([
        ("embed_dim", serde_json::json!(cfg.dim)),
        ("num_heads", serde_json::json!(cfg.heads())),
        ("mlp_dim", serde_json::json!(first.map(|b| b.mlp_dim).unwrap_or(4 * cfg.dim))),
        ("neck_dim", serde_json::json!(cfg.neck)),
        ("rel_pos", serde_json::json!(rel_pos)),
        ("in_chans", serde_json::json!(cfg.in_chans)),
        ("ps", serde_json::json!(cfg.ps)),
        ("nout", serde_json::json!(cfg.nout)),
        ("grid", serde_json::json!([cfg.grid.0, cfg.grid.1])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}

/// Whether the file is exactly the fp32 state_dict the checker loads strictly: every tensor
/// fp32, the network's keys and no others, no `module.` prefix (then it is copied as it is).
fn is_plain_fp32(path: &Path, cfg: &CpsamConfig) -> Result<bool, ExportError> {
    let metas = torch_file::read_tensor_metas(path).map_err(|e| ExportError::Model(e.into()))?;
    let keys: HashSet<String> = state_dict_keys(cfg).into_iter().collect();
    Ok(metas.len() == keys.len() && metas.iter().all(|m| m.dtype == DType::F32 && keys.contains(&m.name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpsam::BlockShape;

    #[test]
    fn kwargs_carry_every_block_s_tables_and_odd_shapes_are_refused() {
        let b = BlockShape { dim: 16, heads: 4, mlp_dim: 24, rel_len: (7, 9) };
        let mut cfg =
            CpsamConfig { dim: 16, blocks: vec![b; 3], grid: (4, 4), neck: 8, ..Default::default() };
        let kw = architecture_kwargs(&cfg).unwrap();
        assert_eq!(kw["rel_pos"], serde_json::json!([[7, 9], [7, 9], [7, 9]]));
        assert_eq!((kw["mlp_dim"].as_i64(), kw["num_heads"].as_i64()), (Some(24), Some(4)));
        cfg.blocks[1].heads = 2;
        assert!(matches!(architecture_kwargs(&cfg), Err(ExportError::Unsupported(_))));
        cfg.blocks[1].heads = 4;
        cfg.blocks[2].rel_len = (8, 9);
        let msg = architecture_kwargs(&cfg).expect_err("even table").to_string();
        assert!(msg.contains("block 2"), "{msg}");
    }
}
