//! What a running job tells Girder: the event pump (progress and JSON lines to the job's log,
//! checkpoints to the user's checkpoint folder), the heartbeat that renews the lease and
//! watches for a cancel or a takeover, and the final updates that must land.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;

use tokio::sync::mpsc::{Receiver, UnboundedReceiver};

use super::checkpoints;
use super::claim::{checkpoint_saved_line, LogState};
use super::serve::Worker;
use crate::control::{Control, StopReason};
use crate::girder::{GirderClient, GirderError, JobStatus, JobUpdate, RetryPolicy};
use crate::job::events::{error_line, line_for, Checkpoint};
use crate::job::JobEvent;

/// A job's user-visible state while it runs.
#[derive(Default)]
pub(super) struct Shared {
    pub fraction: f64,
    pub message: String,
    pub checkpoint_epoch: Option<usize>,
}

/// `text` on one line: a message that quotes user input (a tag, a model name) can then never
/// put a line of its own, such as a forged claim marker, into the job log.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

impl Worker {
    /// Ends the job with ERROR, the error as its last log line.
    pub(super) async fn fail(&self, job_id: &str, message: &str, info: &str) -> super::serve::Finish {
        self.log(job_id, &error_line(message, info)).await;
        let update = JobUpdate {
            status: Some(JobStatus::ERROR),
            log: Some(format!("Error: {}\n", one_line(message))),
            ..Default::default()
        };
        self.final_update(job_id, update).await;
        super::serve::Finish::Error
    }

    pub(super) async fn log(&self, job_id: &str, line: &str) {
        let update = JobUpdate { log: Some(format!("{}\n", one_line(line))), ..Default::default() };
        if let Err(e) = self.admin.jobs().update(job_id, &update).await {
            tracing::warn!(error = %e, "could not append to the job log");
        }
    }

    /// A final update must land: retried with [`RetryPolicy`]'s backoff for up to a lease, or,
    /// once the worker is shutting down, only until `shutdown_grace_s` after the shutdown began
    /// (each attempt is cut off at that deadline too).
    pub(super) async fn final_update(&self, job_id: &str, update: JobUpdate) {
        let now = tokio::time::Instant::now();
        let grace = Duration::from_secs_f64(self.settings.queue.shutdown_grace_s);
        let deadline = match self.shutdown_at.get() {
            Some(t0) => (*t0 + grace).min(now + self.leases.lease()),
            None => now + self.leases.lease(),
        };
        let policy = RetryPolicy {
            max_retries: u32::MAX,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_elapsed: deadline.saturating_duration_since(now),
        };
        let mut rng = rand_chacha::ChaCha8Rng::from_entropy();
        for retry in 0u32.. {
            let attempt = tokio::time::timeout_at(deadline, self.admin.jobs().update(job_id, &update)).await;
            let err = match attempt {
                Ok(Ok(_)) => return,
                Ok(Err(GirderError::Http { status: 400, message, .. })) => {
                    tracing::warn!(%message, "Girder refused the final job update");
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer before the deadline".to_string(),
            };
            match policy.backoff(retry, now.elapsed(), None, &mut rng) {
                Some(wait) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::warn!(error = %err, "final job update failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    tracing::error!(error = %err, "could not record the job's end in Girder");
                    return;
                }
            }
        }
    }

    /// Forwards job events to Girder: progress and JSON lines to the job, checkpoints to the
    /// user's checkpoint folder. Failures are logged; the job goes on.
    pub(super) async fn pump(
        &self,
        (mut events, mut checkpoints): (UnboundedReceiver<JobEvent>, Receiver<Checkpoint>),
        job_id: String,
        user: GirderClient,
        user_id: String,
        shared: Arc<Mutex<Shared>>,
        finished: Control,
    ) {
        loop {
            // after the job returns, only what is already queued is forwarded (a training thread
            // abandoned at the end of the shutdown grace could otherwise keep this open)
            let event = tokio::select! {
                biased;
                Some(e) = events.recv() => e,
                Some(c) = checkpoints.recv() => {
                    self.store_checkpoint(&user, &user_id, &job_id, c, &shared).await;
                    continue;
                }
                _ = finished.stopped() => match (events.try_recv(), checkpoints.try_recv()) {
                    (Ok(e), _) => e,
                    (Err(_), Ok(c)) => {
                        self.store_checkpoint(&user, &user_id, &job_id, c, &shared).await;
                        continue;
                    }
                    (Err(_), Err(_)) => break,
                },
                else => break,
            };
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
            }
            if update.log.is_none() && update.progress_current.is_none() {
                continue;
            }
            self.update_progress(&job_id, update).await;
        }
    }

    /// Stores `c` in the user's checkpoint folder (its bytes shared, not copied) and says so in
    /// the job's log; a failure is logged and the job goes on.
    async fn store_checkpoint(
        &self,
        user: &GirderClient,
        user_id: &str,
        job_id: &str,
        c: Checkpoint,
        shared: &Mutex<Shared>,
    ) {
        let Checkpoint { epoch, step, bytes } = c;
        match checkpoints::save(user, user_id, job_id, checkpoints::Point { epoch, step }, bytes).await {
            Ok(()) => {
                if let Ok(mut s) = shared.lock() {
                    s.checkpoint_epoch = Some(epoch);
                }
                let log = Some(format!("{}\n", checkpoint_saved_line(epoch, step)));
                self.update_progress(job_id, JobUpdate { log, ..Default::default() }).await;
            }
            Err(e) => tracing::warn!(error = %e, epoch, "could not store a checkpoint"),
        }
    }

    /// A progress update or a log line of the running job, without notifications.
    async fn update_progress(&self, job_id: &str, mut update: JobUpdate) {
        update.notify = Some(false);
        if let Err(e) = self.admin.jobs().update(job_id, &update).await {
            tracing::warn!(error = %e, "could not update the job's progress");
        }
    }

    /// Every `heartbeat_s`: re-reads the job (cancel? taken over?) and refreshes its progress,
    /// which renews the lease other workers watch. Stops the job's `control` on a cancel
    /// ([`StopReason::Cancel`]) or a takeover ([`StopReason::TakenOver`]): the reason is all the
    /// job's end needs to know. Returns when `done`.
    pub(super) async fn heartbeat(
        &self,
        job_id: String,
        round: u64,
        control: Control,
        shared: Arc<Mutex<Shared>>,
        done: Control,
    ) {
        let period = Duration::from_secs_f64(self.settings.queue.heartbeat_s);
        loop {
            if done.race(tokio::time::sleep(period)).await.is_err() {
                return;
            }
            match self.admin.jobs().get(&job_id).await {
                Ok(job) if job.status == JobStatus::CANCELED || job.status == JobStatus::CANCELING => {
                    tracing::info!(status = job.status.name(), "the job was canceled in Girder; stopping");
                    control.stop(StopReason::Cancel);
                    return;
                }
                Ok(job) => {
                    let st = LogState::of(job.log.as_deref().unwrap_or_default());
                    if st.round > round {
                        control.stop(StopReason::TakenOver);
                        return;
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
