//! The whole product on one machine with nothing external: a mock Girder in-process, a seeded
//! NimbusImage-style dataset, a training job submitted through the REST API as the platform
//! would, and the queue worker (`serve`) running it to the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::seed::{interface_values, seed, DemoSpec};
use crate::config::Settings;
use crate::control::Control;
use crate::girder::{GirderConfig, GirderError, Job, JobStatus, JobUpdate, NewJob};
use crate::job::store;
use crate::mock_girder::{spawn_mock, MockConfig};
use crate::worker::{serve, ServeOptions, WorkerError};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub epochs: usize,
    pub learning_rate: f64,
    /// Training patch size (the demo's default 128 keeps a 2-core CPU run short).
    pub bsize: usize,
    pub device: String,
    /// Where the trained model and its report are copied.
    pub out_dir: PathBuf,
    pub spec: DemoSpec,
    pub model_name: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            epochs: 100,
            learning_rate: 0.1,
            bsize: 128,
            device: "auto".into(),
            out_dir: PathBuf::from("demo-output"),
            spec: DemoSpec::default(),
            model_name: "demo-model".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting the mock Girder: {0}")]
    Mock(std::io::Error),
    #[error(transparent)]
    Girder(#[from] GirderError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error("writing the demo output in {path}: {source}")]
    Output { path: PathBuf, source: std::io::Error },
    #[error("the demo job ended {status}: {message}")]
    JobFailed { status: String, message: String },
}

/// What the demo produced.
#[derive(Debug, Clone)]
pub struct DemoResult {
    pub job: Job,
    pub model_path: PathBuf,
    pub report_dir: PathBuf,
    pub girder_model_path: String,
    pub report: Value,
    pub seconds: f64,
}

/// Runs the demo; `progress` receives each new progress message of the job.
pub(crate) async fn run_demo(
    opts: &DemoOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<DemoResult, DemoError> {
    let t0 = Instant::now();
    let mock = spawn_mock(MockConfig::default()).await.map_err(DemoError::Mock)?;
    progress(&format!("Mock Girder listening at {}", mock.api_url));
    let world = seed(GirderConfig::new(mock.api_url.clone()), &opts.spec).await?;
    progress(&format!(
        "Seeded dataset {} with {} annotated cells (user alice)",
        world.dataset_id, world.n_cells
    ));

    let mut settings = Settings::load(None).unwrap_or_default();
    settings.girder.api_url = mock.api_url.clone();
    settings.girder.api_key = Some(world.admin_api_key.clone());
    settings.queue.poll_interval_s = 0.5;
    settings.queue.heartbeat_s = 2.0;
    settings.training.device = opts.device.parse()?;
    settings.training.bsize = opts.bsize;
    settings.training.min_epochs = settings.training.min_epochs.min(opts.epochs);
    settings.training.checkpoint_every = (opts.epochs / 4).max(1);
    settings.server.listen = "127.0.0.1:0".into();

    // submitted as the platform does: a job of the worker's type, the user's token in kwargs
    let mut values = interface_values(&world.base_model, &opts.model_name, opts.epochs);
    values["Learning Rate"] = json!(opts.learning_rate);
    let kwargs = json!({
        "request": "compute",
        "datasetId": world.dataset_id,
        "token": world.user_token.expose(),
        "parameters": {"image": "cellpose-train-worker:latest", "workerInterface": values}
    });
    let job = world
        .creator
        .jobs()
        .create(&NewJob {
            title: format!("Cellpose retrain: {}", opts.model_name),
            job_type: settings.queue.job_type.clone(),
            kwargs: Some(kwargs),
            ..Default::default()
        })
        .await?;
    world
        .user
        .jobs()
        .update(&job.id, &JobUpdate { status: Some(JobStatus::QUEUED), ..Default::default() })
        .await?;
    progress(&format!("Submitted job {} ({} epochs)", job.id, opts.epochs));

    let shutdown = Control::new();
    let worker = tokio::spawn(serve(
        settings,
        ServeOptions { worker_id: Some("demo-worker".into()), max_jobs: Some(1) },
        shutdown.clone(),
    ));
    // every progress report is a JSON line in the job's log: read them all (sampling the job's
    // current message every half second misses the short steps of a fast job)
    let mut seen = 0;
    let finished = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let j = world.user.jobs().get(&job.id).await?;
        let log = j.log.as_deref().unwrap_or_default();
        for entry in log.iter().skip(seen) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(entry.trim()) else { continue };
            let (Some(p), Some(title)) = (v["progress"].as_f64(), v["title"].as_str()) else { continue };
            let info = v["info"].as_str().unwrap_or_default();
            let msg = if info.is_empty() { title.to_string() } else { format!("{title}: {info}") };
            progress(&format!("[{:5.1}%] {msg}", p * 100.0));
        }
        seen = seen.max(log.len());
        if j.status.is_terminal() {
            break j;
        }
        if worker.is_finished() {
            break j;
        }
    };
    shutdown.shutdown();
    worker.await.map_err(|e| DemoError::Mock(std::io::Error::other(e.to_string())))??;
    if finished.status != JobStatus::SUCCESS {
        let message = finished.log.as_deref().and_then(|l| l.last().cloned()).unwrap_or_default();
        return Err(DemoError::JobFailed { status: finished.status.name().into(), message });
    }

    // copy the model and its report out of Girder, where a user would download them
    let out = &opts.out_dir;
    let io = |source| DemoError::Output { path: out.clone(), source };
    std::fs::create_dir_all(out).map_err(io)?;
    let models = store::list_user_models(&world.user, &world.user_id).await?;
    let model = models.iter().find(|i| i.name == opts.model_name).ok_or_else(|| DemoError::JobFailed {
        status: "SUCCESS".into(),
        message: format!("no model `{}` in Private/.cellpose/models", opts.model_name),
    })?;
    let model_path = out.join(&opts.model_name);
    std::fs::write(&model_path, world.user.items().download(&model.id).await?).map_err(io)?;
    let reports = store::cellpose_folder(&world.user, &world.user_id, &["reports"]).await?;
    let mut report = Value::Null;
    let report_dir = out.join(format!("{}-report", opts.model_name));
    std::fs::create_dir_all(&report_dir).map_err(io)?;
    if let Some(item) =
        world.user.items().list(&reports.id).await?.into_iter().find(|i| i.name.starts_with(&opts.model_name))
    {
        for f in world.user.items().files(&item.id).await? {
            let bytes = world.user.files().download(&f.id).await?;
            if f.name == "report.json" {
                report = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            }
            std::fs::write(report_dir.join(&f.name), bytes).map_err(io)?;
        }
    }
    Ok(DemoResult {
        job: finished,
        model_path,
        report_dir,
        girder_model_path: format!("/user/alice/Private/.cellpose/models/{}", opts.model_name),
        report,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
