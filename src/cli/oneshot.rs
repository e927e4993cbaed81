//! NimbusImage's worker-container contract, so the platform can run this binary as its worker
//! image: `--apiUrl URL --token T --request interface|compute --parameters JSON [--datasetId ID]`.
//! `interface` posts the tool's interface; `compute` runs the training job and prints the JSON
//! progress/warning/error lines NimbusImage's client parses on stdout (logs go to stderr).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::config::Settings;
use crate::girder::{Auth, GirderClient, GirderConfig, Secret};
use crate::job::events::{error_line, line_for};
use crate::job::params::{fields_with_limits, interface_json, BASE_MODELS};
use crate::job::{self, store, Controls, Events, JobContext};
use crate::model::registry;

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
    #[arg(long, value_parser = ["interface", "compute"])]
    pub request: Option<String>,
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
    let compute = args.request.as_deref() == Some("compute");
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
    let params: Value = serde_json::from_str(args.parameters.as_deref().unwrap_or("{}"))
        .context("--parameters is not valid JSON")?;
    anyhow::ensure!(
        params.is_object(),
        "--parameters must be a JSON object such as '{{\"workerInterface\": {{...}}}}', not {}",
        crate::job::json_type(&params)
    );
    let mut gc = GirderConfig::new(api_url);
    gc.timeout = std::time::Duration::from_secs_f64(settings.girder.timeout_s);
    gc.retry.max_retries = settings.girder.max_retries;
    let client = GirderClient::new(gc, Auth::Token(token))?;
    let rt = runtime()?;
    match args.request.as_deref() {
        Some("interface") => rt.block_on(interface(&client, &settings, &params)),
        Some("compute") => {
            let dataset = args
                .dataset_id
                .clone()
                .or_else(|| params.get("datasetId").and_then(Value::as_str).map(str::to_string))
                .context("--datasetId is required for compute")?;
            rt.block_on(compute(client, settings, dataset, params))
        }
        other => anyhow::bail!("unknown --request {other:?}: use interface or compute"),
    }
}

async fn interface(client: &GirderClient, settings: &Settings, params: &Value) -> anyhow::Result<ExitCode> {
    let image = params
        .get("image")
        .and_then(Value::as_str)
        .context("--parameters must contain \"image\" (the worker image name)")?;
    let me = client.users().me().await?;
    // a built-in is offered only when its weights are installed: a job on a missing one fails
    let dir = registry::models_dir(settings.paths.models_dir.as_deref());
    let mut models: Vec<String> =
        BASE_MODELS.iter().filter(|m| registry::resolve(m, &dir).is_ok()).map(|s| s.to_string()).collect();
    if models.is_empty() {
        tracing::warn!(models_dir = %dir.display(), "no built-in model weights installed; offering only the user's models");
    }
    models.extend(store::list_user_models(client, &me.id).await?.into_iter().map(|i| i.name));
    let t = &settings.training;
    let doc = interface_json(&fields_with_limits(t.min_epochs, t.max_epochs), &models);
    client.worker_interfaces().post(image, &doc).await?;
    tracing::info!(image, "interface posted");
    Ok(ExitCode::SUCCESS)
}

async fn compute(
    client: GirderClient,
    settings: Settings,
    dataset_id: String,
    params: Value,
) -> anyhow::Result<ExitCode> {
    let values = params.get("workerInterface").cloned().unwrap_or(Value::Null);
    let device = crate::device::parse_device(&settings.training.device)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if let Some(line) = line_for(&e) {
                println!("{line}");
            }
        }
    });
    let ctx = JobContext {
        client,
        dataset_id,
        values,
        settings,
        device,
        job_tag: format!("oneshot{}", std::process::id()),
        resume: None,
        seed: 0,
    };
    let result = job::run_job(&ctx, &Events::new(tx), &Controls::default()).await;
    drop(ctx);
    let _ = printer.await;
    match result {
        Ok(outcome) => {
            tracing::info!(model = %outcome.model_name, seconds = outcome.seconds, "job done");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}", error_line(&e.to_string(), &e.info()));
            tracing::error!(error.message = %e, "job failed");
            Ok(ExitCode::FAILURE)
        }
    }
}
