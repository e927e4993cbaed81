//! Command-line surface: one file per subcommand. `main()` parses flags, sets up telemetry,
//! dispatches, and turns the error chain into a message and an exit status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod common;
mod demo;
mod eval;
mod export;
mod mock_girder;
mod model;
mod oneshot;
mod predict;
mod segment;
mod serve;
mod signals;
mod synth;
mod train;

#[derive(Parser, Debug)]
#[command(
    name = "cellpose-train-worker",
    version,
    about = "Fine-tune and run Cellpose models; NimbusImage/Girder training worker"
)]
pub struct Cli {
    /// Log format on stderr (default: pretty; for `serve`, `[log] format` of the settings).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::telemetry::LogFormat>,
    /// NimbusImage's worker-container contract (used when no subcommand is given).
    #[command(flatten)]
    pub oneshot: oneshot::OneShotArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The embedded demo: mock Girder, synthetic dataset, a training job through the queue.
    Demo(demo::DemoArgs),
    /// Long-running worker: pull training jobs from the Girder job queue.
    Serve(serve::ServeArgs),
    /// Create or inspect model files (PyTorch state_dicts that Python cellpose loads).
    Model(model::ModelArgs),
    /// Run the mock Girder server (tests, demos) until Ctrl-C.
    MockGirder(mock_girder::MockGirderArgs),
    /// Run the network on one image: writes dY, dX, cellprob as a float32 TIFF.
    Predict(predict::PredictArgs),
    /// Segment images: writes <base>_masks.tif (and <base>_flows.tif with --save-flows).
    Segment(segment::SegmentArgs),
    /// Segment a folder with ground truth and print average precision at IoU 0.5/0.75/0.9.
    Eval(eval::EvalArgs),
    /// Write a model as a BioImage.IO package (rdf.yaml, weights, test tensors, docs).
    Export(export::ExportArgs),
    /// Train a model on a folder of images and masks (cellpose train_seg semantics).
    Train(Box<train::TrainArgs>),
    /// Write synthetic 2-channel cell images with masks.
    Synth(synth::SynthArgs),
}

/// Rust starts every program with SIGPIPE ignored, so a write to a closed pipe
/// (`model inspect F | head`) is an error that `println!` turns into a panic. Command-line tools
/// die quietly of SIGPIPE instead (exit status 141 in a shell), as `cat` and `grep` do. Not for the
/// servers (`serve`, `mock-girder`, `demo`), where a closed socket must stay an error.
fn default_sigpipe() {
    // SAFETY: called once at start-up before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Some(Command::Serve(_) | Command::MockGirder(_) | Command::Demo(_))) {
        default_sigpipe();
    }
    let result = match cli.command {
        Some(Command::Serve(args)) => match serve::load_settings(&args) {
            Ok(settings) => {
                crate::telemetry::init(cli.log_format.unwrap_or(settings.log.format));
                serve::run(args, settings)
            }
            Err(e) => Err(e),
        },
        command => {
            crate::telemetry::init(cli.log_format.unwrap_or_default());
            match command {
                None if cli.oneshot.requested() => oneshot::run(cli.oneshot),
                None => {
                    use clap::CommandFactory;
                    let _ = Cli::command().print_help();
                    return ExitCode::from(2);
                }
                Some(command) => run_command(command),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // the chain may quote a server's answer: redacted like every other output
            let redact = |e: &dyn std::fmt::Display| crate::redact::text(&e.to_string()).into_owned();
            eprintln!("error: {}", redact(&err));
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {}", redact(&cause));
            }
            ExitCode::FAILURE
        }
    }
}

fn run_command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo(args) => demo::run(args),
        Command::Serve(_) => unreachable!("serve is dispatched in main"),
        Command::Model(args) => model::run(args),
        Command::MockGirder(args) => mock_girder::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Segment(args) => segment::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        Command::Train(args) => train::run(*args),
        Command::Synth(args) => synth::run(args),
    }
}
