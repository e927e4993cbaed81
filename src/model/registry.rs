//! Model names -> files, the way cellpose resolves them (`models.get_model_params`), minus the
//! download: built-ins live in the models directory (`~/.cellpose/models`, or
//! `CELLPOSE_LOCAL_MODELS_PATH`, or the worker's `[paths] models_dir`) and nothing is fetched.

use std::path::{Path, PathBuf};

use super::family::ModelFamily;

/// cellpose 3.1.1.2 `MODEL_NAMES`: names that mean a built-in model, not a user file.
pub const BUILTIN_MODELS: &[&str] = &[
    "cyto3",
    "nuclei",
    "cyto2_cp3",
    "tissuenet_cp3",
    "livecell_cp3",
    "yeast_PhC_cp3",
    "yeast_BF_cp3",
    "bact_phase_cp3",
    "bact_fluor_cp3",
    "deepbacs_cp3",
    "cyto2",
    "cyto",
    "CPx",
    "transformer_cp3",
    "neurips_cellpose_default",
    "neurips_cellpose_transformer",
    "neurips_grayscale_cyto2",
    "CP",
    "TN1",
    "TN2",
    "TN3",
    "LC1",
    "LC2",
    "LC3",
    "LC4",
];

/// Where model files are looked up: explicit setting, else `CELLPOSE_LOCAL_MODELS_PATH`, else
/// `~/.cellpose/models` (cellpose's `MODEL_DIR`).
pub fn models_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("CELLPOSE_LOCAL_MODELS_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cellpose").join("models")
}

/// cellpose 4.2.1.1 `MODEL_NAMES` that are Cellpose-SAM (cpdino needs dinov3 and is not built).
pub const CPSAM_BUILTIN_MODELS: &[&str] = &["cpsam_v2", "cpsam"];

/// Where cellpose 4 downloads its built-ins from (`models._MODEL_URL`); only named in errors.
const CPSAM_MODEL_URL: &str = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/";

pub fn is_builtin(name: &str) -> bool {
    BUILTIN_MODELS.contains(&name) || CPSAM_BUILTIN_MODELS.contains(&name)
}

/// The family a built-in name belongs to.
pub fn builtin_family(name: &str) -> Option<ModelFamily> {
    if CPSAM_BUILTIN_MODELS.contains(&name) {
        Some(ModelFamily::Cpsam)
    } else if BUILTIN_MODELS.contains(&name) {
        Some(ModelFamily::Cpnet)
    } else {
        None
    }
}

/// Where a built-in comes from, for the "not installed" message.
fn builtin_url(name: &str, file: &str) -> String {
    match builtin_family(name) {
        Some(ModelFamily::Cpsam) => format!("{CPSAM_MODEL_URL}{file}"),
        _ => format!("https://www.cellpose.org/models/{file}"),
    }
}

/// File name of a built-in model in the models directory (cellpose 3 `model_path`; cellpose 4
/// `cache_model_path` keeps the name as it is: `cpsam_v2`, `cpsam`).
pub fn builtin_file_name(name: &str) -> String {
    match name {
        "cyto" | "cyto2" | "nuclei" => format!("{name}torch_0"),
        other => other.to_string(),
    }
}

/// A model spec resolved to a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModel {
    pub path: PathBuf,
    pub name: String,
    /// Built-ins use cellpose's fixed diam_mean (30, nuclei 17) whatever the file stores;
    /// user models use the value saved in the file.
    pub builtin_diam_mean: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "built-in model `{name}` is not installed: expected the file {path}. Nothing is downloaded at run \
         time; copy it from {url} (or from a cellpose install's ~/.cellpose/models) to that path, or \
         point CELLPOSE_LOCAL_MODELS_PATH / [paths] models_dir at a folder that has it"
    )]
    BuiltinMissing { name: String, path: PathBuf, file: String, url: String },
    #[error(
        "unknown model `{spec}`: it is not a file, not a built-in name ({}), and there is no {} ",
        BUILTIN_MODELS[..4].join(", "),
        dir.join(spec).display()
    )]
    Unknown { spec: String, dir: PathBuf },
    #[error(
        "model `{}` is a folder, not a model file; give the file itself (a trained model is \
         <dir>/models/<name>)",
        path.display()
    )]
    IsDir { path: PathBuf },
}

/// Resolves a path, a built-in name, or the name of a model saved in the models directory.
pub fn resolve(spec: &str, dir: &Path) -> Result<ResolvedModel, RegistryError> {
    let as_path = Path::new(spec);
    if as_path.is_file() {
        // cellpose treats a path ending in nucleitorch_0 as the built-in nuclei model
        let builtin_diam_mean = spec.ends_with("nucleitorch_0").then_some(17.0);
        let name = as_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(ResolvedModel { path: as_path.to_path_buf(), name, builtin_diam_mean });
    }
    if as_path.is_dir() {
        return Err(RegistryError::IsDir { path: as_path.to_path_buf() });
    }
    if is_builtin(spec) {
        let file = builtin_file_name(spec);
        let path = dir.join(&file);
        if !path.is_file() {
            let url = builtin_url(spec, &file);
            return Err(RegistryError::BuiltinMissing { name: spec.into(), path, file, url });
        }
        let diam = if spec == "nuclei" { 17.0 } else { 30.0 };
        return Ok(ResolvedModel { path, name: spec.into(), builtin_diam_mean: Some(diam) });
    }
    let user = dir.join(spec);
    if !spec.contains(['/', '\\']) && user.is_file() {
        return Ok(ResolvedModel { path: user, name: spec.into(), builtin_diam_mean: None });
    }
    Err(RegistryError::Unknown { spec: spec.into(), dir: dir.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_map_to_cellpose_file_names() {
        assert_eq!(builtin_file_name("cyto2"), "cyto2torch_0");
        assert_eq!(builtin_file_name("nuclei"), "nucleitorch_0");
        assert_eq!(builtin_file_name("cyto3"), "cyto3");
    }

    #[test]
    fn missing_builtin_says_where_to_put_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve("cyto3", dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().join("cyto3").display().to_string()), "{msg}");
        assert!(msg.contains("Nothing is downloaded"), "{msg}");
    }

    #[test]
    fn cpsam_builtins_keep_cellpose4_names_and_say_where_they_come_from() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(builtin_family("cpsam_v2"), Some(ModelFamily::Cpsam));
        assert_eq!(builtin_family("cyto3"), Some(ModelFamily::Cpnet));
        let msg = resolve("cpsam_v2", dir.path()).unwrap_err().to_string();
        assert!(msg.contains(&dir.path().join("cpsam_v2").display().to_string()), "{msg}");
        assert!(msg.contains("huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam_v2"), "{msg}");
        std::fs::write(dir.path().join("cpsam"), b"x").unwrap();
        let r = resolve("cpsam", dir.path()).unwrap();
        assert_eq!(r.path, dir.path().join("cpsam"));
    }

    #[test]
    fn resolves_builtin_user_and_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nucleitorch_0"), b"x").unwrap();
        std::fs::write(dir.path().join("my_model"), b"x").unwrap();
        let n = resolve("nuclei", dir.path()).unwrap();
        assert_eq!(n.builtin_diam_mean, Some(17.0));
        let u = resolve("my_model", dir.path()).unwrap();
        assert_eq!(u.builtin_diam_mean, None);
        assert_eq!(u.path, dir.path().join("my_model"));
        let p = resolve(dir.path().join("my_model").to_str().unwrap(), Path::new("/nonexistent")).unwrap();
        assert_eq!(p.name, "my_model");
        assert!(matches!(resolve("nope", dir.path()), Err(RegistryError::Unknown { .. })));
    }
}
