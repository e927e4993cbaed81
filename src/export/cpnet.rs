//! The CPnet (cellpose 3) part of a BioImage.IO package: the model file itself as weights, a thin
//! subclass of cellpose 3.1.1.2's `CPnet` as architecture, inputs of any size that is a
//! multiple of 8 (CPnet pools three times and must upsample back exactly).

use std::path::Path;

use tch::Device;

use super::assets;
use super::bioimageio::{self, ArchitectureFile, MissingChannels, Network, Sizing, WeightsFile};
use super::rdf::Size;
use super::ExportError;
use crate::model::{Model, ModelFamily};

/// Input sides are a multiple of 8 (three poolings).
const SIZE_STEP: usize = 8;

/// The CPnet in `model_path`, its test tensors computed on `sample` (or a synthetic image).
pub(super) fn network<'a>(
    model_path: &'a Path,
    sample: Option<&ndarray::Array3<f32>>,
) -> Result<Network<'a>, ExportError> {
    let model = Model::load(model_path, Device::Cpu)?;
    let cfg = &model.net.config;
    let nchan = cfg.nchan() as usize;
    let raw = bioimageio::test_image(
        sample,
        nchan,
        true,
        MissingChannels::Repeat,
        Sizing::Crop { step: SIZE_STEP, min: 16, max: 256 },
    )?;
    let normalized = bioimageio::scale_range(&raw);
    let x = crate::transforms::f_array3_to_tensor(&normalized)?.f_unsqueeze(0)?;
    let maps = bioimageio::tensor_to_array(&tch::no_grad(|| model.net.forward_t(&x, false))?.maps)?;
    let diam = (model.net.diam_mean(), model.net.diam_labels());
    let kwargs = [
        ("nbase", serde_json::json!(cfg.nbase)),
        ("nout", serde_json::json!(cfg.nout)),
        ("sz", serde_json::json!(cfg.kernel)),
        ("mkldnn", serde_json::json!(false)),
        ("max_pool", serde_json::json!(true)),
        ("diam_mean", serde_json::json!(diam.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let channel_names = match nchan {
        2 => vec!["cytoplasm".into(), "nucleus".into()],
        n => (0..n).map(|i| format!("channel{i}")).collect(),
    };
    let version = assets::CELLPOSE3_VERSION;
    Ok(Network {
        family: ModelFamily::Cpnet,
        cellpose_version: version,
        weights: WeightsFile::Copy(model_path),
        architecture: ArchitectureFile {
            file: assets::CPNET_ARCHITECTURE_FILE,
            callable: assets::CPNET_ARCHITECTURE_CALLABLE,
            source: assets::cpnet_architecture_source(),
            kwargs,
        },
        channel_names,
        space: Size::Parameterized { min: 16, step: SIZE_STEP as i64 },
        input_description: "Image, one channel per network input (cellpose channels), any intensity scale."
            .into(),
        raw,
        normalized,
        maps,
        diam,
        readme_network: format!(
            "## Network\n\ncellpose's CPnet (`cellpose.resnet_torch.CPnet`), nbase {:?}, {} outputs; \
             diam_mean {:.1}, diam_labels {:.2} (mean object diameter of the training labels).\n\n\
             Input `raw` `[batch, channel, y, x]`: the model's channels, each normalised per image as \
             cellpose `normalize99` (1st and 99th percentile to 0 and 1). Output `flows` \
             `[batch, 3, y, x]`: dY, dX and the cell-probability logit.\n\n\
             ## Masks\n\nThe package holds the network only. For masks, load `weights.pt` with cellpose \
             {version} (`cellpose.models.CellposeModel(pretrained_model=\"weights.pt\")`, \
             `eval(img, diameter=...)`), which also rescales images to diam_mean, tiles them and runs \
             the flow dynamics.\n",
            cfg.nbase, cfg.nout, diam.0, diam.1,
        ),
        description: format!(
            "Cellpose {version} network (flows and cell probability) for 2-D cell segmentation."
        ),
        tags: &["cellpose", "segmentation", "instance-segmentation", "2d", "pytorch", "cells"],
    })
}
