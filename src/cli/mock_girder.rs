//! `mock-girder`: run the mock Girder server standalone until Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::mock_girder::{serve, MockConfig};

#[derive(Args, Debug)]
pub struct MockGirderArgs {
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Girder's core.upload_minimum_chunk_size in bytes.
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    pub min_chunk_size: u64,
    /// Act as if a Celery worker served Girder's `local` queue: `DELETE /folder` works instead
    /// of answering 503 as a plain Girder 5 does.
    #[arg(long)]
    pub local_worker: bool,
}

pub fn run(args: MockGirderArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    runtime.block_on(async {
        let addr = SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr}"))?;
        let local = listener.local_addr().context("failed to read the listening address")?;
        eprintln!("mock Girder listening on http://{local}/api/v1 (Ctrl-C or SIGTERM stops it)");
        let config = MockConfig {
            upload_minimum_chunk_size: args.min_chunk_size,
            addr: local,
            local_worker: args.local_worker,
        };
        serve(listener, config, async {
            super::signals::termination().await;
        })
        .await
        .context("mock Girder server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}
