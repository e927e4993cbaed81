//! Why a job failed, in words for the user (`message`) and a hint (`info`), as NimbusImage shows
//! them.

use crate::annotations::AnnotationError;
use crate::control::StopReason;
use crate::girder::GirderError;
use crate::model::{ModelError, OpenModelError};
use crate::rasterize::RasterizeError;
use crate::telemetry::TaskPanicked;
use crate::train::checkpoint::CheckpointError;
use crate::train::TrainError;

use super::replace::UploadFailure;
use super::validate::ParamErrors;

/// Girder errors are boxed: they are large and a job fails at most once (clippy result_large_err).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("Invalid parameters: {0}")]
    Params(#[from] ParamErrors),
    #[error("Girder rejected the token (it is expired or wrong): {0}")]
    Token(Box<GirderError>),
    #[error("Access denied: {0}")]
    Forbidden(Box<GirderError>),
    #[error("Girder request failed: {0}")]
    Girder(Box<GirderError>),
    #[error("Dataset {dataset}: {detail}")]
    Dataset { dataset: String, detail: String },
    #[error("{0}")]
    Channel(String),
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error("No training annotations found.")]
    NoTrainingAnnotations {
        tags: Vec<String>,
        /// Polygon and rectangle annotations in the dataset.
        total: usize,
        /// Their distinct tags.
        seen: Vec<String>,
    },
    #[error("No training samples left: every region or image had no training annotation in it ({dropped} dropped).")]
    NoSamples { dropped: usize },
    #[error(transparent)]
    Rasterize(#[from] RasterizeError),
    #[error("Base model: {0}")]
    Model(#[from] OpenModelError),
    #[error("Model: {0}")]
    ModelFile(#[from] ModelError),
    #[error("Training failed: {0}")]
    Train(TrainError),
    /// Stopped by its [`crate::control::Control`], for `reason`; `epoch` is where training stood
    /// (`None`: before training). The reason travels as is to the job's final status.
    #[error("{}", stopped_message(*reason, *epoch))]
    Stopped { reason: StopReason, epoch: Option<usize> },
    /// The checkpoint a job was to resume from could not be used.
    #[error("The checkpoint to resume from is unusable: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// Scoring the validation regions failed.
    #[error("Scoring the validation regions failed: {0}")]
    Scoring(String),
    /// A worker thread panicked: a bug, not the user's input.
    #[error(transparent)]
    Internal(#[from] TaskPanicked),
    /// The replace protocol failed; the failure says what Girder holds for the name now.
    #[error("Uploading the model failed: {0}")]
    Upload(Box<UploadFailure>),
    /// The upload failed after training; the model was saved on the worker first, so the hours
    /// of training are not lost.
    #[error("{source} The trained model is kept on the worker at {}.", kept.display())]
    ModelKept { source: Box<JobError>, kept: std::path::PathBuf },
    /// Scoring on pixels the model trained on would flatter it.
    #[error("Validation region {validation} overlaps training region {training}.")]
    RegionOverlap { validation: String, training: String },
    #[error("Local file error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<GirderError> for JobError {
    fn from(e: GirderError) -> Self {
        match e {
            GirderError::Unauthorized { .. } => JobError::Token(Box::new(e)),
            GirderError::Forbidden { .. } => JobError::Forbidden(Box::new(e)),
            other => JobError::Girder(Box::new(other)),
        }
    }
}

impl From<TrainError> for JobError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Stopped { reason, epoch, .. } => JobError::Stopped { reason, epoch: Some(epoch) },
            other => JobError::Train(other),
        }
    }
}

impl JobError {
    /// A hint for the `info` field of the error line.
    pub fn info(&self) -> String {
        match self {
            JobError::Params(_) => "Correct the highlighted fields and run the tool again.".into(),
            JobError::Token(_) => "Log in to NimbusImage again and resubmit the job.".into(),
            JobError::Forbidden(_) => {
                "You need read access to the dataset and write access to your Private folder.".into()
            }
            JobError::Girder(e) if e.is_misconfigured() => {
                "The worker cannot reach Girder at the configured API URL; ask the administrator to check it."
                    .into()
            }
            JobError::Girder(e) if e.is_transient() => {
                "The server had a temporary problem; try again in a few minutes.".into()
            }
            JobError::Girder(_) => "See the worker log for the failed request.".into(),
            JobError::Upload(failure) => failure.left.advice(),
            JobError::Dataset { .. } => {
                "Check that the dataset has an image and that its frames exist.".into()
            }
            JobError::Channel(_) => "Choose channels that exist in the dataset.".into(),
            JobError::Annotation(_) => "Fix or delete that annotation and run the tool again.".into(),
            JobError::NoTrainingAnnotations { tags, total, seen } => format!(
                "No polygon or rectangle annotation has any of the tags {} (the dataset has {} polygon and \
                 rectangle annotations; their tags: {}). Choose one of those as the Training Tag.",
                tags.join(", "),
                total,
                if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
            ),
            JobError::NoSamples { .. } => {
                "Draw training regions around annotated cells, or annotate cells inside the regions.".into()
            }
            JobError::Rasterize(RasterizeError::RegionTooSmall { min, .. }) => format!(
                "Draw the Training Region and Validation Region rectangles at least {min}x{min} pixels large, \
                 around annotated cells."
            ),
            JobError::Rasterize(_) => "Use smaller regions or check the region annotations.".into(),
            JobError::Model(OpenModelError::Model(ModelError::ChannelMismatch { model, .. }))
            | JobError::ModelFile(ModelError::ChannelMismatch { model, .. }) => format!(
                "This tool trains on two channels (Primary and Secondary Channel), but the Base Model \
                 takes {model}; choose a base model made by this tool or a built-in one (cyto3, ...)."
            ),
            JobError::Model(_) | JobError::ModelFile(_) => {
                "Choose another base model, or ask the administrator to install it.".into()
            }
            JobError::Train(TrainError::Diverged { .. }) => "Lower the Learning Rate and try again.".into(),
            JobError::Train(_) => "See the worker log.".into(),
            JobError::Stopped { reason: StopReason::Cancel, .. } => "Nothing was uploaded.".into(),
            JobError::Stopped { reason: StopReason::Shutdown, .. } => {
                "Another worker resumes it from the last checkpoint.".into()
            }
            JobError::Stopped { reason: StopReason::TakenOver, .. } => {
                "The worker that took the job over finishes it.".into()
            }
            JobError::RegionOverlap { .. } => {
                "Move or shrink one of the two rectangles: validation must be scored on pixels the model \
                 was not trained on."
                    .into()
            }
            JobError::Io(_) => "The worker's disk may be full or not writable.".into(),
            JobError::Checkpoint(_) => {
                "Run the job again: it starts over from the base model (the checkpoint is removed).".into()
            }
            JobError::Scoring(_) => "Check the validation regions, or run without a Validation Tag.".into(),
            JobError::Internal(_) => {
                "This is a bug in the worker. Please report it with the worker log; running the job again may work."
                    .into()
            }
            // the advice follows what Girder holds, as the upload found it after the failure
            JobError::ModelKept { source, .. } => format!(
                "{} The trained model is also kept on the worker: ask the administrator for it if running \
                 the job again is not an option.",
                source.info()
            ),
        }
    }
}

impl From<StopReason> for JobError {
    /// How a stop ends a job outside training (training reports its own epoch).
    fn from(reason: StopReason) -> Self {
        JobError::Stopped { reason, epoch: None }
    }
}

/// What a stopped job says, by its reason.
fn stopped_message(reason: StopReason, epoch: Option<usize>) -> String {
    match reason {
        StopReason::Cancel => "The job was canceled.".into(),
        StopReason::Shutdown => format!(
            "The worker is shutting down; the job was handed back {}.",
            match epoch {
                Some(e) => format!("during epoch {}", e + 1),
                None => "before training started".to_string(),
            }
        ),
        StopReason::TakenOver => "Another worker took the job over.".into(),
    }
}

impl JobError {
    /// Why the job was stopped, when it was stopped rather than failed.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        match self {
            JobError::Stopped { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The error and every cause below it on one line (`a: b: c`), for logs.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }
}
