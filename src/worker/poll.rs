//! Finding and claiming a job: the oldest QUEUED job, or a RUNNING one whose lease ran out
//! ([`super::lease`]) or whose round was handed back, claimed with the log protocol of
//! [`super::claim`].

use rand::Rng;

use super::claim::{Line, LogState};
use super::serve::Worker;
use crate::girder::{GirderError, Job, JobFilter, JobStatus, JobUpdate};

impl Worker {
    /// One poll: the oldest takeable job this worker won, if any, with its claim round.
    pub(super) async fn poll(&mut self) -> Result<Option<(Job, u64)>, GirderError> {
        let filter = JobFilter {
            types: Some(self.settings.queue.job_types()),
            statuses: Some(vec![JobStatus::QUEUED, JobStatus::RUNNING]),
            limit: Some(100),
            oldest_first: true,
            ..Default::default()
        };
        let jobs = self.admin.jobs().list_all(&filter).await?;
        self.leases.retain_listed(&jobs);
        for listed in jobs {
            if listed.status == JobStatus::RUNNING && !self.leases.expired(&listed) {
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
            JobStatus::RUNNING => state.released || self.leases.expired(&job),
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
}

/// Seconds from the job's creation to now (the queue-wait metric).
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
