//! Running a claimed job to its end on this worker: the attempt guard, the request, the
//! owner check, resuming from a checkpoint, then [`crate::job::run_job`] as the submitting user
//! beside the heartbeat and the event pump ([`super::report`]), and the job's final state: the
//! one stop reason of the job's [`Control`] (cancel, shutdown, takeover) decides it, carried
//! through the job's error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::checkpoints;
use super::claim::Line;
use super::report::Shared;
use super::serve::{girder_config, Finish, Worker};
use crate::control::{Control, StopReason};
use crate::girder::{Auth, GirderClient, Job, JobStatus, JobUpdate, User};
use crate::job::events::{checkpoint_label, CHECKPOINTS_WAITING};
use crate::job::{self, Events, JobContext, JobError, JobOutcome, JobRequest};

impl Worker {
    /// Runs a claimed job to its end on this worker, counting it in the metrics.
    pub(super) async fn run(&self, job: Job, round: u64) -> Finish {
        let t0 = Instant::now();
        self.metrics.running.inc();
        let finish = self.run_inner(&job, round).await;
        self.metrics.running.dec();
        self.metrics.finished(finish.label());
        if matches!(finish, Finish::Success | Finish::Error | Finish::Canceled) {
            self.metrics.job_seconds.observe(t0.elapsed().as_secs_f64());
        }
        finish
    }

    async fn run_inner(&self, job: &Job, round: u64) -> Finish {
        if let Err((message, info)) = super::guard::record_attempt(&self.admin, job, round, &self.id).await {
            return self.fail(&job.id, &message, &info).await;
        }
        let request = match JobRequest::from_job(job, &self.settings.queue) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .fail(
                        &job.id,
                        &e.to_string(),
                        "The job was submitted without the fields this worker needs.",
                    )
                    .await
            }
        };
        let user = match GirderClient::new(girder_config(&self.settings), Auth::Token(request.token.clone()))
        {
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
        let dataset = request.dataset_id.as_ref().map(ToString::to_string).unwrap_or_default();
        let span = tracing::info_span!("job", job_id = %job.id, dataset = %dataset, user = %me.login, round);
        self.run_as_user(job, round, request, user, me).instrument(span).await
    }

    async fn run_as_user(
        &self,
        job: &Job,
        round: u64,
        request: JobRequest,
        user: GirderClient,
        me: User,
    ) -> Finish {
        let job_id = job.id.clone();
        let user_id = me.id.clone();
        // the job type named the tool; the checkpoint's own meta says its family again, so a
        // checkpoint of the other family is refused by the resume, not misread
        let resume = match checkpoints::latest(&user, &user_id, &job_id).await {
            Ok(Some((at, bytes))) => {
                let label = checkpoint_label(at.epoch, at.step);
                self.log(&job_id, &format!("Resuming from the checkpoint after {label} (round {round})."))
                    .await;
                tracing::info!(epoch = at.epoch, step = at.step, "resuming from checkpoint");
                Some(bytes)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not read checkpoints; starting from the base model");
                None
            }
        };
        let ctx = JobContext {
            client: user.clone(),
            user: Some(me),
            settings: self.settings.clone(),
            device: self.device,
            job_tag: job_id.clone(),
            resume,
            seed: 0,
        };
        // the job's own stop: the heartbeat cancels it; the worker's shutdown reaches it from above
        let control = self.root.child();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // checkpoints on a bounded channel: their bytes are shared, never copied, and training
        // waits for room before it encodes the next (3.65 GB for a Cellpose-SAM job)
        let (checkpoint_tx, checkpoint_rx) = tokio::sync::mpsc::channel(CHECKPOINTS_WAITING);
        // set when the job returns: not under `control`, since after a stop the pump must still
        // forward the shutdown checkpoint and the heartbeat must keep the lease until the end
        let finished = Control::new();
        let pump = self.pump(
            (rx, checkpoint_rx),
            job_id.clone(),
            user.clone(),
            user_id.clone(),
            shared.clone(),
            finished.clone(),
        );
        let heartbeat =
            self.heartbeat(job_id.clone(), round, control.clone(), shared.clone(), finished.clone());

        // a shutdown stops training at its next step with a checkpoint; past most of the grace
        // period, the job is abandoned and released anyway (the rest is for the final updates)
        let grace = Duration::from_secs_f64(self.settings.queue.shutdown_grace_s);
        let abandon = async {
            if control.stopped().await != StopReason::Shutdown {
                // a cancel or a takeover: the job ends on its own within a step or a request
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace.mul_f64(0.8)).await;
        };
        let work = async {
            let events = Events::new(tx).with_checkpoints(checkpoint_tx);
            type Run<'a> = std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<JobOutcome, JobError>> + Send + 'a>,
            >;
            let run: Run<'_> = Box::pin(job::run_job(&ctx, &request, &events, &control));
            let result = tokio::select! {
                r = run => Some(r),
                _ = abandon => None,
            };
            finished.shutdown();
            result
        };
        let (result, (), ()) = tokio::join!(work, heartbeat, pump);
        drop(ctx);
        let checkpoint_epoch = shared.lock().map(|s| s.checkpoint_epoch).unwrap_or(None);

        // the one stop reason decides how a stopped job ends: the job's own (its error carries
        // it from the control), or the control's when a request failed because of the stop; a
        // job abandoned at the end of the shutdown grace stopped for the shutdown, and a
        // takeover leaves even a finished job to the worker that took it
        let end = match result {
            _ if control.reason() == Some(StopReason::TakenOver) => End::Stopped(StopReason::TakenOver),
            None => End::Stopped(StopReason::Shutdown),
            Some(Ok(outcome)) => End::Done(Box::new(outcome)),
            Some(Err(e)) => match e.stop_reason().or(control.reason()) {
                Some(reason) => End::Stopped(reason),
                None => End::Failed(e),
            },
        };
        let finish = match end {
            End::Stopped(StopReason::TakenOver) => {
                tracing::warn!("another worker took this job over; stopped without uploading");
                return Finish::Lost;
            }
            End::Stopped(StopReason::Shutdown) => {
                self.hand_back(&job_id, round, checkpoint_epoch).await;
                return Finish::HandedBack;
            }
            End::Done(outcome) => {
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
            End::Stopped(StopReason::Cancel) => {
                let current =
                    self.admin.jobs().get(&job_id).await.map(|j| j.status).unwrap_or(JobStatus::CANCELED);
                let status = (current != JobStatus::CANCELED).then_some(JobStatus::CANCELED);
                let update = JobUpdate {
                    status,
                    log: Some("Canceled; nothing was uploaded.\n".into()),
                    ..Default::default()
                };
                self.final_update(&job_id, update).await;
                tracing::info!("job canceled");
                Finish::Canceled
            }
            End::Failed(e) => {
                tracing::error!(error = %e.chain(), "job failed");
                self.fail(&job_id, &e.to_string(), &e.info()).await
            }
        };
        if let Err(e) = checkpoints::remove(&user, &user_id, &job_id).await {
            tracing::warn!(error = %e, "could not remove the job's checkpoints");
        }
        finish
    }

    /// Shutdown: says so in the log, then releases the round (its own PUT, so its own log
    /// entry: what the next worker looks for).
    async fn hand_back(&self, job_id: &str, round: u64, checkpoint_epoch: Option<usize>) {
        let msg = match checkpoint_epoch {
            Some(e) => {
                format!("Worker {} shut down; handed back with a checkpoint after epoch {e}.", self.id)
            }
            None => format!("Worker {} shut down before the first checkpoint; handed back.", self.id),
        };
        let said = JobUpdate {
            progress_message: Some(msg.clone()),
            log: Some(format!("{msg}\n")),
            ..Default::default()
        };
        self.final_update(job_id, said).await;
        let release = Line::Release { round, worker: self.id.clone(), epoch: checkpoint_epoch };
        self.final_update(job_id, JobUpdate { log: Some(format!("{release}\n")), ..Default::default() })
            .await;
        tracing::info!("handed the job back");
    }
}

/// How a job ended on this worker, before it is told to Girder.
enum End {
    /// Boxed: a finished job's outcome carries its scores (clippy large_enum_variant).
    Done(Box<JobOutcome>),
    Stopped(StopReason),
    Failed(JobError),
}
