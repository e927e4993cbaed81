//! When another worker's RUNNING job may be taken over: its lease has run out by *our*
//! observation. The lease is measured on this worker's monotonic clock (tokio's, so tests can
//! pause it) from the first time we saw the job in its current state (its `updated` stamp), so
//! clock skew with Girder or other workers does not matter.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::girder::Job;

struct Seen {
    updated: Option<String>,
    since: Instant,
}

/// What this worker has seen of RUNNING jobs.
pub struct Leases {
    lease: Duration,
    seen: HashMap<String, Seen>,
}

impl Leases {
    pub fn new(lease: Duration) -> Leases {
        Leases { lease, seen: HashMap::new() }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether `job`'s lease has run out: unchanged for a whole lease since we first saw it so.
    pub fn expired(&mut self, job: &Job) -> bool {
        let now = Instant::now();
        let seen =
            self.seen.entry(job.id.clone()).or_insert(Seen { updated: job.updated.clone(), since: now });
        if seen.updated != job.updated {
            *seen = Seen { updated: job.updated.clone(), since: now };
        }
        now.duration_since(seen.since) >= self.lease
    }

    /// Forgets jobs no longer listed (finished or deleted).
    pub(crate) fn retain_listed(&mut self, listed: &[Job]) {
        self.seen.retain(|id, _| listed.iter().any(|j| &j.id == id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(updated: &str) -> Job {
        serde_json::from_value(serde_json::json!({
            "_id": "j1", "title": "t", "type": "cellpose_train", "status": 2, "updated": updated
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_runs_out_only_after_a_whole_lease_without_a_heartbeat() {
        let mut leases = Leases::new(Duration::from_secs(120));
        assert!(!leases.expired(&job("t0")), "first sight starts the lease");
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(!leases.expired(&job("t0")));
        // a heartbeat (new `updated`) renews it
        assert!(!leases.expired(&job("t1")));
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(!leases.expired(&job("t1")));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(leases.expired(&job("t1")), "120 s unchanged: expired");
        leases.retain_listed(&[]);
        assert!(!leases.expired(&job("t1")), "a forgotten job starts over");
    }
}
