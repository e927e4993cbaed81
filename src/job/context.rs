//! What a job runs with and what it ends with: the worker's side of a job ([`JobContext`], the
//! request says what the user asked for) and the finished job's result ([`JobOutcome`]). Every
//! stage reads the one and the last stage writes the other, so they live below the stages.

use tch::Device;

use crate::config::Settings;
use crate::evaluate::ApSummary;
use crate::girder::{GirderClient, User};

/// What the worker brings to a job (the request says what the user asked for).
pub struct JobContext {
    /// Acts as the user who submitted the job (their token).
    pub client: GirderClient,
    /// The user, when the caller has already looked them up (the queue worker's owner check).
    pub user: Option<User>,
    pub settings: Settings,
    pub device: Device,
    /// Unique per job (the Girder job id): temporary upload names, local copies.
    pub job_tag: String,
    /// A checkpoint to continue from (a job taken over from a dead worker), as downloaded:
    /// shared, not copied (a Cellpose-SAM checkpoint is 3.65 GB).
    pub resume: Option<bytes::Bytes>,
    pub seed: u64,
}

/// What a finished job produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobOutcome {
    pub model_name: String,
    pub model_item_id: String,
    pub report_item_id: Option<String>,
    pub n_train: usize,
    pub n_validation: usize,
    pub ap_before: Option<ApSummary>,
    pub ap_after: Option<ApSummary>,
    pub train_losses: Vec<f64>,
    pub resumed_from_epoch: Option<usize>,
    /// The epoch whose weights were uploaded when the best one was kept.
    pub kept_epoch: Option<usize>,
    pub seconds: f64,
}
