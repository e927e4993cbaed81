//! The signals that stop a process of this binary: SIGTERM (`docker stop`, girder_worker
//! cancelling a container, Kubernetes) and SIGINT (Ctrl-C).
//!
//! Why both, and why a handler at all: in a container this binary is PID 1, and the kernel drops
//! every signal PID 1 has no handler for. Listening only for Ctrl-C left SIGTERM ignored, so
//! `docker stop` waited its 10 s grace and then killed the process with SIGKILL, mid-upload.

/// Waits for SIGTERM or SIGINT and returns the signal's name. Pending forever when the handlers
/// cannot be installed (logged): the process can then still be killed.
pub(crate) async fn termination() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            tracing::warn!("cannot listen for SIGTERM/SIGINT; stop this process with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            return std::future::pending().await;
        }
        "Ctrl-C"
    }
}
