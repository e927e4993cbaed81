//! Tracing set-up in one place: human-readable or JSON lines on stderr, filtered by `RUST_LOG`,
//! every record redacted ([`crate::redact`]) on its way out.

use tracing_subscriber::{fmt, EnvFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// Installs the global subscriber; later calls are no-ops (tests may call it repeatedly).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(crate::redact::RedactedStderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// A task on the blocking pool died without returning (it panicked): a bug in this worker, never
/// the user's input.
#[derive(Debug, thiserror::Error)]
#[error("internal error in {what}: {detail} (a bug in the worker; please report it with the worker log)")]
pub struct TaskPanicked {
    pub what: &'static str,
    pub detail: String,
}

/// Runs CPU-heavy `f` on tokio's blocking pool inside the caller's tracing span, so every log
/// line from that thread still carries the job's fields (job id, dataset, user). Plain
/// `spawn_blocking` starts the closure with no span at all.
pub(crate) async fn spawn_blocking_in_span<T, F>(what: &'static str, f: F) -> Result<T, TaskPanicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| TaskPanicked { what, detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_blocking_closure_runs_in_the_callers_span_and_a_panic_is_an_error() {
        use tracing::Instrument;
        use tracing_subscriber::util::SubscriberInitExt;
        // a subscriber gives spans ids (without one every span is disabled and has none)
        let _ = tracing_subscriber::registry().try_init();
        let span = tracing::info_span!("job", job_id = "j1");
        let inner = async { spawn_blocking_in_span("test", || tracing::Span::current().id()).await.unwrap() }
            .instrument(span.clone())
            .await;
        assert!(span.id().is_some(), "the test subscriber did not install");
        assert_eq!(inner, span.id(), "the blocking thread ran outside the job span");
        let err = spawn_blocking_in_span::<(), _>("boom", || panic!("kaboom")).await.unwrap_err();
        assert_eq!(err.what, "boom");
        assert!(err.to_string().contains("a bug in the worker"), "{err}");
    }
}
