//! Checks a claimed job passes before it runs: it has not crashed workers before (poison pills,
//! see [`super::claim`]), and its token belongs to its owner.

use super::claim::{died_attempts, Line, MAX_CRASHED};
use crate::girder::{GirderClient, Job, JobFilter, JobStatus, JobUpdate, User};

/// Refuses a job whose last [`MAX_CRASHED`] attempts died without progress; otherwise appends
/// this worker's `attempt` line (in its own `PUT`, before anything is downloaded or loaded).
/// The error is (message, info) for the job's error line.
pub(crate) async fn record_attempt(
    admin: &GirderClient,
    job: &Job,
    round: u64,
    worker: &str,
) -> Result<(), (String, String)> {
    let died = died_attempts(job.log.as_deref().unwrap_or_default());
    if died.len() >= MAX_CRASHED {
        let who: Vec<String> = died.iter().map(|d| format!("{} (round {})", d.worker, d.round)).collect();
        return Err((
            format!(
                "this job crashed {} workers: {} stopped without a word and without saving a checkpoint; \
                 it is not run again so that it cannot take down the next worker",
                died.len(),
                who.join(", ")
            ),
            "Check the Base Model file and the dataset's images; resubmit with another base model. \
             The administrator finds the crash in the workers' logs."
                .into(),
        ));
    }
    let line = Line::Attempt { round, worker: worker.to_string() };
    let update = JobUpdate { log: Some(format!("{line}\n")), ..Default::default() };
    if let Err(e) = admin.jobs().update(&job.id, &update).await {
        // without the marker a crash of this attempt would go uncounted; run anyway (the lease
        // still protects the queue) but say so
        tracing::warn!(error = %e, "could not record the attempt in the job log");
    }
    Ok(())
}

/// A job runs only with a token of its owner: a queued job whose `kwargs.token` belongs to
/// someone else would read and write that other user's data.
///
/// Girder does not show a job's `userId` to anyone (girder_jobs exposes no such field), so the
/// owner is checked the one way Girder allows: `GET /job` with the job's token lists that user's
/// own jobs, and the claimed (RUNNING) job must be among them. `Err` is the job's error message,
/// or the Girder error when the listing itself failed.
pub(crate) async fn check_token_owner(user: &GirderClient, job: &Job, me: &User) -> Result<(), OwnerError> {
    let filter = JobFilter {
        types: Some(vec![job.job_type.clone()]),
        statuses: Some(vec![JobStatus::RUNNING]),
        limit: Some(0),
        ..Default::default()
    };
    let own = user.jobs().list(&filter).await.map_err(OwnerError::Girder)?;
    if own.iter().any(|j| j.id == job.id) {
        Ok(())
    } else {
        Err(OwnerError::NotOwner(format!(
            "the job's token belongs to user {} ({}), who does not own this job; the job is not run \
             with another user's token",
            me.login, me.id
        )))
    }
}

/// Why [`check_token_owner`] refused.
#[derive(Debug)]
pub(crate) enum OwnerError {
    NotOwner(String),
    Girder(crate::girder::GirderError),
}
