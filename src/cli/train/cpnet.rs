//! `train` for a CPnet base model (cyto3, nuclei, a user's file, or from scratch): cellpose
//! 3.1.1.2 `train_seg`, with the test-set history, the best-validation model and the report.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use super::console::{step_bar, trained, warn_removed, write_summary, BarHooks, Record};
use super::flags::{Destination, TrainArgs};
use crate::control::Control;
use crate::model::{CpnetConfig, Model};
use crate::report::{RunRecorder, Validation};
use crate::train::{self, OptimizerKind, PrepareOptions, TrainConfig};
use crate::transforms::Normalize;

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.resolve()?;
    let optimizer = args.optimizer()?;
    let learning_rate =
        args.learning_rate.unwrap_or(if optimizer == OptimizerKind::Sgd { 0.2 } else { 0.005 });
    // 0 = do not rescale; any other diameter is stored in the model as diam_labels
    if let Some(d) = args.diameter.filter(|&d| d != 0.0) {
        crate::limits::diameter("--diameter", d)?;
    }
    crate::limits::diameter("--diam-mean", args.diam_mean)?;
    // every option is checked before any file is read or written: a bad flag loses nothing
    let Destination { name, models_out, save_path } = args.destination()?;
    let precision = crate::precision::resolve(args.mixed_precision, device, crate::model::ModelFamily::Cpnet);
    tracing::info!("precision {} ({})", precision.label(), precision.why);
    let channels_last = args.channels_last.resolve(true);
    let cfg = TrainConfig {
        learning_rate,
        weight_decay: args.weight_decay.unwrap_or(1e-5),
        optimizer,
        n_epochs: args.n_epochs.unwrap_or(500),
        batch_size: args.batch_size.unwrap_or(8),
        bsize: args.bsize.unwrap_or(224),
        nimg_per_epoch: args.nimg_per_epoch,
        nimg_test_per_epoch: args.nimg_test_per_epoch,
        rescale: args.diameter != Some(0.0),
        scale_range: None,
        save_path: Some(save_path.clone()),
        save_every: args.save_every,
        save_each: args.save_each,
        seed: args.seed,
        device,
        mixed_precision: precision.bf16,
        channels_last,
        cudnn_benchmark: args.cudnn_benchmark.resolve(true),
        cuda_graphs: args.cuda_graphs.resolve(device.is_cuda()),
        profile_steps: args.profile_steps,
    };
    train::validate_config(&cfg)?;
    anyhow::ensure!(args.eval_every != Some(0), "--eval-every must be at least 1");
    anyhow::ensure!(
        args.eval_every.is_none() || args.test_dir.is_some(),
        "--eval-every scores the test set: give --test-dir too"
    );

    let pairs = train::discover(
        &args.dir,
        &args.folder.img_filter,
        &args.folder.mask_filter,
        args.folder.look_one_level_down,
    )?;
    let raw = train::load_pairs(&pairs)?;
    let channels = args.channels.to_channels(raw[0].image.dim().0)?;
    let normalize = Normalize { normalize: !args.no_norm, ..Default::default() };
    let opts = PrepareOptions { channels, normalize, min_train_masks: args.min_train_masks };
    let prepared = train::prepare(raw, &opts)?;
    warn_removed(&prepared, args.min_train_masks);
    let mut examples = prepared.examples;
    if let Some(d) = args.diameter.filter(|d| *d > 0.0) {
        examples.iter_mut().for_each(|e| e.diameter = d);
    }
    let test = match &args.test_dir {
        Some(dir) => {
            let pairs = train::discover(
                dir,
                &args.folder.img_filter,
                &args.folder.mask_filter,
                args.folder.look_one_level_down,
            )?;
            let topts = PrepareOptions { min_train_masks: 0, ..opts.clone() };
            let mut t = train::prepare(train::load_pairs(&pairs)?, &topts)?.examples;
            if let Some(d) = args.diameter.filter(|d| *d > 0.0) {
                t.iter_mut().for_each(|e| e.diameter = d);
            }
            Some(Arc::new(t))
        }
        None => None,
    };

    let nchan = channels.nchan() as i64;
    let model = if ["none", "false", "0", "scratch"]
        .contains(&args.pretrained_model.to_ascii_lowercase().as_str())
    {
        tch::manual_seed(args.seed as i64);
        tracing::info!(">>>> training from scratch");
        let nbase = [vec![nchan], args.nbase.clone()].concat();
        crate::limits::cpnet_widths("--nbase", &nbase, 3, 3)?;
        Model::new(CpnetConfig { nbase, diam_mean: args.diam_mean, ..Default::default() }, device)?
    } else {
        let loaded = crate::model::open_model(&args.pretrained_model, &args.models_dir.resolve(), device)?;
        loaded.model.check_io(nchan, 3, &loaded.source.path.display().to_string()).map_err(|e| match e {
            crate::model::ModelError::ChannelMismatch { .. } => {
                anyhow::anyhow!("{e}, or change --chan/--chan2/--nchan")
            }
            e => e.into(),
        })?;
        if let Some(d) = loaded.source.builtin_diam_mean {
            loaded.model.net.set_diam_mean(d);
        }
        tracing::info!(">>>> loading model {}", loaded.source.path.display());
        loaded.model
    };

    std::fs::create_dir_all(&models_out)
        .with_context(|| format!("failed to create {}", models_out.display()))?;
    tracing::info!(
        ">>> n_epochs={}, n_train={}, n_test={}, {optimizer}, learning_rate={learning_rate}, weight_decay={}, device {}",
        cfg.n_epochs,
        examples.len(),
        test.as_ref().map(|t| t.len()).unwrap_or(0),
        cfg.weight_decay,
        crate::device::describe(device)
    );
    let bar = step_bar(cfg.n_epochs, cfg.nimg_per_epoch.unwrap_or(examples.len()), cfg.batch_size);
    let validation = test.clone().map(|examples| Validation {
        examples,
        diam_mean: model.net.diam_mean(),
        device,
        every: args.eval_every,
    });
    let mut recorder = RunRecorder::create(&save_path, args.log_dir.as_deref(), validation)?;
    if let Some(ap) = recorder.before(&model)? {
        tracing::info!(">>>> test set AP before training: {}", fmt_ap(ap));
    }
    let record: Record<'_, Model> = Box::new(|e, model| Ok(recorder.epoch(e, model)?));
    let mut hooks = BarHooks::new(bar, args.verbose, record);
    let train_count = examples.len();
    let outcome =
        train::train_seg(&model, Arc::new(examples), test, &cfg, &mut hooks, &Control::new(), None)?;
    hooks.bar.finish_and_clear();
    drop(hooks);
    let keep_best = !args.keep_last;
    if let Some(ap) = recorder.after(&model, cfg.n_epochs, keep_best)? {
        tracing::info!(">>>> test set AP after training: {}", fmt_ap(ap));
    }
    let best_epoch = recorder.best.best().map(|b| b.epoch).filter(|_| keep_best);
    if let Some(epoch) = best_epoch {
        if epoch != cfg.n_epochs {
            // the trainer saved the last epoch; the kept model replaces it
            model.save(&save_path).with_context(|| format!("failed to save {}", save_path.display()))?;
        }
        eprintln!(
            ">>>> kept the model of epoch {epoch} of {} (best test-set AP@0.5 {:.3}, scored every {} epochs)",
            cfg.n_epochs,
            recorder.best.best().map(|b| b.ap50).unwrap_or(f64::NAN),
            recorder.every.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    // the model is stored: its history goes beside it (a failed run removes its own)
    if let Err(err) = recorder.keep() {
        tracing::warn!(error = %err, "could not keep the metrics history");
    }
    if let Some(ap) = &recorder.ap_after {
        let qc = RunRecorder::qc_csv_path(&save_path);
        if let Err(err) = std::fs::write(&qc, crate::report::qc_csv(ap)) {
            tracing::warn!(error = %err, path = %qc.display(), "could not write the QC metrics");
        }
    }
    let report = RunRecorder::report_path(&save_path);
    let title = format!(
        "{name} (from {}, {} epochs, {train_count} training images)",
        args.pretrained_model, cfg.n_epochs
    );
    if let Err(err) = recorder.write_png(&report, &title) {
        tracing::warn!(error = %err, "could not draw the training report");
    }
    let overlay = RunRecorder::overlay_path(&save_path);
    let overlay_written = match recorder.overlay_png(&args.pretrained_model, &name) {
        Some(Ok(png)) => std::fs::write(&overlay, png)
            .map_err(
                |err| tracing::warn!(error = %err, path = %overlay.display(), "could not write the overlay"),
            )
            .is_ok(),
        Some(Err(err)) => {
            tracing::warn!(error = %err, "could not draw the overlay");
            false
        }
        None => false,
    };
    if let Some(path) = &args.summary_json {
        let doc = serde_json::json!({
            "outcome": outcome,
            "device": crate::device::describe(device),
            "n_train": train_count,
            "batch_size": cfg.batch_size,
            "bsize": cfg.bsize,
            "mixed_precision": cfg.mixed_precision,
            "precision": precision.label(),
            "channels_last": cfg.channels_last,
            "cuda_graphs": cfg.cuda_graphs,
            "ap_before": recorder.ap_before,
            "ap_after": recorder.ap_after,
            "best_epoch": best_epoch,
            "scored_epochs": recorder.best.history,
            "score_seconds": recorder.score_seconds,
            "scorings": recorder.scorings,
            "eval_every": recorder.every,
            "metrics": RunRecorder::metrics_path(&save_path),
            "tensorboard": recorder.tensorboard_path(),
            "report": report,
            "overlay": overlay_written.then_some(&overlay),
        });
        write_summary(path, &doc)?;
    }
    Ok(trained(&save_path, &outcome))
}

fn fmt_ap(ap: &crate::evaluate::ApSummary) -> String {
    let parts: Vec<String> =
        ap.thresholds.iter().zip(&ap.ap).map(|(t, a)| format!("AP@{t} {a:.3}")).collect();
    format!("{} ({} images, {} objects)", parts.join(", "), ap.n_images, ap.n_true)
}
