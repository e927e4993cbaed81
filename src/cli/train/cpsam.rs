//! `train` for a Cellpose-SAM base model (`cpsam_v2`, `cpsam`, or a cpsam file): cellpose 4.2.1.1
//! `train_seg` ([`crate::train::cpsam`]) with cellpose 4's CLI defaults where the flags are left
//! unset: AdamW, `--learning-rate` 1e-5, `--weight-decay` 0.1, `--n-epochs` 100,
//! `--batch-size`/`--train-batch-size` 1, `--bsize` 256 (only), `--min-train-masks` 5, no
//! rescaling. Options that mean nothing for cellpose 4 are refused rather than ignored.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::console::{step_bar, trained, warn_removed, write_summary, BarHooks};
use super::flags::{Destination, TrainArgs};
use crate::config::Toggle;
use crate::control::Control;
use crate::model::{open_any, AnyModel, CpsamModel, ModelFamily};
use crate::train;
use crate::train::cpsam::{
    prepare_cp4, train_seg_cpsam, validate_cpsam_config, Cp4PrepareOptions, CpsamTrainConfig,
};
use crate::transforms::Normalize;

/// cellpose 4's tile size for every cpsam model.
const CPSAM_BSIZE: usize = 256;

/// Flags of the CPnet path that cellpose 4 training has no counterpart for.
fn refuse_cpnet_only(args: &TrainArgs) -> anyhow::Result<()> {
    let mut bad = Vec::new();
    let ch = &args.channels;
    if ch.chan != 0 || ch.chan2 != 0 || ch.all_channels || ch.nchan.is_some() {
        bad.push(
            "--chan/--chan2/--all-channels/--nchan (cellpose 4 uses the first three channels as they are)",
        );
    }
    if args.diameter.is_some() {
        bad.push("--diameter (cellpose 4 trains at the images' own scale)");
    }
    if args.eval_every.is_some() || args.log_dir.is_some() {
        bad.push("--eval-every/--log-dir (not yet available for cpsam training)");
    }
    if args.cuda_graphs == Toggle::On {
        bad.push("--cuda-graphs on (Cellpose-SAM steps run eagerly)");
    }
    if !bad.is_empty() {
        bail!(
            "{} is a Cellpose-SAM model; these options do not apply to it: {}",
            args.pretrained_model,
            bad.join("; ")
        );
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    refuse_cpnet_only(&args)?;
    let device = args.device.resolve()?;
    let Destination { models_out, save_path, .. } = args.destination()?;
    let precision = crate::precision::resolve(args.mixed_precision, device, ModelFamily::Cpsam);
    let cfg = CpsamTrainConfig {
        learning_rate: args.learning_rate.unwrap_or(1e-5),
        weight_decay: args.weight_decay.unwrap_or(0.1),
        optimizer: args.optimizer()?,
        n_epochs: args.n_epochs.unwrap_or(100),
        batch_size: args.batch_size.unwrap_or(1),
        bsize: args.bsize,
        nimg_per_epoch: args.nimg_per_epoch,
        nimg_test_per_epoch: args.nimg_test_per_epoch,
        rescale: false,
        scale_range: None,
        save_path: Some(save_path.clone()),
        save_every: args.save_every,
        save_each: args.save_each,
        seed: args.seed,
        device,
        mixed_precision: precision.bf16,
        profile_steps: args.profile_steps,
    };
    // every option is checked before any file is read or written
    validate_cpsam_config(&cfg, CPSAM_BSIZE)?;

    let normalize = Normalize { normalize: !args.no_norm, ..Default::default() };
    let load = |dir: &Path, min_train_masks: usize| -> anyhow::Result<train::Prepared> {
        let f = &args.folder;
        let pairs = train::discover(dir, &f.img_filter, &f.mask_filter, f.look_one_level_down)?;
        Ok(prepare_cp4(train::load_pairs(&pairs)?, &Cp4PrepareOptions { normalize, min_train_masks })?)
    };
    let prepared = load(&args.dir, args.min_train_masks)?;
    warn_removed(&prepared, args.min_train_masks);
    let examples = prepared.examples;
    let test = match &args.test_dir {
        Some(dir) => Some(load(dir, 0)?.examples),
        None => None,
    };

    let model = match open_any(&args.pretrained_model, &args.models_dir.resolve(), device)? {
        AnyModel::Cpsam(loaded) => {
            tracing::info!(">>>> loading model {} (float32 for training)", loaded.source.path.display());
            loaded.model
        }
        AnyModel::Cpnet(_) => bail!("{} is not a Cellpose-SAM model", args.pretrained_model),
    };
    validate_cpsam_config(&cfg, model.net.config.bsize() as usize)?;
    std::fs::create_dir_all(&models_out)
        .with_context(|| format!("failed to create {}", models_out.display()))?;
    tracing::info!(
        ">>> cellpose 4 train_seg: n_epochs={}, n_train={}, n_test={}, bsize={CPSAM_BSIZE}, batch_size={}, AdamW, learning_rate={}, weight_decay={}, device {}, precision {} ({})",
        cfg.n_epochs,
        examples.len(),
        test.as_ref().map(|t| t.len()).unwrap_or(0),
        cfg.batch_size,
        cfg.learning_rate,
        cfg.weight_decay,
        crate::device::describe(device),
        precision.label(),
        precision.why
    );
    let bar = step_bar(cfg.n_epochs, cfg.nimg_per_epoch.unwrap_or(examples.len()), cfg.batch_size);
    let mut hooks = BarHooks::new(bar, args.verbose, Box::new(|_, _: &CpsamModel| Ok(())));
    let outcome =
        train_seg_cpsam(&model, &examples, test.as_deref(), &cfg, &mut hooks, &Control::new(), None)?;
    hooks.bar.finish_and_clear();
    if let Some(path) = &args.summary_json {
        let doc = serde_json::json!({
            "outcome": outcome,
            "family": "cpsam",
            "device": crate::device::describe(device),
            "precision": precision.label(),
            "n_train": examples.len(),
            "batch_size": cfg.batch_size,
            "bsize": CPSAM_BSIZE,
            "learning_rate": cfg.learning_rate,
            "weight_decay": cfg.weight_decay,
        });
        write_summary(path, &doc)?;
    }
    Ok(trained(&save_path, &outcome))
}
