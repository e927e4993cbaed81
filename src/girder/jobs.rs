//! Jobs (girder_jobs plus the worker plugin's states): list, get, update status/progress/log,
//! cancel, create.
//!
//! Girder validates status moves against its transition tables and answers a refused one with
//! 400 `Invalid state transition to 'N', Current state is 'M'.` (field `status`); setting the
//! current status again is a no-op. `PUT /job/{id}` answers without `log`; `GET /job/{id}`
//! includes it as a list of strings. `args`/`kwargs` are shown to site admins only, and the
//! owner's id is never shown.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Secret;
use super::client::{Call, GirderClient};
use super::error::GirderError;
use super::path::ApiPath;

/// A job status code. The worker plugin adds codes 820-824 to girder_jobs' 0-5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobStatus(pub i64);

impl JobStatus {
    pub const INACTIVE: JobStatus = JobStatus(0);
    pub const QUEUED: JobStatus = JobStatus(1);
    pub const RUNNING: JobStatus = JobStatus(2);
    pub const SUCCESS: JobStatus = JobStatus(3);
    pub const ERROR: JobStatus = JobStatus(4);
    pub const CANCELED: JobStatus = JobStatus(5);
    pub const FETCHING_INPUT: JobStatus = JobStatus(820);
    pub const CONVERTING_INPUT: JobStatus = JobStatus(821);
    pub const CONVERTING_OUTPUT: JobStatus = JobStatus(822);
    pub const PUSHING_OUTPUT: JobStatus = JobStatus(823);
    pub const CANCELING: JobStatus = JobStatus(824);

    /// SUCCESS, ERROR and CANCELED: nothing moves a job out of them.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::SUCCESS | JobStatus::ERROR | JobStatus::CANCELED)
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "INACTIVE",
            1 => "QUEUED",
            2 => "RUNNING",
            3 => "SUCCESS",
            4 => "ERROR",
            5 => "CANCELED",
            820 => "FETCHING_INPUT",
            821 => "CONVERTING_INPUT",
            822 => "CONVERTING_OUTPUT",
            823 => "PUSHING_OUTPUT",
            824 => "CANCELING",
            _ => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// `job.progress`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Progress {
    pub current: Option<f64>,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// `job.jobInfoSpec`: where and how a worker reports on the job; carries a job-scoped token.
#[derive(Debug, Clone, Deserialize)]
pub struct JobInfoSpec {
    pub method: Option<String>,
    pub url: Option<String>,
    pub reference: Option<String>,
    #[serde(default)]
    pub headers: JobInfoHeaders,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobInfoHeaders {
    /// A token scoped to `jobs.job_<id>`: enough to update this job, nothing else.
    #[serde(rename = "Girder-Token")]
    pub girder_token: Option<Secret>,
}

/// A Girder job document.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    #[serde(rename = "_id")]
    pub id: String,
    pub title: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: JobStatus,
    #[serde(default)]
    pub handler: Option<String>,
    #[serde(default)]
    pub progress: Option<Progress>,
    /// Only in `GET /job/{id}`.
    #[serde(default)]
    pub log: Option<Vec<String>>,
    /// Only for site admins.
    #[serde(default)]
    pub kwargs: Option<Value>,
    /// Only for site admins.
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub meta: Map<String, Value>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
    #[serde(default)]
    pub timestamps: Vec<Value>,
    #[serde(rename = "jobInfoSpec", default)]
    pub job_info_spec: Option<JobInfoSpec>,
    #[serde(rename = "parentId", default)]
    pub parent_id: Option<String>,
}

/// Fields of `PUT /job/{id}`; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct JobUpdate {
    pub status: Option<JobStatus>,
    pub progress_current: Option<f64>,
    pub progress_total: Option<f64>,
    pub progress_message: Option<String>,
    /// Appended to the log (add your own trailing newline); replaces it with `overwrite_log`.
    pub log: Option<String>,
    pub overwrite_log: bool,
    /// Whether Girder sends notifications for this update (its default is yes).
    pub notify: Option<bool>,
}

/// Filters of `GET /job` and `GET /job/all`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub types: Option<Vec<String>>,
    pub statuses: Option<Vec<JobStatus>>,
    /// Girder's default page is 50; 0 means all.
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    /// Oldest first instead of Girder's newest first (sort by `created`).
    pub oldest_first: bool,
}

/// Fields of `POST /job`.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub title: String,
    pub job_type: String,
    pub handler: Option<String>,
    pub kwargs: Option<Value>,
    pub public: bool,
}

/// `client.jobs()`.
pub struct Jobs<'a> {
    client: &'a GirderClient,
}

impl GirderClient {
    pub fn jobs(&self) -> Jobs<'_> {
        Jobs { client: self }
    }
}

impl Jobs<'_> {
    /// The current user's jobs (`GET /job`), newest first unless `oldest_first`.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, GirderError> {
        self.client.json(filtered(Call::get("job"), filter)).await
    }

    /// Every user's jobs (`GET /job/all`); needs a site admin.
    pub async fn list_all(&self, filter: &JobFilter) -> Result<Vec<Job>, GirderError> {
        self.client.json(filtered(Call::get("job/all"), filter)).await
    }

    /// `GET /job/{id}`, with its log.
    pub async fn get(&self, id: &str) -> Result<Job, GirderError> {
        self.client.json(Call::get(ApiPath::id("job", id)?)).await
    }

    /// `PUT /job/{id}`. A refused status move is a 400 with field `status`. Retried on transient
    /// failures like any PUT; a retry after a lost answer can append a log line twice. The log
    /// and progress message are redacted ([`crate::redact`]): users and admins read them.
    #[tracing::instrument(skip_all, fields(job_id = %id))]
    pub async fn update(&self, id: &str, update: &JobUpdate) -> Result<Job, GirderError> {
        let redacted = |t: &String| crate::redact::text(t).into_owned();
        let call = Call::put(ApiPath::id("job", id)?)
            .query_opt("status", update.status.map(|s| s.0))
            .query_opt("progressCurrent", update.progress_current)
            .query_opt("progressTotal", update.progress_total)
            .query_opt("progressMessage", update.progress_message.as_ref().map(redacted))
            .query_opt("log", update.log.as_ref().map(redacted))
            .query_opt("overwrite", update.overwrite_log.then_some("true"))
            .query_opt("notify", update.notify);
        self.client.json(call).await
    }

    /// `PUT /job/{id}/cancel`: CANCELED for a plain job, CANCELING for a worker job that runs.
    pub async fn cancel(&self, id: &str) -> Result<Job, GirderError> {
        self.client.json(Call::put(ApiPath::id("job", id)?.then("cancel"))).await
    }

    /// `POST /job`. Girder requires a token with the `jobs.rest.create_job` scope, which no login
    /// or API-key token has (NimbusImage makes jobs server-side); see [`Self::creator_token`].
    pub async fn create(&self, job: &NewJob) -> Result<Job, GirderError> {
        let mut call = Call::post("job")
            .form("title", &job.title)
            .form("type", &job.job_type)
            .form("public", job.public);
        if let Some(handler) = &job.handler {
            call = call.form("handler", handler);
        }
        if let Some(kwargs) = &job.kwargs {
            call = call.form("kwargs", kwargs);
        }
        self.client.json(call).await
    }

    /// A token of `user_id` that may `POST /job`, from `POST /dev_support/job_token` (site admin
    /// only). Not a Girder route: the mock and the tests' real-Girder launcher serve it, so the
    /// demo and the tests can submit jobs as NimbusImage's server side would.
    pub async fn creator_token(&self, user_id: &str) -> Result<Secret, GirderError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Secret,
        }
        let call = Call::post("dev_support/job_token").query("userId", user_id);
        Ok(self.client.json::<Answer>(call).await?.token)
    }
}

fn filtered(call: Call, filter: &JobFilter) -> Call {
    let json = |v: Value| v.to_string();
    let mut call = call
        .query_opt("types", filter.types.as_ref().map(|t| json(Value::from(t.clone()))))
        .query_opt("statuses", filter.statuses.as_ref().map(|s| json(s.iter().map(|s| s.0).collect())))
        .query_opt("limit", filter.limit)
        .query_opt("offset", filter.offset);
    if filter.oldest_first {
        call = call.query("sort", "created").query("sortdir", 1);
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_sent_as_json_arrays() {
        let f = JobFilter {
            types: Some(vec!["cellpose.train".into()]),
            statuses: Some(vec![JobStatus::QUEUED, JobStatus::RUNNING]),
            oldest_first: true,
            ..Default::default()
        };
        let call = filtered(Call::get("job/all"), &f);
        let q: Vec<(&str, &str)> = call.query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            q,
            [
                ("types", r#"["cellpose.train"]"#),
                ("statuses", "[1,2]"),
                ("sort", "created"),
                ("sortdir", "1")
            ]
        );
    }

    #[test]
    fn the_job_token_in_job_info_spec_does_not_print() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "_id": "j", "title": "t", "type": "x", "status": 0,
            "jobInfoSpec": {"method": "PUT", "headers": {"Girder-Token": "secret-job-token"}}
        }))
        .unwrap();
        assert!(!format!("{job:?}").contains("secret-job-token"));
        assert_eq!(job.job_info_spec.unwrap().headers.girder_token.unwrap().expose(), "secret-job-token");
    }
}
