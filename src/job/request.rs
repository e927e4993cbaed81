//! What the platform asks the worker to do, typed once at the edge: NimbusImage's one-shot
//! container command line (`--request --datasetId --token --parameters`) and a queued Girder
//! job's kwargs carry the same four things, and both become one [`JobRequest`] here. Past this
//! point no stage reads raw JSON except the interface values, which the intake validates field
//! by field (so a user sees every bad field at once).

use serde_json::Value;

use crate::girder::{Job, Secret};

/// `interface` posts the tool's fields; `compute` runs the training job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Interface,
    #[default]
    Compute,
}

/// A request to the worker.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub request: Request,
    /// Required for `compute`.
    pub dataset_id: Option<String>,
    /// The submitting user's token: the job acts as them.
    pub token: Secret,
    /// The worker image's name (`parameters.image`): where `interface` posts the fields.
    pub image: Option<String>,
    /// `parameters.workerInterface`: the tool's field values (validated by the intake).
    pub values: Value,
}

/// Why a request cannot be read; the message says what the platform (or the user) sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

#[derive(serde::Deserialize)]
struct Kwargs {
    #[serde(default)]
    request: Request,
    #[serde(rename = "datasetId")]
    dataset_id: String,
    token: Secret,
    #[serde(default)]
    parameters: Value,
}

impl JobRequest {
    /// From the one-shot command line: `parameters` is the `--parameters` JSON text.
    pub fn from_command_line(
        request: Request,
        token: Secret,
        dataset_id: Option<String>,
        parameters: Option<&str>,
    ) -> Result<JobRequest, RequestError> {
        let params: Value = serde_json::from_str(parameters.unwrap_or("{}"))
            .map_err(|e| RequestError(format!("--parameters is not valid JSON: {e}")))?;
        if !params.is_object() {
            return Err(RequestError(format!(
                "--parameters must be a JSON object such as '{{\"workerInterface\": {{...}}}}', not {}",
                super::json_type(&params)
            )));
        }
        for key in ["image", "datasetId"] {
            if let Some(v) = params.get(key).filter(|v| !v.is_string() && !v.is_null()) {
                return Err(RequestError(format!(
                    "--parameters: `{key}` must be a string, not {}",
                    super::json_type(v)
                )));
            }
        }
        // NimbusImage passes the dataset as a flag; older launchers put it in the parameters
        let dataset_id =
            dataset_id.or_else(|| params.get("datasetId").and_then(Value::as_str).map(str::to_string));
        Ok(Self::with_parameters(request, token, dataset_id, &params))
    }

    /// From a queued job's kwargs (`{request, datasetId, token, parameters}`).
    pub fn from_job(job: &Job) -> Result<JobRequest, RequestError> {
        let kwargs = job.kwargs.clone().ok_or_else(|| {
            RequestError("the job has no kwargs (is the worker's API key an admin's?)".into())
        })?;
        let named = wrong_kwarg(&kwargs);
        let k: Kwargs = serde_json::from_value(kwargs).map_err(|e| {
            let why = named.unwrap_or_else(|| e.to_string());
            RequestError(format!("the job's kwargs are not {{request, datasetId, token, parameters}}: {why}"))
        })?;
        if !(k.parameters.is_object() || k.parameters.is_null()) {
            return Err(RequestError(format!(
                "the job's kwargs.parameters must be an object {{\"workerInterface\": {{...}}}}, not {}",
                super::json_type(&k.parameters)
            )));
        }
        if k.request != Request::Compute {
            return Err(RequestError(
                "the job asks for request `interface`; this worker runs `compute`".into(),
            ));
        }
        Ok(Self::with_parameters(k.request, k.token, Some(k.dataset_id), &k.parameters))
    }

    fn with_parameters(
        request: Request,
        token: Secret,
        dataset_id: Option<String>,
        params: &Value,
    ) -> JobRequest {
        JobRequest {
            request,
            dataset_id,
            token,
            image: params.get("image").and_then(Value::as_str).map(str::to_string),
            values: params.get("workerInterface").cloned().unwrap_or(Value::Null),
        }
    }

    /// The dataset of a `compute` request.
    pub fn dataset(&self) -> Result<&str, RequestError> {
        self.dataset_id.as_deref().ok_or_else(|| RequestError("--datasetId is required for compute".into()))
    }
}

/// The kwargs field that does not have the shape [`Kwargs`] needs, named (serde's own message,
/// "invalid type: map, expected a string", says neither which field nor where).
fn wrong_kwarg(kwargs: &Value) -> Option<String> {
    let Some(map) = kwargs.as_object() else {
        return Some(format!("kwargs is {}, not an object", super::json_type(kwargs)));
    };
    for (key, required) in [("request", false), ("datasetId", true), ("token", true)] {
        match map.get(key) {
            None if required => return Some(format!("kwargs.{key} is missing")),
            None | Some(Value::String(_)) => {}
            Some(Value::Null) if !required => {}
            Some(v) => return Some(format!("kwargs.{key} must be a string, not {}", super::json_type(v))),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kwargs: Value) -> Job {
        serde_json::from_value(serde_json::json!({"_id": "j1", "title": "t", "type": "cellpose_train", "status": 1, "kwargs": kwargs}))
            .unwrap()
    }

    #[test]
    fn the_command_line_and_the_job_kwargs_give_the_same_request() {
        let params = r#"{"image": "img:1", "workerInterface": {"Epochs": 3}}"#;
        let a = JobRequest::from_command_line(
            Request::Compute,
            Secret::new("t"),
            Some("d1".into()),
            Some(params),
        )
        .unwrap();
        let b = JobRequest::from_job(&job(serde_json::json!({
            "request": "compute", "datasetId": "d1", "token": "t",
            "parameters": serde_json::from_str::<Value>(params).unwrap(),
        })))
        .unwrap();
        for r in [&a, &b] {
            assert_eq!(r.dataset().unwrap(), "d1");
            assert_eq!(r.image.as_deref(), Some("img:1"));
            assert_eq!(r.values, serde_json::json!({"Epochs": 3}));
            assert_eq!(r.token.expose(), "t");
        }
    }

    #[test]
    fn bad_requests_say_what_was_sent() {
        let e =
            JobRequest::from_command_line(Request::Compute, Secret::new("t"), None, Some("[1]")).unwrap_err();
        assert!(e.0.contains("not an array"), "{e}");
        let e =
            JobRequest::from_command_line(Request::Compute, Secret::new("t"), None, Some("{")).unwrap_err();
        assert!(e.0.contains("not valid JSON"), "{e}");
        let r = JobRequest::from_command_line(Request::Compute, Secret::new("t"), None, None).unwrap();
        assert!(r.dataset().unwrap_err().0.contains("--datasetId"));
        let e = JobRequest::from_job(&job(
            serde_json::json!({"request": "interface", "datasetId": "d", "token": "t"}),
        ))
        .unwrap_err();
        assert!(e.0.contains("runs `compute`"), "{e}");
        let e =
            JobRequest::from_job(&job(serde_json::json!({"datasetId": "d", "token": "t", "parameters": 3})))
                .unwrap_err();
        assert!(e.0.contains("not a number"), "{e}");
        // a wrong JSON shape names the field, not just serde's "invalid type: map"
        let e = JobRequest::from_job(&job(serde_json::json!({"datasetId": {"$oid": "d"}, "token": "t"})))
            .unwrap_err();
        assert!(e.0.contains("kwargs.datasetId must be a string, not an object"), "{e}");
        let e =
            JobRequest::from_job(&job(serde_json::json!({"datasetId": "d", "token": ["t"]}))).unwrap_err();
        assert!(e.0.contains("kwargs.token must be a string, not an array"), "{e}");
        let e = JobRequest::from_job(&job(serde_json::json!({"token": "t"}))).unwrap_err();
        assert!(e.0.contains("kwargs.datasetId is missing"), "{e}");
        let e = JobRequest::from_command_line(
            Request::Interface,
            Secret::new("t"),
            None,
            Some(r#"{"image": {}}"#),
        )
        .unwrap_err();
        assert!(e.0.contains("`image` must be a string, not an object"), "{e}");
    }
}
