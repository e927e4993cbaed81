//! Checks a claimed job passes before it runs: it has not crashed workers before (poison pills,
//! see [`super::claim`]), and its token belongs to its owner.

use super::claim::{died_attempts, Line, MAX_CRASHED};
use crate::girder::{GirderClient, Job, JobUpdate, User};

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
pub(crate) fn check_token_owner(job: &Job, me: &User) -> Result<(), String> {
    match job.user_id.as_deref() {
        Some(owner) if owner == me.id => Ok(()),
        Some(owner) => Err(format!(
            "the job's token belongs to user {} ({}), not to the job's owner (user id {owner}); \
             the job is not run with another user's token",
            me.login, me.id
        )),
        None => Err("the job has no owner (userId), so its token cannot be checked; it is not run".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user: Option<&str>) -> Job {
        serde_json::from_value(serde_json::json!({
            "_id": "j1", "title": "t", "type": "cellpose_train", "status": 0, "userId": user
        }))
        .unwrap()
    }

    #[test]
    fn only_the_owners_token_runs_a_job() {
        let me: User = serde_json::from_value(serde_json::json!({"_id": "u1", "login": "alice"})).unwrap();
        assert!(check_token_owner(&job(Some("u1")), &me).is_ok());
        let err = check_token_owner(&job(Some("u2")), &me).unwrap_err();
        assert!(err.contains("alice") && err.contains("u2"), "{err}");
        assert!(check_token_owner(&job(None), &me).is_err());
    }
}
