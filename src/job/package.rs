//! The BioImage.IO package of a trained model (CPnet or Cellpose-SAM), zipped for the report
//! item: what a lab shares or loads in other BioImage.IO tools (see `export --format
//! bioimageio`). Made only with a validation region, so the package's documentation carries
//! scores; best effort: a package that cannot be made is a warning, never a failed job.

use std::io::Write;

use bytes::Bytes;

use crate::export::{export_bioimageio, ExportOptions};
use crate::girder::User;
use crate::model::ModelFamily;
use crate::report::RunRecorder;
use ndarray::Array3;

/// The trained model as the upload stage holds it.
pub(crate) struct ModelToPackage<'a> {
    pub family: ModelFamily,
    /// The model file, as uploaded.
    pub file: &'a [u8],
    pub name: &'a str,
    /// The report's `metrics.jsonl`: put beside the model, where the export reads the training
    /// parameters and validation scores for the package's README.
    pub metrics: Option<Bytes>,
}

/// Builds `<name>.bioimageio.zip` from the model file. Blocking (it runs the network once for
/// the package's test tensors). `sample` is a validation crop's image for those tensors.
pub(crate) fn bioimageio_zip(
    model: &ModelToPackage,
    base_model: &str,
    user: &User,
    sample: Option<Array3<f32>>,
) -> Result<Bytes, String> {
    let name = model.name;
    let dir = tempfile::tempdir().map_err(|e| format!("a scratch folder: {e}"))?;
    let model_path = dir.path().join(name);
    std::fs::write(&model_path, model.file).map_err(|e| format!("{}: {e}", model_path.display()))?;
    if let Some(metrics) = &model.metrics {
        let path = RunRecorder::metrics_path(&model_path);
        std::fs::write(&path, metrics).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let author = match (&user.first_name, &user.last_name) {
        (Some(f), Some(l)) if !f.trim().is_empty() || !l.trim().is_empty() => {
            format!("{f} {l}").trim().to_string()
        }
        _ => user.login.clone(),
    };
    let kind = match model.family {
        ModelFamily::Cpnet => "Cellpose (CPnet, cellpose 3.1.1.2)",
        ModelFamily::Cpsam => "Cellpose-SAM (cellpose 4.2.1.1)",
    };
    let opts = ExportOptions {
        name: Some(format!("Cellpose {name}")),
        description: Some(format!("{kind} model `{name}`, fine-tuned from {base_model} in NimbusImage.")),
        authors: vec![author],
        license: "CC-BY-4.0".into(),
        parent: Some(base_model.to_string()),
        sample,
    };
    let out = dir.path().join("package");
    export_bioimageio(&model_path, &out, &opts).map_err(|e| e.to_string())?;
    zip_folder(&out).map_err(|e| format!("zipping the package: {e}"))
}

/// The files of `dir` (one level, as the export writes them) in a zip archive, sorted by name.
/// The weights are stored, not deflated: float weights shrink by a few percent only, and
/// deflating a 1.2 GB Cellpose-SAM file would take a minute of CPU.
fn zip_folder(dir: &std::path::Path) -> std::io::Result<Bytes> {
    let mut names: Vec<std::path::PathBuf> =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    names.sort();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for path in names {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file").to_string();
        let opts = if name.ends_with(".pt") { stored } else { deflated };
        zip.start_file(name, opts).map_err(std::io::Error::other)?;
        zip.write_all(&std::fs::read(&path)?)?;
    }
    Ok(Bytes::from(zip.finish().map_err(std::io::Error::other)?.into_inner()))
}
