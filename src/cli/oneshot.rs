//! NimbusImage's worker-container contract, so the platform can run this binary as its worker
//! image: `--apiUrl URL --token T --request interface|compute --parameters JSON [--datasetId ID]`.
//! `interface` posts the tool's interface; `compute` runs the training job and prints the JSON
//! progress/warning/error lines NimbusImage's client parses on stdout (logs go to stderr). Both
//! tools, "Cellpose retrain" (CPnet) and "Cellpose-SAM retrain", are served by the one binary.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::Settings;
use crate::control::Control;
use crate::girder::{Auth, GirderClient, GirderConfig, Secret};
use crate::job::events::{error_line, line_for};
use crate::job::family::{facts, Facts};
use crate::job::params::interface_json;
use crate::job::{self, store, Events, JobContext, JobRequest, Request};

/// The container contract's flags (camelCase, as NimbusImage passes them).
#[derive(Args, Debug, Default)]
pub struct OneShotArgs {
    /// Girder API URL, e.g. http://girder:8080/api/v1.
    #[arg(long = "apiUrl")]
    pub api_url: Option<String>,
    /// The user's Girder token.
    #[arg(long)]
    pub token: Option<String>,
    /// `interface` or `compute`.
    #[arg(long, value_enum)]
    pub request: Option<Request>,
    /// The tool parameters as JSON (NimbusImage's `params`).
    #[arg(long)]
    pub parameters: Option<String>,
    #[arg(long = "datasetId")]
    pub dataset_id: Option<String>,
    /// Settings file (default: worker.toml if present; CPW_* variables apply too).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

impl OneShotArgs {
    pub fn requested(&self) -> bool {
        self.request.is_some()
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// Runs the requested action; on error the error line is printed before exiting non-zero. A
/// `compute` that cannot even start (bad flags, settings or `--parameters`) prints one too, so
/// NimbusImage shows the user why instead of a job that silently failed.
pub fn run(args: OneShotArgs) -> anyhow::Result<ExitCode> {
    let compute = args.request == Some(Request::Compute);
    run_request(args).inspect_err(|e| {
        if compute {
            println!(
                "{}",
                error_line(&format!("{e:#}"), "The worker could not start the job; see the worker log.")
            );
        }
    })
}

fn run_request(args: OneShotArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    let api_url = args.api_url.clone().context("--apiUrl is required")?;
    let token = Secret::new(args.token.clone().context("--token is required")?);
    let kind = args.request.context("--request is required")?;
    let request = JobRequest::from_command_line(
        kind,
        token,
        args.dataset_id.clone(),
        args.parameters.as_deref(),
        settings.oneshot.tool,
    )?;
    let mut gc = GirderConfig::new(api_url);
    gc.timeout = std::time::Duration::from_secs_f64(settings.girder.timeout_s);
    gc.retry.max_retries = settings.girder.max_retries;
    let client = GirderClient::new(gc, Auth::Token(request.token.clone()))?;
    let rt = runtime()?;
    // one binary serves both tools: the request knows its tool (see JobRequest)
    match request.request {
        Request::Interface => rt.block_on(interface(facts(request.tool), &client, &settings, &request)),
        Request::Compute => {
            request.dataset()?;
            rt.block_on(compute(client, settings, request))
        }
    }
}

async fn interface(
    family: &dyn Facts,
    client: &GirderClient,
    settings: &Settings,
    request: &JobRequest,
) -> anyhow::Result<ExitCode> {
    let image =
        request.image.as_deref().context("--parameters must contain \"image\" (the worker image name)")?;
    let me = client.users().me().await?;
    let mut models = family.offered_builtins(settings);
    let user_models = store::list_models(client, &me.id, family.root_folder()).await?;
    // a user model named like a reserved built-in label is never offered (it could not be picked)
    models.extend(user_models.into_iter().map(|i| i.name).filter(|n| !family.reserves(n)));
    let doc = interface_json(&family.fields(settings), &models);
    client.worker_interfaces().post(image, &doc).await?;
    tracing::info!(image, "interface posted");
    Ok(ExitCode::SUCCESS)
}

async fn compute(client: GirderClient, settings: Settings, request: JobRequest) -> anyhow::Result<ExitCode> {
    let device = crate::device::open(settings.training.device)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if let Some(line) = line_for(&e) {
                println!("{line}");
            }
        }
    });
    // the platform stops a one-shot container to cancel it (girder_worker: `docker stop`, SIGTERM
    // then SIGKILL after 10 s): the job stops at its next step and nothing is uploaded
    let control = Control::new();
    let on_signal = control.clone();
    let signals = tokio::spawn(async move {
        let signal = super::signals::termination().await;
        tracing::info!(signal, "cancelling the job");
        on_signal.cancel();
    });
    let ctx = JobContext {
        client,
        user: None,
        settings,
        device,
        job_tag: format!("oneshot{}", std::process::id()),
        resume: None,
        seed: 0,
    };
    let result = job::run_job(&ctx, &request, &Events::new(tx), &control).await;
    signals.abort();
    drop(ctx);
    let _ = printer.await;
    match result {
        Ok(outcome) => {
            tracing::info!(model = %outcome.model_name, seconds = outcome.seconds, "job done");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}", error_line(&e.to_string(), &e.info()));
            tracing::error!(error = %e.chain(), "job failed");
            Ok(ExitCode::FAILURE)
        }
    }
}
