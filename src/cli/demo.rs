//! `demo`: the whole product on an embedded default (README's first command): mock Girder,
//! seeded dataset, a job through the queue, the trained model and report copied to `--out`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::demo::run::{run_demo, DemoOptions};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Training epochs (the default keeps a 2-core CPU run under 5 minutes).
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.1)]
    pub learning_rate: f64,
    /// Training patch size (multiple of 16).
    #[arg(long, default_value_t = 128)]
    pub bsize: usize,
    /// auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Where the trained model and its report are written.
    #[arg(long, default_value = "demo-output")]
    pub out: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let opts = DemoOptions {
        epochs: args.epochs,
        learning_rate: args.learning_rate,
        bsize: args.bsize,
        device: args.device,
        out_dir: args.out,
        ..Default::default()
    };
    let result = rt.block_on(run_demo(&opts, &mut |line| println!("{line}")))?;
    let ap = |key: &str| -> String {
        let v = &result.report[key]["ap"];
        match v.as_array() {
            Some(a) if a.len() == 3 => format!(
                "AP@0.5 {:.3}  AP@0.75 {:.3}  AP@0.9 {:.3}",
                a[0].as_f64().unwrap_or(f64::NAN),
                a[1].as_f64().unwrap_or(f64::NAN),
                a[2].as_f64().unwrap_or(f64::NAN)
            ),
            _ => "not computed".into(),
        }
    };
    println!();
    println!("Job {} finished {} in {:.0} s.", result.job.id, result.job.status.name(), result.seconds);
    println!("Validation region, base model:    {}", ap("ap_before"));
    println!("Validation region, trained model: {}", ap("ap_after"));
    println!("Model in Girder: {}", result.girder_model_path);
    println!(
        "Model file:      {} (loads in Python cellpose: CellposeModel(pretrained_model=...))",
        result.model_path.display()
    );
    println!(
        "Report:          {}/report.png, overlay.png, report.json, metrics.jsonl",
        result.report_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
