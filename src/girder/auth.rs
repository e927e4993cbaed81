//! Credentials: a token used as is, or an API key exchanged for a token and renewed before it
//! expires.
//!
//! Secrets live in [`Secret`], whose `Debug` and `Display` print `***`, so a token or key cannot
//! reach a log line or an error message by accident; the only way out is [`Secret::expose`], used
//! where the value goes onto the wire. Every secret is also registered with [`crate::redact`]
//! when it is made, so that a server quoting it back (an error body that echoes the request)
//! cannot carry it out either.

use std::time::{Duration, Instant};

use serde::Deserialize;
use time::OffsetDateTime;

/// A token, API key or password. Prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        crate::redact::register(&value);
        Secret(value)
    }

    /// The secret itself, for the header or parameter that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// How a client authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Send this token as `Girder-Token`.
    Token(Secret),
    /// Exchange this key at `POST /api_key/token`, renewing the token before it expires.
    ApiKey(Secret),
    /// Send no token (logging in, creating the first user, public resources).
    Anonymous,
}

/// `authToken` as Girder returns it from `/api_key/token`, `/user/authentication` and `POST /user`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthToken {
    pub token: Secret,
    /// ISO-8601, e.g. `2026-11-29T17:21:35.075593+00:00`.
    pub expires: Option<String>,
    #[serde(default)]
    pub scope: Option<Vec<String>>,
}

/// A token obtained from an API key, with the instant at which to exchange the key again.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub token: Secret,
    pub renew_at: Instant,
}

/// Used when `expires` is missing or unreadable; a 401 also forces a renewal.
const FALLBACK_LIFETIME: Duration = Duration::from_secs(3600);
/// Renewal happens this long before expiry at most ...
const MAX_MARGIN: Duration = Duration::from_secs(300);

impl Issued {
    /// Renews at 80% of the remaining lifetime, but never earlier than 5 minutes before expiry:
    /// a week-long token is renewed 5 minutes early, a 1-second test token after 0.8 s.
    pub fn new(token: AuthToken, now: Instant, wall_now: OffsetDateTime) -> Issued {
        let remaining = token
            .expires
            .as_deref()
            .and_then(|e| OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok())
            .map(|exp| {
                let secs = (exp - wall_now).as_seconds_f64();
                Duration::from_secs_f64(secs.max(0.0))
            })
            .unwrap_or(FALLBACK_LIFETIME);
        let margin = remaining.mul_f64(0.2).min(MAX_MARGIN);
        Issued { token: token.token, renew_at: now + (remaining - margin) }
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.renew_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires: Option<&str>) -> AuthToken {
        AuthToken { token: Secret::new("t"), expires: expires.map(str::to_string), scope: None }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s} {s:?} {:?}", Auth::ApiKey(s.clone())), "*** *** ApiKey(***)");
    }

    #[test]
    fn a_week_long_token_is_renewed_five_minutes_before_expiry() {
        let wall = OffsetDateTime::parse(
            "2026-11-22T17:21:35+00:00",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let now = Instant::now();
        let issued = Issued::new(token(Some("2026-11-29T17:21:35.075593+00:00")), now, wall);
        let lead = Duration::from_secs(7 * 86400) - (issued.renew_at - now);
        assert!(lead > Duration::from_secs(299) && lead < Duration::from_secs(301), "{lead:?}");
    }

    #[test]
    fn a_short_token_is_renewed_at_80_percent_and_a_missing_expiry_after_an_hour() {
        let wall = OffsetDateTime::UNIX_EPOCH;
        let now = Instant::now();
        let issued = Issued::new(token(Some("1970-01-01T00:00:10+00:00")), now, wall);
        assert_eq!(issued.renew_at - now, Duration::from_secs(8));
        assert!(issued.is_fresh(now) && !issued.is_fresh(now + Duration::from_secs(8)));
        let issued = Issued::new(token(Some("not a date")), now, wall);
        assert_eq!(issued.renew_at - now, Duration::from_secs(3300));
    }
}
