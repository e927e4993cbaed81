//! `serve`: the long-running queue worker. Polls Girder for `cellpose_train` jobs with the
//! service account, claims one with the log protocol of [`super::claim`], runs it as the
//! submitting user with [`crate::job::run_job`], and reports everything to the job: progress,
//! the one-shot mode's JSON lines in its log, heartbeats, checkpoints, and the final status.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;
use tch::Device;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::checkpoints;
use super::claim::{Line, LogState};
use super::metrics::WorkerMetrics;
use crate::config::Settings;
use crate::girder::{
    Auth, GirderClient, GirderConfig, GirderError, Job, JobFilter, JobStatus, JobUpdate, Secret,
};
use crate::job::events::{checkpoint_label, error_line, line_for};
use crate::job::{self, Controls, Events, JobContext, JobError, JobEvent};

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
    fn label(self) -> &'static str {
        match self {
            Finish::Success => "success",
            Finish::Error => "error",
            Finish::Canceled => "canceled",
            Finish::HandedBack => "handed_back",
            Finish::Lost => "lost",
        }
    }
}

/// What the platform puts in a job's kwargs (the one-shot mode's command line).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct JobRequest {
    #[serde(default = "compute")]
    pub request: String,
    #[serde(rename = "datasetId")]
    pub dataset_id: String,
    pub token: Secret,
    #[serde(default)]
    pub parameters: Value,
}

fn compute() -> String {
    "compute".into()
}

impl JobRequest {
    pub fn from_job(job: &Job) -> Result<JobRequest, String> {
        let kwargs =
            job.kwargs.clone().ok_or("the job has no kwargs (is the worker's API key an admin's?)")?;
        let req: JobRequest = serde_json::from_value(kwargs).map_err(|e| {
            format!("the job's kwargs are not {{request, datasetId, token, parameters}}: {e}")
        })?;
        if !(req.parameters.is_object() || req.parameters.is_null()) {
            return Err(format!(
                "the job's kwargs.parameters must be an object {{\"workerInterface\": {{...}}}}, not {}",
                crate::job::json_type(&req.parameters)
            ));
        }
        if req.request != "compute" {
            return Err(format!("the job asks for request `{}`; this worker runs `compute`", req.request));
        }
        Ok(req)
    }
}

/// When this worker first saw a RUNNING job in its current state (its `updated` stamp): the
/// lease is measured on our own monotonic clock, so clock skew with Girder does not matter.
struct Seen {
    updated: Option<String>,
    since: Instant,
}

pub struct Worker {
    pub id: String,
    settings: Settings,
    admin: GirderClient,
    device: Device,
    pub metrics: WorkerMetrics,
    seen: HashMap<String, Seen>,
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

fn girder_config(settings: &Settings) -> GirderConfig {
    let mut gc = GirderConfig::new(settings.girder.api_url.clone());
    gc.timeout = Duration::from_secs_f64(settings.girder.timeout_s);
    gc.retry.max_retries = settings.girder.max_retries;
    gc
}

/// A job's user-visible state while it runs.
#[derive(Default)]
struct Shared {
    fraction: f64,
    message: String,
    checkpoint_epoch: Option<usize>,
}

impl Worker {
    pub fn new(settings: Settings, opts: &ServeOptions) -> Result<Worker, WorkerError> {
        let key = settings.girder.api_key.clone().ok_or(WorkerError::NoApiKey)?;
        let admin = GirderClient::new(girder_config(&settings), Auth::ApiKey(key))?;
        let device = crate::device::parse_device(&settings.training.device)?;
        Ok(Worker {
            id: opts.worker_id.clone().unwrap_or_else(default_worker_id),
            settings,
            admin,
            device,
            metrics: WorkerMetrics::default(),
            seen: HashMap::new(),
        })
    }

    fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.settings.queue.lease_s)
    }

    /// Whether a RUNNING job's lease has run out by our observation.
    fn expired(&mut self, job: &Job) -> bool {
        let now = Instant::now();
        let seen =
            self.seen.entry(job.id.clone()).or_insert(Seen { updated: job.updated.clone(), since: now });
        if seen.updated != job.updated {
            *seen = Seen { updated: job.updated.clone(), since: now };
        }
        now.duration_since(seen.since) >= self.lease()
    }

    /// One poll: the oldest takeable job this worker won, if any.
    async fn poll(&mut self) -> Result<Option<(Job, u64)>, GirderError> {
        let filter = JobFilter {
            types: Some(vec![self.settings.queue.job_type.clone()]),
            statuses: Some(vec![JobStatus::QUEUED, JobStatus::RUNNING]),
            limit: Some(100),
            oldest_first: true,
            ..Default::default()
        };
        let jobs = self.admin.jobs().list_all(&filter).await?;
        self.seen.retain(|id, _| jobs.iter().any(|j| &j.id == id));
        for listed in jobs {
            if listed.status == JobStatus::RUNNING && !self.expired(&listed) {
                // cheap skip: a live lease, unless the round was handed back (needs the log)
                let full = self.admin.jobs().get(&listed.id).await?;
                if !LogState::of(full.log.as_deref().unwrap_or_default()).released {
                    continue;
                }
            }
            if let Some(round) = self.try_claim(&listed.id).await? {
                let job = self.admin.jobs().get(&listed.id).await?;
                return Ok(Some((job, round)));
            }
        }
        Ok(None)
    }

    /// The claim protocol of [`super::claim`]; `Some(round)` when this worker owns the job.
    async fn try_claim(&mut self, id: &str) -> Result<Option<u64>, GirderError> {
        let job = self.admin.jobs().get(id).await?;
        let state = LogState::of(job.log.as_deref().unwrap_or_default());
        let takeable = match job.status {
            JobStatus::QUEUED => true,
            JobStatus::RUNNING => state.released || self.expired(&job),
            _ => false,
        };
        if !takeable {
            return Ok(None);
        }
        if job.status == JobStatus::QUEUED {
            let running = JobUpdate { status: Some(JobStatus::RUNNING), ..Default::default() };
            match self.admin.jobs().update(id, &running).await {
                Ok(_) => {}
                // another worker moved it first; the log decides which of us owns it
                Err(GirderError::Http { status: 400, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let round = state.next_round();
        let nonce = format!("{:08x}", rand::thread_rng().gen::<u32>());
        let claim = Line::Claim { round, worker: self.id.clone(), nonce: nonce.clone() };
        self.admin
            .jobs()
            .update(id, &JobUpdate { log: Some(format!("{claim}\n")), ..Default::default() })
            .await?;
        let after = self.admin.jobs().get(id).await?;
        let won = after.status == JobStatus::RUNNING
            && LogState::of(after.log.as_deref().unwrap_or_default()).owned_by(round, &self.id, &nonce);
        if won {
            tracing::info!(job_id = id, round, "claimed job");
            if let Some(wait) = queue_wait(&after) {
                self.metrics.queue_wait_seconds.observe(wait);
            }
        } else {
            tracing::info!(job_id = id, round, "another worker claimed the job first");
            self.metrics.claims_lost.inc();
        }
        Ok(won.then_some(round))
    }

    /// Runs a claimed job to its end on this worker.
    async fn run(&self, job: Job, round: u64, shutdown: &CancellationToken) -> Finish {
        let t0 = Instant::now();
        self.metrics.running.inc();
        let finish = self.run_inner(&job, round, shutdown).await;
        self.metrics.running.dec();
        self.metrics.finished(finish.label());
        if matches!(finish, Finish::Success | Finish::Error | Finish::Canceled) {
            self.metrics.job_seconds.observe(t0.elapsed().as_secs_f64());
        }
        finish
    }

    async fn run_inner(&self, job: &Job, round: u64, shutdown: &CancellationToken) -> Finish {
        if let Err((message, info)) = super::guard::record_attempt(&self.admin, job, round, &self.id).await {
            return self.fail(&job.id, &message, &info).await;
        }
        let request = match JobRequest::from_job(job) {
            Ok(r) => r,
            Err(msg) => {
                return self
                    .fail(&job.id, &msg, "The job was submitted without the fields this worker needs.")
                    .await
            }
        };
        let user = GirderClient::new(girder_config(&self.settings), Auth::Token(request.token.clone()));
        let user = match user {
            Ok(u) => u,
            Err(e) => return self.fail(&job.id, &e.to_string(), "").await,
        };
        let me = match user.users().me().await {
            Ok(me) => me,
            Err(e) => {
                let e = JobError::from(e);
                return self.fail(&job.id, &e.to_string(), &e.info()).await;
            }
        };
        match super::guard::check_token_owner(&user, job, &me).await {
            Ok(()) => {}
            Err(super::guard::OwnerError::NotOwner(message)) => {
                return self
                    .fail(&job.id, &message, "Resubmit the job from your own NimbusImage account.")
                    .await
            }
            Err(super::guard::OwnerError::Girder(e)) => {
                let e = JobError::from(e);
                return self.fail(&job.id, &e.to_string(), &e.info()).await;
            }
        }
        let span = tracing::info_span!("job", job_id = %job.id, dataset = %request.dataset_id, user = %me.login, round);
        self.run_as_user(job, round, request, user, me.id, shutdown).instrument(span).await
    }

    async fn run_as_user(
        &self,
        job: &Job,
        round: u64,
        request: JobRequest,
        user: GirderClient,
        user_id: String,
        shutdown: &CancellationToken,
    ) -> Finish {
        let job_id = job.id.clone();
        let resume = match checkpoints::latest(&user, &user_id, &job_id).await {
            Ok(Some((at, bytes))) => {
                let label = checkpoint_label(at.epoch, at.step);
                self.log(&job_id, &format!("Resuming from the checkpoint after {label} (round {round})."))
                    .await;
                tracing::info!(epoch = at.epoch, step = at.step, "resuming from checkpoint");
                Some(bytes.to_vec())
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not read checkpoints; starting from the base model");
                None
            }
        };
        let ctx = JobContext {
            client: user.clone(),
            dataset_id: request.dataset_id.clone(),
            values: request.parameters.get("workerInterface").cloned().unwrap_or(Value::Null),
            settings: self.settings.clone(),
            device: self.device,
            job_tag: job_id.clone(),
            resume,
            seed: 0,
        };
        let controls = Controls::default();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let finished = CancellationToken::new();
        let pump =
            self.pump(rx, job_id.clone(), user.clone(), user_id.clone(), shared.clone(), finished.clone());
        let heartbeat =
            self.heartbeat(job_id.clone(), round, controls.clone(), shared.clone(), finished.clone());

        // SIGTERM: stop at the next step with a checkpoint; past the grace period, release anyway
        let stop = controls.stop.clone();
        let grace = Duration::from_secs_f64(self.settings.queue.shutdown_grace_s);
        let on_shutdown = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                stop.store(true, Ordering::SeqCst);
                tokio::time::sleep(grace.mul_f64(0.8)).await;
            }
        };
        let work = async {
            let events = Events::new(tx);
            let result = tokio::select! {
                r = job::run_job(&ctx, &events, &controls) => Some(r),
                _ = on_shutdown => None,
            };
            finished.cancel();
            result
        };
        let (result, watch, ()) = tokio::join!(work, heartbeat, pump);
        drop(ctx);
        let checkpoint_epoch = shared.lock().map(|s| s.checkpoint_epoch).unwrap_or(None);

        if watch == Watch::Lost {
            tracing::warn!("another worker took this job over; stopped without uploading");
            return Finish::Lost;
        }
        let finish = match result {
            None | Some(Err(JobError::Interrupted { .. })) => {
                let release = Line::Release { round, worker: self.id.clone(), epoch: checkpoint_epoch };
                let msg = match checkpoint_epoch {
                    Some(e) => {
                        format!(
                            "Worker {} shut down; handed back with a checkpoint after epoch {e}.",
                            self.id
                        )
                    }
                    None => format!("Worker {} shut down before the first checkpoint; handed back.", self.id),
                };
                self.final_update(
                    &job_id,
                    JobUpdate {
                        progress_message: Some(msg.clone()),
                        log: Some(format!("{msg}\n")),
                        ..Default::default()
                    },
                )
                .await;
                // its own PUT, so its own log entry: what the next worker looks for
                let release = JobUpdate { log: Some(format!("{release}\n")), ..Default::default() };
                self.final_update(&job_id, release).await;
                tracing::info!("handed the job back");
                return Finish::HandedBack;
            }
            Some(Ok(outcome)) => {
                tracing::info!(model = %outcome.model_name, seconds = outcome.seconds, "job succeeded");
                let done = JobUpdate {
                    status: Some(JobStatus::SUCCESS),
                    progress_current: Some(100.0),
                    progress_total: Some(100.0),
                    log: Some(format!(
                        "Model {} uploaded in {:.0} s.\n",
                        outcome.model_name, outcome.seconds
                    )),
                    ..Default::default()
                };
                self.final_update(&job_id, done).await;
                Finish::Success
            }
            Some(Err(JobError::Cancelled)) | Some(Err(_)) if watch == Watch::Canceled => {
                let current =
                    self.admin.jobs().get(&job_id).await.map(|j| j.status).unwrap_or(JobStatus::CANCELED);
                let status = (current != JobStatus::CANCELED).then_some(JobStatus::CANCELED);
                self.final_update(
                    &job_id,
                    JobUpdate {
                        status,
                        log: Some("Canceled; nothing was uploaded.\n".into()),
                        ..Default::default()
                    },
                )
                .await;
                tracing::info!("job canceled");
                Finish::Canceled
            }
            Some(Err(e)) => {
                tracing::error!(error.message = %e, "job failed");
                self.fail(&job_id, &e.to_string(), &e.info()).await
            }
        };
        if let Err(e) = checkpoints::remove(&user, &user_id, &job_id).await {
            tracing::warn!(error = %e, "could not remove the job's checkpoints");
        }
        finish
    }

    /// Ends the job with ERROR, the error as its last log line.
    async fn fail(&self, job_id: &str, message: &str, info: &str) -> Finish {
        self.log(job_id, &error_line(message, info)).await;
        let update = JobUpdate {
            status: Some(JobStatus::ERROR),
            log: Some(format!("Error: {}\n", one_line(message))),
            ..Default::default()
        };
        self.final_update(job_id, update).await;
        Finish::Error
    }

    async fn log(&self, job_id: &str, line: &str) {
        let update = JobUpdate { log: Some(format!("{}\n", one_line(line))), ..Default::default() };
        if let Err(e) = self.admin.jobs().update(job_id, &update).await {
            tracing::warn!(error = %e, "could not append to the job log");
        }
    }

    /// A final update must land: retried beyond the client's own retries for up to a lease.
    async fn final_update(&self, job_id: &str, update: JobUpdate) {
        let deadline = Instant::now() + self.lease();
        let mut wait = Duration::from_millis(500);
        loop {
            match self.admin.jobs().update(job_id, &update).await {
                Ok(_) => return,
                Err(GirderError::Http { status: 400, message, .. }) => {
                    tracing::warn!(%message, "Girder refused the final job update");
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "final job update failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not record the job's end in Girder");
                    return;
                }
            }
        }
    }

    /// Forwards job events to Girder: progress and JSON lines to the job, checkpoints to the
    /// user's checkpoint folder. Failures are logged; the job goes on.
    async fn pump(
        &self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<JobEvent>,
        job_id: String,
        user: GirderClient,
        user_id: String,
        shared: Arc<Mutex<Shared>>,
        finished: CancellationToken,
    ) {
        loop {
            // after the job returns, only what is already queued is forwarded (a training thread
            // abandoned at the end of the shutdown grace could otherwise keep this open)
            let event = tokio::select! {
                biased;
                e = rx.recv() => e,
                _ = finished.cancelled() => rx.try_recv().ok(),
            };
            let Some(event) = event else { break };
            let mut update =
                JobUpdate { log: line_for(&event).map(|l| format!("{l}\n")), ..Default::default() };
            match &event {
                JobEvent::Progress { fraction, title, info } => {
                    let message = if info.is_empty() { title.clone() } else { format!("{title}: {info}") };
                    if let Ok(mut s) = shared.lock() {
                        s.fraction = *fraction;
                        s.message = message.clone();
                    }
                    update.progress_current = Some((fraction * 100.0).clamp(0.0, 100.0));
                    update.progress_total = Some(100.0);
                    update.progress_message = Some(message);
                }
                JobEvent::Warning { .. } => {}
                JobEvent::Epoch(e) => self.metrics.step_seconds.observe(e.seconds_per_step),
                JobEvent::Checkpoint { epoch, step, bytes } => {
                    let at = checkpoints::Point { epoch: *epoch, step: *step };
                    match checkpoints::save(&user, &user_id, &job_id, at, bytes.clone()).await {
                        Ok(()) => {
                            if let Ok(mut s) = shared.lock() {
                                s.checkpoint_epoch = Some(*epoch);
                            }
                            let label = checkpoint_label(*epoch, *step);
                            update.log = Some(format!("Checkpoint saved after {label}.\n"));
                        }
                        Err(e) => tracing::warn!(error = %e, epoch, "could not store a checkpoint"),
                    }
                }
            }
            if update.log.is_none() && update.progress_current.is_none() {
                continue;
            }
            update.notify = Some(false);
            if let Err(e) = self.admin.jobs().update(&job_id, &update).await {
                tracing::warn!(error = %e, "could not update the job's progress");
            }
        }
    }

    /// Every `heartbeat_s`: re-reads the job (cancel? taken over?) and refreshes its progress,
    /// which renews the lease other workers watch.
    async fn heartbeat(
        &self,
        job_id: String,
        round: u64,
        controls: Controls,
        shared: Arc<Mutex<Shared>>,
        done: CancellationToken,
    ) -> Watch {
        let period = Duration::from_secs_f64(self.settings.queue.heartbeat_s);
        loop {
            tokio::select! {
                _ = done.cancelled() => return Watch::Running,
                _ = tokio::time::sleep(period) => {}
            }
            match self.admin.jobs().get(&job_id).await {
                Ok(job) if job.status == JobStatus::CANCELED || job.status == JobStatus::CANCELING => {
                    tracing::info!(status = job.status.name(), "the job was canceled in Girder; stopping");
                    controls.cancel.cancel();
                    return Watch::Canceled;
                }
                Ok(job) => {
                    let st = LogState::of(job.log.as_deref().unwrap_or_default());
                    if st.round > round {
                        controls.cancel.cancel();
                        return Watch::Lost;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat could not read the job; training goes on"),
            }
            let (fraction, message) =
                shared.lock().map(|s| (s.fraction, s.message.clone())).unwrap_or_default();
            let beat = JobUpdate {
                progress_current: Some(fraction * 100.0),
                progress_total: Some(100.0),
                progress_message: Some(message),
                notify: Some(false),
                ..Default::default()
            };
            if let Err(e) = self.admin.jobs().update(&job_id, &beat).await {
                tracing::warn!(error = %e, "heartbeat update failed; training goes on");
            }
        }
    }
}

/// `text` on one line: a message that quotes user input (a tag, a model name) can then never
/// put a line of its own, such as a forged claim marker, into the job log.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// What the heartbeat saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    Running,
    Canceled,
    Lost,
}

fn queue_wait(job: &Job) -> Option<f64> {
    let created = job.created.as_deref()?;
    let t = time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .or_else(|_| {
            time::OffsetDateTime::parse(
                &format!("{created}Z"),
                &time::format_description::well_known::Rfc3339,
            )
        })
        .ok()?;
    Some((time::OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0))
}

/// Runs the worker until `shutdown` (SIGTERM/SIGINT in the CLI) or `max_jobs` jobs.
pub async fn serve(
    settings: Settings,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> Result<ServeSummary, WorkerError> {
    let mut worker = Worker::new(settings, &opts)?;
    let mut summary = ServeSummary::default();
    let listen = worker.settings.server.listen.clone();
    let poll = worker.settings.queue.poll_interval_s;
    // degraded once polls have failed for 3 poll intervals (each waits up to 1.5 intervals)
    let polls = super::http::PollHealth::new(Duration::from_secs_f64(3.0 * 1.5 * poll));
    if !listen.is_empty() {
        let addr = super::http::start(
            &listen,
            worker.admin.clone(),
            worker.device,
            worker.metrics.clone(),
            polls.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(|source| WorkerError::Listen { listen: listen.clone(), source })?;
        tracing::info!(%addr, "health and metrics endpoint listening");
        summary.ops_addr = Some(addr);
    }
    tracing::info!(
        worker = %worker.id,
        api_url = %worker.settings.girder.api_url,
        job_type = %worker.settings.queue.job_type,
        device = %crate::device::describe(worker.device),
        "serving"
    );
    while !shutdown.is_cancelled() {
        let polled = worker.poll().await;
        match &polled {
            Ok(_) => polls.succeeded(),
            Err(e) => polls.failed(&e.to_string()),
        }
        match polled {
            Ok(Some((job, round))) => {
                let finish = worker.run(job.clone(), round, &shutdown).await;
                summary.jobs.insert(job.id.clone(), finish.label().into());
                if opts.max_jobs.is_some_and(|m| summary.jobs.len() >= m) {
                    break;
                }
                continue; // look for the next job at once
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "polling Girder failed; trying again"),
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs_f64(poll * jitter)) => {}
        }
    }
    tracing::info!(jobs = summary.jobs.len(), "worker stopped");
    Ok(summary)
}
