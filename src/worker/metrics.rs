//! What an operator scrapes from `/metrics` (Prometheus/OpenMetrics text): jobs by final status,
//! job duration, training step time, queue wait, and the `/healthz` answer.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// The worker's metrics; clones share them.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Arc<Mutex<Registry>>,
    /// Jobs this worker finished, by final status (success, error, canceled, handed_back, lost).
    pub jobs: Family<StatusLabel, Counter>,
    pub running: Gauge,
    pub job_seconds: Histogram,
    pub step_seconds: Histogram,
    /// From the job's creation in Girder to this worker's claim.
    pub queue_wait_seconds: Histogram,
    pub claims_lost: Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cellpose_worker");
        let jobs = Family::<StatusLabel, Counter>::default();
        let running = Gauge::default();
        let job_seconds = Histogram::new(exponential_buckets(10.0, 2.0, 12));
        let step_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let queue_wait_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let claims_lost = Counter::default();
        registry.register("jobs", "Jobs finished by this worker, by final status", jobs.clone());
        registry.register("jobs_running", "Jobs running on this worker now", running.clone());
        registry.register("job_duration_seconds", "Wall time of finished jobs", job_seconds.clone());
        registry.register(
            "training_step_seconds",
            "Seconds per training step (per epoch mean)",
            step_seconds.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time from job creation to claim",
            queue_wait_seconds.clone(),
        );
        registry.register("claims_lost", "Claims another worker won", claims_lost.clone());
        WorkerMetrics {
            registry: Arc::new(Mutex::new(registry)),
            jobs,
            running,
            job_seconds,
            step_seconds,
            queue_wait_seconds,
            claims_lost,
        }
    }
}

impl WorkerMetrics {
    pub fn finished(&self, status: &str) {
        self.jobs.get_or_create(&StatusLabel { status: status.into() }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // writing into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
