//! `serve`: the long-running queue worker (see [`crate::worker`]). SIGTERM/SIGINT stop claiming,
//! checkpoint the running job, hand it back and exit 0 within `[queue] shutdown_grace_s`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::Settings;
use crate::control::Control;
use crate::worker::{serve, ServeOptions};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Settings file (default: ./worker.toml when present). CPW_<SECTION>__<KEY> variables
    /// override it; the service account's API key comes only from CPW_GIRDER__API_KEY.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Name in claim lines and logs (default: <hostname>-<pid>).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Exit after this many jobs.
    #[arg(long)]
    pub max_jobs: Option<usize>,
}

pub fn load_settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    Ok(Settings::load(args.config.as_deref())?)
}

pub fn run(args: ServeArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(async {
        let shutdown = Control::new();
        tokio::spawn(on_signal(shutdown.clone()));
        let opts = ServeOptions { worker_id: args.worker_id, max_jobs: args.max_jobs };
        let summary = serve(settings, opts, shutdown).await?;
        tracing::info!(jobs = ?summary.jobs, "served");
        Ok(ExitCode::SUCCESS)
    })
}

/// Shuts the worker down on SIGTERM (container stop) or SIGINT (Ctrl-C).
async fn on_signal(shutdown: Control) {
    let signal = super::signals::termination().await;
    tracing::info!(signal, "finishing up");
    shutdown.shutdown();
}
