//! Stage 5, upload: the trained model into the user's models folder, then the training report
//! beside it. The model is first written to the worker's disk (`<work_dir>/<job>/<name>`), so a
//! failed upload loses no training; that copy is removed once Girder holds the model.
//!
//! # The replace protocol
//!
//! Storing model `NAME` never leaves the user without a complete model of that name: at every
//! point Girder holds the previous `NAME` or the new one as `NAME`, or the new one under a
//! temporary name that the error message gives exactly. It is a state machine over the items of
//! `Private/<root>/models`, carried out by [`super::replace`]:
//!
//! | state | the folder holds | step to the next state |
//! |---|---|---|
//! | Start | the old `NAME` (if any), earlier uploads' `NAME.uploading-*` | `POST /item` T = `NAME.uploading-<job>-<nonce>` |
//! | Created | + T, empty | `POST /file`, then `POST /file/chunk` until T holds the whole file |
//! | Stored | + T holding the new model | `DELETE /item/{id}` of each item named `NAME` |
//! | OldRemoved | T, no `NAME` | `PUT /item/{T}?name=NAME` |
//! | Done | the new `NAME` | |
//!
//! When a step fails (after the client's own retries), the folder is read back and the state is
//! taken from what it shows, not from the failed answer, since a lost answer is a step that
//! happened:
//! - the step's effect is there (T exists, T holds the whole file, the old item is gone, T is
//!   named `NAME`): carry on from the next state;
//! - else, while no old item has been removed, roll back: T is deleted if it is incomplete, or
//!   if the folder shows the old `NAME` still standing, so the folder ends as it began (the
//!   trained model waits on the worker's disk);
//! - once an old item has been removed, T is never deleted: it is the only model of that name in
//!   Girder.
//!
//! The error then says what the folder holds ([`super::replace::Left`]): `NAME` unchanged or
//! gone, the new model's temporary name if it stayed, and the complete models of earlier
//! uploads; the job's `info` says what to do about exactly that. When the folder cannot be read
//! back the message says so and reports what the worker's own steps imply.
//!
//! Clean-up never deletes a complete model it did not create in this run: a `NAME.uploading-*`
//! item with a file is an earlier job's model whose rename failed, and it stays (and is named in
//! later errors) until the user renames or deletes it. Only empty ones (uploads that never
//! finished) are removed, and only when older than six hours: a younger one may be a concurrent
//! job's upload in progress. The nonce keeps two runs from sharing a temporary name (one-shot
//! containers often run under the same pid).

use bytes::Bytes;

use super::context::{JobContext, JobOutcome};
use super::error::JobError;
use super::evaluate::Scores;
use super::events::Events;
use super::family::Family;
use super::intake::Plan;
use super::stages::Step;
use super::store;
use super::train::Trained;
use crate::config::Settings;
use crate::control::Control;

pub async fn upload<F: Family>(
    family: &F,
    ctx: &JobContext,
    plan: &Plan,
    trained: Trained<F>,
    scores: Scores,
    events: &Events,
    control: &Control,
) -> Result<JobOutcome, JobError> {
    let (client, params, user_id) = (&ctx.client, &plan.params, &plan.user.id);
    let root = family.root_folder();
    if let Some(r) = control.reason() {
        return Err(r.into());
    }
    Step::Saving.report(events, format!("Uploading model {}", params.output_name));
    let (f, net, settings) = (family.clone(), trained.net, ctx.settings.clone());
    let (tag, name) = (ctx.job_tag.clone(), params.output_name.clone());
    // writing the model file (1.2 GB for Cellpose-SAM) and its local copy is blocking work: off
    // the async threads, in the job's span
    let written = crate::telemetry::spawn_blocking_in_span("writing the model file", move || {
        let bytes = f.to_file(&net)?;
        let kept = keep_locally(&settings, &tag, &name, &bytes);
        Ok::<_, JobError>((bytes, kept))
    });
    let (bytes, kept) = written.await??;
    let model_file = bytes.clone();
    // The model upload is not raced against a stop: abandoning it half-way would leave a
    // partial item behind, and it is one file; the stop is honoured right after it.
    let item =
        match store::upload_model_in(client, user_id, root, &params.output_name, bytes, &ctx.job_tag).await {
            Ok(item) => {
                if let Some(path) = &kept {
                    let _ = std::fs::remove_file(path);
                    let _ = path.parent().map(std::fs::remove_dir);
                }
                item
            }
            Err(e) => {
                return Err(match kept {
                    Some(kept) => JobError::ModelKept { source: Box::new(e), kept },
                    None => e,
                })
            }
        };
    let (n_train, n_validation) = (trained.n_train, scores.n_validation);
    let outcome = &trained.outcome;
    let report = crate::report::JobReport {
        model_name: params.output_name.clone(),
        base_model: params.base_model.clone(),
        epochs: params.epochs,
        learning_rate: params.learning_rate,
        weight_decay: params.weight_decay,
        n_train,
        n_validation,
        train_losses: outcome.train_losses.clone(),
        learning_rates: outcome.learning_rates.clone(),
        epoch_seconds: outcome.epoch_seconds.clone(),
        ap_before: scores.before.clone(),
        ap_after: scores.after.clone(),
        seconds: plan.started.elapsed().as_secs_f64(),
        device: crate::device::describe(ctx.device),
        precision: outcome.precision.to_string(),
        kept_epoch: trained.kept_epoch,
        scored_epochs: trained.scored.clone(),
    };
    let report_files = report.files();
    // with a validation region, the model also as a BioImage.IO package (best effort), its
    // README told the training and the scores by the report's metrics.jsonl
    let package = if n_validation > 0 {
        let (name, base, user) = (params.output_name.clone(), params.base_model.clone(), plan.user.clone());
        let (sample, kind) = (scores.sample.clone(), family.kind());
        let metrics = report_files
            .as_ref()
            .ok()
            .and_then(|files| files.iter().find(|f| f.0 == "metrics.jsonl"))
            .map(|f| f.1.clone());
        let made = crate::telemetry::spawn_blocking_in_span("packaging the model", move || {
            let model =
                super::package::ModelToPackage { family: kind, file: &model_file, name: &name, metrics };
            super::package::bioimageio_zip(&model, &base, &user, sample)
        });
        match control.race(made).await {
            Ok(Ok(Ok(zip))) => Some(zip),
            Ok(Ok(Err(e))) => {
                events.warning("The BioImage.IO package could not be made.", e);
                None
            }
            Ok(Err(e)) => {
                events.warning("The BioImage.IO package could not be made.", e.to_string());
                None
            }
            Err(_) => None,
        }
    } else {
        None
    };
    // the model is stored: a report that fails is a warning, and a stop now skips only it
    let report_item = match report_files.map(|mut files| {
        if let Some(zip) = package {
            files.push((format!("{}.bioimageio.zip", params.output_name), zip, "application/zip"));
        }
        match overlay_png(&scores.overlay, &params.base_model, &params.output_name) {
            Ok(Some(png)) => files.push(("overlay.png".into(), Bytes::from(png), "image/png")),
            Ok(None) => {}
            Err(e) => events.warning("The overlay picture could not be drawn.", e.to_string()),
        }
        files
    }) {
        Ok(files) => {
            match control.race(store::upload_report(client, user_id, root, &params.output_name, files)).await
            {
                Ok(Ok(i)) => Some(i.id),
                Ok(Err(e)) => {
                    events.warning("The training report could not be uploaded.", e.to_string());
                    None
                }
                Err(_) => None,
            }
        }
        Err(e) => {
            events.warning("The training report could not be drawn.", e.to_string());
            None
        }
    };
    let kept = match trained.kept_epoch {
        Some(e) if e != params.epochs => format!(" (the best-scoring epoch, {e} of {})", params.epochs),
        _ => String::new(),
    };
    let summary = match (&scores.before, &scores.after) {
        (Some(b), Some(a)) => {
            format!(" Validation AP@0.5: {:.3} before, {:.3} after{kept}.", b.ap50(), a.ap50())
        }
        _ => String::new(),
    };
    Step::Done
        .report(events, format!("Model {} saved to your {root}/models folder.{summary}", params.output_name));
    Ok(JobOutcome {
        model_name: params.output_name.clone(),
        model_item_id: item.id,
        report_item_id: report_item,
        n_train,
        n_validation,
        ap_before: scores.before,
        ap_after: scores.after,
        train_losses: trained.outcome.train_losses,
        resumed_from_epoch: trained.resumed_from_epoch,
        kept_epoch: trained.kept_epoch,
        seconds: plan.started.elapsed().as_secs_f64(),
    })
}

/// The report's overlay picture: the first validation crops with the base model's outlines and
/// the trained model's side by side (`None` without validation crops).
fn overlay_png(
    rows: &[super::evaluate::OverlayRow],
    base: &str,
    trained: &str,
) -> Result<Option<Vec<u8>>, crate::report::plot::PlotError> {
    use crate::report::overlay::{render_before_after, OverlayImage};
    if rows.is_empty() {
        return Ok(None);
    }
    let images: Vec<OverlayImage> =
        rows.iter().map(|r| OverlayImage { name: &r.name, image: &r.image, truth: &r.truth }).collect();
    render_before_after(
        &images,
        (base, rows.iter().map(|r| &r.before).collect()),
        (trained, rows.iter().map(|r| &r.after).collect()),
    )
    .map(Some)
}

/// Writes the trained model to `<work_dir>/<job>/<name>` before it is uploaded, so that a failed
/// upload does not lose the training. Best effort: a worker that cannot write locally still uploads.
fn keep_locally(settings: &Settings, job_tag: &str, name: &str, bytes: &Bytes) -> Option<std::path::PathBuf> {
    let root =
        settings.paths.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("cellpose-train-worker"));
    let dir = root.join(job_tag);
    let path = dir.join(name);
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes)) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not keep a local copy of the model before uploading");
            None
        }
    }
}
