//! How a running job is told to stop: one value, passed down from `serve` (or the CLI) through
//! every stage of the job into the training loop.
//!
//! A [`Control`] is a node in a tree of cancellation tokens plus the reason it was stopped.
//! Stopping a node stops its descendants: the worker's root is stopped with
//! [`StopReason::Shutdown`] on SIGTERM, and every job runs under a child that the heartbeat stops
//! with [`StopReason::Cancel`] when the job is canceled in Girder, or with
//! [`StopReason::TakenOver`] when another worker took it over. The reasons end a job
//! differently, which is why they travel with the token, through the trainer's and the job's
//! errors, to the job's final status: a cancel uploads nothing and ends the job CANCELED; a
//! shutdown checkpoints and hands the job back for another worker to resume; a takeover leaves
//! the job to the worker that took it.
//!
//! Async code races its long awaits against [`Control::stopped`] (see [`Control::race`]);
//! blocking code (training steps, scoring) polls [`Control::reason`] between units of work.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Why a job was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The user canceled the job: nothing is uploaded, the job ends CANCELED.
    Cancel,
    /// The worker is shutting down: checkpoint and hand the job back.
    Shutdown,
    /// Another worker took the job over (this one was presumed dead): nothing is uploaded and
    /// the job's status is the other worker's to set.
    TakenOver,
}

impl StopReason {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            StopReason::Cancel => "canceled",
            StopReason::Shutdown => "shutting down",
            StopReason::TakenOver => "taken over by another worker",
        }
    }
}

/// A node of the stop tree; cheap to clone (clones are the same node).
#[derive(Debug, Clone, Default)]
pub struct Control {
    token: CancellationToken,
    /// Set once, by the first stop of this node.
    reason: Arc<OnceLock<StopReason>>,
    /// Where a stop that came from above was decided.
    parent: Option<Box<Control>>,
}

impl Control {
    /// A root that nothing stops but itself.
    pub fn new() -> Control {
        Control::default()
    }

    /// A node stopped with its parent (with the parent's reason) or on its own.
    pub fn child(&self) -> Control {
        Control {
            token: self.token.child_token(),
            reason: Arc::default(),
            parent: Some(Box::new(self.clone())),
        }
    }

    /// A child whose every stop from above reads as a shutdown, whatever reason stopped the
    /// ancestor: `serve` runs its jobs under one, so stopping the worker (however its caller does
    /// it) hands jobs back and never marks them canceled. Its children's own stops keep theirs.
    pub(crate) fn shutdown_scope(&self) -> Control {
        let reason = OnceLock::new();
        let _ = reason.set(StopReason::Shutdown);
        Control {
            token: self.token.child_token(),
            reason: Arc::new(reason),
            parent: Some(Box::new(self.clone())),
        }
    }

    /// Stops this node and its descendants with `reason`; a later stop keeps the first reason.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn cancel(&self) {
        self.stop(StopReason::Cancel)
    }

    pub fn shutdown(&self) {
        self.stop(StopReason::Shutdown)
    }

    /// `None` while running; once stopped, why (its own reason, else the ancestor's that
    /// stopped it).
    pub fn reason(&self) -> Option<StopReason> {
        if !self.token.is_cancelled() {
            return None;
        }
        let mut node = Some(self);
        while let Some(n) = node {
            if let Some(r) = n.reason.get() {
                return Some(*r);
            }
            node = n.parent.as_deref();
        }
        // a token canceled from outside this API: the safe reading is "nothing uploaded"
        Some(StopReason::Cancel)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once this node is stopped, with the reason.
    pub async fn stopped(&self) -> StopReason {
        self.token.cancelled().await;
        self.reason().unwrap_or(StopReason::Cancel)
    }

    /// Runs `fut` unless the node is stopped first: `Err(reason)` then, and `fut` is dropped
    /// (an HTTP request in flight is abandoned; nothing half-done is kept by the callers).
    pub async fn race<T>(&self, fut: impl Future<Output = T>) -> Result<T, StopReason> {
        tokio::select! {
            biased;
            r = self.stopped() => Err(r),
            v = fut => Ok(v),
        }
    }

    /// The underlying token, for APIs that take one (axum's graceful shutdown).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_stops_with_its_parent_and_takes_its_reason() {
        let root = Control::new();
        let job = root.child();
        assert_eq!(job.reason(), None);
        root.shutdown();
        assert!(job.is_stopped());
        assert_eq!(job.reason(), Some(StopReason::Shutdown));
    }

    #[test]
    fn a_child_stopped_alone_leaves_the_parent_running_and_keeps_its_first_reason() {
        let root = Control::new();
        let job = root.child();
        job.cancel();
        job.shutdown();
        assert_eq!(job.reason(), Some(StopReason::Cancel));
        assert_eq!(root.reason(), None);
        // the worker shutting down later does not turn a cancel into a hand-back
        root.shutdown();
        assert_eq!(job.reason(), Some(StopReason::Cancel));
    }

    #[test]
    fn under_a_shutdown_scope_any_stop_from_above_is_a_shutdown() {
        let outer = Control::new();
        let scope = outer.shutdown_scope();
        let (a, b) = (scope.child(), scope.child());
        b.cancel();
        outer.cancel();
        assert_eq!(a.reason(), Some(StopReason::Shutdown));
        assert_eq!(b.reason(), Some(StopReason::Cancel));
    }

    #[tokio::test]
    async fn race_returns_the_reason_when_stopped_first_and_the_value_otherwise() {
        let c = Control::new();
        assert_eq!(c.race(async { 7 }).await, Ok(7));
        let c2 = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            c2.cancel();
        });
        let slow = c.race(tokio::time::sleep(std::time::Duration::from_secs(60))).await;
        assert_eq!(slow, Err(StopReason::Cancel));
    }
}
