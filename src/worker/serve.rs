//! `serve`: the long-running queue worker. Polls Girder for `cellpose_train` jobs with the
//! service account ([`super::poll`]), claims one with the log protocol of [`super::claim`], runs
//! it as the submitting user ([`super::execute`]), and reports everything to the job
//! ([`super::report`]): progress, the one-shot mode's JSON lines in its log, heartbeats,
//! checkpoints, and the final status.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::Rng;
use tch::Device;

use super::lease::Leases;
use super::metrics::WorkerMetrics;
use crate::config::Settings;
use crate::control::Control;
use crate::girder::{Auth, GirderClient, GirderConfig, GirderError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the queue worker needs the service account's API key in CPW_GIRDER__API_KEY (an admin: listing every user's jobs needs one)")]
    NoApiKey,
    /// Boxed: Girder errors carry method, path and message, and this enum travels in every
    /// `Result` of the serve loop.
    #[error(transparent)]
    Girder(Box<GirderError>),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error("cannot listen on [server] listen = `{listen}`: {source}")]
    Listen { listen: String, source: std::io::Error },
}

impl From<GirderError> for WorkerError {
    fn from(e: GirderError) -> Self {
        WorkerError::Girder(Box::new(e))
    }
}

/// Per-process options of `serve` (settings come from [`Settings`]).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Name in claim lines and logs; default `<hostname>-<pid>`.
    pub worker_id: Option<String>,
    /// Exit after this many jobs (tests, batch use).
    pub max_jobs: Option<usize>,
}

/// What a `serve` run did.
#[derive(Debug, Default, Clone)]
pub struct ServeSummary {
    pub jobs: HashMap<String, String>,
    pub ops_addr: Option<std::net::SocketAddr>,
}

/// How one job ended on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Success,
    Error,
    Canceled,
    /// Shutdown: checkpointed and released for another worker.
    HandedBack,
    /// Another worker took the job over (this one was presumed dead).
    Lost,
}

impl Finish {
    pub fn label(self) -> &'static str {
        match self {
            Finish::Success => "success",
            Finish::Error => "error",
            Finish::Canceled => "canceled",
            Finish::HandedBack => "handed_back",
            Finish::Lost => "lost",
        }
    }
}

/// One queue worker: its identity, the service account, and what it has seen of the queue.
pub struct Worker {
    pub id: String,
    pub(super) settings: Settings,
    pub(super) admin: GirderClient,
    pub(super) device: Device,
    pub metrics: WorkerMetrics,
    pub(super) leases: Leases,
    /// Every job runs under a child of this; any stop of it is a shutdown.
    pub(super) root: Control,
    /// When the shutdown began: final updates must land within `shutdown_grace_s` of it.
    pub(super) shutdown_at: Arc<OnceLock<tokio::time::Instant>>,
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

pub(super) fn girder_config(settings: &Settings) -> GirderConfig {
    let mut gc = GirderConfig::new(settings.girder.api_url.clone());
    gc.timeout = Duration::from_secs_f64(settings.girder.timeout_s);
    gc.retry.max_retries = settings.girder.max_retries;
    gc
}

impl Worker {
    /// A worker stopped by `shutdown` (however it is stopped, running jobs are handed back).
    /// Must be called inside a tokio runtime.
    pub fn new(settings: Settings, opts: &ServeOptions, shutdown: &Control) -> Result<Worker, WorkerError> {
        let key = settings.girder.api_key.clone().ok_or(WorkerError::NoApiKey)?;
        let admin = GirderClient::new(girder_config(&settings), Auth::ApiKey(key))?;
        let device = crate::device::open(settings.training.device)?;
        let root = shutdown.shutdown_scope();
        let shutdown_at = Arc::new(OnceLock::new());
        {
            let (root, at) = (root.clone(), shutdown_at.clone());
            tokio::spawn(async move {
                root.stopped().await;
                let _ = at.set(tokio::time::Instant::now());
            });
        }
        Ok(Worker {
            id: opts.worker_id.clone().unwrap_or_else(default_worker_id),
            leases: Leases::new(Duration::from_secs_f64(settings.queue.lease_s)),
            settings,
            admin,
            device,
            metrics: WorkerMetrics::default(),
            root,
            shutdown_at,
        })
    }

    /// One round of the queue: poll, claim the oldest takeable job, run it to its end and
    /// record how it ended. `Ok(None)`: nothing to take (or the worker is stopping); `Err`: the
    /// poll itself failed (the job's own failures are in its [`Finish`]).
    pub async fn try_execute_job(&mut self) -> Result<Option<(String, Finish)>, GirderError> {
        if self.root.is_stopped() {
            return Ok(None);
        }
        let root = self.root.clone();
        let Ok(polled) = root.race(self.poll()).await else { return Ok(None) };
        let Some((job, round)) = polled? else { return Ok(None) };
        let id = job.id.clone();
        let finish = self.run(job, round).await;
        Ok(Some((id, finish)))
    }
}

/// Runs the worker until `shutdown` is stopped (SIGTERM/SIGINT in the CLI) or `max_jobs` jobs
/// ran; the operations endpoint is drained before it returns.
pub async fn serve(
    settings: Settings,
    opts: ServeOptions,
    shutdown: Control,
) -> Result<ServeSummary, WorkerError> {
    let mut worker = Worker::new(settings, &opts, &shutdown)?;
    let mut summary = ServeSummary::default();
    let listen = worker.settings.server.listen.clone();
    let poll = worker.settings.queue.poll_interval_s;
    // degraded once polls have failed for 3 poll intervals (each waits up to 1.5 intervals)
    let health = super::http::Health::new(Duration::from_secs_f64(3.0 * 1.5 * poll));
    // the endpoint outlives the loop until we stop it below (a `max_jobs` exit stops nothing else)
    let ops_stop = worker.root.child();
    let mut ops_task = None;
    if !listen.is_empty() {
        // Girder and the device are checked in the background, once per poll interval, each
        // check given the Girder request timeout; /healthz only reads what they found
        let probes = super::http::Probes {
            client: worker.admin.clone(),
            device: worker.device,
            every: Duration::from_secs_f64(poll),
            timeout: Duration::from_secs_f64(worker.settings.girder.timeout_s),
        };
        let (addr, task) = super::http::start(
            &listen,
            worker.metrics.clone(),
            health.clone(),
            probes,
            ops_stop.token().clone(),
        )
        .await
        .map_err(|source| WorkerError::Listen { listen: listen.clone(), source })?;
        tracing::info!(%addr, "health and metrics endpoint listening");
        summary.ops_addr = Some(addr);
        ops_task = Some(task);
    }
    tracing::info!(
        worker = %worker.id,
        api_url = %crate::redact::text(&worker.settings.girder.api_url),
        job_types = ?worker.settings.queue.job_types(),
        device = %crate::device::describe(worker.device),
        "serving"
    );
    while !worker.root.is_stopped() {
        match worker.try_execute_job().await {
            Ok(Some((id, finish))) => {
                health.poll_succeeded();
                summary.jobs.insert(id, finish.label().into());
                if opts.max_jobs.is_some_and(|m| summary.jobs.len() >= m) {
                    break;
                }
                continue; // look for the next job at once
            }
            Ok(None) => health.poll_succeeded(),
            Err(e) => {
                health.poll_failed(&e.to_string());
                tracing::warn!(error = %e, "polling Girder failed; trying again");
            }
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        let _ = worker.root.race(tokio::time::sleep(Duration::from_secs_f64(poll * jitter))).await;
    }
    ops_stop.shutdown();
    if let Some(task) = ops_task {
        let _ = task.await;
    }
    tracing::info!(jobs = summary.jobs.len(), "worker stopped");
    Ok(summary)
}
