//! Worker settings, loaded once: defaults (the `Default` impls below), then a TOML file
//! (`worker.toml`, or `--config FILE`), then environment variables `CPW_<SECTION>__<KEY>`
//! (e.g. `CPW_QUEUE__LEASE_S=30`). The Girder API key comes only from the environment
//! (`CPW_GIRDER__API_KEY`) and is wrapped so it never prints.
//!
//! `worker.toml` at the repository root documents every key with its default; a test checks
//! that it parses to exactly these defaults, so the file and the code cannot drift apart.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::device::DeviceSpec;
use crate::telemetry::LogFormat;

pub use crate::girder::Secret;
pub use crate::tool::Tool;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub girder: GirderSettings,
    pub queue: QueueSettings,
    pub training: TrainingSettings,
    pub paths: PathSettings,
    pub log: LogSettings,
    pub server: ServerSettings,
    pub oneshot: OneShotSettings,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GirderSettings {
    /// Base of the REST API, e.g. `https://nimbus.example.org/api/v1`.
    pub api_url: String,
    /// Service-account API key (environment only: `CPW_GIRDER__API_KEY`).
    pub api_key: Option<Secret>,
    /// Per-request timeout.
    pub timeout_s: f64,
    /// Retries of idempotent requests on connection errors, timeouts, 429 and 5xx.
    pub max_retries: u32,
}

impl Default for GirderSettings {
    fn default() -> Self {
        GirderSettings {
            api_url: "http://localhost:8080/api/v1".into(),
            api_key: None,
            timeout_s: 60.0,
            max_retries: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Girder job type of the "Cellpose retrain" (CPnet) jobs this worker runs; empty: none.
    pub job_type: String,
    /// Girder job type of the "Cellpose-SAM retrain" jobs this worker runs; empty: none. Two keys
    /// rather than a list, because each type names the model family its jobs train.
    pub cpsam_job_type: String,
    /// Seconds between polls for queued jobs (each poll jittered by up to 50%).
    pub poll_interval_s: f64,
    /// A running job's progress is updated at least this often.
    pub heartbeat_s: f64,
    /// A RUNNING job without a heartbeat for this long is taken over by another worker.
    pub lease_s: f64,
    /// On SIGTERM/SIGINT: time to checkpoint and hand the running job back before exiting.
    pub shutdown_grace_s: f64,
}

impl QueueSettings {
    /// The job types this worker polls for (the non-empty ones).
    pub(crate) fn job_types(&self) -> Vec<String> {
        [&self.job_type, &self.cpsam_job_type].into_iter().filter(|t| !t.is_empty()).cloned().collect()
    }

    /// The tool whose jobs have `job_type` (Cellpose-SAM's type, else the Cellpose tool's).
    pub(crate) fn tool_for(&self, job_type: &str) -> Tool {
        if !self.cpsam_job_type.is_empty() && job_type == self.cpsam_job_type {
            Tool::CellposeSam
        } else {
            Tool::Cellpose
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            job_type: "cellpose_train".into(),
            cpsam_job_type: "cellposesam_train".into(),
            poll_interval_s: 5.0,
            heartbeat_s: 10.0,
            lease_s: 120.0,
            shutdown_grace_s: 30.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSettings {
    /// `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`.
    pub device: DeviceSpec,
    /// Training patch size (multiple of 16). CPU-only deployments may lower it.
    pub bsize: usize,
    /// Allowed Epochs range (the interface's 100-2000 by default; a deployment may widen it).
    pub min_epochs: usize,
    pub max_epochs: usize,
    /// Save a resumable checkpoint to Girder every N epochs (CPnet: about 53 MB each).
    pub checkpoint_every: usize,
    /// The same for Cellpose-SAM jobs, whose checkpoints are 3.65 GB (trained weights and AdamW
    /// moments, fp32): fewer of them, since each is uploaded to Girder.
    pub cpsam_checkpoint_every: usize,
    /// Largest region (pixels) fetched and trained on; bigger regions are an error.
    pub max_region_pixels: u64,
    /// bf16 matrix products with float32 master weights: `auto` (CUDA; CPUs with bf16 kernels
    /// where [`crate::precision`] has the evidence for the family), `on`, `off`.
    pub mixed_precision: Toggle,
    pub batch_size: usize,
    /// Let cuDNN time its convolution algorithms once per shape (`auto` = on; CUDA only).
    pub cudnn_benchmark: Toggle,
    /// Log per-phase host times of every training step, with a device sync each (profiling
    /// only: it slows training).
    pub profile_steps: bool,
    /// With a validation region and "Keep best model": score every N epochs (0 = chosen from the
    /// measured scoring and epoch times so scoring costs about 8% of training).
    pub eval_every: usize,
    /// Seconds between two "Epoch N/M" progress lines at least (the first and the last epoch are
    /// always reported; 0 = every epoch). Epochs of a small dataset on a GPU take milliseconds:
    /// a line each would fill the Girder job log and, in a container run by girder_worker, keep
    /// its output loop from ever pausing the 0.1 s it waits for before it acts on a cancel.
    pub progress_interval_s: f64,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        TrainingSettings {
            device: DeviceSpec::Auto,
            bsize: 224,
            min_epochs: 100,
            max_epochs: 2000,
            checkpoint_every: 10,
            cpsam_checkpoint_every: 25,
            max_region_pixels: 64 * 1024 * 1024,
            mixed_precision: Toggle::Auto,
            batch_size: 8,
            cudnn_benchmark: Toggle::Auto,
            profile_steps: false,
            eval_every: 0,
            progress_interval_s: 1.0,
        }
    }
}

/// A switch whose `auto` depends on where it runs (see each setting for what `auto` means).
/// Anything but `auto`, `on` or `off` is refused when the settings load, naming the three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Toggle {
    #[default]
    Auto,
    On,
    Off,
}

/// Reads a string setting that must be one of `choices`; the error names the value and every
/// allowed spelling (the `config` crate's own enum errors name neither).
pub(crate) fn one_of<'de, D: serde::Deserializer<'de>, T: Copy>(
    d: D,
    choices: &[(&str, T)],
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    let wanted = s.trim().to_ascii_lowercase();
    choices.iter().find(|(name, _)| *name == wanted).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
        serde::de::Error::custom(format!("`{s}` is not one of {}", names.join(", ")))
    })
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(d, &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)])
    }
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(d, &[("auto", Toggle::Auto), ("on", Toggle::On), ("off", Toggle::Off)])
    }
}

impl Toggle {
    /// On or off, with `auto` meaning `when_auto`.
    pub(crate) fn resolve(self, when_auto: bool) -> bool {
        match self {
            Toggle::Auto => when_auto,
            Toggle::On => true,
            Toggle::Off => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PathSettings {
    /// Built-in models (cyto3, nuclei, ...); unset = `$CELLPOSE_LOCAL_MODELS_PATH` or `~/.cellpose/models`.
    pub models_dir: Option<PathBuf>,
    /// Scratch space for downloads and model files before upload; unset = the system temp dir.
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Health and metrics endpoint; port 0 = any free port; empty = off.
    pub listen: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings { listen: "127.0.0.1:9464".into() }
    }
}

/// NimbusImage's one-shot worker container (`--request interface|compute`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OneShotSettings {
    /// The tool an `interface` request registers. NimbusImage lists one tool per worker image,
    /// and the request carries only the image's name, so the image built for a tool says which
    /// (the Dockerfile's `cellposesam` target sets `cellposesam`); `auto` goes by the name.
    pub tool: ToolSetting,
}

/// `[oneshot] tool`: one tool, or `auto` (by the image's name, [`Tool::named_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ToolSetting(pub Option<Tool>);

impl ToolSetting {
    /// The tool an `interface` request for `image` registers.
    pub(crate) fn for_image(self, image: &str) -> Tool {
        self.0.unwrap_or_else(|| Tool::named_in(image))
    }
}

impl PartialEq<Tool> for ToolSetting {
    /// A setting equals the tool it names (`auto` names none).
    fn eq(&self, tool: &Tool) -> bool {
        self.0 == Some(*tool)
    }
}

impl<'de> Deserialize<'de> for ToolSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tools =
            [("auto", None), ("cellpose", Some(Tool::Cellpose)), ("cellposesam", Some(Tool::CellposeSam))];
        one_of(d, &tools).map(ToolSetting)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads `file` (if it exists; `worker.toml` by default) and `CPW_*` environment overrides.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Settings::load_with_env(file, None)
    }

    /// [`Settings::load`] with the `CPW_*` variables taken from `env` instead of the process
    /// environment when given (tests, and checks of deployment files, without touching globals).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, SettingsError> {
        // Only `CPW_<SECTION>__<KEY>` names are settings; other `CPW_` variables (the test
        // suite's CPW_PYTHON, say) are not ours to refuse.
        let env: std::collections::HashMap<String, String> = env
            .unwrap_or_else(|| std::env::vars().collect())
            .into_iter()
            .filter(|(k, _)| k.strip_prefix("CPW_").is_some_and(|rest| rest.contains("__")))
            .collect();
        let mut b = config::Config::builder();
        match file {
            Some(f) => b = b.add_source(config::File::from(f).required(true)),
            None => b = b.add_source(config::File::with_name("worker.toml").required(false)),
        }
        b = b.add_source(
            config::Environment::with_prefix("CPW")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let s: Settings = b.build()?.try_deserialize()?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(m));
        let q = &self.queue;
        if q.job_type.is_empty() && q.cpsam_job_type.is_empty() {
            return bad("[queue] job_type and cpsam_job_type are both empty; set at least one".into());
        }
        if q.job_type == q.cpsam_job_type {
            return bad(format!(
                "[queue] job_type and cpsam_job_type are both `{}`; each family needs its own job type",
                q.job_type
            ));
        }
        let t = &self.training;
        if t.bsize == 0 || !t.bsize.is_multiple_of(16) {
            return bad(format!("[training] bsize must be a positive multiple of 16 (got {})", t.bsize));
        }
        if t.min_epochs == 0 || t.min_epochs > t.max_epochs {
            return bad(format!(
                "[training] needs 1 <= min_epochs <= max_epochs (got {} and {})",
                t.min_epochs, t.max_epochs
            ));
        }
        // the Epochs field's range and every batch are sized from these: limits before any job
        let limit = |e: crate::limits::LimitError| SettingsError::Invalid(e.to_string());
        crate::limits::epochs("[training] max_epochs", t.max_epochs).map_err(limit)?;
        if t.batch_size == 0 {
            return bad("[training] batch_size must be at least 1".into());
        }
        crate::limits::batch("[training] batch_size", t.batch_size, t.bsize).map_err(limit)?;
        if t.checkpoint_every == 0 || t.cpsam_checkpoint_every == 0 {
            return bad("[training] checkpoint_every and cpsam_checkpoint_every must be at least 1".into());
        }
        if !(t.progress_interval_s.is_finite() && t.progress_interval_s >= 0.0) {
            return bad(format!(
                "[training] progress_interval_s must be 0 or more seconds (got {})",
                t.progress_interval_s
            ));
        }
        let q = &self.queue;
        for (k, v) in
            [("poll_interval_s", q.poll_interval_s), ("heartbeat_s", q.heartbeat_s), ("lease_s", q.lease_s)]
        {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("[queue] {k} must be positive (got {v})"));
            }
        }
        if q.lease_s <= q.heartbeat_s {
            return bad(format!(
                "[queue] lease_s ({}) must be longer than heartbeat_s ({}), or healthy jobs would be taken over",
                q.lease_s, q.heartbeat_s
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_toml_documents_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker.toml");
        let from_file: Settings = config::Config::builder()
            .add_source(config::File::from(path))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        assert_eq!(from_file, Settings::default());
    }

    #[test]
    fn environment_overrides_the_file_and_the_key_never_prints() {
        let env: std::collections::HashMap<String, String> = [
            ("CPW_QUEUE__LEASE_S", "30"),
            ("CPW_TRAINING__BSIZE", "128"),
            ("CPW_GIRDER__API_KEY", "topsecretkey"),
            ("OTHER_VAR", "ignored"),
            ("CPW_PYTHON", "not a setting: no section"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker.toml");
        let s = Settings::load_with_env(Some(&path), Some(env)).unwrap();
        assert_eq!(s.queue.lease_s, 30.0);
        assert_eq!(s.training.bsize, 128);
        assert_eq!(s.girder.api_key.as_ref().map(|k| k.expose().to_string()), Some("topsecretkey".into()));
        assert!(!format!("{s:?}").contains("topsecretkey"));
    }

    #[test]
    fn invalid_settings_name_the_key() {
        let env = std::collections::HashMap::from([("CPW_TRAINING__BSIZE".to_string(), "100".to_string())]);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker.toml");
        let err = Settings::load_with_env(Some(&path), Some(env)).unwrap_err().to_string();
        assert!(err.contains("[training] bsize") && err.contains("100"), "{err}");
        // absurd sizes are refused at start, naming the key and the limit (issue 26)
        for (key, value, needles) in [
            ("CPW_TRAINING__MAX_EPOCHS", "10000000000", &["[training] max_epochs", "100000 epochs"][..]),
            ("CPW_TRAINING__BATCH_SIZE", "1000000", &["[training] batch_size", "67108864 pixels"][..]),
        ] {
            let env = std::collections::HashMap::from([(key.to_string(), value.to_string())]);
            let err = Settings::load_with_env(Some(&path), Some(env)).unwrap_err().to_string();
            for n in needles {
                assert!(err.contains(n), "{key}={value}: `{n}` missing from: {err}");
            }
        }
    }

    #[test]
    fn a_bad_switch_or_device_names_the_value_and_the_allowed_ones() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker.toml");
        for (key, value, needles) in [
            ("CPW_TRAINING__MIXED_PRECISION", "yes", &["yes", "auto", "on", "off"][..]),
            ("CPW_TRAINING__DEVICE", "gpu", &["gpu", "auto, cpu, cuda or cuda:N"][..]),
            ("CPW_LOG__FORMAT", "xml", &["xml", "pretty", "json"][..]),
            ("CPW_ONESHOT__TOOL", "sam", &["sam", "auto", "cellpose", "cellposesam"][..]),
        ] {
            let env = std::collections::HashMap::from([(key.to_string(), value.to_string())]);
            let err = Settings::load_with_env(Some(&path), Some(env)).unwrap_err().to_string();
            for n in needles {
                assert!(err.contains(n), "{key}={value}: `{n}` missing from: {err}");
            }
        }
        let env = std::collections::HashMap::from([
            ("CPW_TRAINING__MIXED_PRECISION".to_string(), "off".to_string()),
            ("CPW_TRAINING__DEVICE".to_string(), "cuda:1".to_string()),
        ]);
        let s = Settings::load_with_env(Some(&path), Some(env)).unwrap();
        assert_eq!((s.training.mixed_precision, s.training.device), (Toggle::Off, DeviceSpec::Cuda(1)));
    }

    #[test]
    fn both_job_types_are_taken_by_default_and_must_differ() {
        let s = Settings::default();
        assert_eq!(s.queue.job_types(), ["cellpose_train", "cellposesam_train"]);
        assert_eq!(s.queue.tool_for("cellposesam_train"), Tool::CellposeSam);
        assert_eq!(s.queue.tool_for("cellpose_train"), Tool::Cellpose);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker.toml");
        for (cp, sam, needle) in [("", "", "both empty"), ("x", "x", "both `x`")] {
            let env = std::collections::HashMap::from([
                ("CPW_QUEUE__JOB_TYPE".to_string(), cp.to_string()),
                ("CPW_QUEUE__CPSAM_JOB_TYPE".to_string(), sam.to_string()),
            ]);
            let err = Settings::load_with_env(Some(&path), Some(env)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let env = std::collections::HashMap::from([("CPW_QUEUE__CPSAM_JOB_TYPE".to_string(), String::new())]);
        let s = Settings::load_with_env(Some(&path), Some(env)).unwrap();
        assert_eq!(s.queue.job_types(), ["cellpose_train"]);
        assert_eq!(s.queue.tool_for(""), Tool::Cellpose);
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("abc123");
        assert_eq!(format!("{s:?}"), "***");
    }
}
