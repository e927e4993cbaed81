//! The non-YAML files of a BioImage.IO package: the architecture sources (thin subclasses of
//! cellpose 3.1.1.2's own `CPnet` and cellpose 4.2.1.1's `CPSAM`), the conda environment pinning
//! that cellpose, `.npy` tensors and the cover picture.

use ndarray::{ArrayD, ArrayView3};

/// cellpose release the CPnet architecture source is written against (`cellpose.resnet_torch.CPnet`).
pub(crate) const CELLPOSE3_VERSION: &str = "3.1.1.2";
/// cellpose release the Cellpose-SAM architecture source is written against (`cellpose.vit.CPSAM`).
pub(crate) const CELLPOSE4_VERSION: &str = "4.2.1.1";
/// torch release whose libtorch this project links (the weights file is its `torch.save` format).
pub(crate) const PYTORCH_VERSION: &str = "2.11.0";

/// File name and class of the CPnet architecture source.
pub(crate) const CPNET_ARCHITECTURE_FILE: &str = "cellpose_cpnet.py";
pub(crate) const CPNET_ARCHITECTURE_CALLABLE: &str = "CellposeFlows";
/// File name and class of the Cellpose-SAM architecture source.
pub(crate) const CPSAM_ARCHITECTURE_FILE: &str = "cellpose_sam.py";
pub(crate) const CPSAM_ARCHITECTURE_CALLABLE: &str = "CellposeSAMFlows";

/// `cellpose_cpnet.py`: cellpose's `CPnet` unchanged except that `forward` returns only the flow
/// maps (BioImage.IO's pytorch_state_dict runner maps each returned tensor to a declared output;
/// CPnet also returns its style vector and every downsampled map). Subclassing keeps the
/// state_dict keys, so the weights file is the one cellpose loads.
pub(crate) fn cpnet_architecture_source() -> String {
    format!(
        r#""""Network of this BioImage.IO package: cellpose {CELLPOSE3_VERSION}'s CPnet (cellpose.resnet_torch).

Written by cellpose-train-worker's `export --format bioimageio`. The weights file is a plain
`torch.save` state_dict that `cellpose.models.CellposeModel(pretrained_model=...)` also loads.
"""
from cellpose.resnet_torch import CPnet


class {CPNET_ARCHITECTURE_CALLABLE}(CPnet):
    """CPnet returning only its first output: [batch, 3, y, x] = dY, dX, cell probability (logit)."""

    def forward(self, x):
        return super().forward(x)[0]
"#
    )
}

/// `cellpose_sam.py`: cellpose 4's `CPSAM` built at the size its kwargs give (`CPSAM()` itself
/// always builds SAM's ViT-L), with `forward` returning only the flow maps. The module and
/// parameter names are CPSAM's, so the weights file is the one cellpose 4 loads.
pub(crate) fn cpsam_architecture_source() -> String {
    include_str!("cellpose_sam.py").replace("{CELLPOSE_VERSION}", CELLPOSE4_VERSION)
}

/// `environment.yaml`: a conda environment with the cellpose and torch the package was made for
/// (cellpose 4 brings segment-anything).
pub(crate) fn environment_yaml(cellpose_version: &str) -> String {
    format!(
        "name: cellpose-{cellpose_version}\nchannels:\n  - conda-forge\n  - nodefaults\ndependencies:\n  \
         - python=3.11\n  - pip\n  - pip:\n      - cellpose=={cellpose_version}\n      - torch=={PYTORCH_VERSION}\n"
    )
}

/// A float32 array as a `.npy` file (format 1.0, little-endian, C order), as `numpy.save` writes.
pub(crate) fn npy_f32(a: &ArrayD<f32>) -> Vec<u8> {
    let shape: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 { format!("({},)", shape[0]) } else { format!("({})", shape.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in a.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The cover: the (normalised) first input channel beside the predicted cell probability, 2:1
/// as BioImage.IO recommends, each half scaled up to at least 256 pixels high.
pub(crate) fn cover_png(
    input: ArrayView3<f32>,
    cellprob_logit: ndarray::ArrayView2<f32>,
) -> Result<Vec<u8>, String> {
    let (_, h, w) = input.dim();
    let side = h.max(w).max(1);
    let scale = 256usize.div_ceil(side).max(1);
    let (ch, cw) = (side * scale, side * scale);
    let mut img = image::GrayImage::new((2 * cw) as u32, ch as u32);
    let chan = input.index_axis(ndarray::Axis(0), 0);
    for y in 0..ch {
        for x in 0..cw {
            let (sy, sx) = (y / scale, x / scale);
            if sy >= h || sx >= w {
                continue;
            }
            let v = chan[(sy, sx)].clamp(0.0, 1.0);
            let p = 1.0 / (1.0 + (-cellprob_logit[(sy, sx)]).exp());
            img.put_pixel(x as u32, y as u32, image::Luma([(v * 255.0) as u8]));
            img.put_pixel((x + cw) as u32, y as u32, image::Luma([(p * 255.0) as u8]));
        }
    }
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_numpy_s() {
        let a = ArrayD::from_shape_vec(vec![1, 2, 3], vec![0.5f32; 6]).expect("shape");
        let b = npy_f32(&a);
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hl]).expect("ascii");
        assert!(
            header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }"),
            "{header}"
        );
        assert_eq!(b.len(), 10 + hl + 24);
        assert_eq!(&b[10 + hl..10 + hl + 4], &0.5f32.to_le_bytes());
    }
}
