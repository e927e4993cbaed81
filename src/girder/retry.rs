//! When and how long to wait before trying a Girder call again.
//!
//! Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
//! attempt `n` sleeps a uniform random time in `[0, min(max_backoff, initial * 2^n)]`, so many
//! workers retrying together spread out. Retries stop at `max_retries` or once `max_elapsed` has
//! passed since the first try, whichever comes first.

use std::time::Duration;

use rand::Rng;

/// Bounds on retrying transient failures (timeouts, connection errors, 429, 5xx).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try; 0 disables retrying.
    pub max_retries: u32,
    /// Upper bound of the first backoff.
    pub initial_backoff: Duration,
    /// Cap on any single backoff.
    pub max_backoff: Duration,
    /// No retry starts after this much time since the first try.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        RetryPolicy { max_retries: 0, ..Default::default() }
    }

    /// The backoff before retry number `retry` (0-based), or `None` when the budget is spent.
    /// `server_hint` is a `Retry-After` the server sent; it replaces the jittered value but is
    /// still capped by `max_backoff`.
    pub fn backoff(
        &self,
        retry: u32,
        elapsed: Duration,
        server_hint: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if retry >= self.max_retries || elapsed >= self.max_elapsed {
            return None;
        }
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let wait = match server_hint {
            Some(hint) => hint.min(self.max_backoff),
            None => ceiling.mul_f64(rng.gen::<f64>()),
        };
        // never sleep past the overall deadline
        Some(wait.min(self.max_elapsed - elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_exponentially_under_its_cap_with_jitter() {
        let p = RetryPolicy { max_retries: 10, max_elapsed: Duration::from_secs(3600), ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for retry in 0..10 {
            let ceiling = (Duration::from_millis(200) * 2u32.pow(retry)).min(Duration::from_secs(10));
            let waits: Vec<_> =
                (0..50).map(|_| p.backoff(retry, Duration::ZERO, None, &mut rng).unwrap()).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "retry {retry}");
            assert!(waits.iter().any(|w| *w > ceiling / 2), "jitter never reaches the upper half at {retry}");
            assert!(waits.iter().any(|w| *w < ceiling / 2), "jitter never reaches the lower half at {retry}");
        }
    }

    #[test]
    fn budget_is_bounded_by_count_and_by_elapsed_time() {
        let p = RetryPolicy::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert!(p.backoff(4, Duration::ZERO, None, &mut rng).is_some());
        assert!(p.backoff(5, Duration::ZERO, None, &mut rng).is_none());
        assert!(p.backoff(0, Duration::from_secs(60), None, &mut rng).is_none());
        let last =
            p.backoff(0, Duration::from_millis(59_950), Some(Duration::from_secs(5)), &mut rng).unwrap();
        assert_eq!(last, Duration::from_millis(50));
        assert!(RetryPolicy::none().backoff(0, Duration::ZERO, None, &mut rng).is_none());
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = RetryPolicy::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            p.backoff(0, Duration::ZERO, Some(Duration::from_secs(3)), &mut rng),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            p.backoff(0, Duration::ZERO, Some(Duration::from_secs(99)), &mut rng),
            Some(Duration::from_secs(10))
        );
    }
}
