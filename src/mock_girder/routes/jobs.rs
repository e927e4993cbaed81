//! `/job`: list (own, or all for a site admin), create, get (with `log`), update (status moves
//! checked against girder_jobs' and the worker plugin's transition tables; progress; log),
//! cancel, delete.
//!
//! As in girder_jobs, `POST /job` demands a token with the `jobs.rest.create_job` scope, which no
//! login or API-key token has (NimbusImage creates jobs server-side); tests and the demo get one
//! from `POST /dev_support/job_token` (admin only), which the real-Girder test launcher serves too.

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::paging::Paging;
use crate::mock_girder::http::{json_response, ApiError, ApiResult, Ctx};
use crate::mock_girder::server::Shared;
use crate::mock_girder::state::{check_id, now, JobRec, State, UserRec};

const WORKER_CODES: [i64; 5] = [820, 821, 822, 823, 824];

fn valid_status(s: i64) -> bool {
    (0..=5).contains(&s) || WORKER_CODES.contains(&s)
}

/// The states a job may move to `new` from (girder_jobs `validTransitions` and the worker
/// plugin's tables for `worker_handler`/`celery_handler`); `None` when no move to `new` exists.
pub(crate) fn valid_previous(handler: Option<&str>, new: i64) -> Option<&'static [i64]> {
    match handler {
        Some("worker_handler") | Some("celery_handler") => {
            let celery = handler == Some("celery_handler");
            Some(match new {
                1 => &[0],
                2 if celery => &[1, 820, 0],
                2 => &[1, 820],
                820 => &[2],
                821 => &[2, 820],
                822 => &[2],
                823 => &[2, 822],
                824 => &[0, 1, 2],
                4 => &[820, 821, 822, 823, 824, 1, 2],
                5 if celery => &[824, 1, 2, 0],
                5 => &[824, 1, 2],
                3 => &[2, 823],
                _ => return None,
            })
        }
        _ => Some(match new {
            1 => &[0],
            2 => &[1, 0],
            3 => &[2],
            4 => &[1, 2],
            5 => &[0, 1, 2],
            _ => return None,
        }),
    }
}

/// Who is asking: a user, or a token scoped to single jobs.
struct Caller<'a> {
    user: Option<&'a UserRec>,
    scopes: Vec<String>,
    has_token: bool,
}

fn caller<'a>(st: &'a State, ctx: &Ctx) -> Caller<'a> {
    let rec = st.token(ctx.token());
    Caller {
        user: st.user(ctx.token()),
        scopes: rec.map(|r| r.scopes.clone()).unwrap_or_default(),
        has_token: rec.is_some(),
    }
}

/// Read (`write = false`) or write access to a job, as `getJob`/`updateJob` check it.
fn job_access<'a>(st: &'a State, id: &str, c: &Caller, write: bool) -> Result<&'a JobRec, ApiError> {
    check_id(id)?;
    let job = st.jobs.get(id).ok_or_else(|| ApiError::rest(format!("Invalid job id ({id}).")))?;
    match c.user {
        Some(u) => {
            let owner = u.admin || job.user_id.as_deref() == Some(u.id.as_str());
            if owner || (!write && job.public) {
                Ok(job)
            } else {
                let word = if write { "Write" } else { "Read" };
                Err(ApiError::access(true, format!("{word} access denied for job {id} (user {}).", u.id)))
            }
        }
        None if !write && job.public => Ok(job),
        None if c.scopes.iter().any(|s| *s == format!("jobs.job_{id}")) => Ok(job),
        None if c.has_token => {
            Err(ApiError::access(false, format!("Invalid token scope.\nRequired: jobs.job_{id}.")))
        }
        None => Err(ApiError::login_required()),
    }
}

/// The job as Girder filters it for `viewer`: `args`/`kwargs` for site admins only, the owner
/// never, `log` only where `with_log`.
pub(crate) fn job_doc(job: &JobRec, base_url: &str, viewer: Option<&UserRec>, with_log: bool) -> Value {
    let admin = viewer.is_some_and(|u| u.admin);
    let level =
        if admin || viewer.is_some_and(|u| job.user_id.as_deref() == Some(u.id.as_str())) { 2 } else { 0 };
    let mut doc = json!({
        "_accessLevel": level, "_id": job.id, "_modelType": "job", "asynchronous": false,
        "created": job.created, "handler": job.handler, "interval": 0,
        "jobInfoSpec": {
            "headers": {"Girder-Token": job.job_token}, "logPrint": true, "method": "PUT",
            "reference": job.id, "url": format!("{base_url}/api/v1/job/{}", job.id),
        },
        "meta": job.meta, "parentId": job.parent_id, "progress": job.progress, "public": job.public,
        "status": job.status, "timestamps": job.timestamps, "title": job.title, "type": job.job_type,
        "updated": job.updated, "when": job.created,
    });
    if with_log {
        doc["log"] = json!(job.log);
    }
    if admin {
        doc["args"] = job.args.clone();
        doc["kwargs"] = job.kwargs.clone();
    }
    doc
}

fn json_array_param(ctx: &Ctx, name: &str) -> Result<Option<Vec<Value>>, ApiError> {
    match ctx.json_param(name)? {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(ApiError::rest(format!("Parameter {name} must be a JSON array."))),
    }
}

fn list_jobs(
    st: &State,
    ctx: &Ctx,
    base_url: &str,
    owner: Option<&str>,
    viewer: Option<&UserRec>,
) -> ApiResult {
    let types = json_array_param(ctx, "types")?;
    let statuses = json_array_param(ctx, "statuses")?;
    let docs: Vec<Value> = st
        .jobs
        .values()
        .filter(|j| owner.is_none_or(|o| j.user_id.as_deref() == Some(o)))
        .filter(|j| types.as_ref().is_none_or(|t| t.iter().any(|t| t.as_str() == Some(&j.job_type))))
        .filter(|j| statuses.as_ref().is_none_or(|s| s.iter().any(|s| s.as_i64() == Some(j.status))))
        .map(|j| job_doc(j, base_url, viewer, false))
        .collect();
    // girder_jobs lists newest first and sends no Girder-Total-Count
    Ok(json_response(Value::Array(Paging::from(ctx, "created", true)?.apply(docs))))
}

pub(crate) async fn list(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let Some(user) = st.user(ctx.token()) else {
        return Ok(json_response(json!([])));
    };
    list_jobs(&st, &ctx, &app.base_url, Some(&user.id), Some(user))
}

/// `GET /job/all`: girder_jobs lists every job the caller may read (all of them for a site admin,
/// their own and public ones for anyone else), not an admin-only route.
pub(crate) async fn list_all(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let user = st.require_user(ctx.token())?;
    list_jobs(&st, &ctx, &app.base_url, (!user.admin).then_some(user.id.as_str()), Some(user))
}

/// The scope girder_jobs' `POST /job` requires of the caller's token.
pub(crate) const CREATE_JOB_SCOPE: &str = "jobs.rest.create_job";
/// The scope of `GET /job/all` and `GET /job/{id}` for tokens that are not plain user tokens.
pub(crate) const LIST_JOB_SCOPE: &str = "jobs.rest.list_job";

/// `POST /dev_support/job_token?userId=` (not Girder: the test launcher's and this mock's, admin
/// only): a token of that user that may create jobs, as NimbusImage's server-side code can.
pub(crate) async fn dev_job_token(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    if !st.require_user(ctx.token())?.admin {
        return Err(ApiError::access(true, "Administrator access required."));
    }
    let user_id = ctx.required("userId")?.to_string();
    check_id(&user_id)?;
    if !st.users.contains_key(&user_id) {
        return Err(ApiError::rest(format!("Invalid user id ({user_id}).")));
    }
    let scopes = vec!["core.user_auth".into(), CREATE_JOB_SCOPE.into(), LIST_JOB_SCOPE.into()];
    let (token, _) = st.issue_token(Some(user_id), scopes, 1.0);
    Ok(json_response(json!({ "token": token })))
}

/// `PUT /dev_support/local_worker?enabled=` (not Girder: the test launcher's and this mock's,
/// admin only): whether a Celery worker serves Girder's `local` queue, which `DELETE /folder`
/// needs (503 without one).
pub(crate) async fn dev_local_worker(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    if !st.require_user(ctx.token())?.admin {
        return Err(ApiError::access(true, "Administrator access required."));
    }
    st.local_worker = ctx.flag("enabled", true)?;
    Ok(json_response(json!({ "enabled": st.local_worker })))
}

/// `POST /job` (`title`, `type`, `handler`, `args`, `kwargs`, `public`, `parentId`).
pub(crate) async fn create(AxState(app): AxState<Shared>, ctx: Ctx) -> ApiResult {
    let title = ctx.required("title")?.to_string();
    let job_type = ctx.required("type")?.to_string();
    let args = ctx.json_param("args")?.unwrap_or(Value::Null);
    let kwargs = ctx.json_param("kwargs")?.unwrap_or(json!({}));
    if !(args.is_array() || args.is_null()) || !kwargs.is_object() {
        return Err(ApiError::rest("Parameters args and kwargs must be a JSON array and a JSON object."));
    }
    let public = ctx.flag("public", false)?;
    let mut st = app.state();
    let user_id = st.require_user(ctx.token())?.id.clone();
    if !st.token(ctx.token()).is_some_and(|t| t.scopes.iter().any(|s| s == CREATE_JOB_SCOPE)) {
        let message = format!("Invalid token scope, required: {CREATE_JOB_SCOPE}.");
        return Err(ApiError::access(true, message));
    }
    let id = st.new_id();
    let (job_token, _) = st.issue_token(None, vec![format!("jobs.job_{id}")], 7.0);
    let t = now();
    let job = JobRec {
        id: id.clone(),
        title,
        job_type,
        handler: ctx.param("handler").filter(|h| !h.is_empty()).map(str::to_string),
        status: 0,
        user_id: Some(user_id.clone()),
        args,
        kwargs,
        public,
        progress: None,
        log: Vec::new(),
        meta: Map::new(),
        timestamps: Vec::new(),
        created: t.clone(),
        updated: t,
        parent_id: ctx.param("parentId").map(str::to_string),
        job_token,
    };
    let doc = job_doc(&job, &app.base_url, st.users.get(&user_id), true);
    st.jobs.insert(id, job);
    Ok(json_response(doc))
}

pub(crate) async fn get(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let st = app.state();
    let c = caller(&st, &ctx);
    let job = job_access(&st, &id, &c, false)?;
    Ok(json_response(job_doc(job, &app.base_url, c.user, true)))
}

/// The fields of one `updateJob`, validated before anything is applied (a refused status move
/// leaves the log and progress untouched too, as Girder's conditional update does).
struct Update {
    status: Option<i64>,
    log: Option<String>,
    overwrite: bool,
    total: Option<f64>,
    current: Option<f64>,
    message: Option<String>,
}

fn apply(job: &mut JobRec, u: Update) -> Result<(), ApiError> {
    let t = now();
    let mut changed = false;
    if let Some(new) = u.status {
        if !valid_status(new) {
            return Err(ApiError::validation(format!("Invalid job status {new}.")).field("status"));
        }
        if new != job.status {
            let Some(previous) = valid_previous(job.handler.as_deref(), new) else {
                return Err(ApiError::validation(format!(
                    "No valid state transition to '{new}'. Current state is '{}'.",
                    job.status
                ))
                .field("status"));
            };
            if !previous.contains(&job.status) {
                return Err(ApiError::validation(format!(
                    "Invalid state transition to '{new}', Current state is '{}'.",
                    job.status
                ))
                .field("status"));
            }
            job.status = new;
            job.timestamps.push(json!({"status": new, "time": t}));
            changed = true;
        }
    }
    if let Some(log) = u.log {
        if u.overwrite {
            job.log = vec![log];
        } else {
            job.log.push(log);
        }
        changed = true;
    }
    if u.total.is_some() || u.current.is_some() || u.message.is_some() {
        let progress = job.progress.get_or_insert_with(|| {
            let mut p = Map::new();
            for k in ["current", "message", "total"] {
                p.insert(k.into(), Value::Null);
            }
            p
        });
        if let Some(v) = u.total {
            progress.insert("total".into(), json!(v));
        }
        if let Some(v) = u.current {
            progress.insert("current".into(), json!(v));
        }
        if let Some(v) = u.message {
            progress.insert("message".into(), json!(v));
        }
        changed = true;
    }
    if changed {
        job.updated = t;
    }
    Ok(())
}

/// `PUT /job/{id}`: answers the job without `log`.
pub(crate) async fn update(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let status = match ctx.param("status") {
        None => None,
        Some(s) => Some(
            s.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::validation(format!("Invalid job status {s}.")).field("status"))?,
        ),
    };
    let u = Update {
        status,
        log: ctx.param("log").map(str::to_string),
        overwrite: ctx.flag("overwrite", false)?,
        total: ctx.float("progressTotal")?,
        current: ctx.float("progressCurrent")?,
        message: ctx.param("progressMessage").map(str::to_string),
    };
    let mut st = app.state();
    let viewer_id = {
        let c = caller(&st, &ctx);
        if !c.has_token {
            return Err(ApiError::login_required());
        }
        job_access(&st, &id, &c, true)?;
        c.user.map(|u| u.id.clone())
    };
    let job = st.jobs.get_mut(&id).ok_or_else(|| ApiError::rest(format!("Invalid job id ({id}).")))?;
    apply(job, u)?;
    let st = &*st;
    let job = st.jobs.get(&id).ok_or_else(|| ApiError::rest(format!("Invalid job id ({id}).")))?;
    Ok(json_response(job_doc(job, &app.base_url, viewer_id.as_deref().and_then(|v| st.users.get(v)), false)))
}

/// `PUT /job/{id}/cancel`: CANCELED for a plain job; for worker jobs INACTIVE goes to CANCELED
/// and a started one to CANCELING (as if its Celery task existed: the mock has no Celery).
pub(crate) async fn cancel(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    let viewer_id = {
        let c = caller(&st, &ctx);
        let user = c.user.ok_or_else(ApiError::login_required)?;
        job_access(&st, &id, &c, true)?;
        user.id.clone()
    };
    let job = st.jobs.get_mut(&id).ok_or_else(|| ApiError::rest(format!("Invalid job id ({id}).")))?;
    let worker = matches!(job.handler.as_deref(), Some("worker_handler") | Some("celery_handler"));
    let target = match (worker, job.status) {
        (true, 0) | (false, _) => Some(5),
        (true, 3) | (true, 4) => None,
        (true, _) => Some(824),
    };
    apply(
        job,
        Update { status: target, log: None, overwrite: false, total: None, current: None, message: None },
    )?;
    let st = &*st;
    let job = st.jobs.get(&id).ok_or_else(|| ApiError::rest(format!("Invalid job id ({id}).")))?;
    Ok(json_response(job_doc(job, &app.base_url, st.users.get(&viewer_id), false)))
}

pub(crate) async fn remove(AxState(app): AxState<Shared>, Path(id): Path<String>, ctx: Ctx) -> ApiResult {
    let mut st = app.state();
    {
        let c = caller(&st, &ctx);
        if c.user.is_none() {
            return Err(ApiError::login_required());
        }
        job_access(&st, &id, &c, true).map_err(|e| {
            if e.status == StatusCode::FORBIDDEN {
                ApiError::access(true, e.message.replacen("Write", "Admin", 1))
            } else {
                e
            }
        })?;
    }
    st.jobs.remove(&id);
    Ok(json_response(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::valid_previous;

    #[test]
    fn transition_tables_match_the_record() {
        assert_eq!(valid_previous(None, 2), Some(&[1, 0][..]));
        assert_eq!(valid_previous(None, 0), None);
        assert_eq!(valid_previous(Some("worker_handler"), 2), Some(&[1, 820][..]));
        assert_eq!(valid_previous(Some("celery_handler"), 2), Some(&[1, 820, 0][..]));
        assert_eq!(valid_previous(Some("worker_handler"), 3), Some(&[2, 823][..]));
        assert_eq!(valid_previous(Some("other"), 5), Some(&[0, 1, 2][..]));
    }
}
