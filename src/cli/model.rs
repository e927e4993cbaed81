//! `model init` and `model inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::model::{infer_config, torch_file, CpnetConfig, CpsamConfig, CpsamModel, Model, ModelFamily};

#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Write a freshly initialised network: a CPnet (PyTorch init, as cellpose 3's untrained
    /// network; the default) or a full-size Cellpose-SAM (`--family cpsam`: SAM ViT-L shape as
    /// cellpose 4 `CPSAM()`, ~1.2 GB; the CPnet shape flags do not apply).
    Init {
        #[arg(long)]
        out: PathBuf,
        /// cpnet (cellpose 3) or cpsam (cellpose 4).
        #[arg(long, value_enum, default_value_t = ModelFamily::Cpnet)]
        family: ModelFamily,
        /// Input channels.
        #[arg(long, default_value_t = 2, allow_hyphen_values = true)]
        nchan: i64,
        /// Channels per level after the input, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [32i64, 64, 128, 256], allow_hyphen_values = true)]
        nbase: Vec<i64>,
        /// Output maps (3 = dY, dX, cellprob).
        #[arg(long, default_value_t = 3, allow_hyphen_values = true)]
        nout: i64,
        #[arg(long, default_value_t = 30.0, allow_hyphen_values = true)]
        diam_mean: f64,
        /// Seed for the initial weights.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        seed: i64,
    },
    /// Print tensor names and shapes, nchan, nbase, nout, diam_mean, diam_labels.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ModelArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ModelCommand::Init { out, family: ModelFamily::Cpsam, seed, .. } => {
            tch::manual_seed(seed);
            let model = CpsamModel::new(CpsamConfig::default(), tch::Device::Cpu)?;
            model.save(&out).with_context(|| format!("failed to write {}", out.display()))?;
            eprintln!(
                "wrote {} (cpsam, {} tensors, {:.1} M parameters)",
                out.display(),
                model.vs.variables().len(),
                model.num_params() as f64 / 1e6
            );
        }
        ModelCommand::Init { out, family: ModelFamily::Cpnet, nchan, nbase, nout, diam_mean, seed } => {
            let max_chan = crate::limits::MAX_CHANNELS as i64;
            anyhow::ensure!((1..=max_chan).contains(&nchan), "--nchan must be 1..{max_chan} (got {nchan})");
            anyhow::ensure!(
                (3..=max_chan).contains(&nout),
                "--nout must be 3..{max_chan} (dY, dX, cellprob, classes); got {nout}"
            );
            crate::limits::diameter("--diam-mean", diam_mean)?;
            let config = CpnetConfig { nbase: [vec![nchan], nbase].concat(), nout, kernel: 3, diam_mean };
            crate::limits::cpnet_widths("--nbase", &config.nbase, nout, 3)?;
            tch::manual_seed(seed);
            let model = Model::new(config, tch::Device::Cpu)?;
            model.save(&out).with_context(|| format!("failed to write {}", out.display()))?;
            eprintln!("wrote {} ({} tensors)", out.display(), model.vs.variables().len());
        }
        ModelCommand::Inspect { file, json } if ModelFamily::detect(&file)? == ModelFamily::Cpsam => {
            let metas = torch_file::read_tensor_metas(&file)?;
            let origin = file.display().to_string();
            let c = crate::model::cpsam::infer_cpsam_config(&metas, &origin)?;
            if json {
                let tensors: Vec<_> = metas
                    .iter()
                    .map(|t| serde_json::json!({"name": t.name, "shape": t.shape, "dtype": format!("{:?}", t.dtype)}))
                    .collect();
                let doc =
                    serde_json::json!({"file": origin, "family": "cpsam", "config": c, "tensors": tensors});
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("file:        {origin}");
                println!("family:      cpsam (cellpose 4 Cellpose-SAM)");
                println!(
                    "width:       {}  depth: {}  heads: {}  neck: {}",
                    c.dim,
                    c.depth(),
                    c.heads(),
                    c.neck
                );
                println!("patch:       {}  tile: {}  nout: {}", c.ps, c.bsize(), c.nout);
                println!("tensors:     {}", metas.len());
                for t in &metas {
                    println!("  {:<70} {:?} {:?}", t.name, t.shape, t.dtype);
                }
            }
        }
        ModelCommand::Inspect { file, json } => {
            let sd = torch_file::read_state_dict(&file)?;
            let origin = file.display().to_string();
            let config = infer_config(&sd, &origin)?;
            let diam_labels = sd
                .get("diam_labels")
                .and_then(|t| crate::model::raw_to_tensor(t).ok()?.f_double_value(&[0]).ok());
            let tensors: Vec<_> = sd
                .entries
                .iter()
                .map(|(n, t)| serde_json::json!({"name": n, "shape": t.shape, "dtype": format!("{:?}", t.dtype)}))
                .collect();
            if json {
                let doc = serde_json::json!({
                    "file": origin,
                    "nchan": config.nchan(),
                    "nbase": config.nbase,
                    "nout": config.nout,
                    "kernel": config.kernel,
                    "diam_mean": config.diam_mean,
                    "diam_labels": diam_labels,
                    "tensors": tensors,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("file:        {origin}");
                println!("nchan:       {}", config.nchan());
                println!("nbase:       {:?}", config.nbase);
                println!("nout:        {}", config.nout);
                println!("diam_mean:   {}", config.diam_mean);
                println!("diam_labels: {}", diam_labels.map(|d| d.to_string()).unwrap_or_else(|| "-".into()));
                println!("tensors:     {}", sd.entries.len());
                for (n, t) in &sd.entries {
                    println!("  {n:<70} {:?} {:?}", t.shape, t.dtype);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
